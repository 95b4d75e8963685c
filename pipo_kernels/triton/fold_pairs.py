"""Triton kernel of pipo::fold_pairs (k tokens per group), and the tiled GEMM body it shares with
unfold_input.

One program computes a [BLOCK_M rows, BLOCK_N outputs] tile with tl.dot. The A tile is loaded
straight from the gathered rows (embedding rows by token id, or hidden rows), so the [N, kH]
concatenation never exists; each of the k parts of the K range is one loop over its source table
(k is a compile-time constant: one specialisation per group size).
Decode sizes (few rows) use small output tiles so that many programs stream the weight at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import should_check_values
from ..latent import _fold_pairs_fake, check_fold_args, check_token_values


@triton.jit
def _half_dot(
    acc,
    a_rows,  # [BLOCK_M] int64 element offsets of the A rows of this half
    a_ok,  # [BLOCK_M] rows that exist and are in range (others read as zeros)
    a_ptr,
    w_ptr,
    gamma_ptr,
    cols,
    col_ok,
    H,
    half,
    parts,  # the weight's columns in units of H (k for fold_pairs, 2 for unfold_input)
    NORM: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + A_half @ W[:, half*H : half*H+H]^T, A multiplied by gamma (NORM) in float32 first."""
    w_rows = cols.to(tl.int64) * parts * H + half * H
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        a = tl.load(
            a_ptr + a_rows[:, None] + ks[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0
        )
        if NORM:
            g = tl.load(gamma_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            a = (a.to(tl.float32) * g[None, :]).to(w_ptr.dtype.element_ty)
        w = tl.load(
            w_ptr + w_rows[:, None] + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0
        )
        if IEEE:  # float32 inputs (or the interpreter, see dot_in_f32) multiply in full float32
            acc = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    return acc


@triton.jit
def _fold_pairs_kernel(
    ids_ptr,  # [N, K] int32/int64
    emb_ptr,  # [V, H]
    w_ptr,  # [O, K*H]
    bias_ptr,  # [O] (unused unless HAS_BIAS)
    out_ptr,  # [N, O]
    N,
    V,
    H,
    O,  # noqa: E741  (the op contract names the output features O)
    K: tl.constexpr,  # tokens per group
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < O
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for part in tl.static_range(K):
        ids = tl.load(ids_ptr + rows.to(tl.int64) * K + part, mask=row_ok, other=0).to(tl.int64)
        ok = row_ok & (ids >= 0) & (ids < V)  # out-of-range ids are never followed
        acc = _half_dot(
            acc,
            ids * H,
            ok,
            emb_ptr,
            w_ptr,
            w_ptr,
            cols,
            col_ok,
            H,
            part,
            K,
            NORM=False,
            IEEE=IEEE,
            BLOCK_K=BLOCK_K,
        )
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    out = out_ptr + rows.to(tl.int64)[:, None] * O + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def dot_in_f32(t: torch.Tensor) -> bool:
    """Multiply in float32 (no TF32) for float32 inputs, and always in the CPU interpreter, whose
    bfloat16 tl.dot returns garbage (Triton 3.8)."""
    return t.dtype == torch.float32 or t.device.type == "cpu"


def tile_config(n: int, o: int, dtype: torch.dtype) -> dict:
    """Block sizes: decode (n <= 64) streams the weight through many narrow programs; prefill
    uses large tiles for the matrix units."""
    if n <= 64:
        block_m = max(16, triton.next_power_of_2(n))
        block_n = 32 if triton.cdiv(o, 32) >= 256 else 16
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=128, num_warps=4, num_stages=4)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
    if n <= 256:  # still weight-bound: 64-wide output tiles keep enough programs streaming
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)


@triton_op("pipo::fold_pairs_triton", mutates_args=())
def fold_pairs(
    pair_ids: torch.Tensor,
    embedding: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
) -> torch.Tensor:
    check_fold_args(pair_ids, embedding, weight, bias, activation)
    if should_check_values(pair_ids):
        check_token_values(pair_ids, embedding.shape[0], "pair_ids")
    n, (v, h), o = pair_ids.shape[0], embedding.shape, weight.shape[0]
    out = embedding.new_empty(n, o)
    if n == 0 or o == 0:
        return out
    cfg = tile_config(n, o, embedding.dtype)
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), triton.cdiv(o, cfg["BLOCK_N"]))
    wrap_triton(_fold_pairs_kernel)[grid](
        pair_ids,
        embedding,
        weight,
        weight if bias is None else bias,
        out,
        n,
        v,
        h,
        o,
        K=pair_ids.shape[1],
        HAS_BIAS=bias is not None,
        SILU=activation == "silu",
        IEEE=dot_in_f32(embedding),
        **cfg,
    )
    return out


# The fake kernel shared with the C++ op: shapes only, no tracing of the launch.
fold_pairs.register_fake(_fold_pairs_fake)

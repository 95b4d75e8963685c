"""Triton kernels of pipo::unfold_input: a pre-pass computes the two RMSNorm scales of every row
([N, 2] float32, the only intermediate), then the tiled GEMM of fold_pairs.py multiplies the
gathered, gamma-weighted rows by the weight and applies each half's scale to its partial sum."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import should_check_values
from ..latent import _unfold_input_fake, check_token_values, check_unfold_args
from .fold_pairs import _half_dot, dot_in_f32, tile_config


@triton.jit
def _unfold_rms_kernel(
    ids_ptr, hidden_ptr, emb_ptr, scale_ptr, V, H, hidden_stride, eps, BLOCK: tl.constexpr
):
    """scale[n, 0] / scale[n, 1] = 1 / sqrt(mean(x^2) + eps) of embedding[ids[n]] / hidden[n]."""
    eps = tl.cast(eps, tl.float32)  # float64 when inductor launches the kernel
    n = tl.program_id(0).to(tl.int64)
    half = tl.program_id(1)
    tok = tl.load(ids_ptr + n).to(tl.int64)
    ok = (half == 1) | ((tok >= 0) & (tok < V))
    base = tl.where(half == 0, emb_ptr + tok * H, hidden_ptr + n * hidden_stride)
    ss = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, H, BLOCK):
        ks = k0 + tl.arange(0, BLOCK)
        x = tl.load(base + ks, mask=(ks < H) & ok, other=0.0).to(tl.float32)
        ss += x * x
    tl.store(scale_ptr + n * 2 + half, 1.0 / tl.sqrt(tl.sum(ss) / H + eps))


@triton.jit
def _unfold_input_kernel(
    ids_ptr,  # [N] int32/int64
    hidden_ptr,  # [N, H], rows hidden_stride apart
    emb_ptr,  # [V, H]
    gamma_e_ptr,  # [H]
    gamma_h_ptr,  # [H]
    w_ptr,  # [O, 2H]
    scale_ptr,  # [N, 2] float32
    out_ptr,  # [N, O]
    N,
    V,
    H,
    O,  # noqa: E741  (the op contract names the output features O)
    hidden_stride,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < O
    rows64 = rows.to(tl.int64)
    ids = tl.load(ids_ptr + rows64, mask=row_ok, other=0).to(tl.int64)
    ok = row_ok & (ids >= 0) & (ids < V)  # out-of-range ids are never followed
    zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_e = _half_dot(
        zero,
        ids * H,
        ok,
        emb_ptr,
        w_ptr,
        gamma_e_ptr,
        cols,
        col_ok,
        H,
        0,
        2,
        NORM=True,
        IEEE=IEEE,
        BLOCK_K=BLOCK_K,
    )
    acc_h = _half_dot(
        zero,
        rows64 * hidden_stride,
        row_ok,
        hidden_ptr,
        w_ptr,
        gamma_h_ptr,
        cols,
        col_ok,
        H,
        1,
        2,
        NORM=True,
        IEEE=IEEE,
        BLOCK_K=BLOCK_K,
    )
    s_e = tl.load(scale_ptr + rows64 * 2, mask=row_ok, other=0.0)
    s_h = tl.load(scale_ptr + rows64 * 2 + 1, mask=row_ok, other=0.0)
    acc = acc_e * s_e[:, None] + acc_h * s_h[:, None]
    out = out_ptr + rows64[:, None] * O + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton_op("pipo::unfold_input_triton", mutates_args=())
def unfold_input(
    token_ids: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    embed_norm_weight: torch.Tensor,
    hidden_norm_weight: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    check_unfold_args(token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight)
    if should_check_values(token_ids):
        check_token_values(token_ids, embedding.shape[0], "token_ids")
    n, (v, h), o = token_ids.shape[0], embedding.shape, weight.shape[0]
    out = embedding.new_empty(n, o)
    if n == 0 or o == 0:
        return out
    scale = torch.empty(n, 2, dtype=torch.float32, device=embedding.device)
    wrap_triton(_unfold_rms_kernel)[(n, 2)](
        token_ids,
        hidden,
        embedding,
        scale,
        v,
        h,
        hidden.stride(0),
        eps,
        BLOCK=min(triton.next_power_of_2(h), 1024),
    )
    cfg = tile_config(n, o, embedding.dtype)
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), triton.cdiv(o, cfg["BLOCK_N"]))
    wrap_triton(_unfold_input_kernel)[grid](
        token_ids,
        hidden,
        embedding,
        embed_norm_weight,
        hidden_norm_weight,
        weight,
        scale,
        out,
        n,
        v,
        h,
        o,
        hidden.stride(0),
        IEEE=dot_in_f32(embedding),
        **cfg,
    )
    return out


# The fake kernel shared with the C++ op: shapes only, no tracing of the launch.
unfold_input.register_fake(_unfold_input_fake)

"""Triton kernel of pipo::group_out, and the gate body it shares with pair_out.

One program per block of batch rows: the hidden rows' sum of squares once, then for each MTP
step j the RMSNorm over the 2H features of [hidden; mtp_hidden[:, j]], fc1 in tiles of output
neurons (tl.dot, float32 accumulation), SiLU, the fc2 dot product, sigmoid and the gate. The gate
carries a per-row "still committed" flag from step to step, so a group keeps its longest passing
prefix. The [B, H] activation stays in registers, one tile at a time."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._backend import triton_interpreting
from ..pair_out import _group_out_fake, check_group_out_args
from ._common import dot_in_float32, register


@triton.jit
def _sum_squares(x_ptr, row_off, row_ok, H, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_B] float32 sums of squares of the H-element rows at x_ptr + row_off."""
    ss = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        msk = row_ok[:, None] & (kk < H)[None, :]
        a = tl.load(x_ptr + row_off[:, None] + kk[None, :], mask=msk, other=0.0).to(tl.float32)
        ss += tl.sum(a * a, axis=1)
    return ss


@triton.jit
def _fc1_half(
    acc,
    x_ptr,
    row_off,
    row_ok,
    rstd,
    norm_ptr,
    fc1_ptr,
    nn,
    n_ok,
    H,
    half,
    IEEE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + (x * rstd * norm_weight[half*H:]) @ fc1[nn, half*H : half*H+H]^T for one half."""
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < H
        x = tl.load(
            x_ptr + row_off[:, None] + kk[None, :],
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        g = tl.load(norm_ptr + half * H + kk, mask=k_ok, other=0.0).to(tl.float32)
        # Rounded to the weight dtype so tl.dot takes matching operands; float32 stays exact.
        xn = (x * rstd[:, None] * g[None, :]).to(fc1_ptr.dtype.element_ty)
        w = tl.load(
            fc1_ptr + nn[:, None].to(tl.int64) * (2 * H) + half * H + kk[None, :],
            mask=n_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        if IEEE:
            acc += tl.dot(xn.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(xn, tl.trans(w))
    return acc


@triton.jit
def _group_gate(
    hidden_ptr,  # [B, H]
    mtp_ptr,  # [B, J, H]
    tok1_ptr,  # token 1 of row b at tok1_ptr + b * tok_stride
    tokn_ptr,  # token j + 2 of row b at tokn_ptr + b * tok_stride + j
    tok_stride,
    norm_ptr,  # [2H]
    fc1_ptr,  # [H, 2H]
    fc2_ptr,  # [1, H]
    out_ptr,  # [B, 1 + J] int64
    conf_ptr,  # [B, J] float32
    B,
    J,
    H,
    threshold,
    pad_id,
    eps,
    IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # eps arrives as float64 when inductor launches the kernel: pin it to float32 so the loop-
    # carried sums stay float32 (threshold is only compared, at any precision).
    eps = tl.cast(eps, tl.float32)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    h_off = rows64 * H
    ss_h = _sum_squares(hidden_ptr, h_off, row_ok, H, BLOCK_B, BLOCK_K)
    t1 = tl.load(tok1_ptr + rows64 * tok_stride, mask=row_ok, other=0)
    tl.store(out_ptr + rows64 * (1 + J), t1, mask=row_ok)
    alive = row_ok  # token j + 1 committed
    for j in range(J):
        m_off = (rows64 * J + j) * H
        ss = ss_h + _sum_squares(mtp_ptr, m_off, row_ok, H, BLOCK_B, BLOCK_K)
        rstd = 1.0 / tl.sqrt(ss / (2 * H) + eps)
        logit = tl.zeros([BLOCK_B], dtype=tl.float32)
        for n0 in range(0, H, BLOCK_N):
            nn = n0 + tl.arange(0, BLOCK_N)
            n_ok = nn < H
            acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
            acc = _fc1_half(
                acc,
                hidden_ptr,
                h_off,
                row_ok,
                rstd,
                norm_ptr,
                fc1_ptr,
                nn,
                n_ok,
                H,
                0,
                IEEE,
                BLOCK_K,
            )
            acc = _fc1_half(
                acc, mtp_ptr, m_off, row_ok, rstd, norm_ptr, fc1_ptr, nn, n_ok, H, 1, IEEE, BLOCK_K
            )
            act = acc / (1.0 + tl.exp(-acc))
            w2 = tl.load(fc2_ptr + nn, mask=n_ok, other=0.0).to(tl.float32)
            logit += tl.sum(act * w2[None, :], axis=1)
        conf = 1.0 / (1.0 + tl.exp(-logit))
        tl.store(conf_ptr + rows64 * J + j, conf, mask=row_ok)
        alive = alive & ((threshold < 0) | ((threshold < 1) & (conf >= threshold)))
        t = tl.load(tokn_ptr + rows64 * tok_stride + j, mask=row_ok, other=0)
        tl.store(out_ptr + rows64 * (1 + J) + 1 + j, tl.where(alive, t, pad_id), mask=row_ok)


@triton.jit
def _group_out_kernel(
    hidden_ptr,
    mtp_ptr,
    tokens_ptr,  # [B, 1 + J] int64
    norm_ptr,
    fc1_ptr,
    fc2_ptr,
    groups_ptr,
    conf_ptr,
    B,
    J,
    H,
    threshold,
    pad_id,
    eps,
    IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    _group_gate(
        hidden_ptr,
        mtp_ptr,
        tokens_ptr,
        tokens_ptr + 1,
        1 + J,
        norm_ptr,
        fc1_ptr,
        fc2_ptr,
        groups_ptr,
        conf_ptr,
        B,
        J,
        H,
        threshold,
        pad_id,
        eps,
        IEEE,
        BLOCK_B,
        BLOCK_N,
        BLOCK_K,
    )


def launch_config(batch: int) -> tuple[tuple[int], dict]:
    """Grid and block sizes shared by group_out and pair_out."""
    block_b = 16
    return (triton.cdiv(batch, block_b),), dict(BLOCK_B=block_b, BLOCK_N=64, BLOCK_K=64)


@register("pipo::group_out_triton", mutates_args=())
def group_out(
    hidden: torch.Tensor,
    mtp_hidden: torch.Tensor,
    tokens: torch.Tensor,
    norm_weight: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc2_weight: torch.Tensor,
    threshold: float,
    pad_id: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_group_out_args(hidden, mtp_hidden, tokens, norm_weight, fc1_weight, fc2_weight)
    (batch, h), steps = hidden.shape, mtp_hidden.shape[1]
    groups = torch.empty(batch, 1 + steps, dtype=torch.int64, device=hidden.device)
    confidence = torch.empty(batch, steps, dtype=torch.float32, device=hidden.device)
    if batch == 0:
        return groups, confidence
    grid, blocks = launch_config(batch)
    wrap_triton(_group_out_kernel)[grid](
        hidden,
        mtp_hidden,
        tokens,
        norm_weight,
        fc1_weight,
        fc2_weight,
        groups,
        confidence,
        batch,
        steps,
        h,
        threshold,
        pad_id,
        eps,
        IEEE=dot_in_float32(hidden.dtype),
        **blocks,
    )
    return groups, confidence


if triton_interpreting():
    group_out.register_fake(_group_out_fake)

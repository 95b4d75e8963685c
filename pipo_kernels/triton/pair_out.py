"""Triton kernel of pipo::pair_out: one program per block of rows computes RMSNorm over the 2H
features of [hidden; mtp_hidden], then fc1 in tiles of output neurons (tl.dot, float32
accumulation), SiLU, the fc2 dot product, sigmoid and the threshold gate. The [B, H] activation
stays in registers, one tile at a time."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._backend import triton_interpreting
from ..pair_out import _pair_out_fake, check_pair_out_args
from ._common import dot_in_float32, register


@triton.jit
def _pair_out_kernel(
    hidden_ptr,
    mtp_ptr,
    token1_ptr,
    token2_ptr,
    norm_ptr,
    fc1_ptr,
    fc2_ptr,
    pairs_ptr,
    conf_ptr,
    B,
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
    # Sum of squares over both halves, in float32.
    ss = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        msk = row_ok[:, None] & (kk < H)[None, :]
        a = tl.load(hidden_ptr + rows64[:, None] * H + kk[None, :], mask=msk, other=0.0)
        b = tl.load(mtp_ptr + rows64[:, None] * H + kk[None, :], mask=msk, other=0.0)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        ss += tl.sum(a * a, axis=1) + tl.sum(b * b, axis=1)
    rstd = 1.0 / tl.sqrt(ss / (2 * H) + eps)
    logit = tl.zeros([BLOCK_B], dtype=tl.float32)
    for n0 in range(0, H, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        n_ok = nn < H
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        for half in range(2):
            src = hidden_ptr if half == 0 else mtp_ptr
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                k_ok = kk < H
                x = tl.load(
                    src + rows64[:, None] * H + kk[None, :],
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
                    acc += tl.dot(
                        xn.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee"
                    )
                else:
                    acc += tl.dot(xn, tl.trans(w))
        act = acc / (1.0 + tl.exp(-acc))
        w2 = tl.load(fc2_ptr + nn, mask=n_ok, other=0.0).to(tl.float32)
        logit += tl.sum(act * w2[None, :], axis=1)
    conf = 1.0 / (1.0 + tl.exp(-logit))
    t1 = tl.load(token1_ptr + rows, mask=row_ok, other=0)
    t2 = tl.load(token2_ptr + rows, mask=row_ok, other=0)
    commit = (threshold < 0) | ((threshold < 1) & (conf >= threshold))
    tl.store(conf_ptr + rows, conf, mask=row_ok)
    tl.store(pairs_ptr + rows64 * 2, t1, mask=row_ok)
    tl.store(pairs_ptr + rows64 * 2 + 1, tl.where(commit, t2, pad_id), mask=row_ok)


@register("pipo::pair_out_triton", mutates_args=())
def pair_out(
    hidden: torch.Tensor,
    mtp_hidden: torch.Tensor,
    token1: torch.Tensor,
    token2: torch.Tensor,
    norm_weight: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc2_weight: torch.Tensor,
    threshold: float,
    pad_id: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight, fc2_weight)
    batch, h = hidden.shape
    pairs = torch.empty(batch, 2, dtype=torch.int64, device=hidden.device)
    confidence = torch.empty(batch, dtype=torch.float32, device=hidden.device)
    if batch == 0:
        return pairs, confidence
    block_b = 16
    wrap_triton(_pair_out_kernel)[(triton.cdiv(batch, block_b),)](
        hidden,
        mtp_hidden,
        token1,
        token2,
        norm_weight,
        fc1_weight,
        fc2_weight,
        pairs,
        confidence,
        batch,
        h,
        threshold,
        pad_id,
        eps,
        IEEE=dot_in_float32(hidden.dtype),
        BLOCK_B=block_b,
        BLOCK_N=64,
        BLOCK_K=64,
    )
    return pairs, confidence


if triton_interpreting():
    pair_out.register_fake(_pair_out_fake)

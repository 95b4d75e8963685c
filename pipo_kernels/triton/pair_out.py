"""Triton kernel of pipo::pair_out: group_out's gate body (triton/group_out.py) with one MTP
step, reading token 1 and token 2 from their own [B] tensors."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._backend import triton_interpreting
from ..pair_out import _pair_out_fake, check_pair_out_args
from ._common import dot_in_float32, register
from .group_out import _group_gate, launch_config


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
    # mtp_hidden [B, H] is [B, 1, H]; pairs [B, 2] is groups [B, 1 + 1]; confidence [B] is [B, 1].
    _group_gate(
        hidden_ptr,
        mtp_ptr,
        token1_ptr,
        token2_ptr,
        1,
        norm_ptr,
        fc1_ptr,
        fc2_ptr,
        pairs_ptr,
        conf_ptr,
        B,
        1,
        H,
        threshold,
        pad_id,
        eps,
        IEEE,
        BLOCK_B,
        BLOCK_N,
        BLOCK_K,
    )


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
    grid, blocks = launch_config(batch)
    wrap_triton(_pair_out_kernel)[grid](
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
        **blocks,
    )
    return pairs, confidence


if triton_interpreting():
    pair_out.register_fake(_pair_out_fake)

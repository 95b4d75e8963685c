"""Triton kernel of pipo::qk_norm_rope_append: one program per (token, head) over the q heads and
then the k heads. A q program normalises, rotates and writes its head back in place; a k program
writes the rotated head and the matching v head to the token's cache slot."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._checks import should_check_values
from ..fused import _qk_norm_rope_append_fake, check_qk_rope_args, check_qk_rope_values
from ..kv_cache import num_slots
from ._common import register


@triton.jit
def _norm_rope_head(
    src,
    dst,
    w_ptr,
    cs_ptr,
    write,
    eps,
    D: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_T: tl.constexpr,
    HAS_W: tl.constexpr,
):
    dt = src.dtype.element_ty
    i = tl.arange(0, BLOCK_H)
    m = i < HALF
    j = 2 * HALF + tl.arange(0, BLOCK_T)  # channels past rot_dim pass through
    mt = j < D
    x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + i, mask=m, other=0.0).to(tl.float32)
    x3 = tl.load(src + j, mask=mt, other=0.0).to(tl.float32)
    if HAS_W:
        ss = tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0) + tl.sum(x3 * x3, axis=0)
        inv = 1.0 / tl.sqrt(ss / D + eps)
        w1 = tl.load(w_ptr + i, mask=m, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + HALF + i, mask=m, other=0.0).to(tl.float32)
        w3 = tl.load(w_ptr + j, mask=mt, other=0.0).to(tl.float32)
        # Rounded as the model's RMSNorm: normalised row to the dtype, then times the weight.
        x1 = ((x1 * inv).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
        x2 = ((x2 * inv).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
        x3 = ((x3 * inv).to(dt).to(tl.float32) * w3).to(dt).to(tl.float32)
    c = tl.load(cs_ptr + i, mask=m & write, other=1.0)
    s = tl.load(cs_ptr + HALF + i, mask=m & write, other=0.0)
    tl.store(dst + i, (x1 * c - x2 * s).to(dt), mask=m & write)
    tl.store(dst + HALF + i, (x2 * c + x1 * s).to(dt), mask=m & write)
    tl.store(dst + j, x3.to(dt), mask=mt & write)


@triton.jit
def _qk_norm_rope_append_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    wq_ptr,
    wk_ptr,
    table_ptr,
    pos_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    q_stride,
    k_stride,
    v_stride,
    q_heads,
    kv_heads,
    max_pos,
    num_slots,
    eps,
    D: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_WQ: tl.constexpr,
    HAS_WK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + t)
    ok = (pos >= 0) & (pos < max_pos)  # out-of-range positions are skipped, never followed
    cs_ptr = table_ptr + tl.where(ok, pos, 0) * (2 * HALF)
    if h < q_heads:
        row = q_ptr + t * q_stride + h * D
        _norm_rope_head(row, row, wq_ptr, cs_ptr, ok, eps, D, HALF, BLOCK_H, BLOCK_T, HAS_WQ)
    else:
        kh = h - q_heads
        slot = tl.load(slot_ptr + t)
        write = ok & (slot >= 0) & (slot < num_slots)
        dst = slot * (kv_heads * D) + kh * D
        src = k_ptr + t * k_stride + kh * D
        _norm_rope_head(
            src, k_cache_ptr + dst, wk_ptr, cs_ptr, write, eps, D, HALF, BLOCK_H, BLOCK_T, HAS_WK
        )
        offs = tl.arange(0, BLOCK_D)
        mask = (offs < D) & write
        v = tl.load(v_ptr + t * v_stride + kh * D + offs, mask=mask)
        tl.store(v_cache_ptr + dst + offs, v, mask=mask)


@register("pipo::qk_norm_rope_append_triton", mutates_args={"q", "k_cache", "v_cache"})
def qk_norm_rope_append(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    eps: float,
) -> None:
    args = (q, k, v, q_norm_weight, k_norm_weight, cos_sin_cache, positions)
    check_qk_rope_args(*args, k_cache, v_cache, slot_mapping)
    if should_check_values(positions):
        check_qk_rope_values(positions, cos_sin_cache, slot_mapping, k_cache)
    n, q_heads = q.shape[0], q.shape[1]
    kv_heads, d = k_cache.shape[2], k_cache.shape[3]
    if n == 0:
        return
    half = cos_sin_cache.shape[1] // 2
    wrap_triton(_qk_norm_rope_append_kernel)[(n, q_heads + kv_heads)](
        q,
        k,
        v,
        q if q_norm_weight is None else q_norm_weight,  # unread placeholder when None
        q if k_norm_weight is None else k_norm_weight,
        cos_sin_cache,
        positions,
        k_cache,
        v_cache,
        slot_mapping,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        q_heads,
        kv_heads,
        cos_sin_cache.shape[0],
        num_slots(k_cache),
        eps,
        D=d,
        HALF=half,
        BLOCK_H=triton.next_power_of_2(half),
        BLOCK_T=triton.next_power_of_2(max(d - 2 * half, 1)),
        BLOCK_D=triton.next_power_of_2(d),
        HAS_WQ=q_norm_weight is not None,
        HAS_WK=k_norm_weight is not None,
    )


qk_norm_rope_append.register_fake(_qk_norm_rope_append_fake)

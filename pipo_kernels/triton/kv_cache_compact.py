"""Triton kernels of pipo::kv_cache_compact: a gather of every source row into a workspace, then a
scatter to the destinations in a second launch, so overlapping moves read before they write."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import should_check_values
from ..kv_cache import _kv_cache_compact_fake, check_compact_args, check_compact_values, num_slots


@triton.jit
def _kv_cache_compact_kernel(
    k_cache_ptr,
    v_cache_ptr,
    src_ptr,
    dst_ptr,
    work_ptr,
    num_slots,
    row,
    SCATTER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    src = tl.load(src_ptr + m)
    dst = tl.load(dst_ptr + m)
    valid = (src >= 0) & (src < num_slots) & (dst >= 0) & (dst < num_slots)
    for start in range(0, row, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = (offs < row) & valid
        work = work_ptr + m * 2 * row + offs
        if SCATTER:
            tl.store(k_cache_ptr + dst * row + offs, tl.load(work, mask=mask), mask=mask)
            tl.store(v_cache_ptr + dst * row + offs, tl.load(work + row, mask=mask), mask=mask)
        else:
            tl.store(work, tl.load(k_cache_ptr + src * row + offs, mask=mask), mask=mask)
            tl.store(work + row, tl.load(v_cache_ptr + src * row + offs, mask=mask), mask=mask)


@triton_op("pipo::kv_cache_compact_triton", mutates_args={"k_cache", "v_cache"})
def kv_cache_compact(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
) -> None:
    check_compact_args(k_cache, v_cache, src_slots, dst_slots)
    n_slots = num_slots(k_cache)
    if should_check_values(src_slots):
        check_compact_values(src_slots, dst_slots, n_slots)
    moves = src_slots.shape[0]
    if moves == 0:
        return
    row = k_cache.shape[2] * k_cache.shape[3]
    work = torch.empty(moves * 2 * row, dtype=k_cache.dtype, device=k_cache.device)
    block = min(triton.next_power_of_2(row), 2048)
    for scatter in (False, True):
        wrap_triton(_kv_cache_compact_kernel)[(moves,)](
            k_cache,
            v_cache,
            src_slots,
            dst_slots,
            work,
            n_slots,
            row,
            SCATTER=scatter,
            BLOCK=block,
        )


# Shape-only fake: without it, tracing with TRITON_INTERPRET=1 would run the interpreter on fake tensors.
kv_cache_compact.register_fake(_kv_cache_compact_fake)

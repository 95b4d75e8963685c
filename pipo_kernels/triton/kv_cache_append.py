"""Triton kernel of pipo::kv_cache_append: one program per token copies its K and V rows."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import should_check_values
from ..kv_cache import _kv_cache_append_fake, check_append_args, check_slot_values, num_slots


@triton.jit
def _kv_cache_append_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    key_stride,
    value_stride,
    num_slots,
    row,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token)
    valid = (slot >= 0) & (slot < num_slots)
    for start in range(0, row, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = (offs < row) & valid
        k = tl.load(key_ptr + token * key_stride + offs, mask=mask)
        v = tl.load(value_ptr + token * value_stride + offs, mask=mask)
        tl.store(k_cache_ptr + slot * row + offs, k, mask=mask)
        tl.store(v_cache_ptr + slot * row + offs, v, mask=mask)


@triton_op("pipo::kv_cache_append_triton", mutates_args={"k_cache", "v_cache"})
def kv_cache_append(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    check_append_args(key, value, k_cache, v_cache, slot_mapping)
    n_slots = num_slots(k_cache)
    if should_check_values(slot_mapping):
        check_slot_values(slot_mapping, n_slots, "slot_mapping")
    n = key.shape[0]
    if n == 0:
        return
    row = k_cache.shape[2] * k_cache.shape[3]
    block = min(triton.next_power_of_2(row), 2048)
    wrap_triton(_kv_cache_append_kernel)[(n,)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        value.stride(0),
        n_slots,
        row,
        BLOCK=block,
    )


# Shape-only fake: without it, tracing with TRITON_INTERPRET=1 would run the interpreter on fake tensors.
kv_cache_append.register_fake(_kv_cache_append_fake)

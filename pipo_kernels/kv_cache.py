"""KV-cache append and compaction (docs/ops.md §1): public wrappers and fake kernels."""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import (
    check_contiguous,
    check_dim,
    check_float,
    check_index,
    check_like,
    check_size,
    fail,
    should_check_values,
)

__all__ = ["kv_cache_append", "kv_cache_compact"]


def _check_caches(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    check_dim(k_cache, 4, "k_cache")
    check_float(k_cache, "k_cache")
    check_contiguous(k_cache, "k_cache")
    if v_cache.shape != k_cache.shape:
        fail("v_cache", f"the shape of k_cache {tuple(k_cache.shape)}", tuple(v_cache.shape))
    check_like(v_cache, k_cache, "v_cache", "k_cache")
    check_contiguous(v_cache, "v_cache")
    if v_cache is k_cache:
        raise ValueError("v_cache: must be a different tensor from k_cache")


def check_append_args(key, value, k_cache, v_cache, slot_mapping) -> None:
    """Shape / dtype / device checks of kv_cache_append (no index values: see check_slot_values)."""
    _check_caches(k_cache, v_cache)
    heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    for t, name in ((key, "key"), (value, "value")):
        check_dim(t, 3, name)
        check_size(t, 1, heads, name, "num_kv_heads of the cache")
        check_size(t, 2, head_dim, name, "head_dim of the cache")
        check_like(t, k_cache, name, "k_cache")
        if t.shape[0] > 1 and t.stride(0) < heads * head_dim:
            fail(name, "non-overlapping token rows", f"stride(0) = {t.stride(0)}")
        if t.stride(2) != 1 or (heads > 1 and t.stride(1) != head_dim):
            fail(
                name,
                "each token's [num_kv_heads, head_dim] block contiguous",
                f"strides {t.stride()}",
            )
    check_size(value, 0, key.shape[0], "value", "num_tokens of key")
    check_index(slot_mapping, 1, torch.int64, "slot_mapping")
    if slot_mapping.device != k_cache.device:
        fail("slot_mapping", f"the device of k_cache ({k_cache.device})", slot_mapping.device)
    check_size(slot_mapping, 0, key.shape[0], "slot_mapping", "num_tokens of key")


def check_compact_args(k_cache, v_cache, src_slots, dst_slots) -> None:
    _check_caches(k_cache, v_cache)
    for t, name in ((src_slots, "src_slots"), (dst_slots, "dst_slots")):
        check_index(t, 1, torch.int64, name)
        if t.device != k_cache.device:
            fail(name, f"the device of k_cache ({k_cache.device})", t.device)
    check_size(dst_slots, 0, src_slots.shape[0], "dst_slots", "length of src_slots")


def num_slots(cache: torch.Tensor) -> int:
    return cache.shape[0] * cache.shape[1]


def check_slot_values(slots: torch.Tensor, n_slots: int, name: str) -> None:
    if slots.numel() and int(slots.max()) >= n_slots:
        raise ValueError(
            f"{name}: slot {int(slots.max())} is out of range for a cache of {n_slots} slots "
            "(num_pages * page_size)"
        )


def check_compact_values(src: torch.Tensor, dst: torch.Tensor, n_slots: int) -> None:
    check_slot_values(src, n_slots, "src_slots")
    check_slot_values(dst, n_slots, "dst_slots")
    live = dst[(src >= 0) & (dst >= 0)]
    if live.numel() != live.unique().numel():
        raise ValueError("dst_slots: destinations must be distinct, found a repeated slot")


def _kv_cache_append_fake(key, value, k_cache, v_cache, slot_mapping) -> None:
    check_append_args(key, value, k_cache, v_cache, slot_mapping)


def _kv_cache_compact_fake(k_cache, v_cache, src_slots, dst_slots) -> None:
    check_compact_args(k_cache, v_cache, src_slots, dst_slots)


if _backend.has_op("kv_cache_append"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::kv_cache_append")(_kv_cache_append_fake)
    torch.library.register_fake("pipo::kv_cache_compact")(_kv_cache_compact_fake)


def kv_cache_append(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    backend: str | None = None,
) -> None:
    """Write new keys and values into a paged KV cache, in place.

    Args:
        key, value: [N, num_kv_heads, head_dim], the cache's dtype (float32 / float16 / bfloat16).
            Token rows may be strided (e.g. views into a fused QKV output); each token's
            [num_kv_heads, head_dim] block must be contiguous.
        k_cache, v_cache: [num_pages, page_size, num_kv_heads, head_dim], contiguous; modified.
        slot_mapping: [N] int64. Token n goes to slot ``slot_mapping[n]`` =
            page * page_size + offset; a negative slot skips the token (padding).
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Out-of-range slots raise ValueError/RuntimeError on CPU; on a GPU they are skipped without a
    sync, and ``PIPO_VALIDATE=1`` turns the check on. Nothing is written when a check fails.

    Example::

        k_cache = torch.zeros(16, 32, 8, 128, dtype=torch.bfloat16, device="cuda")
        v_cache = torch.zeros_like(k_cache)
        key, value = torch.randn(2, 3, 8, 128, dtype=torch.bfloat16, device="cuda")
        slots = torch.tensor([0, 1, -1], device="cuda")  # third token is padding
        pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots)
    """
    impl = _backend.resolve("kv_cache_append", k_cache.device, backend)
    if impl == "torch":
        check_append_args(key, value, k_cache, v_cache, slot_mapping)
        if should_check_values(slot_mapping, sync_ok=True):
            check_slot_values(slot_mapping, num_slots(k_cache), "slot_mapping")
        reference.kv_cache_append(key, value, k_cache, v_cache, slot_mapping)
    elif impl == "triton":
        torch.ops.pipo.kv_cache_append_triton(key, value, k_cache, v_cache, slot_mapping)
    else:
        torch.ops.pipo.kv_cache_append(key, value, k_cache, v_cache, slot_mapping)


def kv_cache_compact(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
    *,
    backend: str | None = None,
) -> None:
    """Move cache rows: ``cache[dst_slots[m]] = cache[src_slots[m]]`` for K and V, in place.

    Every source is read before any destination is written, so the two sets may overlap (moving
    the accepted nodes of a draft tree down to consecutive positions is the typical use).

    Args:
        k_cache, v_cache: [num_pages, page_size, num_kv_heads, head_dim], contiguous; modified.
        src_slots, dst_slots: [M] int64 slots. A move with a negative source or destination is
            skipped. Destinations of the moves that are not skipped must be distinct.
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Example::

        # accepted tree nodes at positions 10, 12, 15 move to 10, 11, 12 (page_size 16, page 3)
        src = torch.tensor([58, 60, 63], device="cuda")
        dst = torch.tensor([58, 59, 60], device="cuda")
        pipo_kernels.kv_cache_compact(k_cache, v_cache, src, dst)
    """
    impl = _backend.resolve("kv_cache_compact", k_cache.device, backend)
    if impl == "torch":
        check_compact_args(k_cache, v_cache, src_slots, dst_slots)
        if should_check_values(src_slots, sync_ok=True):
            check_compact_values(src_slots, dst_slots, num_slots(k_cache))
        reference.kv_cache_compact(k_cache, v_cache, src_slots, dst_slots)
    elif impl == "triton":
        torch.ops.pipo.kv_cache_compact_triton(k_cache, v_cache, src_slots, dst_slots)
    else:
        torch.ops.pipo.kv_cache_compact(k_cache, v_cache, src_slots, dst_slots)

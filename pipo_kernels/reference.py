"""Pure-PyTorch references of every op (docs/ops.md). Tests compare each kernel with these, and
the "torch" backend runs them. They favour clarity over speed, and do not check arguments."""

from __future__ import annotations

import torch

__all__ = ["kv_cache_append", "kv_cache_compact"]


def _rows(cache: torch.Tensor) -> torch.Tensor:
    """[num_pages, page_size, Hkv, D] -> [num_slots, Hkv * D] view."""
    return cache.view(cache.shape[0] * cache.shape[1], cache.shape[2] * cache.shape[3])


def kv_cache_append(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """cache[slot_mapping[n]] = key[n] / value[n] for every n with slot_mapping[n] >= 0."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    _rows(k_cache)[slots] = key[keep].flatten(1)
    _rows(v_cache)[slots] = value[keep].flatten(1)


def kv_cache_compact(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
) -> None:
    """cache[dst[m]] = cache[src[m]] for all m at once (all sources read first); moves with a
    negative source or destination are skipped."""
    keep = (src_slots >= 0) & (dst_slots >= 0)
    src, dst = src_slots[keep], dst_slots[keep]
    for cache in (k_cache, v_cache):
        rows = _rows(cache)
        rows[dst] = rows[src].clone()

"""Pure-PyTorch references of every op (docs/ops.md). Tests compare each kernel with these, and
the "torch" backend runs them. They favour clarity over speed, and do not check arguments."""

from __future__ import annotations

import torch

__all__ = ["fold_pairs", "kv_cache_append", "kv_cache_compact", "rms_norm", "unfold_input"]


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


def fold_pairs(
    pair_ids: torch.Tensor,
    embedding: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """act(weight @ concat(embedding[pair_ids[n, 0]], embedding[pair_ids[n, 1]]) + bias), computed
    in float32 (float64 inputs stay float64) and returned in the embedding's dtype."""
    acc = torch.float64 if embedding.dtype == torch.float64 else torch.float32
    x = embedding[pair_ids.long()].to(acc).flatten(1)  # [N, 2H]
    y = torch.nn.functional.linear(x, weight.to(acc), None if bias is None else bias.to(acc))
    if activation == "silu":
        y = torch.nn.functional.silu(y)
    return y.to(embedding.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * weight, in x's (float32 or float64) dtype."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def unfold_input(
    token_ids: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    embed_norm_weight: torch.Tensor,
    hidden_norm_weight: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """weight @ concat(rmsnorm(embedding[token_ids[n]]) * embed_norm_weight,
    rmsnorm(hidden[n]) * hidden_norm_weight), computed in float32 (float64 stays float64; the
    normalised halves are not rounded to the input dtype) and returned in the embedding's dtype."""
    acc = torch.float64 if embedding.dtype == torch.float64 else torch.float32
    e = rms_norm(embedding[token_ids.long()].to(acc), embed_norm_weight, eps)
    h = rms_norm(hidden.to(acc), hidden_norm_weight, eps)
    y = torch.nn.functional.linear(torch.cat([e, h], dim=-1), weight.to(acc))
    return y.to(embedding.dtype)

"""Pure-PyTorch references of every op (docs/ops.md). Tests compare each kernel with these, and
the "torch" backend runs them. They favour clarity over speed, and do not check arguments."""

from __future__ import annotations

import torch

__all__ = ["kv_cache_append", "kv_cache_compact", "paged_attention"]


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


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` logical positions of one sequence: [length, Hkv, D], read through its
    block-table row ([max_pages] int32)."""
    page_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    slots = block_table_row.long()[pos // page_size] * page_size + pos % page_size
    return cache.reshape(-1, cache.shape[2], cache.shape[3])[slots]


def attention_mask(
    q_len: int, kv_len: int, tree_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """[q_len, kv_len] bool: which cached positions each of a sequence's queries sees. The queries
    are the last q_len positions; `tree_mask` is that sequence's [q_len, M] slice (or None: causal)."""
    prefix = kv_len - q_len
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if tree_mask is None:
        block = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
    else:
        block = tree_mask[:, :q_len].bool()
    mask[:, prefix:] = block
    return mask


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    kv_lens: torch.Tensor,
    q_indptr: torch.Tensor,
    tree_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    return_lse: bool = False,
):
    """Dense attention of each sequence's queries over its gathered KV with an explicit mask.

    Computes in float32, or float64 when the inputs are float64 (the tests' precise reference).
    A query that sees no position gets output 0 and log-sum-exp -inf. Returns out [Nq, Hq, D] in
    q's dtype, and lse [Nq, Hq] (natural log of the summed exp of the scaled scores) when
    return_lse is set.
    """
    n_q, n_heads, head_dim = q.shape
    group = n_heads // k_cache.shape[2]
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    acc = torch.promote_types(q.dtype, torch.float32)
    out = torch.zeros(n_q, n_heads, head_dim, dtype=acc, device=q.device)
    lse = torch.full((n_q, n_heads), float("-inf"), dtype=acc, device=q.device)
    indptr = q_indptr.tolist()
    for b, kv_len in enumerate(kv_lens.tolist()):
        start, end = indptr[b], indptr[b + 1]
        if end == start:
            continue
        k = gather_kv(k_cache, block_table[b], kv_len).to(acc).repeat_interleave(group, dim=1)
        v = gather_kv(v_cache, block_table[b], kv_len).to(acc).repeat_interleave(group, dim=1)
        rows = None if tree_mask is None else tree_mask[start:end]
        mask = attention_mask(end - start, kv_len, rows, q.device)
        scores = torch.einsum("qhd,khd->hqk", q[start:end].to(acc), k) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [H, q_len]; -inf where nothing is seen
        probs = torch.exp(scores - row_lse.clamp_min(torch.finfo(acc).min).unsqueeze(-1))
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v)
        lse[start:end] = row_lse.transpose(0, 1)
    out = out.to(q.dtype)
    return (out, lse.to(torch.promote_types(torch.float32, acc))) if return_lse else out

"""Pure-PyTorch references of every op (docs/ops.md). Tests compare each kernel with these, and
the "torch" backend runs them. They favour clarity over speed, and do not check arguments."""

from __future__ import annotations

import torch

__all__ = [
    "gumbel_noise",
    "kv_cache_append",
    "kv_cache_compact",
    "pair_out",
    "rng_keys",
    "sample_tokens",
]


def _rows(cache: torch.Tensor) -> torch.Tensor:
    """[num_pages, page_size, Hkv, D] -> [num_slots, Hkv * D] view."""
    return cache.view(cache.shape[0] * cache.shape[1], -1)


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
    _rows(k_cache)[slots] = key[keep].reshape(slots.shape[0], -1)
    _rows(v_cache)[slots] = value[keep].reshape(slots.shape[0], -1)


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


# ---------------------------------------------------------------------------------------------
# §3 Pair-out decoding: sample_tokens and pair_out.
# ---------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32) without int64 overflow: c is split in halves."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit integer finaliser shared by every backend (a bijection on [0, 2**32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def rng_keys(seeds: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 32-bit keys (k0, k1) of each row, as int64 tensors [B], from int64 seeds/offsets."""
    seeds, offsets = seeds.to(torch.int64), offsets.to(torch.int64)
    a = _mix32((seeds & _MASK32) ^ 0x9E3779B9)
    a = _mix32(a ^ ((seeds >> 32) & _MASK32))
    a = _mix32(a ^ (offsets & _MASK32))
    a = _mix32(a ^ ((offsets >> 32) & _MASK32))
    return a, _mix32(a ^ 0x85EBCA6B)


def gumbel_noise(seeds: torch.Tensor, offsets: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The Gumbel noise every backend adds to token `ids` of each row: float32 [B, N] for ids
    [B, N] (any integer dtype) and seeds / offsets [B] int64.

    h = mix32(mix32((id + k0) mod 2**32) ^ k1), u = (2 * (h >> 9) + 1) * 2**-24 (exactly
    representable in float32, in [2**-24, 1 - 2**-24]), noise = -log(-log(u)) in float32.
    """
    k0, k1 = rng_keys(seeds, offsets)
    h = _mix32(_mix32((ids.to(torch.int64) + k0[:, None]) & _MASK32) ^ k1[:, None])
    u = (2 * (h >> 9) + 1).to(torch.float32) * 2.0**-24
    return -torch.log(-torch.log(u))


def _seen_mask(seen: torch.Tensor | None, batch: int, vocab: int, device) -> torch.Tensor:
    """Bit v of seen[b] as a bool [B, V] tensor (all False when seen is None)."""
    if seen is None:
        return torch.zeros(batch, vocab, dtype=torch.bool, device=device)
    v = torch.arange(vocab, device=device)
    words = seen.to(torch.int64)[:, v // 32]
    return ((words >> (v % 32)) & 1).bool()


def sample_tokens(
    hidden: torch.Tensor,
    lm_head: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    presence_penalty: torch.Tensor,
    seen: torch.Tensor | None,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    num_candidates: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of pipo::sample_tokens; pipo_kernels.sampling.sample_tokens documents the
    semantics. Computes in float64 when hidden is float64, else in float32; materialises [B, V]."""
    cdt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    batch, vocab = hidden.shape[0], lm_head.shape[0]
    dev = hidden.device
    logits = hidden.to(cdt) @ lm_head.to(cdt).T
    pen = presence_penalty.to(cdt)[:, None]
    logits = torch.where(_seen_mask(seen, batch, vocab, dev), logits - pen, logits)
    greedy = temperature <= 0
    t_eff = torch.where(greedy, torch.ones_like(temperature), temperature).to(cdt)
    z = logits / t_eff[:, None]
    # Stable sort: equal values keep ascending ids, the tie order every backend uses.
    sorted_z, order = torch.sort(z, dim=1, descending=True, stable=True)
    lse = torch.logsumexp(z, dim=1)
    rank = torch.arange(vocab, device=dev)[None, :]
    k_eff = torch.where(top_k > 0, top_k.to(torch.int64).clamp(max=vocab), vocab)
    in_k = rank < k_eff[:, None]
    lse_k = torch.logsumexp(sorted_z.masked_fill(~in_k, -torch.inf), dim=1)
    probs = torch.exp(sorted_z - lse_k[:, None]) * in_k
    mass_before = torch.cumsum(probs, dim=1) - probs
    no_p = (top_p >= 1)[:, None]
    in_nucleus = in_k & (no_p | (mass_before < top_p.to(cdt)[:, None]))
    noise = gumbel_noise(seeds, offsets, order).to(cdt)
    score = (sorted_z + noise).masked_fill(~in_nucleus, -torch.inf)
    pos = score.argmax(dim=1)
    lse_n = torch.logsumexp(sorted_z.masked_fill(~in_nucleus, -torch.inf), dim=1)
    pos = torch.where(greedy, torch.zeros_like(pos), pos)
    chosen = sorted_z.gather(1, pos[:, None])[:, 0]
    tokens = order.gather(1, pos[:, None])[:, 0]
    logprob = chosen - torch.where(greedy, lse, lse_n)
    k = num_candidates
    cand_ids = order[:, :k].contiguous()
    cand_logprobs = (sorted_z[:, :k] - lse[:, None]).to(torch.float32)
    return tokens, logprob.to(torch.float32), cand_ids, cand_logprobs


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
    """Reference of pipo::pair_out: confidence = sigmoid(fc2 @ silu(fc1 @ (rmsnorm([hidden;
    mtp_hidden]) * norm_weight))) and the threshold gate. Float64 inputs compute in float64."""
    cdt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    x = torch.cat([hidden, mtp_hidden], dim=1).to(cdt)
    x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps) * norm_weight.to(cdt)
    act = torch.nn.functional.silu(x @ fc1_weight.to(cdt).T)
    confidence = torch.sigmoid(act @ fc2_weight.to(cdt).T)[:, 0]
    if threshold < 0:
        commit = torch.ones_like(confidence, dtype=torch.bool)
    elif threshold >= 1:
        commit = torch.zeros_like(confidence, dtype=torch.bool)
    else:
        commit = confidence >= threshold
    second = torch.where(commit, token2.to(torch.int64), torch.full_like(token2, pad_id))
    pairs = torch.stack([token1.to(torch.int64), second.to(torch.int64)], dim=1)
    return pairs, confidence.to(torch.float32)

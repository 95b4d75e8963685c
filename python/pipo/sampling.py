"""Plain-PyTorch sampling helpers: logit processing and seen-token bitmasks.

Tokens are drawn only by ``sample_tokens`` (kernels, or its pure-PyTorch backend on the reference
path). These helpers give the distribution it draws from, as spec mode's stochastic verification
needs it: presence penalty on the float32 logits, then temperature, then top-k, then top-p
(docs/ops.md §3).
"""

from __future__ import annotations

import torch

__all__ = [
    "filtered_probs",
    "pack_bitmask",
    "penalized_logits",
    "unpack_bitmask",
]


def pack_bitmask(mask: torch.Tensor) -> torch.Tensor:
    """bool [B, V] -> int32 [B, ceil(V / 32)]; bit v % 32 of word v // 32 is mask[:, v]."""
    b, v = mask.shape
    words = (v + 31) // 32
    padded = torch.zeros(b, words * 32, dtype=torch.int64, device=mask.device)
    padded[:, :v] = mask.to(torch.int64)
    shifts = torch.arange(32, device=mask.device, dtype=torch.int64)
    packed = (padded.view(b, words, 32) << shifts).sum(-1)
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed)  # two's complement int32
    return packed.to(torch.int32)


def unpack_bitmask(bits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [B, ceil(V / 32)] -> bool [B, V] (inverse of pack_bitmask)."""
    shifts = torch.arange(32, device=bits.device, dtype=torch.int64)
    words = bits.to(torch.int64) & 0xFFFFFFFF
    return ((words.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)[:, :vocab_size]


def penalized_logits(
    logits: torch.Tensor, presence_penalty: torch.Tensor, seen: torch.Tensor | None
) -> torch.Tensor:
    """float32 logits [B, V] minus presence_penalty [B] where seen (bool [B, V]) is set."""
    logits = logits.float()
    if seen is None:
        return logits
    return logits - seen.float() * presence_penalty.float().unsqueeze(1)


def filtered_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """The final sampling distribution, float32 [B, V], of (already penalised) logits [B, V].

    temperature 0 gives the one-hot of the argmax (ties → lowest id); otherwise softmax(logits/T)
    restricted to the top_k ids (0 = all; ties broken towards lower ids) and then to the smallest
    set of most likely ids whose mass reaches top_p, renormalised.
    """
    b, v = logits.shape
    greedy = temperature <= 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature).float()
    order = torch.sort(logits / t.unsqueeze(1), dim=1, descending=True, stable=True)
    ranks = torch.arange(v, device=logits.device).expand(b, v)
    k = torch.where(top_k > 0, top_k.long().clamp(max=v), torch.full_like(top_k.long(), v))
    sorted_logits = order.values.masked_fill(ranks >= k.unsqueeze(1), float("-inf"))
    sorted_probs = torch.softmax(sorted_logits, dim=1)
    mass_before = sorted_probs.cumsum(1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p.float().unsqueeze(1), 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(1, keepdim=True)
    probs = torch.zeros_like(sorted_probs).scatter_(1, order.indices, sorted_probs)
    one_hot = torch.zeros_like(probs).scatter_(1, order.indices[:, :1], 1.0)
    return torch.where(greedy.unsqueeze(1), one_hot, probs)

"""Pair-out decoding (docs/ops.md §3): the fused LM head + sampler ``sample_tokens`` (the
confidence gate ``pair_out`` is in pair_out.py). Public wrapper, argument checks and fake kernel.

Sampling semantics shared by every backend (C++ CPU, CUDA, Triton and the torch reference):

* logits[b, v] = lm_head[v] · hidden[b] in float32 (float64 in the reference when its inputs are
  float64), minus presence_penalty[b] where bit v of seen[b] is set (bit v lives in word v // 32,
  bit v % 32, of the int32 bitmask). z = logits / temperature (z = logits for greedy rows).
* temperature[b] == 0: greedy, the lowest id among the maxima of z; top_k / top_p are ignored.
* temperature[b] > 0: the allowed set is the top_k largest z (0, or any value >= V, = no limit),
  ordered by (z descending, id ascending); it is renormalised, and the nucleus is its smallest
  prefix whose mass reaches top_p (element i is in when the mass of the elements before it is
  < top_p; top_p = 1 = no limit). The token is a sample from softmax(z) over the nucleus.
* Randomness: Gumbel-max. token = argmax over the nucleus of z[v] + g[v], where g[v] is Gumbel
  noise from a counter-based hash of (seeds[b], offsets[b], v) (``reference.gumbel_noise``,
  ``csrc/include/pipo/rng.h``): the same inputs give the same token on every run and every
  backend (up to float rounding of near-ties); changing offsets[b] gives an independent draw.
  The uniform behind g takes 2**23 values, so the noise is truncated to [-2.81, 16.6]; this can
  change an outcome only when two noise values both reach the top of the range (a total-variation
  error far below 1e-3 even for flat 256k-token distributions).
* token_logprob: log-probability of the token under the final distribution (softmax of z over
  the nucleus). Greedy rows: log_softmax of the (penalised) logits at temperature 1, over the
  whole vocabulary (the final distribution of greedy is a point mass, which carries no
  information).
* num_candidates = k (0..64): cand_ids[b] are the k largest z (ties -> lower id), best first;
  cand_logprobs their log_softmax(z) over the whole vocabulary (temperature 1 for greedy rows), no
  top-k / top-p filtering. k = 0 returns [B, 0] tensors.

Fused path: tiles of the vocabulary keep a running max / sum of exponentials, their best
candidates (at most 64) and the greedy or Gumbel-max winner; a second stage merges tiles. The
[B, V] logits are never written for greedy, temperature-only and top_k in 1..64 rows (PIPO's
evaluation setting T=1, top-k 20, top-p 0.95, presence penalty 1.5 is on this path). Rows with
top_k > 64, or with top_k = 0 and top_p < 1, take an exact slower path: on CPU their logits are
recomputed and sorted when the 64 best candidates do not already hold the nucleus; on GPU
(CUDA / Triton) the first stage writes such rows' z to a [B, V] float32 workspace (allocated
for every call on GPU, written only for those rows) and a third stage finds the top-k and nucleus
thresholds exactly by bisection on the float order of z (ties at a threshold -> lower ids first).
"""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import (
    check_contiguous,
    check_dim,
    check_dtype,
    check_float,
    check_like,
    check_size,
    fail,
    should_check_values,
)

__all__ = ["MAX_CANDIDATES", "sample_tokens"]

MAX_CANDIDATES = 64  # kMaxCandidates in csrc/include/pipo/sampling_limits.h


def _check_row_param(t, batch, dtype, hidden, name) -> None:
    check_dim(t, 1, name)
    check_dtype(t, dtype, name)
    if t.device != hidden.device:
        fail(name, f"the device of hidden ({hidden.device})", t.device)
    check_size(t, 0, batch, name, "batch size of hidden")
    check_contiguous(t, name)


def check_sample_args(
    hidden, lm_head, temperature, top_k, top_p, presence_penalty, seen, seeds, offsets, k
) -> None:
    """Shape / dtype / device checks of sample_tokens (values: see check_sample_values)."""
    check_dim(hidden, 2, "hidden")
    check_float(hidden, "hidden")
    check_contiguous(hidden, "hidden")
    check_dim(lm_head, 2, "lm_head")
    check_like(lm_head, hidden, "lm_head", "hidden")
    check_contiguous(lm_head, "lm_head")
    check_size(lm_head, 1, hidden.shape[1], "lm_head", "hidden size of hidden")
    batch, vocab = hidden.shape[0], lm_head.shape[0]
    if not 0 < vocab < 2**31:
        fail("lm_head", "a vocabulary size in [1, 2**31)", vocab)
    _check_row_param(temperature, batch, torch.float32, hidden, "temperature")
    _check_row_param(top_k, batch, torch.int32, hidden, "top_k")
    _check_row_param(top_p, batch, torch.float32, hidden, "top_p")
    _check_row_param(presence_penalty, batch, torch.float32, hidden, "presence_penalty")
    _check_row_param(seeds, batch, torch.int64, hidden, "seeds")
    _check_row_param(offsets, batch, torch.int64, hidden, "offsets")
    if seen is not None:
        check_dim(seen, 2, "seen")
        check_dtype(seen, torch.int32, "seen")
        if seen.device != hidden.device:
            fail("seen", f"the device of hidden ({hidden.device})", seen.device)
        check_size(seen, 0, batch, "seen", "batch size of hidden")
        check_size(seen, 1, (vocab + 31) // 32, "seen", "ceil(V / 32) words of the bitmask")
        check_contiguous(seen, "seen")
    if not 0 <= k <= MAX_CANDIDATES:
        fail("num_candidates", f"a value in [0, {MAX_CANDIDATES}]", k)
    if k > vocab:
        fail("num_candidates", f"at most the vocabulary size {vocab} of lm_head", k)


def check_sample_values(temperature, top_k, top_p) -> None:
    """Range checks of the per-row parameters (a device-to-host sync on GPU)."""
    if temperature.numel() == 0:
        return
    if not bool(torch.isfinite(temperature).all()) or float(temperature.min()) < 0:
        fail("temperature", "finite values >= 0 (0 = greedy)", f"min {float(temperature.min())}")
    if int(top_k.min()) < 0:
        fail("top_k", "values >= 0 (0 = no limit)", f"min {int(top_k.min())}")
    if not bool(((top_p > 0) & (top_p <= 1)).all()):
        fail(
            "top_p",
            "values in (0, 1] (1 = no limit)",
            f"min {float(top_p.min())} and max {float(top_p.max())}",
        )


def sample_outputs(hidden: torch.Tensor, k: int):
    """Empty (tokens, token_logprob, cand_ids, cand_logprobs) for a batch of hidden."""
    batch, dev = hidden.shape[0], hidden.device
    return (
        torch.empty(batch, dtype=torch.int64, device=dev),
        torch.empty(batch, dtype=torch.float32, device=dev),
        torch.empty(batch, k, dtype=torch.int64, device=dev),
        torch.empty(batch, k, dtype=torch.float32, device=dev),
    )


def _sample_tokens_fake(
    hidden, lm_head, temperature, top_k, top_p, presence_penalty, seen, seeds, offsets, k=0
):
    check_sample_args(
        hidden, lm_head, temperature, top_k, top_p, presence_penalty, seen, seeds, offsets, k
    )
    return sample_outputs(hidden, k)


if _backend.has_op("sample_tokens"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::sample_tokens")(_sample_tokens_fake)


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
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LM head + sampler in one op: the next token of every row, without the [B, V] logits.

    The module docstring gives the exact semantics (greedy ties, top-k then top-p, Gumbel-max
    randomness, log-probabilities, the slower exact path).

    Args:
        hidden: [B, H] float32 / float16 / bfloat16, contiguous.
        lm_head: [V, H], hidden's dtype, contiguous.
        temperature: [B] float32, >= 0 (0 = greedy).
        top_k: [B] int32, >= 0 (0 = no limit).
        top_p: [B] float32 in (0, 1] (1 = no limit).
        presence_penalty: [B] float32, subtracted from the logits of the seen tokens.
        seen: [B, ceil(V / 32)] int32 bitmask of seen tokens (bit v % 32 of word v // 32), or
            None (no penalty).
        seeds, offsets: [B] int64; the counter of the random stream of each row.
        num_candidates: k in [0, 64]: also return the k most likely ids per row.
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        tokens [B] int64, token_logprob [B] float32, cand_ids [B, k] int64 (best first),
        cand_logprobs [B, k] float32.

    Bad shapes or dtypes raise; out-of-range values (temperature < 0, top_k < 0, top_p outside
    (0, 1]) raise on CPU, and on a GPU with ``PIPO_VALIDATE=1`` (the check needs a sync).

    Example::

        B, H, V = 4, 2560, 151936
        hidden = torch.randn(B, H, dtype=torch.bfloat16, device="cuda")
        lm_head = torch.randn(V, H, dtype=torch.bfloat16, device="cuda") * 0.02
        f = lambda x: torch.full((B,), x, device="cuda")
        seen = torch.zeros(B, (V + 31) // 32, dtype=torch.int32, device="cuda")
        tokens, logprob, _, _ = pipo_kernels.sample_tokens(
            hidden, lm_head, f(1.0), f(20).int(), f(0.95), f(1.5), seen,
            seeds=f(1234).long(), offsets=f(0).long())
    """
    impl = _backend.resolve("sample_tokens", hidden.device, backend)
    args = (hidden, lm_head, temperature, top_k, top_p, presence_penalty, seen, seeds, offsets)
    if impl == "torch":
        check_sample_args(*args, num_candidates)
        if should_check_values(temperature, sync_ok=True):
            check_sample_values(temperature, top_k, top_p)
        return reference.sample_tokens(*args, num_candidates)
    if impl == "triton":
        return torch.ops.pipo.sample_tokens_triton(*args, num_candidates)
    return torch.ops.pipo.sample_tokens(*args, num_candidates)

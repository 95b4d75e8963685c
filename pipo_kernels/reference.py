"""Pure-PyTorch references of every op (docs/ops.md). Tests compare each kernel with these, and
the "torch" backend runs them. They favour clarity over speed, and do not check arguments."""

from __future__ import annotations

import torch

__all__ = [
    "fold_pairs",
    "fused_add_rmsnorm",
    "group_out",
    "gumbel_noise",
    "kv_cache_append",
    "kv_cache_compact",
    "paged_attention",
    "pair_out",
    "qk_norm_rope_append",
    "rms_norm",
    "rng_keys",
    "sample_tokens",
    "unfold_input",
]


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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


# ---------------------------------------------------------------------------------------------
# Draft-tree verification (docs/ops.md §4b). Node indices are local to each sequence.

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """The splitmix64 finaliser: a bijection on 64-bit integers with full avalanche."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def verify_stream(seed: int, offset: int) -> int:
    """The 64-bit stream key of one sequence: mix64(mix64(seed) + offset), modulo 2**64."""
    return _mix64((_mix64(seed & _MASK64) + offset) & _MASK64)


def verify_uniform(key: int, step: int) -> float:
    """Uniform number `step` (0, 1, ...) of a stream: the top 24 bits of
    mix64(key + (step + 1) * golden) times 2**-24, so every float32 backend gets the same value."""
    h = _mix64((key + (step + 1) * _GOLDEN) & _MASK64)
    return (h >> 40) * 2.0**-24


def _tree_children(parents: list[int], n: int) -> list[list[int]]:
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[parents[i]].append(i)
    return children


def _verify_outputs(batch: int, max_depth: int):
    accept_len = torch.zeros(batch, dtype=torch.int32)
    accept_index = torch.full((batch, max_depth + 1), -1, dtype=torch.int32)
    bonus_token = torch.full((batch,), -1, dtype=torch.int64)
    return accept_len, accept_index, bonus_token


def verify_tree(
    draft_tokens: torch.Tensor,
    parents: torch.Tensor,
    q_indptr: torch.Tensor,
    target_tokens: torch.Tensor,
    max_depth: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy tree verification: node i (i > 0) is accepted when its parent is accepted and
    draft_tokens[i] == target_tokens[parent]; the deepest accepted node (lowest index on ties)
    ends the accepted path. Expects valid trees (parents[i] < i, depth <= max_depth)."""
    batch = q_indptr.shape[0] - 1
    accept_len, accept_index, bonus_token = _verify_outputs(batch, max_depth)
    indptr = q_indptr.tolist()
    for b in range(batch):
        start, n = indptr[b], indptr[b + 1] - indptr[b]
        if n <= 0:
            continue
        par = parents[start : start + n].tolist()
        draft = draft_tokens[start : start + n].tolist()
        target = target_tokens[start : start + n].tolist()
        accepted, depth = [True] + [False] * (n - 1), [0] * n
        best = 0
        for i in range(1, n):
            p = par[i]
            depth[i] = depth[p] + 1
            accepted[i] = accepted[p] and draft[i] == target[p]
            if accepted[i] and depth[i] > depth[best]:
                best = i
        path = [best]
        while path[-1] != 0:
            path.append(par[path[-1]])
        path.reverse()
        accept_len[b] = len(path) - 1
        accept_index[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        bonus_token[b] = target[best]
    dev = draft_tokens.device
    return accept_len.to(dev), accept_index.to(dev), bonus_token.to(dev)


def _residual(t: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """max(0, t - scale * q), rounded after the product as the kernels do (no fused multiply-add)."""
    return torch.clamp(t - scale * q, min=0.0)


def _mass(p: torch.Tensor) -> torch.Tensor:
    """Sum in float64 rounded to float32: close enough to exact that every backend, whatever its
    summation order, almost always gets the same float32 value."""
    return p.double().sum().float()


def verify_tree_stochastic(
    draft_tokens: torch.Tensor,
    parents: torch.Tensor,
    q_indptr: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    max_depth: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Speculative sampling on a draft tree (Leviathan et al. on chains, SpecInfer's multi-draft
    rule on branches), with the counter-based uniforms of `verify_uniform`.

    At node u the residual after j rejected children is max(0, t - S_j * q) with t =
    target_probs[u], q = draft_probs[u] and S_j the sum of the masses of the earlier residuals
    (S_0 = 0): the closed form of "p <- normalise(max(0, p - q))" that needs no [V] buffer. A
    child with token x is accepted when r * q[x] * m < max(0, t[x] - S * q[x]) (m = the
    residual's mass, r the next uniform), i.e. with probability min(1, p[x] / q[x]). The bonus
    token is the first v whose running (float64) sum of the residual exceeds r * m."""
    batch = q_indptr.shape[0] - 1
    vocab = draft_probs.shape[1]
    accept_len, accept_index, bonus_token = _verify_outputs(batch, max_depth)
    indptr = q_indptr.tolist()
    dprobs = draft_probs.detach().cpu().float()
    tprobs = target_probs.detach().cpu().float()
    for b in range(batch):
        start, n = indptr[b], indptr[b + 1] - indptr[b]
        if n <= 0:
            continue
        par = parents[start : start + n].tolist()
        draft = draft_tokens[start : start + n].tolist()
        children = _tree_children(par, n)
        key = verify_stream(int(seeds[b]), int(offsets[b]))
        step, u, path = 0, 0, [0]
        # All arithmetic is float32 0-d tensors so the rounding matches the kernels'.
        while True:
            t, q = tprobs[start + u], dprobs[start + u]
            scale = torch.zeros((), dtype=torch.float32)
            mass = _mass(t)
            nxt = -1
            for c in children[u] if len(path) <= max_depth else []:
                x = draft[c]
                if not 0 <= x < vocab:
                    continue
                r = torch.tensor(verify_uniform(key, step), dtype=torch.float32)
                step += 1
                if r * q[x] * mass < _residual(t[x], q[x], scale):
                    nxt = c
                    break
                new_mass = _mass(_residual(t, q, scale + mass))
                if new_mass > 0:
                    scale, mass = scale + mass, new_mass
            if nxt < 0:
                break
            u = nxt
            path.append(u)
        accept_len[b] = len(path) - 1
        accept_index[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        residual = _residual(tprobs[start + u], dprobs[start + u], scale)
        target = torch.tensor(verify_uniform(key, step), dtype=torch.float32) * mass
        hits = (torch.cumsum(residual.double(), 0) > target.double()).nonzero()
        positive = (residual > 0).nonzero()
        if hits.numel():
            bonus_token[b] = int(hits[0])
        elif positive.numel():
            bonus_token[b] = int(positive[-1])
    dev = draft_tokens.device
    return accept_len.to(dev), accept_index.to(dev), bonus_token.to(dev)


__all__ += ["verify_stream", "verify_tree", "verify_tree_stochastic", "verify_uniform"]


def fold_pairs(
    pair_ids: torch.Tensor,
    embedding: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """act(weight @ concat(embedding[pair_ids[n, 0]], ..., embedding[pair_ids[n, k-1]]) + bias)
    for pair_ids [N, k] (any k >= 1; weight [O, k*H]), computed in float32 (float64 inputs stay
    float64) and returned in the embedding's dtype."""
    acc = torch.float64 if embedding.dtype == torch.float64 else torch.float32
    x = embedding[pair_ids.long()].to(acc).flatten(1)  # [N, kH]
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


def group_out(
    hidden: torch.Tensor,
    mtp_hidden: torch.Tensor,
    tokens: torch.Tensor,
    norm_weight: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc2_weight: torch.Tensor,
    threshold: float,
    pad_id: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of pipo::group_out. hidden [B, H], mtp_hidden [B, J, H], tokens [B, 1+J].
    confidence[b, j] = sigmoid(fc2 @ silu(fc1 @ (rmsnorm([hidden[b]; mtp_hidden[b, j]]) *
    norm_weight))); token j+2 of a group is committed when token j+1 is and its step passes the
    gate (threshold < 0: always; threshold >= 1: never; else confidence >= threshold), so groups
    keep the longest passing prefix and PAD the rest. Float64 inputs compute in float64."""
    cdt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    steps = mtp_hidden.shape[1]
    x = torch.cat([hidden[:, None, :].expand_as(mtp_hidden), mtp_hidden], dim=2).to(cdt)
    x = x * torch.rsqrt(x.pow(2).mean(dim=2, keepdim=True) + eps) * norm_weight.to(cdt)
    act = torch.nn.functional.silu(x @ fc1_weight.to(cdt).T)  # [B, J, H]
    confidence = torch.sigmoid(act @ fc2_weight.to(cdt).T)[..., 0]  # [B, J]
    if threshold < 0:
        passed = torch.ones_like(confidence, dtype=torch.bool)
    elif threshold >= 1:
        passed = torch.zeros_like(confidence, dtype=torch.bool)
    else:
        passed = confidence >= threshold
    committed = passed.to(torch.int64).cumprod(dim=1).bool()  # the passing prefix
    tokens = tokens.to(torch.int64)
    rest = torch.where(
        committed, tokens[:, 1 : 1 + steps], torch.full_like(committed, pad_id, dtype=torch.int64)
    )
    groups = torch.cat([tokens[:, :1], rest], dim=1)
    return groups, confidence.to(torch.float32)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> None:
    """In place: ``residual += x``; ``x = rmsnorm(residual) * weight``.

    Rounded as the model's plain ``x = x + delta; RMSNorm(x)`` is: the sum is stored in the
    residual's dtype, the norm reads that stored value, the normalised row is rounded to the dtype
    before the weight multiplies it (Qwen3 / Llama RMSNorm). float64 inputs stay float64."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    r = (residual.to(acc) + x.to(acc)).to(residual.dtype)
    rf = r.to(acc)
    n = (rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    out = (n.to(acc) * weight.to(acc)).to(x.dtype)
    residual.copy_(r)
    x.copy_(out)


def _head_norm_rope(
    x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """x [N, heads, D]: optional per-head RMSNorm, then rotate-half RoPE on the first rot_dim =
    2 * cos.shape[-1] channels (the rest pass through), rounded to x's dtype after each step."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(acc)
    if weight is not None:
        n = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        y = (n.to(acc) * weight.to(acc)).to(x.dtype).to(acc)
    half = cos.shape[-1]
    c, s = cos.to(acc).unsqueeze(1), sin.to(acc).unsqueeze(1)
    x1, x2 = y[..., :half], y[..., half : 2 * half]
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, y[..., 2 * half :]], dim=-1)
    return out.to(x.dtype)


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
    """q/k-norm + RoPE + KV-cache append (docs/ops.md): q is rotated in place; the rotated k and
    the unchanged v go to the cache slots (negative slots skip the cache write, not the q update).
    cos_sin_cache [max_pos, rot_dim]: cos in the first rot_dim / 2 columns, sin in the rest."""
    half = cos_sin_cache.shape[1] // 2
    cs = cos_sin_cache[positions.long()]
    cos, sin = cs[:, :half], cs[:, half:]
    q.copy_(_head_norm_rope(q, q_norm_weight, cos, sin, eps))
    k_rot = _head_norm_rope(k, k_norm_weight, cos, sin, eps)
    kv_cache_append(k_rot, v, k_cache, v_cache, slot_mapping)

"""Plain-PyTorch stand-ins for pipo_kernels ops that have not landed yet (OPS.md §2-§4).

Each function has the exact OPS.md signature and semantics; ``pipo.ops`` calls one only while
``pipo_kernels`` lacks the op. They favour brevity over speed and are deleted once every op exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sampling import counter_generator, filtered_probs, penalized_logits, unpack_bitmask


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def fold_pairs(pair_ids, embedding, weight, bias=None, activation="none"):
    if activation not in ("none", "silu"):
        raise ValueError(f"activation: expected 'none' or 'silu', got {activation!r}")
    x = embedding[pair_ids.long()].flatten(1).float()  # [N, 2H], embedding of the first token first
    out = F.linear(x, weight.float(), None if bias is None else bias.float())
    return (F.silu(out) if activation == "silu" else out).to(embedding.dtype)


def unfold_input(token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight, eps):
    e = _rms(embedding[token_ids.long()], embed_norm_weight, eps)
    h = _rms(hidden, hidden_norm_weight, eps)
    return F.linear(torch.cat([e, h], -1), weight.float()).to(hidden.dtype)


def sample_tokens(
    hidden,
    lm_head,
    temperature,
    top_k,
    top_p,
    presence_penalty,
    seen,
    seeds,
    offsets,
    num_candidates=0,
):
    vocab = lm_head.shape[0]
    logits = hidden.float() @ lm_head.float().t()
    seen_mask = None if seen is None else unpack_bitmask(seen, vocab)
    logits = penalized_logits(logits, presence_penalty, seen_mask)
    probs = filtered_probs(logits, temperature, top_k, top_p)
    greedy = temperature <= 0
    tokens = torch.argmax(logits, dim=1)
    for b in torch.nonzero(~greedy).flatten().tolist():
        g = counter_generator(int(seeds[b]), int(offsets[b]))
        tokens[b] = torch.multinomial(probs[b].cpu(), 1, generator=g).to(tokens.device)[0]
    # Greedy rows: the final distribution is a point mass, so report the untempered log-prob.
    t = torch.where(greedy, torch.ones_like(temperature), temperature).float().unsqueeze(1)
    full_logprobs = torch.log_softmax(logits / t, dim=1)
    chosen = torch.where(greedy.unsqueeze(1), full_logprobs, probs.log())
    token_logprob = chosen.gather(1, tokens.unsqueeze(1)).squeeze(1)
    cand_logprobs, cand_ids = torch.topk(full_logprobs, num_candidates, dim=1)
    return tokens, token_logprob, cand_ids, cand_logprobs


def pair_out(
    hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight, fc2_weight, threshold, pad_id, eps
):
    x = _rms(torch.cat([hidden, mtp_hidden], -1), norm_weight, eps)
    confidence = torch.sigmoid(
        F.linear(F.silu(F.linear(x, fc1_weight.float())), fc2_weight.float())
    )
    confidence = confidence.squeeze(1)
    if threshold < 0:
        keep = torch.ones_like(confidence, dtype=torch.bool)
    elif threshold >= 1:
        keep = torch.zeros_like(confidence, dtype=torch.bool)
    else:
        keep = confidence >= threshold
    second = torch.where(keep, token2, torch.full_like(token2, pad_id))
    return torch.stack([token1, second], 1), confidence


def paged_attention(
    q,
    k_cache,
    v_cache,
    block_table,
    kv_lens,
    q_indptr,
    tree_mask=None,
    sm_scale=None,
    return_lse=False,
    num_splits=None,
):
    del num_splits  # a scheduling hint of the kernels; no effect on the result
    n_q, heads, dim = q.shape
    page_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    scale = dim**-0.5 if sm_scale is None else sm_scale
    out = torch.zeros_like(q)
    lse = torch.zeros(n_q, heads, dtype=torch.float32, device=q.device)
    for b in range(block_table.shape[0]):
        start, end, kv_len = int(q_indptr[b]), int(q_indptr[b + 1]), int(kv_lens[b])
        q_len = end - start
        if q_len == 0:
            continue
        pos = torch.arange(kv_len, device=q.device)
        slots = block_table[b].long()[pos // page_size] * page_size + pos % page_size
        k = k_cache.flatten(0, 1)[slots].float().repeat_interleave(heads // kv_heads, 1)
        v = v_cache.flatten(0, 1)[slots].float().repeat_interleave(heads // kv_heads, 1)
        prefix = kv_len - q_len
        visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device)
        if tree_mask is None:
            visible[:, prefix:] = torch.ones(q_len, q_len, device=q.device).tril().bool()
        else:
            visible[:, prefix:] = tree_mask[start:end, :q_len]
        scores = torch.einsum("qhd,khd->hqk", q[start:end].float(), k) * scale
        scores = scores.masked_fill(~visible, float("-inf"))
        lse[start:end] = torch.logsumexp(scores, -1).t()
        out[start:end] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v).to(q.dtype)
    return (out, lse) if return_lse else out


def _tree(parents, start, end):
    """Children lists (in node order) and depths of one sequence's tree."""
    children: list[list[int]] = [[] for _ in range(end - start)]
    depth = [0] * (end - start)
    for i in range(1, end - start):
        p = int(parents[start + i])
        children[p].append(i)
        depth[i] = depth[p] + 1
    return children, depth


def _outputs(batch, max_depth, device):
    return (
        torch.zeros(batch, dtype=torch.int32, device=device),
        torch.full((batch, max_depth + 1), -1, dtype=torch.int32, device=device),
        torch.zeros(batch, dtype=torch.int64, device=device),
    )


def verify_tree(draft_tokens, parents, q_indptr, target_tokens, max_depth):
    batch = q_indptr.shape[0] - 1
    accept_len, accept_index, bonus = _outputs(batch, max_depth, draft_tokens.device)
    for b in range(batch):
        start, end = int(q_indptr[b]), int(q_indptr[b + 1])
        _, depth = _tree(parents, start, end)
        accepted = [False] * (end - start)
        accepted[0] = True
        best = 0
        for i in range(1, end - start):  # parents precede children
            p = int(parents[start + i])
            accepted[i] = accepted[p] and int(draft_tokens[start + i]) == int(
                target_tokens[start + p]
            )
            if accepted[i] and depth[i] > depth[best]:
                best = i
        path = [best]
        while path[-1] != 0:
            path.append(int(parents[start + path[-1]]))
        path.reverse()
        accept_len[b] = len(path) - 1
        accept_index[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        bonus[b] = target_tokens[start + best]
    return accept_len, accept_index, bonus


def verify_tree_stochastic(
    draft_tokens, parents, q_indptr, draft_probs, target_probs, seeds, offsets, max_depth
):
    batch = q_indptr.shape[0] - 1
    accept_len, accept_index, bonus = _outputs(batch, max_depth, draft_tokens.device)
    for b in range(batch):
        start, end = int(q_indptr[b]), int(q_indptr[b + 1])
        children, _ = _tree(parents, start, end)
        g = counter_generator(int(seeds[b]), int(offsets[b]))
        node, path = 0, [0]
        p = target_probs[start].float().cpu()
        while True:
            q = draft_probs[start + node].float().cpu()
            nxt = None
            for c in children[node]:
                x = int(draft_tokens[start + c])
                ratio = 1.0 if q[x] <= 0 else min(1.0, float(p[x] / q[x]))
                if torch.rand((), generator=g).item() < ratio:
                    nxt = c
                    break
                residual = (p - q).clamp(min=0)
                p = residual / residual.sum() if residual.sum() > 0 else p
            if nxt is None:
                break
            node = nxt
            path.append(node)
            p = target_probs[start + node].float().cpu()
        accept_len[b] = len(path) - 1
        accept_index[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        bonus[b] = torch.multinomial(p, 1, generator=g).item()
    return accept_len, accept_index, bonus

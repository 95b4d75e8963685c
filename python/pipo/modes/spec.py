"""Mode "spec": verified speculative decoding (PIPO drafts, the AR model verifies).

The PIPO model drafts a tree (its top-k token1 candidates, each with its MTP token2, then
``draft_steps - 1`` more pairs on the best branch); the ARModel scores the whole tree in one pass
(paged_attention with a tree mask); verify_tree (greedy) or verify_tree_stochastic (sampling)
picks the accepted path and kv_cache_compact moves its K/V into place. The output has exactly the
AR model's distribution; greedy output equals the AR model's own greedy output.

Unlike modes ar and pipo, a round is driven from the host (variable-length catch-up, tree
construction and acceptance read back per round): it is neither device-resident nor captured.
"""

from __future__ import annotations

import torch

from .. import ops
from ..kv_cache import PagedKVCache
from ..model import AttnMeta, SamplingTensors
from ..sampling import pack_bitmask
from .base import Mode

__all__ = ["SpecMode"]


class SpecMode(Mode):
    """Host-driven rounds over a drafter (PIPOModel, ``cache``) and a verifier (ARModel,
    ``vcache``). The engine binds ``reserve(seq, cache, n) -> bool``, ``emit(seq, token) ->
    bool`` and ``stats`` before a run."""

    name = "spec"
    static = False

    def __init__(self, model, cache, verifier, vcache, *, use_kernels, draft_topk, draft_steps):
        super().__init__(model, cache, use_kernels=use_kernels, threshold=1.0)
        self.verifier, self.vcache = verifier, vcache
        self.draft_topk, self.draft_steps = draft_topk, draft_steps
        self.device = model.embed_tokens.weight.device
        self._reserve = self._emit = self.stats = None

    def caches(self) -> list[PagedKVCache]:
        return [self.cache, self.vcache]

    def prefill_need(self, seq) -> list[tuple[PagedKVCache, int]]:
        n = len(seq.prompt)
        return [(self.vcache, n - 1), (self.cache, (n + 1) // 2)]

    def _tensor(self, values, dtype) -> torch.Tensor:
        """Host values on the device, copied from pinned memory on CUDA."""
        pin = self.device.type == "cuda"
        return torch.tensor(values, dtype=dtype, pin_memory=pin).to(self.device, non_blocking=True)

    def _meta(
        self,
        cache: PagedKVCache,
        seqs: list,
        starts: list[int],
        lens: list[int],
        positions: list[int] | None = None,
        tree_mask: torch.Tensor | None = None,
    ) -> AttnMeta:
        """Sequence b writes lens[b] new entries at cache positions starts[b] … (RoPE positions
        = cache positions unless given, as for draft trees)."""
        slots: list[int] = []
        for s, st, n in zip(seqs, starts, lens, strict=True):
            slots += cache.slots(s.rid, st, st + n)
        if positions is None:
            positions = [p for st, n in zip(starts, lens, strict=True) for p in range(st, st + n)]
        indptr = [0]
        for n in lens:
            indptr.append(indptr[-1] + n)
        return AttnMeta(
            positions=self._tensor(positions, torch.int64),
            slot_mapping=self._tensor(slots, torch.int64),
            block_table=cache.block_table([s.rid for s in seqs], device=self.device),
            kv_lens=self._tensor([st + n for st, n in zip(starts, lens, strict=True)], torch.int32),
            q_indptr=self._tensor(indptr, torch.int32),
            tree_mask=tree_mask,
        )

    def _sampling(self, seqs: list, seen: list[set[int]] | None = None) -> SamplingTensors:
        """Sampling tensors with one row per entry of seqs (a request may fill several rows)."""
        p = [s.params for s in seqs]
        bitmask = None
        if any(x.presence_penalty for x in p):
            bitmask = pack_bitmask(
                self._dense(seen if seen is not None else [s.seen for s in seqs])
            )
        return SamplingTensors(
            temperature=self._tensor([x.temperature for x in p], torch.float32),
            top_k=self._tensor([x.top_k for x in p], torch.int32),
            top_p=self._tensor([x.top_p for x in p], torch.float32),
            presence_penalty=self._tensor([x.presence_penalty for x in p], torch.float32),
            seen=bitmask,
            seeds=self._tensor([x.seed for x in p], torch.int64),
            offsets=self._tensor([s.offset() for s in seqs], torch.int64),
        )

    def _compact(self, cache: PagedKVCache, src: list[int], dst: list[int]) -> None:
        if not src:
            return
        src_t, dst_t = self._tensor(src, torch.int64), self._tensor(dst, torch.int64)
        for k_cache, v_cache in zip(cache.k_caches, cache.v_caches, strict=True):
            if self.use_kernels:
                ops.kv_cache_compact(
                    k_cache=k_cache, v_cache=v_cache, src_slots=src_t, dst_slots=dst_t
                )
            else:
                for c in (k_cache, v_cache):
                    rows = c.flatten(0, 1)
                    rows[dst_t] = rows[src_t].clone()

    # ------------------------------------------------------------------ dispatch

    def prefill_host(self, seqs: list) -> None:
        # The verifier caches every committed token but the last one, which is the root of the
        # next draft tree; the drafter catches up at the start of each round.
        todo = [s for s in seqs if len(s.prompt) > 1]
        if todo:
            lens = [len(s.prompt) - 1 for s in todo]
            meta = self._meta(self.vcache, todo, [0] * len(todo), lens)
            ids = self._tensor([t for s in todo for t in s.prompt[:-1]], torch.int64)
            self.verifier(ids, meta, self.vcache, self.use_kernels)
        for s in seqs:
            s.pos = len(s.prompt) - 1

    def _draft_choose(self, model, hidden, seqs: list, count: int):
        """``count`` draft tokens per row of hidden [R, H] (rows belong to seqs): the top ones for
        greedy requests, independent draws (the model's sampler, one offset each) for sampling
        requests. Returns (ids [R, count] list, probs float32 [R, V] the draws came from; the
        one-hot of the first id for greedy rows)."""
        st = self._sampling(seqs)
        greedy = [s.params.temperature <= 0 for s in seqs]
        _, cand = model.sample(hidden, st, self.use_kernels, num_candidates=count)
        if all(greedy):
            probs = torch.zeros(len(seqs), self.config.vocab_size, device=self.device)
            probs[torch.arange(len(seqs)), cand[:, 0]] = 1.0
            return cand.tolist(), probs
        probs = model.probs(hidden, st)
        rep = {k: v.repeat_interleave(count, 0) for k, v in st.__dict__.items() if v is not None}
        j = torch.arange(count, device=self.device).repeat(len(seqs))
        rep["offsets"] = (1 << 40) + rep["offsets"] * count + j
        draws, _ = model.sample(
            hidden.repeat_interleave(count, 0),
            SamplingTensors(**{"seen": None, **rep}),
            self.use_kernels,
        )
        g = self._tensor(greedy, torch.bool).unsqueeze(1)
        return torch.where(g, cand, draws.view(len(seqs), count)).tolist(), probs

    def round(self, seqs: list) -> None:
        """One draft-and-verify round of seqs; emits through the engine's hook."""
        k, steps = self.draft_topk, self.draft_steps
        cfg, pad = self.config, self.config.pad_id
        nodes = 1 + 2 * k + 2 * (steps - 1)
        live = []
        for s in seqs:
            n = len(s.prompt) + len(s.out)
            p = (n + 1) // 2
            if self._reserve(s, self.cache, max(p - 1 + k, p + steps - 1)) and self._reserve(
                s, self.vcache, s.pos + nodes
            ):
                live.append(s)
        seqs = live
        if not seqs:
            return
        drafter = self.model
        committed = [s.prompt + s.out for s in seqs]

        # 1. Drafter catch-up: fold the new committed pairs (an odd last token with PAD, to be
        #    redone next round) and write the MTP entries whose next token is now known.
        starts, chunk_pairs, mtp_starts, mtp_lens, p_lens = [], [], [], [], []
        for s, c in zip(seqs, committed, strict=True):
            n = len(c)
            full, odd = divmod(n, 2)
            p = full + odd
            st = min(s.d_len, s.d_mtp)
            starts.append(st)
            chunk_pairs.append(
                [[c[2 * i], c[2 * i + 1] if 2 * i + 1 < n else pad] for i in range(st, p)]
            )
            mtp_starts.append(s.d_mtp)
            mtp_lens.append(p - 1 - s.d_mtp)
            p_lens.append(p)
            s.d_len, s.d_mtp = full, p - 1
        lens = [len(x) for x in chunk_pairs]
        meta = self._meta(self.cache, seqs, starts, lens)
        hidden = drafter(
            self._tensor([q for x in chunk_pairs for q in x], torch.int64),
            meta,
            self.cache,
            self.use_kernels,
        )
        if sum(mtp_lens):
            rows, tokens = [], []
            chunk_start = 0
            for b, c in enumerate(committed):
                base = chunk_start - starts[b]  # row of pair position i is base + i
                chunk_start += lens[b]
                for i in range(mtp_starts[b], mtp_starts[b] + mtp_lens[b]):
                    rows.append(base + i)
                    tokens.append(c[2 * i + 2])
            mtp_meta = self._meta(self.cache, seqs, mtp_starts, mtp_lens)
            drafter.mtp_forward(
                self._tensor(tokens, torch.int64),
                hidden[self._tensor(rows, torch.int64)],
                mtp_meta,
                self.cache,
                self.use_kernels,
            )
        h_last = hidden[meta.q_indptr[1:].long() - 1]

        # 2. Draft: top-k token1 branches, each with its MTP token2 (branch j at MTP slot p-1+j).
        first, q_first = self._draft_choose(drafter, h_last, seqs, k)
        branch_seqs = [s for s in seqs for _ in range(k)]
        eye = torch.eye(k, dtype=torch.bool, device=self.device).repeat(len(seqs), 1)
        mtp_meta = self._meta(
            self.cache,
            seqs,
            [p - 1 for p in p_lens],
            [k] * len(seqs),
            positions=[p - 1 for p in p_lens for _ in range(k)],
            tree_mask=eye,
        )
        m = drafter.mtp_forward(
            self._tensor([t for f in first for t in f], torch.int64),
            h_last.repeat_interleave(k, 0),
            mtp_meta,
            self.cache,
            self.use_kernels,
        )
        second, q_second = self._draft_choose(drafter, m, branch_seqs, 1)
        chain, q_chain = [], []  # per extra step: ([B] token1, [B] token2), their probs
        prev = [[first[b][0], second[b * k][0]] for b in range(len(seqs))]
        for j in range(1, steps):
            pos = [p - 1 + j for p in p_lens]
            meta_j = self._meta(self.cache, seqs, pos, [1] * len(seqs))
            h = drafter(self._tensor(prev, torch.int64), meta_j, self.cache, self.use_kernels)
            t1, q1 = self._draft_choose(drafter, h, seqs, 1)
            t1 = [x[0] for x in t1]
            m = drafter.mtp_forward(
                self._tensor(t1, torch.int64), h, meta_j, self.cache, self.use_kernels
            )
            t2, q2 = self._draft_choose(drafter, m, seqs, 1)
            t2 = [x[0] for x in t2]
            chain.append((t1, t2))
            q_chain.append((q1, q2))
            prev = [[a, b] for a, b in zip(t1, t2, strict=True)]

        # 3. The tree: node 0 = last committed token; 1..k = token1 branches; k+1..2k = their
        #    token2; then (token1, token2) pairs continuing branch 1.
        draft, parents, depths, dprobs = [], [], [], []
        zero = torch.zeros(cfg.vocab_size, device=self.device)
        for b, c in enumerate(committed):
            draft += [c[-1], *first[b], *(second[b * k + j][0] for j in range(k))]
            parents += [-1, *([0] * k), *range(1, k + 1)]
            depths += [0, *([1] * k), *([2] * k)]
            # draft_probs[i]: the distribution node i's children were drawn from
            dprobs += [q_first[b], *(q_second[b * k + j] for j in range(k))]
            dprobs += [q_chain[0][0][b] if steps > 1 else zero] + [zero] * (k - 1)
            tail = k + 1
            for j, (t1, t2) in enumerate(chain):
                base = 1 + 2 * k + 2 * j
                draft += [t1[b], t2[b]]
                parents += [tail, base]
                depths += [2 + 2 * j + 1, 2 + 2 * j + 2]
                nxt = q_chain[j + 1][0][b] if j + 1 < len(chain) else zero
                dprobs += [q_chain[j][1][b], nxt]
                tail = base + 1
        self._verify(seqs, draft, parents, depths, dprobs, nodes)

    def _verify(self, seqs, draft, parents, depths, dprobs, nodes: int) -> None:
        """Score the trees with the verifier, accept a path per request, compact its K/V."""
        bsz = len(seqs)
        mask = torch.zeros(bsz * nodes, nodes, dtype=torch.bool)
        seen_rows: list[set[int]] = []
        for b, s in enumerate(seqs):
            for i in range(nodes):
                j, path = i, set()
                while j >= 0:
                    mask[b * nodes + i, j] = True
                    if j > 0:
                        path.add(draft[b * nodes + j])
                    j = parents[b * nodes + j]
                seen_rows.append(s.seen | path)
        meta = self._meta(
            self.vcache,
            seqs,
            [s.pos for s in seqs],
            [nodes] * bsz,
            positions=[
                s.pos + d for b, s in enumerate(seqs) for d in depths[b * nodes : (b + 1) * nodes]
            ],
            tree_mask=mask.to(self.device),
        )
        draft_t = self._tensor(draft, torch.int64)
        hidden = self.verifier(draft_t, meta, self.vcache, self.use_kernels)
        node_seqs = [s for s in seqs for _ in range(nodes)]
        greedy = [s.params.temperature <= 0 for s in seqs]
        results: dict[int, tuple[list[int], int]] = {}
        for want_greedy in (True, False):
            group = [b for b in range(bsz) if greedy[b] == want_greedy]
            if not group:
                continue
            row_ids = [b * nodes + i for b in group for i in range(nodes)]
            rows = self._tensor(row_ids, torch.int64)
            g_seqs = [seqs[b] for b in group]
            common = dict(
                draft_tokens=draft_t[rows],
                parents=self._tensor(
                    [parents[b * nodes + i] for b in group for i in range(nodes)], torch.int32
                ),
                q_indptr=self._tensor([nodes * i for i in range(len(group) + 1)], torch.int32),
                max_depth=max(depths[:nodes]),
            )
            st = self._sampling([node_seqs[r] for r in row_ids], [seen_rows[r] for r in row_ids])
            if want_greedy:
                target, _ = self.verifier.sample(hidden[rows], st, self.use_kernels)
                acc_len, acc_idx, bonus = ops.verify_tree(target_tokens=target, **common)
            else:
                target_probs = self.verifier.probs(hidden[rows], st)
                acc_len, acc_idx, bonus = ops.verify_tree_stochastic(
                    draft_probs=torch.stack([dprobs[r] for r in row_ids]).float(),
                    target_probs=target_probs,
                    seeds=self._tensor([s.params.seed for s in g_seqs], torch.int64),
                    offsets=self._tensor([s.offset() for s in g_seqs], torch.int64),
                    **common,
                )
            acc_len, acc_idx, bonus = acc_len.tolist(), acc_idx.tolist(), bonus.tolist()
            for gi, b in enumerate(group):
                results[b] = (acc_idx[gi][: acc_len[gi] + 1], bonus[gi])
        src, dst = [], []
        for b, s in enumerate(seqs):
            path, bonus = results[b]
            for d, node in enumerate(path):
                if node != d:
                    src += self.vcache.slots(s.rid, s.pos + node, s.pos + node + 1)
                    dst += self.vcache.slots(s.rid, s.pos + d, s.pos + d + 1)
        self._compact(self.vcache, src, dst)
        for b, s in enumerate(seqs):
            path, bonus = results[b]
            s.pos += len(path)
            self.stats.verify_rounds += 1
            self.stats.backbone_passes += 1
            self.stats.accepted_draft_tokens += len(path) - 1
            for t in [draft[b * nodes + i] for i in path[1:]] + [bonus]:
                if not self._emit(s, t):
                    break

    def _dense(self, seen: list[set[int]]) -> torch.Tensor:
        """bool [len(seen), V]: row i marks the ids in seen[i]."""
        mask = torch.zeros(len(seen), self.config.vocab_size, dtype=torch.bool)
        for i, ids in enumerate(seen):
            mask[i, list(ids)] = True
        return mask.to(self.device)

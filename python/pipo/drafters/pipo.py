"""Drafter "pipo": a PIPOModel drafts (its own paged cache of pairs; the verifier's is untouched).

The tree: node 0 = the root (the last committed token); nodes 1 … k = the k token1 branches of
the drafter's last pair; k+1 … 2k = each branch's MTP token2; then ``steps - 1`` more (token1,
token2) pairs continuing branch 1. With ``tree="chain"`` k = 1. draft_tokens is rounded up to
whole pairs: steps = max(1, ceil((draft_tokens - 2k) / 2) + 1), 2k + 2(steps - 1) draft nodes.

Before each round (``prepare``, on the host: how far each request's committed text is folded is
host state) the drafter catches up: it folds the newly committed pairs (an odd last token with
PAD, redone next round) and writes the MTP entries whose next token is now known. Drafting itself
(``propose``) stays on the device: no value is read back. The catch-up's shape follows the
accepted lengths, so this drafter is not capturable.
"""

from __future__ import annotations

import torch

from ..model import AttnMeta, PIPOModel, SamplingTensors
from .base import Drafter, DraftOptions, DraftTree
from .tree import sample_children

__all__ = ["PIPODrafter"]


class PIPODrafter(Drafter):
    name = "pipo"

    def __init__(self, model: PIPOModel | None, opts: DraftOptions):
        if not isinstance(model, PIPOModel):
            raise ValueError(
                "model: drafter 'pipo' drafts with a PIPOModel; pass it as the engine's model "
                "(and the ARModel as verifier)"
            )
        if model.config.fold != 2:
            raise ValueError(
                f"model: drafter 'pipo' drafts pairs; this PIPO model folds {model.config.fold} "
                "tokens per group"
            )
        if opts.tree == "dynamic":
            raise ValueError("tree: the pipo drafter builds 'chain' or 'topk' trees")
        self.model = model
        k = 1 if opts.tree == "chain" else opts.topk
        steps = max(1, -(-(opts.draft_tokens - 2 * k) // 2) + 1)
        self.k, self.steps = k, steps
        self.num_nodes = 1 + 2 * k + 2 * (steps - 1)
        self.max_depth = 2 * steps
        self.draws = 2 * k + 2 * (steps - 1)
        self._state: dict[int, tuple[int, int]] = {}  # rid -> (final pairs, final MTP entries)
        parents, depths = [-1, *([0] * k), *range(1, k + 1)], [0, *([1] * k), *([2] * k)]
        tail = k + 1
        for j in range(steps - 1):
            base = 1 + 2 * k + 2 * j
            parents += [tail, base]
            depths += [3 + 2 * j, 4 + 2 * j]
            tail = base + 1
        self._parents, self._depths = parents, depths

    def bind(self, verifier, cache, shared_layers, use_kernels) -> None:
        super().bind(verifier, cache, shared_layers, use_kernels)
        if self.model.config.vocab_size != verifier.config.vocab_size:
            raise ValueError(
                f"verifier: vocab_size {verifier.config.vocab_size} differs from the "
                f"drafter's {self.model.config.vocab_size}"
            )
        self.own = self.model.new_cache(cache.num_pages, cache.page_size)
        dev = self.device
        self.parents = torch.tensor(self._parents, dtype=torch.int64, device=dev)
        self.depths = torch.tensor(self._depths, dtype=torch.int64, device=dev)

    def caches(self):
        return [self.own]

    def round_need(self, seq):
        p = (len(seq.prompt) + len(seq.out) + 1) // 2
        return [(self.own, max(p - 1 + self.k, p + self.steps - 1))]

    def admit(self, rows, seqs) -> None:
        for s in seqs:
            self._state[s.rid] = (0, 0)

    # ------------------------------------------------------------------ host helpers

    def _h2d(self, values, dtype) -> torch.Tensor:
        pin = self.device.type == "cuda"
        return torch.tensor(values, dtype=dtype, pin_memory=pin).to(self.device, non_blocking=True)

    def _meta(self, seqs, starts, lens, positions=None, tree_mask=None) -> AttnMeta:
        """Sequence b writes lens[b] new entries at positions starts[b] … of the drafter's cache
        (RoPE positions = cache positions unless given)."""
        cache = self.own
        slots: list[int] = []
        for s, st, n in zip(seqs, starts, lens, strict=True):
            slots += cache.slots(s.rid, st, st + n)
        if positions is None:
            positions = [p for st, n in zip(starts, lens, strict=True) for p in range(st, st + n)]
        indptr = [0]
        for n in lens:
            indptr.append(indptr[-1] + n)
        return AttnMeta(
            positions=self._h2d(positions, torch.int64),
            slot_mapping=self._h2d(slots, torch.int64),
            block_table=cache.block_table([s.rid for s in seqs], device=self.device),
            kv_lens=self._h2d([st + n for st, n in zip(starts, lens, strict=True)], torch.int32),
            q_indptr=self._h2d(indptr, torch.int32),
            tree_mask=tree_mask,
        )

    # ------------------------------------------------------------------ a round

    def prepare(self, seqs, live) -> None:
        """Catch up on the committed text of the live rows (see the module docstring)."""
        rows = [r for r, ok in enumerate(live) if ok]
        seqs = [seqs[r] for r in rows]
        self._rows, self._seqs = rows, seqs
        if not seqs:
            return
        drafter, pad, kernels = self.model, self.model.config.pad_id, self.use_kernels
        committed = [s.prompt + s.out for s in seqs]
        starts, chunk, mtp_starts, mtp_lens, p_lens = [], [], [], [], []
        for s, c in zip(seqs, committed, strict=True):
            n = len(c)
            full, odd = divmod(n, 2)
            p = full + odd
            d_len, d_mtp = self._state[s.rid]
            st = min(d_len, d_mtp)
            starts.append(st)
            chunk.append([[c[2 * i], c[2 * i + 1] if 2 * i + 1 < n else pad] for i in range(st, p)])
            mtp_starts.append(d_mtp)
            mtp_lens.append(p - 1 - d_mtp)
            p_lens.append(p)
            self._state[s.rid] = (full, p - 1)
        lens = [len(x) for x in chunk]
        meta = self._meta(seqs, starts, lens)
        pairs = self._h2d([q for x in chunk for q in x], torch.int64)
        hidden = drafter(pairs, meta, self.own, kernels)
        if sum(mtp_lens):
            rows_h, tokens, at = [], [], 0
            for b, c in enumerate(committed):
                base = at - starts[b]  # row of pair position i is base + i
                at += lens[b]
                for i in range(mtp_starts[b], mtp_starts[b] + mtp_lens[b]):
                    rows_h.append(base + i)
                    tokens.append(c[2 * i + 2])
            drafter.mtp_forward(
                self._h2d(tokens, torch.int64),
                hidden[self._h2d(rows_h, torch.int64)],
                self._meta(seqs, mtp_starts, mtp_lens),
                self.own,
                kernels,
            )
        self._h_last = hidden[meta.q_indptr[1:].long() - 1]
        self._p_lens = p_lens

    def propose(self, view, need_probs: bool) -> DraftTree:
        b_all, dev = view.tokens.shape[0], view.tokens.device
        n = self.num_nodes
        tokens = torch.zeros(b_all, n, dtype=torch.int64, device=dev)
        probs = (
            torch.zeros(b_all, n, self.model.config.vocab_size, device=dev) if need_probs else None
        )
        if self._seqs:
            idx = self._h2d(self._rows, torch.int64)
            live_tokens, live_probs = self._draft(view, idx, need_probs)
            tokens[idx] = live_tokens
            if need_probs:
                probs[idx] = live_probs
        tokens[:, 0] = view.tokens[:, 0]
        return DraftTree(
            tokens,
            self.parents.expand(b_all, n),
            self.depths.expand(b_all, n),
            self.max_depth,
            probs,
        )

    def _draft(self, view, idx, need):
        """Tokens int64 [L, N] (root column unset) and draft probs [L, N, V] of the live rows."""
        drafter, kernels, seqs, p_lens = self.model, self.use_kernels, self._seqs, self._p_lens
        k, steps, live = self.k, self.steps, len(seqs)
        base = SamplingTensors(
            temperature=view.temperature[idx],
            top_k=view.top_k[idx],
            top_p=view.top_p[idx],
            presence_penalty=view.presence_penalty[idx],
            seen=None,
            seeds=view.seeds[idx],
            offsets=view.offsets[idx] + 1,  # offset 0 of a round is the verifier's
        )
        h_last = self._h_last
        first, _, q_first = sample_children(drafter, h_last, base, k, 0, kernels, need)

        # each branch's token2: branch j's MTP entry at slot p - 1 + j, seeing only itself
        eye = torch.eye(k, dtype=torch.bool, device=h_last.device).repeat(live, 1)
        mtp_meta = self._meta(
            seqs,
            [p - 1 for p in p_lens],
            [k] * live,
            positions=[p - 1 for p in p_lens for _ in range(k)],
            tree_mask=eye,
        )
        m = drafter.mtp_forward(
            first.flatten(), h_last.repeat_interleave(k, 0), mtp_meta, self.own, kernels
        )
        rep = SamplingTensors(
            **{
                key: (None if v is None else v.repeat_interleave(k, 0))
                for key, v in base.__dict__.items()
            }
        )
        branch = torch.arange(k, device=h_last.device).repeat(live)
        rep.offsets = rep.offsets + k + branch
        second, _, q_second = sample_children(drafter, m, rep, 1, 0, kernels, need)
        second = second.view(live, k)
        cols = [first, second]
        q_nodes = [] if not need else [q_first.unsqueeze(1), q_second.view(live, k, -1)]
        prev = torch.stack([first[:, 0], second[:, 0]], 1)
        chain_q = []
        draw = 2 * k
        for j in range(1, steps):
            meta_j = self._meta(seqs, [p - 1 + j for p in p_lens], [1] * live)
            h = drafter(prev, meta_j, self.own, kernels)
            t1, _, q1 = sample_children(drafter, h, base, 1, draw, kernels, need)
            m = drafter.mtp_forward(t1[:, 0], h, meta_j, self.own, kernels)
            t2, _, q2 = sample_children(drafter, m, base, 1, draw + 1, kernels, need)
            draw += 2
            cols.append(torch.cat([t1, t2], 1))
            chain_q.append((q1, q2))
            prev = cols[-1]
        tokens = torch.cat([torch.zeros_like(first[:, :1]), *cols], 1)
        if not need:
            return tokens, None
        # draft_probs[i]: the distribution node i's children were drawn from (zeros: a leaf)
        zero = torch.zeros_like(q_first)
        after_pair1 = chain_q[0][0] if steps > 1 else zero
        rows = [q_first, *q_nodes[1].unbind(1), after_pair1, *([zero] * (k - 1))]
        for j, (_, q2) in enumerate(chain_q):
            rows += [q2, chain_q[j + 1][0] if j + 1 < len(chain_q) else zero]
        return tokens, torch.stack(rows, 1)

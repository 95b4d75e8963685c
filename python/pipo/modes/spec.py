"""Mode "spec": verified speculative decoding; a ``Drafter`` proposes, the AR model verifies.

Prefill is mode ar's (the verifier writes the prompt and samples the first token, which becomes
the row's root), and the drafter sees the chunk's hidden states. A decode step is one round
(``step``), on the device over the engine's ``BatchState`` (see ``pipo.drafters.base`` for the
drafter's side):

    tree = drafter.propose(view)                  # B trees of N nodes, rooted at the roots
    hidden = verifier(tree.tokens, tree mask)      # one pass: node i at cache position pos + i,
                                                   # RoPE position pos + depth
    accept = verify_tree(argmax) or verify_tree_stochastic(target probs, draft probs)
    kv_cache_compact(accepted nodes -> pos + 1 …)  # the path's K/V in place
    drafter.accept(view, path, hidden at the path)
    root := bonus, pos += accepted + 1, out := emitted tokens (-1 padded)

Everything a round needs is built on the device (tree mask, positions, slots, the penalty's
seen bits of every node's path); the engine reads ``out`` once per round, the only
device-to-host transfer. With a ``capturable`` drafter the step is what CUDA graphs capture.
The output is the AR model's: greedy output equals mode ar's greedy output, sampled output has
its distribution.
"""

from __future__ import annotations

import torch

from .. import ops
from ..drafters import Accepted, Drafter, PrefillFeatures, ancestor_mask
from ..kv_cache import PagedKVCache
from ..model import AttnMeta, SamplingTensors
from ..sampling import pack_bitmask
from ..state import BatchState, StepView, mark_seen
from .ar import ARMode
from .base import Piece

__all__ = ["SpecMode"]


class SpecMode(ARMode):
    """Rounds of ``drafter`` verified by ``model`` (an ARModel) over its paged ``cache``, to
    which the drafter's ``kv_layers`` are appended here."""

    name = "spec"

    def __init__(self, model, cache: PagedKVCache, drafter: Drafter, *, use_kernels: bool):
        super().__init__(model, cache, use_kernels=use_kernels, threshold=1.0)
        self.drafter = drafter
        self.verifier_layers = len(cache.k_caches)
        shared = cache.add_layers(drafter.kv_layers) if drafter.kv_layers else []
        drafter.bind(model, cache, shared, use_kernels)
        self.draws_per_step = 1 + drafter.draws
        self.out_width = drafter.max_depth + 1
        self.need_probs, self.any_greedy = False, True

    # ------------------------------------------------------------------ engine hooks

    def caches(self) -> list[PagedKVCache]:
        return [self.cache, *self.drafter.caches()]

    def prefill_need(self, seq) -> list[tuple[PagedKVCache, int]]:
        return [*super().prefill_need(seq), *self.drafter.prefill_need(seq)]

    def decode_need(self, seq) -> list[tuple[PagedKVCache, int]]:
        scratch = max(self.drafter.num_nodes, self.drafter.scratch_entries())
        return [(self.cache, seq.pos + scratch), *self.drafter.round_need(seq)]

    def admit(self, rows: list[int], seqs: list) -> None:
        self.drafter.admit(rows, seqs)

    def move(self, src: int, dst: int) -> None:
        self.drafter.move(src, dst)

    def prepare(self, seqs: list, live: list[bool]) -> None:
        """Host work before a round: the drafter's, and whether any running row samples (the
        round then computes draft and target distributions)."""
        sampled = [s.params.temperature > 0 for s, ok in zip(seqs, live, strict=True) if ok]
        self.need_probs, self.any_greedy = any(sampled), not all(sampled)
        self.drafter.prepare(seqs, live)

    @property
    def variant(self) -> tuple[bool, bool]:
        """What, besides the batch bucket, width and penalty, changes the step's graph."""
        return self.need_probs, self.any_greedy

    def mutable(self) -> list[torch.Tensor]:
        return self.drafter.mutable()

    # ------------------------------------------------------------------ prefill

    def prefill(self, state: BatchState, pieces: list[Piece], penalty: bool) -> None:
        b, hidden, tokens = self._prefill(state, pieces, penalty)
        nxt = []
        for p in pieces:  # the token after each entry (after a prompt's last: the sampled one)
            after = p.seq.units[p.start + 1 : p.start + p.n + 1]
            nxt.append(torch.cat([after, torch.zeros(1, dtype=torch.int64)]) if p.final else after)
        next_tokens = state.h2d(torch.cat(nxt), torch.int64)
        if tokens is not None:
            next_tokens.index_put_((b.last,), tokens)
        final = torch.zeros(len(pieces), dtype=torch.bool, device=b.ids.device)
        final[b.fin] = True
        self.drafter.prefill(PrefillFeatures(b.ids, next_tokens, hidden, b.meta, b.rows, final))

    # ------------------------------------------------------------------ a round

    def step(self, v: StepView, penalty: bool) -> None:
        need = self.need_probs
        tree = self.drafter.propose(v, need)
        bsz, n = tree.tokens.shape
        depth_cap = tree.max_depth
        if n > self.drafter.num_nodes or depth_cap > self.drafter.max_depth:
            raise RuntimeError(
                f"drafter {self.drafter.name!r}: a tree of {n} nodes and depth {depth_cap} "
                f"exceeds its num_nodes {self.drafter.num_nodes} / max_depth "
                f"{self.drafter.max_depth} (the pages and output buffer are sized by them)"
            )
        dev = v.pos.device
        act = v.active
        mask = tree.mask if tree.mask is not None else ancestor_mask(tree.parents, depth_cap)

        # Node i of row b sits at cache position pos + i (the tree's scratch entries) and at
        # RoPE position pos + depth; inactive rows write nothing.
        entry = v.pos.unsqueeze(1) + torch.arange(n, device=dev)
        slots = torch.where(act.unsqueeze(1), self._slots(v.table, entry), -1)
        meta = AttnMeta(
            positions=(v.pos.unsqueeze(1) + tree.depths).flatten(),
            slot_mapping=slots.flatten(),
            block_table=v.table,
            kv_lens=torch.where(act, v.pos + n, n).int(),
            q_indptr=(torch.arange(bsz + 1, device=dev) * n).int(),
            tree_mask=mask.flatten(0, 1),
        )
        draft = tree.tokens.flatten()
        hidden = self.model(draft, meta, self.cache, self.use_kernels)

        st = self._node_sampling(v, tree, mask, n, penalty)
        common = dict(
            draft_tokens=draft,
            parents=tree.parents.flatten().int(),
            q_indptr=meta.q_indptr,
            max_depth=depth_cap,
        )
        acc = None
        if self.any_greedy:
            target, _ = self.model.sample(hidden, st, self.use_kernels)
            acc = ops.verify_tree(target_tokens=target, **common)
        if need:
            got = ops.verify_tree_stochastic(
                draft_probs=tree.draft_probs.flatten(0, 1).float().contiguous(),
                target_probs=self.model.probs(hidden, st),
                seeds=v.seeds,
                offsets=v.offsets,
                **common,
            )
            # a mixed batch: greedy rows take verify_tree's outcome
            greedy = v.temperature <= 0
            acc = (
                got
                if acc is None
                else tuple(
                    torch.where(greedy.view(-1, *[1] * (a.dim() - 1)), a, b)
                    for a, b in zip(acc, got, strict=True)
                )
            )
        acc_len = torch.where(act, acc[0].long(), 0)
        acc_idx = acc[1].long()
        bonus = acc[2]

        # The accepted path's K/V moves to pos + 1 … pos + L (the verifier's layers only).
        d = torch.arange(depth_cap + 1, device=dev)
        on_path = (d <= acc_len.unsqueeze(1)) & act.unsqueeze(1)
        move = on_path & (acc_idx != d)
        src = torch.where(move, self._slots(v.table, v.pos.unsqueeze(1) + acc_idx.clamp(min=0)), -1)
        dst = torch.where(move, self._slots(v.table, v.pos.unsqueeze(1) + d), -1)
        self._compact(src.flatten(), dst.flatten())

        # Emitted tokens: the path's draft tokens, then the bonus; -1 after.
        path_tokens = tree.tokens.gather(1, acc_idx.clamp(min=0))  # [B, D+1], column 0 = root
        nxt = torch.cat([path_tokens[:, 1:], torch.full_like(bonus, -1).unsqueeze(1)], 1)
        nxt = torch.where(d == acc_len.unsqueeze(1), bonus.unsqueeze(1), nxt)
        nxt = torch.where(on_path, nxt, -1)
        h = hidden.view(bsz, n, -1)
        path_hidden = h.gather(1, acc_idx.clamp(min=0).unsqueeze(2).expand(-1, -1, h.shape[2]))
        self.drafter.accept(
            v,
            Accepted(
                length=acc_len,
                index=torch.where(on_path, acc_idx, -1),
                tokens=torch.cat([nxt, torch.full_like(bonus, -1).unsqueeze(1)], 1),
                hidden=path_hidden,
                active=act,
            ),
        )
        if penalty:
            for j in range(depth_cap + 1):
                mark_seen(v.seen, None, nxt[:, j].clamp(min=0), nxt[:, j] >= 0)
        v.out[:, : depth_cap + 1] = nxt
        v.out[:, depth_cap + 1 :] = -1
        v.tokens[:, 0] = torch.where(act, bonus, v.tokens[:, 0])
        v.pos.add_((acc_len + 1) * act)
        v.offsets.add_(act * self.draws_per_step)

    def _slots(self, table: torch.Tensor, entry: torch.Tensor) -> torch.Tensor:
        """Cache slots of entries int64 [B, M] of each row (block table int32 [B, W])."""
        ps = self.page_size
        col = torch.div(entry, ps, rounding_mode="floor").clamp_(max=table.shape[1] - 1)
        return table.gather(1, col).long() * ps + entry % ps

    def _node_sampling(self, v: StepView, tree, mask, n: int, penalty: bool) -> SamplingTensors:
        """One sampling row per tree node (its request's parameters); with the penalty, a node's
        seen tokens are its request's plus those on its path (what the request would have
        generated by then)."""
        seen = None
        if penalty:
            bsz, vocab = tree.tokens.shape[0], self.config.vocab_size
            on_path = torch.zeros(bsz, n, vocab, device=v.pos.device)
            idx = tree.tokens.unsqueeze(1).expand(bsz, n, n)
            on_path.scatter_reduce_(2, idx, mask.float(), reduce="amax")
            seen = pack_bitmask(on_path.flatten(0, 1) > 0) | v.seen.repeat_interleave(n, 0)

        def rep(t):
            return t.repeat_interleave(n, 0)

        return SamplingTensors(
            temperature=rep(v.temperature),
            top_k=rep(v.top_k),
            top_p=rep(v.top_p),
            presence_penalty=rep(v.presence_penalty),
            seen=seen,
            seeds=rep(v.seeds),
            offsets=rep(v.offsets),
        )

    def _compact(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Move the verifier layers' K/V rows src -> dst (int64 [M], -1 = no move)."""
        cache = self.cache
        layers = zip(
            cache.k_caches[: self.verifier_layers],
            cache.v_caches[: self.verifier_layers],
            strict=True,
        )
        if self.use_kernels:
            for k_cache, v_cache in layers:
                ops.kv_cache_compact(k_cache=k_cache, v_cache=v_cache, src_slots=src, dst_slots=dst)
            return
        keep = (src >= 0) & (dst >= 0)
        s, t = src[keep], dst[keep]
        for k_cache, v_cache in layers:
            for c in (k_cache, v_cache):
                rows = c.flatten(0, 1)
                rows[t] = rows[s].clone()

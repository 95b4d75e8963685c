"""Drafters "mtp" and "medusa": trained heads (pipo.heads) on the verifier's own hidden states.

Both keep one feature vector per batch row, the *root feature* (``feat`` [rows, H]): the state
whose LM-head distribution (the verifier's LM head) the next root's children come from. It is
set at prefill from the verifier's hidden states of the prompt, and in ``accept`` from the
verifier's hidden states along the accepted path (``Accepted.hidden``), so nothing is read back
and no host work is needed between rounds: both drafters are ``capturable``.

- ``medusa``: the root feature is the verifier's state at the last committed position but one
  (the state that predicted the root); head k maps it to the distribution k tokens after the
  root, so a node at depth d gets its children from head d + 1 (depth <= the number of heads).
- ``mtp``: one decoder layer with its own KV in one extra layer of the verifier's cache
  (``kv_layers = 1``, same pages and slots). Entry p reads (t_{p+1}, verifier state h_p) and
  predicts t_{p+2}; after a round the entries of every newly committed position are written
  from the accepted path (positions below the new ``pos`` are then exactly what a fresh
  prefill would give) and the last one's output is the root feature. Drafting runs the layer
  on the tree's expanded nodes at scratch entries pos + e (the expansion index), RoPE position
  pos + depth - 1, each reading its parent's output as the hidden state (EAGLE's chaining). A
  level re-runs every node expanded so far, with the ancestor mask, because paged attention
  masks only the query block: a node must not see its expanded cousins' entries.

Trees are ``pipo.drafters.tree.grow``'s (chain, topk, dynamic); the draft distributions are the
verifier's LM head on the drafter's states, at the request's sampling parameters.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..heads import MedusaHeads, builtin_head, load_head
from ..model import AttnMeta, MTPHead, SamplingTensors
from .base import Drafter, DraftOptions, DraftTree
from .tree import Level, TreeShape, grow

__all__ = ["MTPDrafter", "MedusaDrafter", "load_drafter_head"]


def load_drafter_head(kind: str, verifier, checkpoint: str | None):
    """The head of drafter ``kind`` for ``verifier``: from ``checkpoint`` (a head folder), else
    the shipped one when it was trained on the verifier's shapes; ValueError otherwise."""
    if checkpoint is not None:
        return load_head(checkpoint, verifier, kind)
    head = builtin_head(kind, verifier)
    if head is None:
        raise ValueError(
            f"drafter: {kind!r} needs a head trained on this verifier, and none is shipped for "
            f"its shapes; train one with "
            f"`pipo train --stage {kind} --init-from <verifier> --out <dir>` and pass "
            "<dir>/final as the draft checkpoint"
        )
    w = verifier.embed_tokens.weight
    return head.to(device=w.device, dtype=w.dtype)


class _HeadDrafter(Drafter):
    """What both drafters share: the tree shape, the root-feature buffer and its upkeep."""

    capturable = True

    def __init__(self, head, opts: DraftOptions):
        self.head = head
        self.shape = TreeShape.of(opts)
        self.num_nodes, self.max_depth = self.shape.num_nodes, self.shape.max_depth
        self.draws = self.shape.draws

    def bind(self, verifier, cache, shared_layers, use_kernels) -> None:
        super().bind(verifier, cache, shared_layers, use_kernels)
        trained_on = getattr(self.head, "config", None)  # set by pipo.heads' constructors
        hidden = next(self.head.parameters()).shape[-1]
        if trained_on not in (None, verifier.config) or hidden != verifier.config.hidden_size:
            raise ValueError(f"verifier: the {self.name} head was made for another backbone")
        w = verifier.embed_tokens.weight
        # Every running request holds a page, so the batch never has more rows than pages: the
        # buffer never grows (a captured round keeps reading the same tensor).
        self.feat = torch.zeros(cache.num_pages, w.shape[1], dtype=w.dtype, device=w.device)
        n = self.num_nodes
        self._chain_parents = torch.arange(-1, n - 1, device=self.device)
        self._chain_depths = torch.arange(n, device=self.device)
        self._chain_mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()

    def _fast_chain(self, need_probs: bool) -> bool:
        """Greedy rounds of a chain skip ``grow``: the draft is the argmax at every step (what
        grow picks for greedy rows), built with a handful of ops. Measured on the CPU, grow's
        per-level sampling-tensor bookkeeping cost more than the drafter's own passes."""
        return not need_probs and self.shape.kind == "chain"

    def _chain_tree(self, view, drafted: torch.Tensor) -> DraftTree:
        """The chain DraftTree of drafted int64 [B, n] after each row's root."""
        b, n = drafted.shape[0], self.num_nodes
        return DraftTree(
            tokens=torch.cat([view.tokens[:, :1], drafted], 1),
            parents=self._chain_parents.expand(b, n),
            depths=self._chain_depths.expand(b, n),
            max_depth=self.max_depth,
            mask=self._chain_mask.expand(b, n, n),
        )

    def mutable(self) -> list[torch.Tensor]:
        return [self.feat]

    def admit(self, rows, seqs) -> None:
        if rows:
            self.feat[torch.tensor(rows, device=self.device)] = 0

    def move(self, src: int, dst: int) -> None:
        self.feat[dst] = self.feat[src]

    def _sampling(self, view) -> SamplingTensors:
        """The rows' parameters for drafting: no penalty, offsets from the round's first drafter
        draw (offset 0 is the verifier's)."""
        return SamplingTensors(
            temperature=view.temperature,
            top_k=view.top_k,
            top_p=view.top_p,
            presence_penalty=torch.zeros_like(view.presence_penalty),
            seen=None,
            seeds=view.seeds,
            offsets=view.offsets + 1,
        )

    @staticmethod
    def _last_of_pieces(feats):
        """(rows, indices into the chunk) of the pieces that end their prompt."""
        last = feats.meta.q_indptr[1:].long() - 1
        return feats.rows[feats.final], last[feats.final]

    @staticmethod
    def _at_length(states: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """states [B, D+1, H] at column length[b] of each row -> [B, H]."""
        idx = length.view(-1, 1, 1).expand(-1, 1, states.shape[2])
        return states.gather(1, idx).squeeze(1)


class MedusaDrafter(_HeadDrafter):
    name = "medusa"

    def __init__(self, heads: MedusaHeads, opts: DraftOptions):
        if not isinstance(heads, MedusaHeads):
            raise ValueError(f"heads: expected MedusaHeads, got {type(heads).__name__}")
        if opts.tree == "dynamic" and opts.depth == 0:  # the default depth: as deep as the heads
            opts = replace(opts, depth=min(opts.draft_tokens, heads.num_heads))
        super().__init__(heads, opts)
        if self.max_depth > heads.num_heads:
            raise ValueError(
                f"draft_tokens: a {opts.tree} tree of depth {self.max_depth} needs as many "
                f"Medusa heads, the checkpoint has {heads.num_heads}"
            )

    def prefill(self, feats) -> None:
        rows, last = self._last_of_pieces(feats)
        self.feat[rows] = feats.hidden[last].to(self.feat.dtype)

    def propose(self, view, need_probs: bool):
        b = view.tokens.shape[0]
        if self._fast_chain(need_probs):
            logits = self.head.logits(self.feat[:b], self.verifier.lm_head_weight)
            return self._chain_tree(view, logits[:, : self.max_depth].argmax(-1))
        states = self.head(self.feat[:b])  # [B, K, H]: head k predicts k tokens after the root

        def expand(level: Level) -> torch.Tensor:
            f = level.tokens.shape[1]
            return states[:, level.depth].unsqueeze(1).expand(b, f, -1).contiguous()

        return grow(
            self.shape,
            view.tokens[:, 0],
            states[:, 0].contiguous(),
            expand,
            self.verifier,
            self._sampling(view),
            self.use_kernels,
            need_probs,
        )

    def accept(self, view, acc) -> None:
        b = acc.length.shape[0]
        new = self._at_length(acc.hidden, acc.length)
        self.feat[:b] = torch.where(acc.active.unsqueeze(1), new, self.feat[:b])


class MTPDrafter(_HeadDrafter):
    name = "mtp"
    kv_layers = 1

    def __init__(self, head: MTPHead, opts: DraftOptions):
        if not isinstance(head, MTPHead):
            raise ValueError(f"head: expected an MTPHead, got {type(head).__name__}")
        super().__init__(head, opts)

    def scratch_entries(self) -> int:
        # expanded nodes sit at pos + expansion index (a dynamic tree expands more nodes than
        # it keeps); accept writes pos … pos + max_depth
        return max(self.num_nodes, self.shape.expansions, self.max_depth + 1)

    def _run(self, tokens, hidden, meta: AttnMeta) -> torch.Tensor:
        """The head over packed inputs: tokens int64 [N], hidden [N, H] -> [N, H]; writes its K/V
        at meta's slots of the shared layer."""
        layer = self.shared_layers[0]
        return self.head(
            tokens,
            hidden.to(self.feat.dtype),
            self.verifier.embed_tokens.weight,
            meta,
            self.verifier.rope(meta, self.cache, self.use_kernels),
            self.cache.k_caches[layer],
            self.cache.v_caches[layer],
            self.use_kernels,
        )

    def _slots(self, table: torch.Tensor, entry: torch.Tensor) -> torch.Tensor:
        ps = self.cache.page_size
        col = torch.div(entry, ps, rounding_mode="floor").clamp_(max=table.shape[1] - 1)
        return table.gather(1, col).long() * ps + entry % ps

    def _block(self, view, count: int, rope_pos, write, mask=None, shift: int = 0):
        """AttnMeta of ``count`` queries per row at entries pos + shift … pos + shift + count - 1
        (RoPE positions rope_pos int64 [B, count]), written where ``write`` (bool [B, count]);
        inactive rows attend to their own block only."""
        b, dev = view.pos.shape[0], view.pos.device
        entry = view.pos.unsqueeze(1) + shift + torch.arange(count, device=dev)
        act = view.active.unsqueeze(1)
        slots = torch.where(write & act, self._slots(view.table, entry), -1)
        return AttnMeta(
            positions=torch.where(act, rope_pos, torch.arange(count, device=dev)).flatten(),
            slot_mapping=slots.flatten(),
            block_table=view.table,
            kv_lens=torch.where(view.active, view.pos + shift + count, count).int(),
            q_indptr=(torch.arange(b + 1, device=dev) * count).int(),
            tree_mask=mask,
        )

    def prefill(self, feats) -> None:
        out = self._run(feats.next_tokens, feats.hidden, feats.meta)
        rows, last = self._last_of_pieces(feats)
        self.feat[rows] = out[last]

    def propose(self, view, need_probs: bool):
        b, dev = view.tokens.shape[0], view.pos.device
        root_feat = self.feat[:b]
        if self._fast_chain(need_probs):
            # a chain's expanded nodes are each other's ancestors: one query per step, causal
            token = self.verifier.logits(root_feat).argmax(-1)
            drafted, feat = [token], root_feat
            one = torch.ones(b, 1, dtype=torch.bool, device=dev)
            for e in range(self.max_depth - 1):
                meta = self._block(view, 1, view.pos.unsqueeze(1) + e, one, None, shift=e)
                feat = self._run(token, feat, meta)
                token = self.verifier.logits(feat).argmax(-1)
                drafted.append(token)
            return self._chain_tree(view, torch.stack(drafted, 1))
        tokens, parent_feat, depths = [], [], []  # per expanded node, in expansion order
        outs: list[torch.Tensor] = []
        mask = torch.zeros(b, 0, 0, dtype=torch.bool, device=dev)

        def expand(level: Level) -> torch.Tensor:
            nonlocal mask
            f, first = level.tokens.shape[1], level.first
            e = first + f
            done = torch.cat(outs, 1) if outs else root_feat.unsqueeze(1)[:, :0]
            par = level.parents.clamp(min=0).unsqueeze(2).expand(b, f, root_feat.shape[1])
            from_exp = done.gather(1, par) if first else root_feat.unsqueeze(1).expand(b, f, -1)
            pf = torch.where((level.parents < 0).unsqueeze(2), root_feat.unsqueeze(1), from_exp)
            tokens.append(level.tokens)
            parent_feat.append(pf)
            depths.append(torch.full((b, f), level.depth, dtype=torch.int64, device=dev))
            full = torch.zeros(b, e, e, dtype=torch.bool, device=dev)
            full[:, :first, :first] = mask
            full[:, first:] = level.mask
            mask = full
            rope_pos = view.pos.unsqueeze(1) + torch.cat(depths, 1) - 1
            write = torch.ones(b, e, dtype=torch.bool, device=dev)
            meta = self._block(view, e, rope_pos, write, full.flatten(0, 1))
            y = self._run(
                torch.cat(tokens, 1).flatten(), torch.cat(parent_feat, 1).flatten(0, 1), meta
            ).view(b, e, -1)
            outs.append(y[:, first:].contiguous())
            return outs[-1]

        return grow(
            self.shape,
            view.tokens[:, 0],
            root_feat,
            expand,
            self.verifier,
            self._sampling(view),
            self.use_kernels,
            need_probs,
        )

    def accept(self, view, acc) -> None:
        """Write the entries of positions pos … pos + L from the accepted path (token after node
        j, verifier state at node j) and take the last one's output as the root feature."""
        b, d1 = acc.index.shape
        j = torch.arange(d1, device=view.pos.device)
        write = j <= acc.length.unsqueeze(1)
        meta = self._block(view, d1, view.pos.unsqueeze(1) + j, write)
        y = self._run(acc.tokens[:, :d1].clamp(min=0).flatten(), acc.hidden.flatten(0, 1), meta)
        new = self._at_length(y.view(b, d1, -1), acc.length)
        self.feat[:b] = torch.where(acc.active.unsqueeze(1), new, self.feat[:b])

"""Mode "pipo": PIPO decoding with a PIPOModel, one group of k = ``config.fold`` tokens per pass
(pairs for k = 2): token1 from the backbone, tokens 2 … k from the MTP chain, the gate keeps the
longest prefix whose confidences pass θ and pads the rest with PAD.

The prompt is folded into groups (padded to a multiple of k with PAD). Prefill writes the groups'
backbone entries and the k - 1 MTP steps' entries (step j of group i reads token j of group i+1,
known from the prompt except after the last group, which reads the tokens the chain proposes)
and emits the first group. A step is the whole PIPO pass on the device: fold → backbone → token1
→ MTP step 1 → token2 → … → MTP step k-1 → token k → gate, with the presence penalty: each
token counts as seen before the next one of its group is drawn, and after the gate only the
committed tokens stay seen. Unlike the paper's code, prefill emits a whole group too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..model import SamplingTensors
from ..state import BatchState, StepView, decode_meta, mark_seen
from .base import Mode, Piece

__all__ = ["PIPOMode"]


class PIPOMode(Mode):
    name = "pipo"
    token_width = 2

    def __init__(self, model, cache, *, use_kernels: bool, threshold: float):
        super().__init__(model, cache, use_kernels=use_kernels, threshold=threshold)
        self.gap_id = self.config.pad_id
        self.fold = self.config.fold
        self.token_width = self.fold  # inputs per cache entry: one group
        self.out_width = max(2, self.fold)  # a step emits one group
        self.mtp = self.threshold < 1  # θ >= 1 never keeps a proposal: the MTP chain is skipped
        self.draws_per_step = self.fold if self.mtp else 1

    def units(self, prompt: list[int]) -> torch.Tensor:
        k = self.fold
        ids = prompt + [self.config.pad_id] * (-len(prompt) % k)
        return torch.tensor(ids, dtype=torch.int64).view(-1, k)

    def _group(
        self,
        hidden: torch.Tensor,
        token1: torch.Tensor,
        mtp_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
        sampling: Callable[[int], SamplingTensors],
        seen: torch.Tensor | None,
        rows: torch.Tensor | None,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """The MTP chain and the gate of n emitting rows: hidden [n, H] (backbone), token1 int64
        [n] -> groups int64 [n, k]. ``mtp_step(j, token_j, state)`` runs chain step j (writing
        its cache entries) and returns the rows' MTP states [n, H]; ``sampling(j)`` gives the rows'
        sampling tensors at draw offset j (their seen bitmask read when called). ``seen``: the
        persistent bitmask (None: no penalty), indexed by ``rows`` (None: row i); ``keep`` bool
        [n]: rows whose tokens count.

        Token1 is always committed, so it is marked seen at once. Proposals 2 … k-1 are marked in
        a copy of the rows' bitmask that only the later draws of this group read (a proposal is
        committed only if every earlier one is, so every committed token was drawn with its
        group's earlier tokens seen); after the gate the committed ones go into ``seen``."""
        gap, kernels = self.gap_id, self.use_kernels
        if seen is not None:
            mark_seen(seen, rows, token1, keep & (token1 != gap))
        proposals, states = [token1], []
        state, chain_seen = hidden, None
        for j in range(1, self.fold):
            state = mtp_step(j, proposals[-1], state)
            states.append(state)
            st = sampling(j)
            if chain_seen is not None:
                st = dataclasses.replace(st, seen=chain_seen)
            token, _ = self.model.sample(state, st, kernels)
            proposals.append(token)
            if st.seen is not None and j < self.fold - 1:
                chain_seen = st.seen.clone() if chain_seen is None else chain_seen
                mark_seen(chain_seen, None, token, token != gap)
        groups, _ = self.model.commit(
            hidden, torch.stack(states, 1), torch.stack(proposals, 1), self.threshold, kernels
        )
        if seen is not None:
            for j in range(1, self.fold):
                mark_seen(seen, rows, groups[:, j], keep & (groups[:, j] != gap))
        return groups

    def _token1_only(self, token1: torch.Tensor) -> torch.Tensor:
        pads = torch.full(
            (token1.shape[0], self.fold - 1), self.config.pad_id, device=token1.device
        )
        return torch.cat([token1.unsqueeze(1), pads], 1)

    def prefill(self, state: BatchState, pieces: list[Piece], penalty: bool) -> None:
        b = self.batch(state, pieces)
        model, cache, kernels = self.model, self.cache, self.use_kernels
        hidden = model(b.ids, b.meta, cache, kernels)
        fin = any(p.final for p in pieces)
        token1 = None
        if fin:
            st = state.rows_sampling(b.fin_rows, penalty)
            token1, _ = model.sample(hidden[b.last], st, kernels)
        if not self.mtp:
            if fin:
                if penalty:
                    mark_seen(state.seen, b.fin_rows, token1, token1 != self.gap_id)
                state.finish_prefill(b.fin_rows, self._token1_only(token1), b.fin_pos, 1)
            return
        # Input of MTP step j at entry i: token j of group i+1 (0 after a prompt's last group,
        # where the chain's own proposals go instead).
        k, nxt = self.fold, []
        for p in pieces:
            follow = p.seq.units[p.start + 1 : p.start + p.n + 1, : k - 1]
            if p.final:
                follow = torch.cat([follow, torch.zeros(1, k - 1, dtype=torch.int64)])
            nxt.append(follow)
        mtp_in = state.h2d(torch.cat(nxt), torch.int64)
        full = hidden  # the chain's state over every entry of the chunk

        def mtp_step(j: int, token: torch.Tensor | None, _state) -> torch.Tensor:
            nonlocal full
            ids = mtp_in[:, j - 1].contiguous()
            if token is not None:
                ids.index_put_((b.last,), token)
            full = model.mtp_forward(ids, full, b.meta, cache, kernels, step=j)
            return full[b.last]

        if not fin:
            for j in range(1, k):
                mtp_step(j, None, None)
            return
        rows = b.fin_rows
        groups = self._group(
            hidden[b.last],
            token1,
            mtp_step,
            lambda j: state.rows_sampling(rows, penalty, offset=j),
            state.seen if penalty else None,
            rows,
            torch.ones_like(token1, dtype=torch.bool),
        )
        state.finish_prefill(rows, groups, b.fin_pos, k)

    def step(self, v: StepView, penalty: bool) -> None:
        meta = decode_meta(v, self.page_size)
        model, cache, kernels = self.model, self.cache, self.use_kernels
        hidden = model(v.tokens, meta, cache, kernels)
        token1, _ = model.sample(hidden, v.sampling(penalty), kernels)
        if self.mtp:
            groups = self._group(
                hidden,
                token1,
                lambda j, token, state: model.mtp_forward(
                    token, state, meta, cache, kernels, step=j
                ),
                lambda j: v.sampling(penalty, offset=j),
                v.seen if penalty else None,
                None,
                v.active,
            )
        else:
            if penalty:
                mark_seen(v.seen, None, token1, v.active & (token1 != self.gap_id))
            groups = self._token1_only(token1)
        self.advance(v, groups, penalty)

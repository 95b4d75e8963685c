"""Mode "pipo": PIPO decoding with a PIPOModel, one (token1, token2-or-PAD) pair per pass.

The prompt is folded into pairs (an odd prompt gets one PAD). Prefill writes the pairs' backbone
and MTP entries (MTP entry i reads the first token of pair i+1, known from the prompt except for
the last pair, which reads the sampled token1) and emits the first pair. A step is the whole
PIPO pass on the device: fold → backbone → token1 → unfold → MTP layer → token2 → gate, with the
presence penalty (token1 counts as seen for token2). Unlike the paper's code, prefill emits a
real token2 too.
"""

from __future__ import annotations

import torch

from ..state import BatchState, StepView, decode_meta, mark_seen
from .base import Mode, Piece

__all__ = ["PIPOMode"]


class PIPOMode(Mode):
    name = "pipo"
    token_width = 2

    def __init__(self, model, cache, *, use_kernels: bool, threshold: float):
        super().__init__(model, cache, use_kernels=use_kernels, threshold=threshold)
        self.gap_id = self.config.pad_id
        self.mtp = self.threshold < 1  # θ >= 1 never keeps token2: the MTP head is skipped
        self.draws_per_step = 2 if self.mtp else 1

    def units(self, prompt: list[int]) -> torch.Tensor:
        ids = prompt + [self.config.pad_id] * (len(prompt) % 2)
        return torch.tensor(ids, dtype=torch.int64).view(-1, 2)

    def _pair(self, hidden, mtp_hidden, token1, sampling2, seen, rows, keep):
        """token2 from the MTP states and the gate: pairs int64 [n, 2]; marks token1 seen
        before token2 is drawn and the kept token2 after (seen None: no penalty)."""
        if seen is not None:
            mark_seen(seen, rows, token1, keep & (token1 != self.gap_id))
        token2, _ = self.model.sample(mtp_hidden, sampling2(), self.use_kernels)
        pairs, _ = self.model.gate(
            hidden, mtp_hidden, token1, token2, self.threshold, self.use_kernels
        )
        if seen is not None:
            mark_seen(seen, rows, pairs[:, 1], keep & (pairs[:, 1] != self.gap_id))
        return pairs

    def _no_token2(self, token1: torch.Tensor) -> torch.Tensor:
        return torch.stack([token1, torch.full_like(token1, self.config.pad_id)], 1)

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
                state.finish_prefill(b.fin_rows, self._no_token2(token1), b.fin_pos, 1)
            return
        # MTP input of entry i: the first token of pair i+1 (0 after a prompt's last pair, where
        # the sampled token1 goes instead).
        nxt = []
        for p in pieces:
            firsts = p.seq.units[p.start + 1 : p.start + p.n + 1, 0]
            nxt.append(
                torch.cat([firsts, torch.zeros(1, dtype=torch.int64)]) if p.final else firsts
            )
        mtp_tokens = state.h2d(torch.cat(nxt), torch.int64)
        if fin:
            mtp_tokens.index_put_((b.last,), token1)
        mtp_hidden = model.mtp_forward(mtp_tokens, hidden, b.meta, cache, kernels)
        if not fin:
            return
        rows = b.fin_rows
        keep = torch.ones_like(token1, dtype=torch.bool)
        pairs = self._pair(
            hidden[b.last],
            mtp_hidden[b.last],
            token1,
            lambda: state.rows_sampling(rows, penalty, offset=1),
            state.seen if penalty else None,
            rows,
            keep,
        )
        state.finish_prefill(rows, pairs, b.fin_pos, 2)

    def step(self, v: StepView, penalty: bool) -> None:
        meta = decode_meta(v, self.page_size)
        model, cache, kernels = self.model, self.cache, self.use_kernels
        hidden = model(v.tokens, meta, cache, kernels)
        token1, _ = model.sample(hidden, v.sampling(penalty), kernels)
        if self.mtp:
            mtp_hidden = model.mtp_forward(token1, hidden, meta, cache, kernels)
            pairs = self._pair(
                hidden,
                mtp_hidden,
                token1,
                lambda: v.sampling(penalty, offset=1),
                v.seen if penalty else None,
                None,
                v.active,
            )
        else:
            if penalty:
                mark_seen(v.seen, None, token1, v.active & (token1 != self.gap_id))
            pairs = self._no_token2(token1)
        self.advance(v, pairs, penalty)

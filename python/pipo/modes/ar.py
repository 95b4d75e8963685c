"""Mode "ar": plain decoding with an ARModel, one token per backbone pass."""

from __future__ import annotations

from ..state import BatchState, StepView, decode_meta, mark_seen
from .base import Mode, Piece

__all__ = ["ARMode"]


class ARMode(Mode):
    """Prefill writes the prompt's tokens and samples the first new token; a step feeds each row's
    last token and samples the next (``step`` is the function CUDA graphs capture)."""

    name = "ar"

    def prefill(self, state: BatchState, pieces: list[Piece], penalty: bool) -> None:
        self._prefill(state, pieces, penalty)

    def _prefill(self, state: BatchState, pieces: list[Piece], penalty: bool):
        """The chunk's pass and the first tokens of the final pieces: (PrefillBatch, hidden
        [T, H], tokens int64 [f] or None when no piece is final)."""
        b = self.batch(state, pieces)
        hidden = self.model(b.ids, b.meta, self.cache, self.use_kernels)
        if not any(p.final for p in pieces):
            return b, hidden, None
        st = state.rows_sampling(b.fin_rows, penalty)
        tokens, _ = self.model.sample(hidden[b.last], st, self.use_kernels)
        if penalty:
            mark_seen(state.seen, b.fin_rows, tokens, tokens != self.gap_id)
        state.finish_prefill(b.fin_rows, tokens.unsqueeze(1), b.fin_pos, self.draws_per_step)
        return b, hidden, tokens

    def step(self, v: StepView, penalty: bool) -> None:
        meta = decode_meta(v, self.page_size)
        hidden = self.model(v.tokens[:, 0], meta, self.cache, self.use_kernels)
        tokens, _ = self.model.sample(hidden, v.sampling(penalty), self.use_kernels)
        if penalty:
            mark_seen(v.seen, None, tokens, v.active)
        self.advance(v, tokens.unsqueeze(1), penalty)

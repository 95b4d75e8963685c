"""What every decoding mode shares: its prompt units, its page needs and the packed prefill batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kv_cache import PagedKVCache
from ..model import AttnMeta
from ..state import BatchState, StepView

__all__ = ["Mode", "Piece", "PrefillBatch"]


@dataclass
class Piece:
    """Entries start … start+n-1 of one request's prompt go into the cache in this chunk;
    ``final`` when they are the prompt's last ones (the request then emits its first output)."""

    seq: object
    row: int
    start: int
    n: int
    final: bool


@dataclass
class PrefillBatch:
    """A packed prefill chunk on the device. ids: the inputs of every piece end to end; meta: where
    they go; rows int64 [k]: each piece's batch row; fin int64 [f]: the final pieces' indices;
    last int64 [f]: their last entry in the packed batch; fin_rows, fin_pos int64 [f]: their
    rows and cache lengths."""

    ids: torch.Tensor
    meta: AttnMeta
    rows: torch.Tensor
    fin: torch.Tensor
    last: torch.Tensor
    fin_rows: torch.Tensor
    fin_pos: torch.Tensor


class Mode:
    """A decoding mode over one model and its paged cache (see pipo.modes).

    Subclasses set ``name`` and ``token_width`` (inputs per cache entry) and implement
    ``units``, ``prefill`` and ``step``; ``step`` is a pure function of a StepView's tensors, so
    CUDA graphs capture it as it is."""

    name = ""
    token_width = 1
    out_width = 2  # columns of BatchState.out a step writes
    draws_per_step = 1  # random draws per decode step and row (offsets advance by this)
    variant = None  # besides batch bucket, width and penalty, what selects a captured graph

    def __init__(self, model, cache: PagedKVCache, *, use_kernels: bool, threshold: float):
        self.model, self.cache = model, cache
        self.use_kernels, self.threshold = use_kernels, float(threshold)
        self.config = model.config
        self.page_size = cache.page_size
        # PAD means "no token" only in PIPO's pairs (a gated-off token2, a model-chosen PAD); in
        # modes ar and spec every generated id is a real token (real vocabularies often reuse EOS
        # as PAD), so it is kept and counts for the presence penalty.
        self.gap_id = -1

    def caches(self) -> list[PagedKVCache]:
        """Every cache whose pages the engine reserves and releases."""
        return [self.cache]

    def admit(self, rows: list[int], seqs: list) -> None:
        """Requests seqs took rows (after BatchState.admit)."""

    def move(self, src: int, dst: int) -> None:
        """Row src's request moved into row dst (after BatchState.move)."""

    def prepare(self, seqs: list, live: list[bool]) -> None:
        """Host work before a decode step: seqs[r] is row r's request, live[r] whether it
        steps."""

    def mutable(self) -> list[torch.Tensor]:
        """Device buffers besides BatchState's that a step changes (CUDA-graph warm-up)."""
        return []

    def units(self, prompt: list[int]) -> torch.Tensor:
        """The prompt as cache entries' inputs: int64 [n] tokens (ar) or [n, k] groups (pipo)."""
        return torch.tensor(prompt, dtype=torch.int64)

    def prefill_need(self, seq) -> list[tuple[PagedKVCache, int]]:
        """(cache, entries) each cache must hold for the prompt."""
        return [(self.cache, len(seq.units))]

    def decode_need(self, seq) -> list[tuple[PagedKVCache, int]]:
        """(cache, entries) each cache must hold for the next decode step."""
        return [(self.cache, seq.pos + 1)]

    def prefill(self, state: BatchState, pieces: list[Piece], penalty: bool) -> None:
        raise NotImplementedError

    def step(self, v: StepView, penalty: bool) -> None:
        raise NotImplementedError

    def advance(self, v: StepView, new: torch.Tensor, penalty: bool) -> None:
        """After a step: active rows take new int64 [size, w'] as output (and its first
        token_width columns as next input), move one cache entry on and consume their draws."""
        act = v.active
        w = v.tokens.shape[1]
        v.tokens.copy_(torch.where(act.unsqueeze(1), new[:, :w], v.tokens))
        v.out[:, : new.shape[1]] = new
        v.pos.add_(act)
        v.offsets.add_(act * self.draws_per_step)

    def batch(self, state: BatchState, pieces: list[Piece]) -> PrefillBatch:
        """Pack a prefill chunk: one copy of the inputs and one of the per-piece numbers to the
        device; positions, slots and the chunk's block table are computed there (no sync)."""
        ids = state.h2d(
            torch.cat([p.seq.units[p.start : p.start + p.n] for p in pieces]), torch.int64
        )
        nums = state.h2d([[p.row, p.start, p.n] for p in pieces], torch.int64)
        fin = state.h2d([i for i, p in enumerate(pieces) if p.final], torch.int64)
        rows, starts, lens = nums.unbind(1)
        k, total, ps = len(pieces), sum(p.n for p in pieces), self.page_size
        dev = ids.device
        indptr = torch.zeros(k + 1, dtype=torch.int32, device=dev)
        indptr[1:] = lens.cumsum(0)
        of = torch.repeat_interleave(torch.arange(k, device=dev), lens, output_size=total)
        positions = torch.arange(total, device=dev) + (starts - indptr[:-1].long())[of]
        table = state.table.index_select(0, rows)
        slots = table[of, torch.div(positions, ps, rounding_mode="floor")].long() * ps
        ends = starts + lens
        meta = AttnMeta(
            positions=positions,
            slot_mapping=slots + positions % ps,
            block_table=table,
            kv_lens=ends.int(),
            q_indptr=indptr,
        )
        last = indptr[1:].long()[fin] - 1
        return PrefillBatch(ids, meta, rows, fin, last, rows[fin], ends[fin])

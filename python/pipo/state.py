"""Device-resident batch state: one row per running request, kept in persistent device buffers.

Row r holds request r's last input (a token, or a pair), its cache length, its sampling
parameters, its random-stream offset, its seen-token bitmask and its block table row. The
engine changes rows incrementally (a request admitted, a page added, a request retired and the
last row moved into its place); a decode step reads rows 0 … size-1 and advances them on the
device, so nothing is rebuilt per step. The block table's width is a power of two that follows
the longest live context, not the cache size, so the attention's split count follows real lengths.

Every host-to-device copy goes through ``h2d`` (pinned memory on CUDA, asynchronous).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import AttnMeta, SamplingTensors

__all__ = ["BatchState", "StepView", "bucket", "decode_meta", "mark_seen"]


def bucket(n: int, cap: int | None = None) -> int:
    """The smallest power of two >= n (>= 1), at most cap."""
    size = 1
    while size < n:
        size *= 2
    return min(size, cap) if cap else size


@dataclass
class StepView:
    """The static tensors of one decode step over rows 0 … size-1 (views of BatchState buffers,
    so a CUDA graph captured over them reads each step's values).

    tokens int64 [size, w] (w = 1 for ar, k for pipo's groups of k); pos int64 [size] (cache entries
    written); active bool [size] (rows that decode; the others write nothing and keep their
    state); table int32 [size, W]; indptr int32 [size + 1] (one query per row); temperature,
    top_p, presence_penalty float32 [size]; top_k int32 [size]; seeds, offsets int64 [size];
    seen int32 [size, ceil(V / 32)]; out int64 [size, out_width] (the tokens the step emits: 2
    columns for ar and pipo, spec: the round's tokens, -1 padded)."""

    tokens: torch.Tensor
    pos: torch.Tensor
    active: torch.Tensor
    table: torch.Tensor
    indptr: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    presence_penalty: torch.Tensor
    seeds: torch.Tensor
    offsets: torch.Tensor
    seen: torch.Tensor
    out: torch.Tensor

    def sampling(self, penalty: bool, offset: int = 0) -> SamplingTensors:
        """The rows' sampling tensors; the seen bitmask only when some row has a penalty."""
        return SamplingTensors(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            seen=self.seen if penalty else None,
            seeds=self.seeds,
            offsets=self.offsets + offset if offset else self.offsets,
        )


def decode_meta(v: StepView, page_size: int) -> AttnMeta:
    """AttnMeta of one new entry per row at cache position v.pos, slots from the block table
    (computed on the device); inactive rows write nothing and attend to one entry."""
    col = torch.div(v.pos, page_size, rounding_mode="floor").clamp_(max=v.table.shape[1] - 1)
    page = v.table.gather(1, col.unsqueeze(1)).squeeze(1).long()
    slot = torch.where(v.active, page * page_size + v.pos % page_size, -1)
    kv_lens = torch.where(v.active, v.pos + 1, 1).int()
    return AttnMeta(
        positions=v.pos,
        slot_mapping=slot,
        block_table=v.table,
        kv_lens=kv_lens,
        q_indptr=v.indptr,
    )


def mark_seen(seen: torch.Tensor, rows: torch.Tensor | None, tokens, keep) -> None:
    """Set bit tokens[i] in row rows[i] (row i when rows is None) of the int32 bitmask seen
    [R, W] where keep[i] (bool [n]); one gather and one scatter, no sync."""
    words = seen.shape[1]
    flat = seen.view(-1)
    row = torch.arange(tokens.shape[0], device=seen.device) if rows is None else rows
    idx = row * words + torch.div(tokens, 32, rounding_mode="floor")
    one = torch.ones_like(idx, dtype=torch.int32)
    bit = torch.bitwise_left_shift(one, (tokens % 32).int()) * keep
    flat.index_put_((idx,), flat[idx] | bit)


class BatchState:
    """Persistent per-row buffers of up to ``rows`` requests (see the module docstring)."""

    def __init__(
        self,
        rows: int,
        token_width: int,
        vocab_size: int,
        num_pages: int,
        device,
        out_width: int = 2,
    ):
        self.rows, self.device, self.num_pages = rows, torch.device(device), num_pages

        def zeros(*shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=self.device)

        self.tokens = zeros(rows, token_width, dtype=torch.int64)
        self.pos = zeros(rows, dtype=torch.int64)
        self.active = zeros(rows, dtype=torch.bool)
        self.temperature = zeros(rows, dtype=torch.float32)
        self.top_k = zeros(rows, dtype=torch.int32)
        self.top_p = torch.ones(rows, dtype=torch.float32, device=self.device)
        self.presence_penalty = zeros(rows, dtype=torch.float32)
        self.seeds = zeros(rows, dtype=torch.int64)
        self.offsets = zeros(rows, dtype=torch.int64)
        self.seen = zeros(rows, (vocab_size + 31) // 32, dtype=torch.int32)
        self.out = zeros(rows, out_width, dtype=torch.int64)
        self.indptr = torch.arange(rows + 1, dtype=torch.int32, device=self.device)
        self.width = 1
        self.tables = {1: zeros(rows, 1, dtype=torch.int32)}
        self._views: dict[tuple[int, int], StepView] = {}
        self._pin = self.device.type == "cuda"

    @property
    def table(self) -> torch.Tensor:
        """int32 [rows, width]: the current block table."""
        return self.tables[self.width]

    def h2d(self, values, dtype) -> torch.Tensor:
        """A device tensor of host values, copied from pinned memory without blocking."""
        if isinstance(values, torch.Tensor):
            host = values.to(dtype)
            host = host.pin_memory() if self._pin else host
        else:
            host = torch.tensor(values, dtype=dtype, pin_memory=self._pin)
        return host.to(self.device, non_blocking=True)

    def view(self, size: int) -> StepView:
        """Rows 0 … size-1 with the current block table (the same tensors every time)."""
        key = (size, self.width)
        v = self._views.get(key)
        if v is None:
            v = self._views[key] = StepView(
                tokens=self.tokens[:size],
                pos=self.pos[:size],
                active=self.active[:size],
                table=self.table[:size],
                indptr=self.indptr[: size + 1],
                temperature=self.temperature[:size],
                top_k=self.top_k[:size],
                top_p=self.top_p[:size],
                presence_penalty=self.presence_penalty[:size],
                seeds=self.seeds[:size],
                offsets=self.offsets[:size],
                seen=self.seen[:size],
                out=self.out[:size],
            )
        return v

    def rows_sampling(self, rows: torch.Tensor, penalty: bool, offset: int = 0) -> SamplingTensors:
        """Sampling tensors of the given rows (int64 [n] on the device)."""
        return SamplingTensors(
            temperature=self.temperature[rows],
            top_k=self.top_k[rows],
            top_p=self.top_p[rows],
            presence_penalty=self.presence_penalty[rows],
            seen=self.seen[rows] if penalty else None,
            seeds=self.seeds[rows],
            offsets=self.offsets[rows] + offset,
        )

    def set_width(self, width: int) -> None:
        """Switch to a block table ``width`` pages wide (a power of two), keeping every row."""
        if width == self.width:
            return
        new = self.tables.get(width)
        if new is None:
            new = self.tables[width] = torch.zeros(
                self.rows, width, dtype=torch.int32, device=self.device
            )
        keep = min(width, self.width)
        new[:, :keep].copy_(self.table[:, :keep])
        self.width = width

    def admit(self, rows: list[int], params: list, pages: list[list[int]]) -> None:
        """Reset rows for new requests: sampling parameters, empty cache, no seen tokens, the
        pages already reserved (each list at most ``width`` long), not decoding yet."""
        idx = self.h2d(rows, torch.int64)
        floats = self.h2d(
            [[p.temperature, p.top_p, p.presence_penalty] for p in params], torch.float32
        )
        ints = self.h2d([[p.top_k, p.seed] for p in params], torch.int64)
        table = self.h2d([pg + [0] * (self.width - len(pg)) for pg in pages], torch.int32)
        self.temperature[idx] = floats[:, 0]
        self.top_p[idx] = floats[:, 1]
        self.presence_penalty[idx] = floats[:, 2]
        self.top_k[idx] = ints[:, 0].int()
        self.seeds[idx] = ints[:, 1]
        for buf in (self.pos, self.offsets, self.seen, self.out, self.tokens):
            buf[idx] = 0
        self.active[idx] = False
        self.table[idx] = table

    def add_pages(self, entries: list[tuple[int, int, int]]) -> None:
        """Write (row, column, page) entries into the block table (pages added to requests)."""
        if entries:
            e = self.h2d(entries, torch.int64)
            self.table[e[:, 0], e[:, 1]] = e[:, 2].int()

    def move(self, src: int, dst: int) -> None:
        """Row src's request now lives in row dst; row src becomes free (inactive)."""
        for buf in (
            self.tokens,
            self.pos,
            self.active,
            self.temperature,
            self.top_k,
            self.top_p,
            self.presence_penalty,
            self.seeds,
            self.offsets,
            self.seen,
            self.table,
        ):
            buf[dst] = buf[src]
        self.active[src] = False

    def finish_prefill(self, rows: torch.Tensor, tokens: torch.Tensor, pos, draws: int) -> None:
        """Rows whose prompt is in the cache: tokens int64 [n, w] are their first output (and
        next input), pos int64 [n] their cache length; they decode from the next step on."""
        w = self.tokens.shape[1]
        self.tokens[rows] = tokens[:, :w]
        self.out[rows] = -1
        self.out[rows, : tokens.shape[1]] = tokens
        self.pos[rows] = pos
        self.offsets[rows] += draws
        self.active[rows] = True

"""CUDA-graph capture of the decode step (modes "ar" and "pipo", kernel path, GPU only).

One graph per batch-size bucket (1, 2, 4, 8, …, up to the engine's max_batch_size), captured on
first use. A batch of n requests runs in the smallest bucket >= n; the spare rows write nothing
(slot -1) and their outputs are ignored. Each step copies the batch's inputs (token ids, positions,
slots, block table, sampling parameters) into the graph's static buffers, replays the graph and
reads the emitted tokens back — the only device-to-host sync of the step.

The static block table is num_pages wide, so it holds any request. A batch falls back to the
eager step when the graph cannot express it: presence penalties (the seen bitmask is rebuilt
each step).

On a CPU the same static-buffer step runs eagerly (no capture), which lets the tests check the
bucket padding and buffer filling; the capture itself is written for GPUs and untested here (no
GPU on the development machine).
"""

from __future__ import annotations

import torch

from .model import AttnMeta, SamplingTensors

__all__ = ["DecodeGraphs"]


class _Bucket:
    """Static input/output buffers and the captured graph of one batch size."""

    def __init__(self, engine, size: int, width: int) -> None:
        dev = engine.device
        self.size, self.width = size, width
        pipo = engine.mode == "pipo"
        self.inputs = torch.zeros((size, 2) if pipo else (size,), dtype=torch.int64, device=dev)
        self.meta = AttnMeta(
            positions=torch.zeros(size, dtype=torch.int64, device=dev),
            slot_mapping=torch.full((size,), -1, dtype=torch.int64, device=dev),
            block_table=torch.zeros(size, width, dtype=torch.int32, device=dev),
            kv_lens=torch.ones(size, dtype=torch.int32, device=dev),
            q_indptr=torch.arange(size + 1, dtype=torch.int32, device=dev),
        )
        self.sampling = SamplingTensors(
            temperature=torch.zeros(size, dtype=torch.float32, device=dev),
            top_k=torch.zeros(size, dtype=torch.int32, device=dev),
            top_p=torch.ones(size, dtype=torch.float32, device=dev),
            presence_penalty=torch.zeros(size, dtype=torch.float32, device=dev),
            seen=None,
            seeds=torch.zeros(size, dtype=torch.int64, device=dev),
            offsets=torch.zeros(size, dtype=torch.int64, device=dev),
        )
        # PIPO samples twice per step: token2 uses the next offsets.
        self.offsets2 = torch.zeros(size, dtype=torch.int64, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None


class DecodeGraphs:
    """Captured decode steps of an Engine (see the module docstring)."""

    def __init__(self, engine) -> None:
        if engine.mode not in ("ar", "pipo"):
            raise ValueError(
                f"cuda_graphs: only modes 'ar' and 'pipo' are captured, not {engine.mode!r}"
            )
        self.engine = engine
        self.buckets: dict[int, _Bucket] = {}
        self.pool = None
        self.capture = engine.device.type == "cuda"
        self.enabled = engine.use_kernels

    def _bucket_size(self, n: int) -> int:
        size = 1
        while size < n:
            size *= 2
        return size

    def ready(self, seqs) -> bool:
        """Whether this batch can run in a graph."""
        if not self.enabled or len(seqs) > self.engine.max_batch_size:
            return False
        return not any(s.params.presence_penalty for s in seqs)

    def _step(self, b: _Bucket) -> torch.Tensor:
        e, model = self.engine, self.engine.model
        hidden = model(b.inputs, b.meta, e.cache, True)
        token1, _ = model.sample(hidden, b.sampling, True)
        if e.mode == "ar":
            return token1
        if e.threshold >= 1:
            return torch.stack([token1, torch.full_like(token1, e.config.pad_id)], 1)
        mtp = model.mtp_forward(token1, hidden, b.meta, e.cache, True)
        st2 = SamplingTensors(**{**b.sampling.__dict__, "offsets": b.offsets2})
        token2, _ = model.sample(mtp, st2, True)
        pairs, _ = model.gate(hidden, mtp, token1, token2, e.threshold, True)
        return pairs

    def _capture(self, b: _Bucket) -> None:
        stream = torch.cuda.Stream(self.engine.device)
        stream.wait_stream(torch.cuda.current_stream(self.engine.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: lazy initialisation must not happen during capture
                self._step(b)
        torch.cuda.current_stream(self.engine.device).wait_stream(stream)
        b.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(b.graph, pool=self.pool):
            b.output = self._step(b)
        self.pool = b.graph.pool()

    def _fill(self, b: _Bucket, seqs) -> None:
        """Copy this step's inputs into the bucket's static buffers (spare rows: no writes)."""
        e, n = self.engine, len(seqs)
        pad_rows = b.size - n

        def put(dst: torch.Tensor, values, fill) -> None:
            host = torch.tensor(list(values) + [fill] * pad_rows, dtype=dst.dtype)
            dst.copy_(host.view(dst.shape), non_blocking=True)

        inputs = torch.zeros(b.inputs.shape, dtype=torch.int64)
        inputs[:n] = torch.tensor([s.last if e.mode == "pipo" else s.last[0] for s in seqs])
        b.inputs.copy_(inputs, non_blocking=True)
        put(b.meta.positions, [s.pos for s in seqs], 0)
        put(b.meta.slot_mapping, [e.cache.slots(s.rid, s.pos, s.pos + 1)[0] for s in seqs], -1)
        put(b.meta.kv_lens, [s.pos + 1 for s in seqs], 1)
        b.meta.block_table.copy_(
            e.cache.block_table([s.rid for s in seqs] + [-1] * pad_rows, width=b.width),
            non_blocking=True,
        )
        p = [s.params for s in seqs]
        put(b.sampling.temperature, [x.temperature for x in p], 0.0)
        put(b.sampling.top_k, [x.top_k for x in p], 0)
        put(b.sampling.top_p, [x.top_p for x in p], 1.0)
        put(b.sampling.seeds, [x.seed for x in p], 0)
        put(b.sampling.offsets, [s.offset() for s in seqs], 0)
        if e.mode == "pipo" and e.threshold < 1:
            put(b.offsets2, [s.offset() for s in seqs], 0)

    def run(self, seqs) -> list:
        """One decode step of seqs: tokens (ar) or [token1, token2-or-PAD] pairs (pipo)."""
        size = self._bucket_size(len(seqs))
        b = self.buckets.get(size)
        if b is None:
            b = self.buckets[size] = _Bucket(self.engine, size, self.engine.cache.num_pages)
            if self.capture:
                self._capture(b)
        self._fill(b, seqs)
        if self.capture:
            b.graph.replay()
        else:
            b.output = self._step(b)
        return b.output[: len(seqs)].tolist()

"""CUDA-graph capture of a mode's decode step (modes "ar", "pipo", and "spec" with a
capturable drafter).

The captured function is the mode's own ``step(view, penalty)`` (``pipo.modes``): a pure function
of the persistent ``BatchState`` buffers, which it reads and advances in place. One graph per
(batch bucket, block-table width, penalty on/off, the mode's variant), captured on first use: a batch of n rows runs
in the smallest power-of-two bucket >= n; the spare rows are inactive (they write nothing and
keep their state). The whole PIPO pass is inside the graph — fold, backbone, token1, unfold, MTP
layer, token2, confidence gate — and so is the presence penalty (the seen bitmask is a state
buffer updated by the step).

On a CPU there is no capture: ``run`` calls the same step eagerly over the padded bucket, which
lets the tests check the bucket padding. The capture itself is untested on a GPU so far.
"""

from __future__ import annotations

import torch

from .state import BatchState

__all__ = ["StepGraphs"]


class StepGraphs:
    """Captured decode steps over a BatchState (see the module docstring)."""

    def __init__(self, step, state: BatchState, device: torch.device, extra_mutable=None) -> None:
        self.step, self.state = step, state
        self.extra_mutable = extra_mutable or list
        self.capture = torch.device(device).type == "cuda"
        self.graphs: dict[tuple, torch.cuda.CUDAGraph | None] = {}
        self.pool = None

    @property
    def buckets(self) -> list[int]:
        """Batch sizes used so far."""
        return sorted({key[0] for key in self.graphs})

    def run(self, size: int, penalty: bool, variant=None) -> None:
        """One decode step over rows 0 … size-1 of the state (``variant``: the mode's, e.g.
        spec's greedy / sampled rows, which the step reads from the mode)."""
        key = (size, self.state.width, penalty, variant)
        view = self.state.view(size)
        if not self.capture:
            self.graphs[key] = None
            self.step(view, penalty)
            return
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._capture(view, penalty)
        graph.replay()

    def _capture(self, view, penalty: bool) -> torch.cuda.CUDAGraph:
        # The warm-up runs really execute the step, which advances the state: save the buffers
        # it changes and put them back (its K/V writes are redone identically by the replay).
        mutable = [view.tokens, view.pos, view.offsets, view.seen, view.out]
        mutable += self.extra_mutable()  # e.g. a spec drafter's per-row buffers
        saved = [t.clone() for t in mutable]
        stream = torch.cuda.Stream(view.pos.device)
        stream.wait_stream(torch.cuda.current_stream(view.pos.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # lazy initialisation must not happen during capture
                self.step(view, penalty)
                for t, s in zip(mutable, saved, strict=True):
                    t.copy_(s)
        torch.cuda.current_stream(view.pos.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.step(view, penalty)
        self.pool = graph.pool()
        return graph

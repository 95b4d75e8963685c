"""Batched generation in three modes over a paged KV cache (the modes live in ``pipo.modes``).

The engine only schedules: it admits requests (reserving their prompts' pages), plans a prefill
chunk of at most ``prefill_chunk`` cache entries, reserves each decoding request's next page,
launches the mode's decode step and prefill, reads the emitted tokens back once, emits them
(EOS, stop strings, lengths) and retires finished requests. It never calls an op or does
probability math itself: the mode does, through the model.

Modes "ar" and "pipo" keep their batch on the device (``pipo.state.BatchState``): a step reads
and advances persistent buffers, so the only device-to-host transfer of an iteration is the read
of the emitted tokens (``Stats.d2h_transfers`` counts them). With ``overlap=True`` that read is
one iteration late: iteration n+1 is planned and launched before n's tokens are read, so the host
work hides behind the device's (a request that finished at n then runs one wasted step, whose
output is dropped). CUDA graphs capture the mode's own ``step`` function per (batch bucket,
block-table width, penalty) (``pipo.cuda_graphs``); they are on by default on a CUDA device.

Mode "spec" runs the same loop: its decode step is one draft-and-verify round
(``pipo.modes.spec``) over the same BatchState, emitting 1 … max_depth + 1 tokens per request and
round, read back once; a ``Drafter`` (``pipo.drafters``) proposes the trees.

Requests of different lengths run together. A request that runs out of KV pages stops with
``finish_reason == "cache_full"`` (its pages are freed); the other requests go on untouched.
Pages are released on every exit path, an exception or an abandoned stream included.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from .drafters import Drafter, DraftOptions
from .drafters import make as make_drafter
from .kv_cache import CacheFullError, PagedKVCache
from .model import ARModel, PIPOModel
from .modes import ARMode, Mode, Piece, PIPOMode, SpecMode
from .requests import Request, Result, SamplingParams, Stats
from .state import BatchState, bucket
from .tokenizer import ByteTokenizer

__all__ = ["MODES", "Engine", "Request", "Result", "SamplingParams", "Stats"]

MODES = ("ar", "pipo", "spec")


class Tokenizer(Protocol):
    """What the engine needs of a tokenizer (ByteTokenizer, or a Hugging Face one's wrapper)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class _Seq:
    """The engine's state of one request (host side)."""

    def __init__(self, rid: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.rid, self.prompt, self.params = rid, prompt_ids, params
        self.units: torch.Tensor | None = None  # the prompt as cache-entry inputs
        self.out: list[int] = []  # every generated token (pipo: model-chosen PADs included)
        self.seen: set[int] = set()  # generated ids
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.stop_text: str | None = None
        self.pos = 0  # cache entries launched: tokens (ar, spec) or pairs (pipo)
        self.row = -1  # batch row
        self.filled = 0  # prompt entries prefilled so far
        self.decoding = False  # prompt in the cache: the request decodes
        self.stall: CacheFullError | None = None  # no page for the next step
        self.t_first: float | None = None  # perf_counter() when the first token was emitted
        self.t_last: float | None = None
        self.streamed = 0  # characters of text handed to a stream

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Engine:
    """Generation engine. ``model`` is an ARModel for mode "ar" and a PIPOModel for mode "pipo".
    Mode "spec" verifies with an ARModel (``verifier``, or ``model`` when it is one) and drafts
    with ``drafter``; the PIPO drafter drafts with ``model`` (a PIPOModel).

    Args:
        use_kernels: run the pipo ops (``pipo.ops``); False runs the plain-PyTorch reference
            (sampling: the ops' ``backend="torch"``, so both paths draw the same tokens).
        threshold: PIPO's confidence gate θ: < 0 always keeps token2, >= 1 never (the MTP head
            is then skipped), otherwise token2 is kept where confidence >= θ.
        num_pages, page_size: size of each paged KV cache (spec mode: the verifier's, and the
            PIPO drafter's own).
        max_batch_size: requests decoded together; the others wait for a free place.
        drafter: spec mode's drafter: a name of ``pipo.drafters.DRAFTERS`` ("ngram", "pipo",
            "mtp", "medusa") or a ``Drafter``; None: "pipo" when model is a PIPOModel, else
            "ngram".
        draft_tokens, tree: the draft tree: draft_tokens nodes beyond the root, shaped
            "chain", "topk" (draft_topk children at each level's first node) or "dynamic"
            (EAGLE-2, draft_topk branching, draft_depth levels). None: 4 (the PIPO drafter:
            its own tree of draft_topk / draft_steps).
        draft_topk, draft_steps: the PIPO drafter's tree when draft_tokens is None: draft_topk
            token1 branches each with its token2, then draft_steps - 1 more pairs on the best.
        draft_depth: the dynamic tree's depth (0: draft_tokens).
        draft_checkpoint: the drafter's weights, where it has any.
        cuda_graphs: capture the decode step (None: on for CUDA with kernels; mode spec only
            with a ``capturable`` drafter). On a CPU, True runs the same bucket-padded step
            eagerly.
        prefill_chunk: most prompt entries (tokens, or pairs in mode pipo) per prefill pass;
            longer prompts are split and other requests decode between the chunks.
        overlap: read each iteration's tokens one iteration late (see the module docstring;
            not mode spec, whose next round depends on this one's tokens).
        compile_step: ``torch.compile`` the decode step of modes "ar" / "pipo" (inductor; one
            compilation per batch bucket and block-table width, tens of seconds each on a CPU).

    Example::

        engine = Engine(pipo_model, mode="pipo", threshold=0.5)
        results = engine.generate([Request("Hello", SamplingParams(max_new_tokens=32))])
        print(results[0].text, engine.stats.line())
        for i, text in engine.stream([Request("Hello")]):   # text as it is emitted
            print(text, end="", flush=True)
    """

    def __init__(
        self,
        model: ARModel | PIPOModel,
        *,
        mode: str = "pipo",
        verifier: ARModel | None = None,
        tokenizer: Tokenizer | None = None,
        use_kernels: bool = True,
        threshold: float = 0.5,
        num_pages: int = 512,
        page_size: int = 16,
        max_batch_size: int = 16,
        drafter: str | Drafter | None = None,
        draft_tokens: int | None = None,
        tree: str = "chain",
        draft_topk: int = 4,
        draft_steps: int = 1,
        draft_depth: int = 0,
        draft_checkpoint: str | None = None,
        cuda_graphs: bool | None = None,
        prefill_chunk: int = 512,
        overlap: bool = False,
        compile_step: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode == "ar" and not isinstance(model, ARModel):
            raise ValueError("model: mode 'ar' needs an ARModel")
        if mode == "pipo" and not isinstance(model, PIPOModel):
            raise ValueError(f"model: mode {mode!r} needs a PIPOModel")
        if draft_topk < 1 or draft_steps < 1:
            raise ValueError(
                f"draft_topk, draft_steps: expected >= 1, got {draft_topk}, {draft_steps}"
            )
        self.drafter: Drafter | None = None
        if mode == "spec":
            if overlap:
                raise ValueError("overlap: mode 'spec' drafts from the previous round's tokens")
            if compile_step:
                raise ValueError("compile_step: mode 'spec' rounds are not compiled")
            model, verifier, self.drafter = self._spec_models(
                model,
                verifier,
                drafter,
                draft_tokens,
                tree,
                draft_topk,
                draft_steps,
                draft_depth,
                draft_checkpoint,
            )
            if cuda_graphs and not self.drafter.capturable:
                raise ValueError(
                    f"cuda_graphs: drafter {self.drafter.name!r} works on the host between "
                    "rounds and cannot be captured"
                )
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected >= 1, got {max_batch_size}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk: expected >= 1, got {prefill_chunk}")
        self.mode, self.model, self.verifier = mode, model, verifier
        self.tokenizer = tokenizer or ByteTokenizer()
        self.use_kernels, self.threshold = use_kernels, float(threshold)
        self.max_batch_size, self.prefill_chunk, self.overlap = (
            max_batch_size,
            prefill_chunk,
            overlap,
        )
        self.draft_topk, self.draft_steps = draft_topk, draft_steps
        self.config = model.config
        self.device = model.embed_tokens.weight.device
        self.cache: PagedKVCache = model.new_cache(num_pages, page_size)
        kw = dict(use_kernels=use_kernels)
        if mode == "ar":
            self.impl: Mode = ARMode(model, self.cache, threshold=threshold, **kw)
        elif mode == "pipo":
            self.impl = PIPOMode(model, self.cache, threshold=threshold, **kw)
        else:
            self.impl = SpecMode(model, self.cache, self.drafter, **kw)
        self.graphs = None
        self._step_fn = self.impl.step
        self._compiled = compile_step
        if self._compiled:
            self._step_fn = torch.compile(self.impl.step, dynamic=False)
        self.state = BatchState(
            max_batch_size,
            self.impl.token_width,
            self.config.vocab_size,
            num_pages,
            self.device,
            out_width=self.impl.out_width,
        )
        if cuda_graphs is None:
            capturable = self.drafter is None or self.drafter.capturable
            cuda_graphs = self.device.type == "cuda" and use_kernels and capturable
        if cuda_graphs and self.device.type == "cuda" and not use_kernels:
            raise ValueError(
                "cuda_graphs: the reference path (use_kernels=False) reads tensors on the "
                "host inside a step and cannot be captured; use the kernels"
            )
        if cuda_graphs:
            from .cuda_graphs import StepGraphs

            self.graphs = StepGraphs(
                self._step_fn, self.state, self.device, extra_mutable=self.impl.mutable
            )
        self.stats = Stats(mode)
        self._events: list[tuple[_Seq, int]] = []

    # ------------------------------------------------------------------ public API

    def generate(
        self, requests: list[Request], on_token: Callable[[int, int], None] | None = None
    ) -> list[Result]:
        """Run every request to completion; returns one Result per request, in order.
        ``on_token(i, token_id)`` is called for each token of request i as it is emitted."""
        for s, token in self._generate(requests):
            if on_token is not None:
                on_token(s.rid, token)
        return self.results

    def stream(self, requests: list[Request]) -> Iterator[tuple[int, str]]:
        """Run the requests, yielding (i, text) pieces of request i's output as they are emitted
        (concatenated they give Result.text; text that may still turn into a stop string or an
        incomplete character is held back). ``self.results`` holds the results afterwards."""
        seqs: list[_Seq] = []
        for s, _ in self._generate(requests, seqs):
            piece = self._stream_piece(s)
            if piece:
                yield s.rid, piece
        for s in seqs:
            piece = self._stream_piece(s)
            if piece:
                yield s.rid, piece

    # ------------------------------------------------------------------ the loop

    @torch.inference_mode()
    def _generate(self, requests: list[Request], seqs_out: list | None = None):
        seqs = [self._new_seq(i, r) for i, r in enumerate(requests)]
        if seqs_out is not None:
            seqs_out.extend(seqs)
        self.stats = Stats(self.mode, requests=len(seqs))
        self.impl.stats = self.stats
        self.results: list[Result] = []
        start = time.perf_counter()
        try:
            for _ in self._loop(seqs):
                events, self._events = self._events, []
                yield from events
        finally:  # an exception or a closed stream must not leave pages owned by dead requests
            self._events = []
            for s in seqs:
                for c in self._caches():
                    c.release(s.rid)
            self.state.active.zero_()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.seconds = time.perf_counter() - start
        self.stats.new_tokens = sum(len(s.out) for s in seqs)
        self._latency_stats(seqs, start)
        self.results = [self._result(s) for s in seqs]

    def _loop(self, seqs: list[_Seq]):
        """One iteration = decode step (spec: a round) and/or prefill chunk, one read-back.
        Yields once per iteration (after the emitted tokens are in self._events)."""
        m, st = self.impl, self.state
        waiting, rows = deque(seqs), []
        pending = None
        while waiting or rows or pending:
            admitted = self._admit(waiting, rows)
            new_pages: list[tuple[int, int, int]] = []
            stepping = [s for s in rows if s.decoding and not s.done and s.stall is None]
            stepping = [s for s in stepping if self._reserve_step(s, new_pages)]
            pieces = self._plan_prefill(rows)
            if rows:
                width = max(len(self.cache.pages(s.rid)) for s in rows)
                st.set_width(bucket(width, cap=self.cache.num_pages))
            if admitted:
                st.admit(
                    [s.row for s in admitted],
                    [s.params for s in admitted],
                    [self.cache.pages(s.rid) for s in admitted],
                )
                m.admit([s.row for s in admitted], admitted)
            st.add_pages(new_pages)
            penalty = any(s.params.presence_penalty for s in rows)
            launched = []
            if stepping:
                m.prepare(rows, [s in stepping for s in rows])
                self._step(len(rows), penalty)
                if self.mode != "spec":  # a round's length is known once its tokens are read
                    for s in stepping:
                        s.pos += 1
                launched += stepping
            if pieces:
                m.prefill(st, pieces, penalty)
                for p in pieces:
                    p.seq.filled += p.n
                    if p.final:
                        p.seq.decoding, p.seq.pos = True, len(p.seq.units)
                        launched.append(p.seq)
            snap = None
            if launched:
                self.stats.steps += 1
                rounds = set(map(id, stepping))
                snap = (
                    self._snapshot(len(rows)),
                    [(s, s.row, id(s) in rounds) for s in launched],
                )
            ready, pending = (pending, snap) if self.overlap else (snap, None)
            if ready is not None:
                self._process(*ready)
            for s in rows:
                if s.stall is not None and not s.done:
                    self._fail(s, s.stall)
            self._track_kv()
            self._retire(rows)
            yield

    def _step(self, n: int, penalty: bool) -> None:
        if self.graphs is not None:
            self.graphs.run(bucket(n, cap=self.max_batch_size), penalty, self.impl.variant)
        elif self._compiled:  # bucketed sizes bound the recompilations
            self._step_fn(self.state.view(bucket(n, cap=self.max_batch_size)), penalty)
        else:
            self._step_fn(self.state.view(n), penalty)

    def _snapshot(self, n: int):
        """This iteration's emitted tokens, int64 [n, max(2, token_width)], kept until they are read: a pinned host
        copy under way (CUDA, overlap), a device copy (CPU, overlap) or the buffer itself."""
        out = self.state.out[:n]
        if not self.overlap:
            return out, None
        if self.device.type != "cuda":
            return out.clone(), None
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _read_back(self, snap) -> list[list[int]]:
        """The one device-to-host transfer of an iteration."""
        tokens, event = snap
        if event is not None:
            event.synchronize()
        self.stats.d2h_transfers += 1
        return tokens.tolist()

    def _process(self, snap, launched: list[tuple[_Seq, int, bool]]) -> None:
        values = self._read_back(snap)
        pad, pipo = self.config.pad_id, self.mode == "pipo"
        if self.mode == "spec":
            self._process_rounds(values, launched)
            return
        for s, row, _ in launched:
            if s.done:  # finished one iteration earlier (overlap): a wasted step
                continue
            group = values[row]
            self.stats.backbone_passes += 1
            if not self._emit(s, group[0]) or not pipo:
                continue
            rest = group[1 : self.impl.fold]
            if self.impl.mtp:
                self.stats.token2_proposed += len(rest)
                self.stats.mtp_passes += 1
            for j, t in enumerate(rest):
                if t == pad:  # a gated-off proposal (or a model-chosen PAD): nothing to show
                    continue
                self.stats.token2_committed += 1
                self.stats.count_commit(j)
                if not self._emit(s, t):
                    break

    def _process_rounds(self, values, launched: list[tuple[_Seq, int, bool]]) -> None:
        """Mode spec: row r emitted values[r] (-1 padded): a round's accepted draft tokens and
        its bonus token, or a prefill's first token."""
        for s, row, is_round in launched:
            tokens = [t for t in values[row] if t >= 0]
            self.stats.backbone_passes += 1
            if is_round:
                s.pos += len(tokens)
                self.stats.verify_rounds += 1
                self.stats.accepted_draft_tokens += len(tokens) - 1
            for t in tokens:
                if not self._emit(s, t):
                    break

    def _plan_prefill(self, rows: list[_Seq]) -> list[Piece]:
        budget, pieces = self.prefill_chunk, []
        for s in rows:
            if budget == 0:
                break
            if s.decoding or s.done:
                continue
            n = min(len(s.units) - s.filled, budget)
            pieces.append(Piece(s, s.row, s.filled, n, s.filled + n == len(s.units)))
            budget -= n
        return pieces

    def _reserve_step(self, s: _Seq, new_pages: list) -> bool:
        had = len(self.cache.pages(s.rid))
        try:
            for cache, n in self.impl.decode_need(s):
                cache.reserve(s.rid, n)
        except CacheFullError as err:
            # Not failed yet: with overlap, the tokens of the previous step may still finish it.
            s.stall = err
            self.state.active[s.row] = False
            return False
        pages = self.cache.pages(s.rid)
        new_pages += [(s.row, j, pages[j]) for j in range(had, len(pages))]
        return True

    # ------------------------------------------------------------------ bookkeeping

    def _new_seq(self, rid: int, req: Request) -> _Seq:
        if isinstance(req.prompt, str):
            ids = self.tokenizer.encode(req.prompt)
        else:
            ids = [int(t) for t in req.prompt]
        if not ids:
            raise ValueError(f"requests[{rid}].prompt: expected at least one token")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"requests[{rid}].prompt: token ids {bad[:4]} outside the vocabulary")
        s = _Seq(rid, ids, req.params)
        s.units = self.impl.units(ids)
        return s

    def _caches(self) -> list[PagedKVCache]:
        return self.impl.caches()

    def _fail(self, s: _Seq, err: CacheFullError) -> None:
        s.finish_reason, s.error = "cache_full", str(err)
        for c in self._caches():
            c.release(s.rid)

    def _spec_models(
        self, model, verifier, drafter, draft_tokens, tree, topk, steps, depth, checkpoint
    ):
        """(verifier, verifier, Drafter) of mode spec (see the class docstring)."""
        if verifier is None and isinstance(model, ARModel):
            verifier = model
        if not isinstance(verifier, ARModel):
            raise ValueError("verifier: mode 'spec' needs an ARModel to verify the drafts")
        draft_model = model if isinstance(model, PIPOModel) else None
        if draft_model is not None and draft_model.config.vocab_size != verifier.config.vocab_size:
            raise ValueError(
                f"verifier: vocab_size {verifier.config.vocab_size} differs from the "
                f"drafter's {draft_model.config.vocab_size}"
            )
        if isinstance(drafter, Drafter):
            return verifier, verifier, drafter
        name = drafter or ("pipo" if draft_model is not None else "ngram")
        if draft_tokens is None and name == "pipo":
            opts = DraftOptions(2 * topk + 2 * (steps - 1), "topk", topk, depth, checkpoint)
        else:
            opts = DraftOptions(draft_tokens or 4, tree, topk, depth, checkpoint)
        return verifier, verifier, make_drafter(name, verifier, opts, draft_model)

    def _reserve(self, s: _Seq, cache: PagedKVCache, length: int) -> bool:
        try:
            cache.reserve(s.rid, length)
        except CacheFullError as err:
            self._fail(s, err)
            return False
        return True

    def _admit(self, waiting: deque, rows: list[_Seq]) -> list[_Seq]:
        admitted: list[_Seq] = []
        while waiting and len(rows) < self.max_batch_size:
            s = waiting[0]
            need = self.impl.prefill_need(s)
            fits = all(c.pages_needed(s.rid, n) <= c.num_free_pages for c, n in need)
            if not fits and rows:
                break  # wait for running requests to free pages
            waiting.popleft()
            if all(self._reserve(s, c, n) for c, n in need):
                s.row = len(rows)
                rows.append(s)
                admitted.append(s)
        return admitted

    def _retire(self, rows: list[_Seq]) -> None:
        """Free finished requests' pages; the last row moves into each freed row."""
        for r in range(len(rows) - 1, -1, -1):
            s = rows[r]
            if not s.done:
                continue
            for c in self._caches():
                c.release(s.rid)
            last = rows.pop()
            if last is not s:
                rows[r], last.row = last, r
                self.state.move(len(rows), r)
                self.impl.move(len(rows), r)
            else:
                self.state.active[r] = False

    def _emit(self, s: _Seq, token: int) -> bool:
        """Append one generated token; False once the request is finished."""
        p, cfg = s.params, self.config
        if token == cfg.eos_id and not p.ignore_eos:
            s.finish_reason = "eos"
            return False
        s.out.append(token)
        if token != self.impl.gap_id:
            s.seen.add(token)
            # Tokens reach the host after a device sync, so these times are real.
            s.t_last = time.perf_counter()
            s.t_first = s.t_first or s.t_last
            self._events.append((s, token))
        if p.stop:
            text = self._decode(s.out)
            hits = [i for i in (text.find(x) for x in p.stop) if i >= 0]
            if hits:
                s.stop_text, s.finish_reason = text[: min(hits)], "stop"
                return False
        if len(s.out) >= p.max_new_tokens:
            s.finish_reason = "length"
            return False
        return True

    def _stream_piece(self, s: _Seq) -> str:
        """The part of s's visible text not streamed yet."""
        if s.stop_text is not None:
            text = s.stop_text
        else:
            text = self._decode(s.out)
            if not s.done:
                text = text.rstrip("\ufffd")  # an incomplete multi-byte character
                hold = max((len(x) for x in s.params.stop), default=1) - 1
                text = text[: max(0, len(text) - hold)]
        piece = text[s.streamed :]
        s.streamed = max(s.streamed, len(text))
        return piece

    def _track_kv(self) -> None:
        held = sum((c.num_pages - c.num_free_pages) * c.bytes_per_page for c in self._caches())
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, held)

    def _latency_stats(self, seqs: list[_Seq], start: float) -> None:
        firsts = [s.t_first - start for s in seqs if s.t_first is not None]
        gap = self.impl.gap_id
        per_token = [
            (s.t_last - s.t_first) / (n - 1)
            for s in seqs
            if (n := sum(t != gap for t in s.out)) > 1
        ]
        self.stats.ttft_s = sum(firsts) / len(firsts) if firsts else 0.0
        self.stats.tpot_s = sum(per_token) / len(per_token) if per_token else 0.0

    def _decode(self, ids: list[int]) -> str:
        gap = self.impl.gap_id
        return self.tokenizer.decode([t for t in ids if t != gap])

    def _result(self, s: _Seq) -> Result:
        gap = self.impl.gap_id
        tokens = [t for t in s.out if t != gap]
        text = s.stop_text if s.stop_text is not None else self._decode(s.out)
        return Result(s.prompt, tokens, text, s.finish_reason or "length", s.error)

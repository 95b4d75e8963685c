"""Batched generation in three modes over a paged KV cache.

- ``ar``:   plain decoding with an ``ARModel`` (one token per backbone pass).
- ``pipo``: PIPO decoding with a ``PIPOModel``: prompts folded into pairs (an odd prompt gets one
  PAD), then per step one backbone pass gives token1 and the MTP head token2, which the confidence
  gate keeps or turns into PAD. Unlike the paper's code, the prefill step emits a real token2 too.
- ``spec``: verified speculative decoding. The PIPO model drafts a tree (its top-k token1
  candidates, each with its MTP token2, then ``draft_steps - 1`` more pairs on the best branch);
  the ``ARModel`` scores the whole tree in one pass (paged_attention with a tree mask);
  verify_tree (greedy) or verify_tree_stochastic (sampling) picks the accepted path and
  kv_cache_compact moves its K/V into place. The output has exactly the AR model's distribution;
  greedy output equals the AR model's own greedy output.

Requests of different lengths run together: the engine packs their new tokens into one batch per
pass. A request that runs out of KV pages stops with ``finish_reason == "cache_full"`` (its
pages are freed); the other requests go on untouched.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

from . import ops
from .kv_cache import CacheFullError, PagedKVCache
from .model import ARModel, AttnMeta, PIPOModel, SamplingTensors
from .sampling import (
    counter_generator,
    filtered_probs,
    pack_bitmask,
    penalized_logits,
)
from .tokenizer import ByteTokenizer

__all__ = ["MODES", "Engine", "Request", "Result", "SamplingParams", "Stats"]

MODES = ("ar", "pipo", "spec")


class Tokenizer(Protocol):
    """What the engine needs of a tokenizer (ByteTokenizer, or a Hugging Face one's wrapper)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class SamplingParams:
    """Per-request decoding settings. temperature 0 is greedy; top_k 0 and top_p 1.0 mean no
    limit; presence_penalty is subtracted from the logits of every token generated so far."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    seed: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


@dataclass
class Request:
    """A prompt (text, or token ids used as they are) and its sampling parameters."""

    prompt: str | list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Result:
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens (mode pipo: PAD removed)
    text: str
    finish_reason: str  # "eos" | "stop" | "length" | "cache_full"
    error: str | None = None


@dataclass
class Stats:
    """Counters of one ``generate`` call. Passes are counted per request: a batched pass over B
    requests counts B times, so tokens_per_pass is per request. In mode "spec" they are the
    verifier's passes (the drafter's smaller passes are not counted)."""

    mode: str
    requests: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    backbone_passes: int = 0
    token2_proposed: int = 0
    token2_committed: int = 0
    verify_rounds: int = 0
    accepted_draft_tokens: int = 0
    ttft_s: float = 0.0  # mean over requests: generate() start -> the request's first token
    tpot_s: float = 0.0  # mean over requests: first -> last token, per further token
    peak_kv_bytes: int = 0  # most KV-cache bytes held at once (pages in use, every cache)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.new_tokens / self.backbone_passes if self.backbone_passes else 0.0

    @property
    def token2_commit_rate(self) -> float:
        return self.token2_committed / self.token2_proposed if self.token2_proposed else 0.0

    @property
    def mean_accept_len(self) -> float:
        """Accepted draft tokens per verification round (the bonus token not included)."""
        return self.accepted_draft_tokens / self.verify_rounds if self.verify_rounds else 0.0

    def line(self) -> str:
        parts = [
            f"mode={self.mode}",
            f"requests={self.requests}",
            f"new_tokens={self.new_tokens}",
            f"time={self.seconds:.3f}s",
            f"tokens/s={self.tokens_per_s:.1f}",
            f"tokens/pass={self.tokens_per_pass:.2f}",
            f"ttft={self.ttft_s * 1e3:.1f}ms",
            f"tpot={self.tpot_s * 1e3:.2f}ms",
        ]
        if self.mode == "pipo":
            parts.append(f"token2_commit_rate={self.token2_commit_rate:.3f}")
        if self.mode == "spec":
            parts.append(f"mean_accept_len={self.mean_accept_len:.2f}")
        return " ".join(parts)


class _Seq:
    """The engine's state of one request."""

    def __init__(self, rid: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.rid, self.prompt, self.params = rid, prompt_ids, params
        self.out: list[int] = []  # every generated token (pipo: model-chosen PADs included)
        self.seen: set[int] = set()  # generated ids, for the presence penalty
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.stop_text: str | None = None
        self.samples = 0  # counter of random draws: the offset of the next one
        self.pos = 0  # entries in the (verifier's) KV cache: tokens (ar, spec) or pairs (pipo)
        self.last: list[int] = []  # ar: [next input token]; pipo: the last emitted pair
        self.d_len = 0  # spec: drafter pairs that are final (equal to the committed text)
        self.d_mtp = 0  # spec: drafter MTP entries that are final
        self.t_first: float | None = None  # perf_counter() when the first token was emitted
        self.t_last: float | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def offset(self) -> int:
        self.samples += 1
        return self.samples - 1


class Engine:
    """Generation engine. ``model`` is an ARModel for mode "ar" and a PIPOModel otherwise;
    mode "spec" also needs ``verifier`` (an ARModel on the same vocabulary).

    Args:
        use_kernels: run the pipo ops (``pipo.ops``) instead of the plain-PyTorch path.
        threshold: PIPO's confidence gate θ: < 0 always keeps token2, >= 1 never (the MTP head
            is then skipped), otherwise token2 is kept where confidence >= θ.
        num_pages, page_size: size of each paged KV cache (spec mode has one per model).
        max_batch_size: requests decoded together; the others wait for a free place.
        draft_topk, draft_steps: spec mode's tree: draft_topk token1 branches each with its
            token2, then draft_steps - 1 more (token1, token2) pairs on the best branch.
        cuda_graphs: capture the decode step of modes "ar" / "pipo" per batch-size bucket
            (``pipo.cuda_graphs``; untested on a GPU so far).

    Example::

        engine = Engine(pipo_model, mode="pipo", threshold=0.5)
        results = engine.generate([Request("Hello", SamplingParams(max_new_tokens=32))])
        print(results[0].text, engine.stats.line())
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
        draft_topk: int = 4,
        draft_steps: int = 1,
        cuda_graphs: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode == "ar" and not isinstance(model, ARModel):
            raise ValueError("model: mode 'ar' needs an ARModel")
        if mode in ("pipo", "spec") and not isinstance(model, PIPOModel):
            raise ValueError(f"model: mode {mode!r} needs a PIPOModel")
        if mode == "spec":
            if not isinstance(verifier, ARModel):
                raise ValueError("verifier: mode 'spec' needs an ARModel to verify the drafts")
            if verifier.config.vocab_size != model.config.vocab_size:
                raise ValueError(
                    f"verifier: vocab_size {verifier.config.vocab_size} differs from the "
                    f"drafter's {model.config.vocab_size}"
                )
        if draft_topk < 1 or draft_steps < 1:
            raise ValueError(
                f"draft_topk, draft_steps: expected >= 1, got {draft_topk}, {draft_steps}"
            )
        self.mode, self.model, self.verifier = mode, model, verifier
        self.tokenizer = tokenizer or ByteTokenizer()
        self.use_kernels, self.threshold = use_kernels, float(threshold)
        self.max_batch_size, self.draft_topk, self.draft_steps = (
            max_batch_size,
            draft_topk,
            draft_steps,
        )
        self.config = model.config
        # PAD means "no token" only in PIPO's pairs (a gated-off token2, a model-chosen PAD); in
        # modes ar and spec every generated id is a real token (real vocabularies often reuse
        # EOS as PAD), so nothing is dropped there.
        self.gap_id = model.config.pad_id if mode == "pipo" else -1
        self.device = model.embed_tokens.weight.device
        self.cache: PagedKVCache = model.new_cache(num_pages, page_size)
        self.vcache: PagedKVCache | None = (
            verifier.new_cache(num_pages, page_size) if verifier is not None else None
        )
        self.graphs = None
        if cuda_graphs:
            from .cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self)
        self.stats = Stats(mode)

    # ------------------------------------------------------------------ public API

    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> list[Result]:
        """Run every request to completion; returns one Result per request, in order."""
        seqs = [self._new_seq(i, r) for i, r in enumerate(requests)]
        self.stats = Stats(self.mode, requests=len(seqs))
        waiting, running = deque(seqs), []
        start = time.perf_counter()
        try:
            while waiting or running:
                admitted = self._admit(waiting, running)
                if admitted:
                    self._prefill(admitted)
                running = self._retire(running + admitted)
                if running:
                    self._step(running)
                    self._track_kv()
                    running = self._retire(running)
        finally:  # an exception must not leave pages owned by dead requests
            for s in seqs:
                for c in self._caches():
                    c.release(s.rid)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.seconds = time.perf_counter() - start
        self.stats.new_tokens = sum(len(s.out) for s in seqs)
        self._latency_stats(seqs, start)
        return [self._result(s) for s in seqs]

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
        return _Seq(rid, ids, req.params)

    def _caches(self) -> list[PagedKVCache]:
        return [c for c in (self.cache, self.vcache) if c is not None]

    def _fail(self, s: _Seq, err: CacheFullError) -> None:
        s.finish_reason, s.error = "cache_full", str(err)
        for c in self._caches():
            c.release(s.rid)

    def _reserve(self, s: _Seq, cache: PagedKVCache, length: int) -> bool:
        try:
            cache.reserve(s.rid, length)
        except CacheFullError as err:
            self._fail(s, err)
            return False
        return True

    def _admit(self, waiting: deque, running: list[_Seq]) -> list[_Seq]:
        admitted: list[_Seq] = []
        while waiting and len(running) + len(admitted) < self.max_batch_size:
            s = waiting[0]
            need = self._prefill_need(s)
            fits = all(c.pages_needed(s.rid, n) <= c.num_free_pages for c, n in need)
            if not fits and (running or admitted):
                break  # wait for running requests to free pages
            waiting.popleft()
            if all(self._reserve(s, c, n) for c, n in need):
                admitted.append(s)
        return admitted

    def _prefill_need(self, s: _Seq) -> list[tuple[PagedKVCache, int]]:
        n = len(s.prompt)
        if self.mode == "ar":
            return [(self.cache, n)]
        if self.mode == "pipo":
            return [(self.cache, (n + 1) // 2)]
        return [(self.vcache, n - 1), (self.cache, (n + 1) // 2)]

    def _retire(self, seqs: list[_Seq]) -> list[_Seq]:
        for s in seqs:
            if s.done:
                for c in self._caches():
                    c.release(s.rid)
        return [s for s in seqs if not s.done]

    def _emit(self, s: _Seq, token: int) -> bool:
        """Append one generated token; False once the request is finished."""
        p, cfg = s.params, self.config
        if token == cfg.eos_id and not p.ignore_eos:
            s.finish_reason = "eos"
            return False
        s.out.append(token)
        if token != self.gap_id:
            s.seen.add(token)
            # Tokens reach the host after a device sync (.tolist()), so these times are real.
            s.t_last = time.perf_counter()
            s.t_first = s.t_first or s.t_last
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

    def _track_kv(self) -> None:
        held = sum((c.num_pages - c.num_free_pages) * c.bytes_per_page for c in self._caches())
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, held)

    def _latency_stats(self, seqs: list[_Seq], start: float) -> None:
        firsts = [s.t_first - start for s in seqs if s.t_first is not None]
        per_token = [
            (s.t_last - s.t_first) / (n - 1)
            for s in seqs
            if (n := sum(t != self.gap_id for t in s.out)) > 1
        ]
        self.stats.ttft_s = sum(firsts) / len(firsts) if firsts else 0.0
        self.stats.tpot_s = sum(per_token) / len(per_token) if per_token else 0.0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t != self.gap_id])

    def _result(self, s: _Seq) -> Result:
        tokens = [t for t in s.out if t != self.gap_id]
        text = s.stop_text if s.stop_text is not None else self._decode(s.out)
        return Result(s.prompt, tokens, text, s.finish_reason or "length", s.error)

    # ------------------------------------------------------------------ batch construction

    def _tensor(self, values, dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

    def _meta(
        self,
        cache: PagedKVCache,
        seqs: list[_Seq],
        starts: list[int],
        lens: list[int],
        positions: list[int] | None = None,
        tree_mask: torch.Tensor | None = None,
    ) -> AttnMeta:
        """Sequence b writes lens[b] new entries at cache positions starts[b] … (RoPE positions
        = cache positions unless given, as for draft trees)."""
        slots: list[int] = []
        for s, st, n in zip(seqs, starts, lens, strict=True):
            slots += cache.slots(s.rid, st, st + n)
        if positions is None:
            positions = [p for st, n in zip(starts, lens, strict=True) for p in range(st, st + n)]
        indptr = [0]
        for n in lens:
            indptr.append(indptr[-1] + n)
        return AttnMeta(
            positions=self._tensor(positions, torch.int64),
            slot_mapping=self._tensor(slots, torch.int64),
            block_table=cache.block_table([s.rid for s in seqs], device=self.device),
            kv_lens=self._tensor([st + n for st, n in zip(starts, lens, strict=True)], torch.int32),
            q_indptr=self._tensor(indptr, torch.int32),
            tree_mask=tree_mask,
        )

    def _sampling(self, seqs: list[_Seq], seen: list[set[int]] | None = None) -> SamplingTensors:
        """Sampling tensors with one row per entry of seqs (a request may fill several rows)."""
        p = [s.params for s in seqs]
        bitmask = None
        if any(x.presence_penalty for x in p):
            bitmask = pack_bitmask(
                self._dense(seen if seen is not None else [s.seen for s in seqs])
            )
        return SamplingTensors(
            temperature=self._tensor([x.temperature for x in p], torch.float32),
            top_k=self._tensor([x.top_k for x in p], torch.int32),
            top_p=self._tensor([x.top_p for x in p], torch.float32),
            presence_penalty=self._tensor([x.presence_penalty for x in p], torch.float32),
            seen=bitmask,
            seeds=self._tensor([x.seed for x in p], torch.int64),
            offsets=self._tensor([s.offset() for s in seqs], torch.int64),
        )

    def _compact(self, cache: PagedKVCache, src: list[int], dst: list[int]) -> None:
        if not src:
            return
        src_t, dst_t = self._tensor(src, torch.int64), self._tensor(dst, torch.int64)
        for k_cache, v_cache in zip(cache.k_caches, cache.v_caches, strict=True):
            if self.use_kernels:
                ops.kv_cache_compact(
                    k_cache=k_cache, v_cache=v_cache, src_slots=src_t, dst_slots=dst_t
                )
            else:
                for c in (k_cache, v_cache):
                    rows = c.flatten(0, 1)
                    rows[dst_t] = rows[src_t].clone()

    # ------------------------------------------------------------------ dispatch

    def _prefill(self, seqs: list[_Seq]) -> None:
        {"ar": self._ar_prefill, "pipo": self._pipo_prefill, "spec": self._spec_prefill}[self.mode](
            seqs
        )

    def _step(self, seqs: list[_Seq]) -> None:
        {"ar": self._ar_step, "pipo": self._pipo_step, "spec": self._spec_step}[self.mode](seqs)

    # ------------------------------------------------------------------ ar

    def _ar_prefill(self, seqs: list[_Seq]) -> None:
        lens = [len(s.prompt) for s in seqs]
        meta = self._meta(self.cache, seqs, [0] * len(seqs), lens)
        ids = self._tensor([t for s in seqs for t in s.prompt], torch.int64)
        hidden = self.model(ids, meta, self.cache, self.use_kernels)
        tokens = self._ar_sample(seqs, hidden[meta.q_indptr[1:].long() - 1])
        for s, n in zip(seqs, lens, strict=True):
            s.pos = n
        self._ar_commit(seqs, tokens)

    def _ar_step(self, seqs: list[_Seq]) -> None:
        seqs = [s for s in seqs if self._reserve(s, self.cache, s.pos + 1)]
        if not seqs:
            return
        if self.graphs is not None and self.graphs.ready(seqs):
            tokens = self.graphs.run(seqs)
        else:
            meta = self._meta(self.cache, seqs, [s.pos for s in seqs], [1] * len(seqs))
            ids = self._tensor([s.last[0] for s in seqs], torch.int64)
            tokens = self._ar_sample(seqs, self.model(ids, meta, self.cache, self.use_kernels))
        for s in seqs:
            s.pos += 1
        self._ar_commit(seqs, tokens)

    def _ar_sample(self, seqs: list[_Seq], hidden: torch.Tensor) -> list[int]:
        tokens, _ = self.model.sample(hidden, self._sampling(seqs), self.use_kernels)
        return tokens.tolist()

    def _ar_commit(self, seqs: list[_Seq], tokens: list[int]) -> None:
        for s, t in zip(seqs, tokens, strict=True):
            s.last = [t]
            self.stats.backbone_passes += 1
            self._emit(s, t)

    # ------------------------------------------------------------------ pipo

    def _pipo_pairs(self, ids: list[int]) -> list[list[int]]:
        if len(ids) % 2:
            ids = [*ids, self.config.pad_id]
        return [ids[i : i + 2] for i in range(0, len(ids), 2)]

    def _pipo_prefill(self, seqs: list[_Seq]) -> None:
        pairs = [self._pipo_pairs(s.prompt) for s in seqs]
        lens = [len(p) for p in pairs]
        meta = self._meta(self.cache, seqs, [0] * len(seqs), lens)
        pair_ids = self._tensor([p for ps in pairs for p in ps], torch.int64)
        hidden = self.model(pair_ids, meta, self.cache, self.use_kernels)
        last = meta.q_indptr[1:].long() - 1
        token1, _ = self.model.sample(hidden[last], self._sampling(seqs), self.use_kernels)
        mtp_hidden = None
        if self.threshold < 1:
            # MTP input i is (first token of pair i+1, h_i): known from the prompt except the last.
            firsts = self._tensor([p[0] for ps in pairs for p in ps[1:]], torch.int64)
            mtp_tokens = torch.empty(len(pair_ids), dtype=torch.int64, device=self.device)
            not_last = torch.ones(len(pair_ids), dtype=torch.bool, device=self.device)
            not_last[last] = False
            mtp_tokens[not_last] = firsts
            mtp_tokens[last] = token1
            mtp_hidden = self.model.mtp_forward(
                mtp_tokens, hidden, meta, self.cache, self.use_kernels
            )[last]
        for s, n in zip(seqs, lens, strict=True):
            s.pos = n
        self._pipo_finish(seqs, hidden[last], token1, mtp_hidden)

    def _pipo_step(self, seqs: list[_Seq]) -> None:
        seqs = [s for s in seqs if self._reserve(s, self.cache, s.pos + 1)]
        if not seqs:
            return
        if self.graphs is not None and self.graphs.ready(seqs):
            pairs = self.graphs.run(seqs)
            for s in seqs:
                s.pos += 1
            self._pipo_emit(seqs, pairs)
            return
        meta = self._meta(self.cache, seqs, [s.pos for s in seqs], [1] * len(seqs))
        pair_ids = self._tensor([s.last for s in seqs], torch.int64)
        hidden = self.model(pair_ids, meta, self.cache, self.use_kernels)
        token1, _ = self.model.sample(hidden, self._sampling(seqs), self.use_kernels)
        mtp_hidden = None
        if self.threshold < 1:
            mtp_hidden = self.model.mtp_forward(token1, hidden, meta, self.cache, self.use_kernels)
        for s in seqs:
            s.pos += 1
        self._pipo_finish(seqs, hidden, token1, mtp_hidden)

    def _pipo_finish(self, seqs, hidden, token1, mtp_hidden) -> None:
        """Token2 from the MTP states, the confidence gate, then emit the pairs."""
        if mtp_hidden is None:
            pad = torch.full_like(token1, self.config.pad_id)
            pairs = torch.stack([token1, pad], 1)
        else:
            seen = None
            if any(s.params.presence_penalty for s in seqs):  # token1 counts as seen for token2
                pad = self.config.pad_id
                seen = [s.seen | ({t} - {pad}) for s, t in zip(seqs, token1.tolist(), strict=True)]
            st = self._sampling(seqs, seen)
            token2, _ = self.model.sample(mtp_hidden, st, self.use_kernels)
            pairs, _ = self.model.gate(
                hidden, mtp_hidden, token1, token2, self.threshold, self.use_kernels
            )
        self._pipo_emit(seqs, pairs.tolist())

    def _pipo_emit(self, seqs: list[_Seq], pairs: list[list[int]]) -> None:
        pad = self.config.pad_id
        for s, (t1, t2) in zip(seqs, pairs, strict=True):
            s.last = [t1, t2]
            self.stats.backbone_passes += 1
            if not self._emit(s, t1):
                continue
            if self.threshold < 1:
                self.stats.token2_proposed += 1
            if t2 != pad:
                self.stats.token2_committed += 1
                self._emit(s, t2)

    # ------------------------------------------------------------------ spec

    def _spec_prefill(self, seqs: list[_Seq]) -> None:
        # The verifier caches every committed token but the last one, which is the root of the
        # next draft tree; the drafter catches up at the start of each round.
        todo = [s for s in seqs if len(s.prompt) > 1]
        if todo:
            lens = [len(s.prompt) - 1 for s in todo]
            meta = self._meta(self.vcache, todo, [0] * len(todo), lens)
            ids = self._tensor([t for s in todo for t in s.prompt[:-1]], torch.int64)
            self.verifier(ids, meta, self.vcache, self.use_kernels)
        for s in seqs:
            s.pos = len(s.prompt) - 1

    def _draft_choose(self, model, hidden, seqs: list[_Seq], count: int):
        """``count`` draft tokens per row of hidden [R, H] (rows belong to seqs): the top ones for
        greedy requests, independent samples for sampling requests. Returns (ids [R, count] list,
        probs float32 [R, V] the draws came from; one-hots of the first id for greedy rows)."""
        st = self._sampling(seqs)
        greedy = [s.params.temperature <= 0 for s in seqs]
        if all(greedy):
            _, cand = model.sample(hidden, st, self.use_kernels, num_candidates=count)
            ids = cand.tolist()
            probs = torch.zeros(len(seqs), self.config.vocab_size, device=self.device)
            probs[torch.arange(len(seqs)), cand[:, 0]] = 1.0
            return ids, probs
        seen = None if st.seen is None else self._dense([s.seen for s in seqs])
        logits = penalized_logits(model.logits(hidden), st.presence_penalty, seen)
        probs = filtered_probs(logits, st.temperature, st.top_k, st.top_p)
        top = torch.topk(logits, count, dim=1).indices.tolist()
        ids = []
        for i, s in enumerate(seqs):
            if greedy[i]:
                ids.append(top[i])
                continue
            g = counter_generator(s.params.seed, (1 << 40) + int(st.offsets[i]))
            ids.append(
                torch.multinomial(probs[i].cpu(), count, replacement=True, generator=g).tolist()
            )
        return ids, probs

    def _spec_step(self, seqs: list[_Seq]) -> None:
        k, steps = self.draft_topk, self.draft_steps
        cfg, pad = self.config, self.config.pad_id
        nodes = 1 + 2 * k + 2 * (steps - 1)
        live = []
        for s in seqs:
            n = len(s.prompt) + len(s.out)
            p = (n + 1) // 2
            if self._reserve(s, self.cache, max(p - 1 + k, p + steps - 1)) and self._reserve(
                s, self.vcache, s.pos + nodes
            ):
                live.append(s)
        seqs = live
        if not seqs:
            return
        drafter = self.model
        committed = [s.prompt + s.out for s in seqs]

        # 1. Drafter catch-up: fold the new committed pairs (an odd last token with PAD, to be
        #    redone next round) and write the MTP entries whose next token is now known.
        starts, chunk_pairs, mtp_starts, mtp_lens, p_lens = [], [], [], [], []
        for s, c in zip(seqs, committed, strict=True):
            n = len(c)
            full, odd = divmod(n, 2)
            p = full + odd
            st = min(s.d_len, s.d_mtp)
            starts.append(st)
            chunk_pairs.append(
                [[c[2 * i], c[2 * i + 1] if 2 * i + 1 < n else pad] for i in range(st, p)]
            )
            mtp_starts.append(s.d_mtp)
            mtp_lens.append(p - 1 - s.d_mtp)
            p_lens.append(p)
            s.d_len, s.d_mtp = full, p - 1
        lens = [len(x) for x in chunk_pairs]
        meta = self._meta(self.cache, seqs, starts, lens)
        hidden = drafter(
            self._tensor([q for x in chunk_pairs for q in x], torch.int64),
            meta,
            self.cache,
            self.use_kernels,
        )
        if sum(mtp_lens):
            rows, tokens = [], []
            chunk_start = 0
            for b, c in enumerate(committed):
                base = chunk_start - starts[b]  # row of pair position i is base + i
                chunk_start += lens[b]
                for i in range(mtp_starts[b], mtp_starts[b] + mtp_lens[b]):
                    rows.append(base + i)
                    tokens.append(c[2 * i + 2])
            mtp_meta = self._meta(self.cache, seqs, mtp_starts, mtp_lens)
            drafter.mtp_forward(
                self._tensor(tokens, torch.int64),
                hidden[self._tensor(rows, torch.int64)],
                mtp_meta,
                self.cache,
                self.use_kernels,
            )
        h_last = hidden[meta.q_indptr[1:].long() - 1]

        # 2. Draft: top-k token1 branches, each with its MTP token2 (branch j at MTP slot p-1+j).
        first, q_first = self._draft_choose(drafter, h_last, seqs, k)
        branch_seqs = [s for s in seqs for _ in range(k)]
        eye = torch.eye(k, dtype=torch.bool, device=self.device).repeat(len(seqs), 1)
        mtp_meta = self._meta(
            self.cache,
            seqs,
            [p - 1 for p in p_lens],
            [k] * len(seqs),
            positions=[p - 1 for p in p_lens for _ in range(k)],
            tree_mask=eye,
        )
        m = drafter.mtp_forward(
            self._tensor([t for f in first for t in f], torch.int64),
            h_last.repeat_interleave(k, 0),
            mtp_meta,
            self.cache,
            self.use_kernels,
        )
        second, q_second = self._draft_choose(drafter, m, branch_seqs, 1)
        chain, q_chain = [], []  # per extra step: ([B] token1, [B] token2), their probs
        prev = [[first[b][0], second[b * k][0]] for b in range(len(seqs))]
        for j in range(1, steps):
            pos = [p - 1 + j for p in p_lens]
            meta_j = self._meta(self.cache, seqs, pos, [1] * len(seqs))
            h = drafter(self._tensor(prev, torch.int64), meta_j, self.cache, self.use_kernels)
            t1, q1 = self._draft_choose(drafter, h, seqs, 1)
            t1 = [x[0] for x in t1]
            m = drafter.mtp_forward(
                self._tensor(t1, torch.int64), h, meta_j, self.cache, self.use_kernels
            )
            t2, q2 = self._draft_choose(drafter, m, seqs, 1)
            t2 = [x[0] for x in t2]
            chain.append((t1, t2))
            q_chain.append((q1, q2))
            prev = [[a, b] for a, b in zip(t1, t2, strict=True)]

        # 3. The tree: node 0 = last committed token; 1..k = token1 branches; k+1..2k = their
        #    token2; then (token1, token2) pairs continuing branch 1.
        draft, parents, depths, dprobs = [], [], [], []
        zero = torch.zeros(cfg.vocab_size, device=self.device)
        for b, c in enumerate(committed):
            draft += [c[-1], *first[b], *(second[b * k + j][0] for j in range(k))]
            parents += [-1, *([0] * k), *range(1, k + 1)]
            depths += [0, *([1] * k), *([2] * k)]
            # draft_probs[i]: the distribution node i's children were drawn from
            dprobs += [q_first[b], *(q_second[b * k + j] for j in range(k))]
            dprobs += [q_chain[0][0][b] if steps > 1 else zero] + [zero] * (k - 1)
            tail = k + 1
            for j, (t1, t2) in enumerate(chain):
                base = 1 + 2 * k + 2 * j
                draft += [t1[b], t2[b]]
                parents += [tail, base]
                depths += [2 + 2 * j + 1, 2 + 2 * j + 2]
                nxt = q_chain[j + 1][0][b] if j + 1 < len(chain) else zero
                dprobs += [q_chain[j][1][b], nxt]
                tail = base + 1
        self._verify(seqs, draft, parents, depths, dprobs, nodes)

    def _verify(self, seqs, draft, parents, depths, dprobs, nodes: int) -> None:
        """Score the trees with the verifier, accept a path per request, compact its K/V."""
        bsz = len(seqs)
        mask = torch.zeros(bsz * nodes, nodes, dtype=torch.bool)
        seen_rows: list[set[int]] = []
        for b, s in enumerate(seqs):
            for i in range(nodes):
                j, path = i, set()
                while j >= 0:
                    mask[b * nodes + i, j] = True
                    if j > 0:
                        path.add(draft[b * nodes + j])
                    j = parents[b * nodes + j]
                seen_rows.append(s.seen | path)
        meta = self._meta(
            self.vcache,
            seqs,
            [s.pos for s in seqs],
            [nodes] * bsz,
            positions=[
                s.pos + d for b, s in enumerate(seqs) for d in depths[b * nodes : (b + 1) * nodes]
            ],
            tree_mask=mask.to(self.device),
        )
        draft_t = self._tensor(draft, torch.int64)
        hidden = self.verifier(draft_t, meta, self.vcache, self.use_kernels)
        node_seqs = [s for s in seqs for _ in range(nodes)]
        greedy = [s.params.temperature <= 0 for s in seqs]
        results: dict[int, tuple[list[int], int]] = {}
        for want_greedy in (True, False):
            group = [b for b in range(bsz) if greedy[b] == want_greedy]
            if not group:
                continue
            row_ids = [b * nodes + i for b in group for i in range(nodes)]
            rows = self._tensor(row_ids, torch.int64)
            g_seqs = [seqs[b] for b in group]
            common = dict(
                draft_tokens=draft_t[rows],
                parents=self._tensor(
                    [parents[b * nodes + i] for b in group for i in range(nodes)], torch.int32
                ),
                q_indptr=self._tensor([nodes * i for i in range(len(group) + 1)], torch.int32),
                max_depth=max(depths[:nodes]),
            )
            st = self._sampling([node_seqs[r] for r in row_ids], [seen_rows[r] for r in row_ids])
            if want_greedy:
                target, _ = self.verifier.sample(hidden[rows], st, self.use_kernels)
                acc_len, acc_idx, bonus = ops.verify_tree(target_tokens=target, **common)
            else:
                logits = penalized_logits(
                    self.verifier.logits(hidden[rows]),
                    st.presence_penalty,
                    None if st.seen is None else self._dense([seen_rows[r] for r in row_ids]),
                )
                target_probs = filtered_probs(logits, st.temperature, st.top_k, st.top_p)
                acc_len, acc_idx, bonus = ops.verify_tree_stochastic(
                    draft_probs=torch.stack([dprobs[r] for r in row_ids]).float(),
                    target_probs=target_probs,
                    seeds=self._tensor([s.params.seed for s in g_seqs], torch.int64),
                    offsets=self._tensor([s.offset() for s in g_seqs], torch.int64),
                    **common,
                )
            acc_len, acc_idx, bonus = acc_len.tolist(), acc_idx.tolist(), bonus.tolist()
            for gi, b in enumerate(group):
                results[b] = (acc_idx[gi][: acc_len[gi] + 1], bonus[gi])
        src, dst = [], []
        for b, s in enumerate(seqs):
            path, bonus = results[b]
            for d, node in enumerate(path):
                if node != d:
                    src += self.vcache.slots(s.rid, s.pos + node, s.pos + node + 1)
                    dst += self.vcache.slots(s.rid, s.pos + d, s.pos + d + 1)
        self._compact(self.vcache, src, dst)
        for b, s in enumerate(seqs):
            path, bonus = results[b]
            s.pos += len(path)
            self.stats.verify_rounds += 1
            self.stats.backbone_passes += 1
            self.stats.accepted_draft_tokens += len(path) - 1
            for t in [draft[b * nodes + i] for i in path[1:]] + [bonus]:
                if not self._emit(s, t):
                    break

    def _dense(self, seen: list[set[int]]) -> torch.Tensor:
        """bool [len(seen), V]: row i marks the ids in seen[i]."""
        mask = torch.zeros(len(seen), self.config.vocab_size, dtype=torch.bool)
        for i, ids in enumerate(seen):
            mask[i, list(ids)] = True
        return mask.to(self.device)

"""The generation engine (python/pipo/engine.py) and the ``pipo`` command, on tiny random models."""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pipo_helpers import requires_safetensors, small_models

from pipo import checkpoint, cli
from pipo.engine import Engine, Request, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Hello, world", "x", "The quick brown fox jumps", "PIPO!"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    return small_models()


def make_engine(models, mode, **kw):
    ar, pipo = models
    if mode == "ar":
        return Engine(ar, mode="ar", **kw)
    if mode == "pipo":
        return Engine(pipo, mode="pipo", **kw)
    return Engine(pipo, mode="spec", verifier=ar, **kw)


def run(models, mode, prompts=PROMPTS, params=None, **kw):
    params = params or SamplingParams(max_new_tokens=24, ignore_eos=True)
    engine = make_engine(models, mode, **kw)
    results = engine.generate([Request(p, params) for p in prompts])
    return results, engine.stats


@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
def test_kernel_path_equals_reference_path(models, mode):
    params = SamplingParams(max_new_tokens=70, ignore_eos=True)
    kw = dict(threshold=0.5) if mode == "pipo" else {}
    ref, _ = run(models, mode, PROMPTS[:2], params, use_kernels=False, **kw)
    ker, _ = run(models, mode, PROMPTS[:2], params, use_kernels=True, **kw)
    assert [r.token_ids for r in ker] == [r.token_ids for r in ref]
    assert all(len(r.token_ids) == 70 for r in ker)


MIXED = ["Hello, world", "x", "odd", "The quick brown fox jumps over"]  # mixed, odd lengths


def mixed_requests(penalty: float, temperature: float, n: int = 30):
    return [
        Request(
            p,
            SamplingParams(
                max_new_tokens=n - 5 * i,
                ignore_eos=True,
                temperature=temperature,
                top_p=0.9,
                presence_penalty=penalty,
                seed=11 + i,
            ),
        )
        for i, p in enumerate(MIXED)
    ]


@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
@pytest.mark.parametrize("temperature,penalty", [(0.0, 1.5), (0.8, 0.0), (0.8, 1.5)])
def test_kernel_path_equals_reference_path_sampled(models, mode, temperature, penalty):
    """One sampling semantics: the reference path draws exactly the kernels' tokens (mixed
    lengths, odd prompts, seeded sampling, presence penalty)."""
    requests = mixed_requests(penalty, temperature)
    ref = make_engine(models, mode, use_kernels=False, page_size=4).generate(requests)
    ker = make_engine(models, mode, use_kernels=True, page_size=4).generate(requests)
    assert [r.token_ids for r in ker] == [r.token_ids for r in ref]


@pytest.mark.parametrize("mode", ["ar", "pipo"])
def test_overlap_equals_no_overlap(models, mode):
    requests = [*mixed_requests(1.5, 0.8), Request("Hi", SamplingParams(max_new_tokens=40))]
    plain = make_engine(models, mode, page_size=4, max_batch_size=3)
    want = plain.generate(requests)
    engine = make_engine(models, mode, page_size=4, max_batch_size=3, overlap=True)
    got = engine.generate(requests)
    assert [(r.token_ids, r.finish_reason) for r in got] == [
        (r.token_ids, r.finish_reason) for r in want
    ]
    # a request learnt finished one iteration late costs a wasted step, never a token
    assert engine.stats.d2h_transfers == engine.stats.steps >= plain.stats.steps
    assert engine.stats.backbone_passes == plain.stats.backbone_passes
    for cache in engine._caches():
        assert cache.num_free_pages == cache.num_pages


@pytest.mark.parametrize("mode", ["ar", "pipo"])
@pytest.mark.parametrize("overlap", [False, True])
def test_one_device_to_host_transfer_per_step(models, mode, overlap, monkeypatch):
    """Every host read the engine-side code (python/pipo) makes of a tensor is counted; the ops'
    own CPU argument checks (pipo_kernels, off on a GPU) are not engine work."""
    reads = []
    pipo_dir = str(ROOT / "python" / "pipo")
    for name in ("tolist", "item", "cpu", "__bool__", "__int__", "__float__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **kw):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(pipo_dir):
                reads.append((_name, caller))
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    engine = make_engine(models, mode, page_size=4, overlap=overlap)
    engine.generate(mixed_requests(1.5, 0.8))
    monkeypatch.undo()
    stats = engine.stats
    assert stats.steps > 10 and stats.d2h_transfers == stats.steps
    assert len(reads) == stats.steps, reads[:5]
    assert {r[1] for r in reads} == {str(ROOT / "python" / "pipo" / "engine.py")}


@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
def test_chunked_prefill(models, mode):
    long_prompt = "A long prompt that takes several prefill chunks to write. " * 2
    sampled = SamplingParams(ignore_eos=True, temperature=0.8, presence_penalty=1.5, seed=5)
    requests = [
        Request("Hi", replace(sampled, max_new_tokens=30)),
        Request(long_prompt, replace(sampled, max_new_tokens=10)),
    ]
    whole = make_engine(models, mode, page_size=4).generate(requests)
    order = []
    engine = make_engine(models, mode, page_size=4, prefill_chunk=8)
    chunked = engine.generate(requests, on_token=lambda i, t: order.append(i))
    assert [r.token_ids for r in chunked] == [r.token_ids for r in whole]
    # The short request decodes while the long prompt is still being written chunk by chunk.
    assert order.index(1) > 5 and order[:5] == [0] * 5


@pytest.mark.parametrize("mode", ["ar", "pipo"])
def test_block_table_width_follows_the_longest_context(models, mode):
    seen = []  # (block-table width, pages of the longest live request) at each step
    engine = make_engine(models, mode, num_pages=512, page_size=4)
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    requests = [Request("Hi", params), Request("Hello there", replace(params, max_new_tokens=8))]
    step = engine._step_fn

    def recorded(view, penalty):
        pages = max(len(engine.cache.pages(r)) for r in (0, 1))
        seen.append((view.table.shape[1], pages))
        step(view, penalty)

    engine._step_fn = recorded
    engine.generate(requests)
    assert all(pages <= width < 2 * pages for width, pages in seen), seen  # a power of two
    widths = [w for w, _ in seen]
    assert max(widths) < 512  # never the whole cache
    # it also shrinks: once the other request is retired, the table follows "Hi" alone
    assert any(b < a for a, b in itertools.pairwise(widths))


def test_pages_released_on_every_exit_path(models, monkeypatch):
    for mode in ("ar", "pipo", "spec"):
        engine = make_engine(models, mode, page_size=4)
        requests = mixed_requests(0.0, 0.0)
        stream = engine.stream(requests)
        next(stream)
        assert engine.cache.num_free_pages < engine.cache.num_pages
        stream.close()  # an abandoned stream
        for cache in engine._caches():
            assert cache.num_free_pages == cache.num_pages
        calls = []

        target, name = engine, "_step_fn"
        orig = getattr(target, name)

        def failing(*a, _orig=orig, _calls=calls, **k):
            _calls.append(1)
            if len(_calls) == 4:
                raise RuntimeError("boom")
            return _orig(*a, **k)

        monkeypatch.setattr(target, name, failing)
        with pytest.raises(RuntimeError, match="boom"):
            engine.generate(requests)
        for cache in engine._caches():
            assert cache.num_free_pages == cache.num_pages
        monkeypatch.undo()
        # the engine is still usable afterwards, with the same output
        fresh = make_engine(models, mode, page_size=4).generate(requests)
        assert [r.token_ids for r in engine.generate(requests)] == [r.token_ids for r in fresh]


@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
def test_stream_gives_the_text(models, mode):
    first, _ = run(models, "ar", ["Hello, world"])
    stop = first[0].text[6:8]
    requests = [
        Request("Hello, world", SamplingParams(max_new_tokens=24, stop=(stop,))),
        Request("x", SamplingParams(max_new_tokens=12, ignore_eos=True)),
    ]
    engine = make_engine(models, mode)
    pieces = {0: "", 1: ""}
    for i, text in engine.stream(requests):
        pieces[i] += text
    assert [pieces[0], pieces[1]] == [r.text for r in engine.results]
    want = make_engine(models, mode).generate(requests)
    assert [r.text for r in engine.results] == [r.text for r in want]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ar", "pipo"])
def test_compiled_step_equals_eager(models, mode):
    """compile_step: torch.compile of the same step function (one request: one compilation)."""
    requests = [Request("Hello", SamplingParams(max_new_tokens=12, ignore_eos=True))]
    want = make_engine(models, mode).generate(requests)
    got = make_engine(models, mode, compile_step=True).generate(requests)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
def test_cuda_kernel_path_matches_cpu_reference(models, mode):
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    want, _ = run(models, mode, PROMPTS[:2], params, use_kernels=False)
    on_gpu = tuple(copy.deepcopy(m).cuda() for m in models)
    got, _ = run(on_gpu, mode, PROMPTS[:2], params, use_kernels=True)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    if mode != "spec":  # the captured decode step (default on for CUDA), penalty included
        graphed, _ = run(on_gpu, mode, PROMPTS[:2], params, cuda_graphs=True)
        assert [r.token_ids for r in graphed] == [r.token_ids for r in want]
        for requests in (mixed_requests(1.5, 0.8), mixed_requests(1.5, 0.0)):
            eager = make_engine(on_gpu, mode, cuda_graphs=False).generate(requests)
            engine = make_engine(on_gpu, mode, cuda_graphs=True)
            assert engine.graphs is not None and engine.graphs.capture
            assert [r.token_ids for r in engine.generate(requests)] == [r.token_ids for r in eager]


@pytest.mark.parametrize("steps,topk", [(1, 4), (2, 3), (3, 1)])
@pytest.mark.parametrize("penalty", [0.0, 1.5])
def test_spec_greedy_is_lossless(models, steps, topk, penalty):
    params = SamplingParams(max_new_tokens=40, ignore_eos=True, presence_penalty=penalty)
    want, _ = run(models, "ar", params=params)
    got, stats = run(models, "spec", params=params, draft_steps=steps, draft_topk=topk)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert stats.verify_rounds > 0 and 1.0 <= stats.tokens_per_pass <= 2 * steps + 1


@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
def test_batch_equals_each_request_alone(models, mode):
    batch, _ = run(models, mode, page_size=4)
    for prompt, together in zip(PROMPTS, batch, strict=True):
        (alone,) = run(models, mode, [prompt])[0]
        assert together.token_ids == alone.token_ids, prompt


@pytest.mark.parametrize("mode,threshold", [("ar", 0.5), ("pipo", 0.5), ("pipo", 1.0)])
def test_static_decode_step_equals_eager(models, mode, threshold):
    """The CUDA-graph step's static buffers and bucket padding (run eagerly on a CPU)."""
    requests = [
        Request(p, SamplingParams(max_new_tokens=n, ignore_eos=True, temperature=0.7, seed=3))
        for p, n in zip(PROMPTS[:3], (20, 12, 5), strict=True)
    ]
    eager = make_engine(models, mode, threshold=threshold).generate(requests)
    engine = make_engine(models, mode, threshold=threshold, cuda_graphs=True)
    static = engine.generate(requests)
    assert engine.graphs.buckets == [1, 2, 4]  # 3 requests (one spare row), then 2, 1
    assert [r.token_ids for r in static] == [r.token_ids for r in eager]


def test_gate_thresholds(models):
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    _, always = run(models, "pipo", params=params, threshold=-1.0)
    assert always.tokens_per_pass == 2.0 and always.token2_commit_rate == 1.0
    _, never = run(models, "pipo", params=params, threshold=1.0)
    assert never.tokens_per_pass == 1.0 and never.token2_proposed == 0
    _, gated = run(models, "pipo", params=params, threshold=0.5)
    assert 0.0 < gated.token2_commit_rate < 1.0  # the test model's confidences straddle 0.5
    assert gated.tokens_per_pass == pytest.approx(1 + gated.token2_commit_rate, abs=0.15)


def test_odd_prompt_is_padded(models):
    pad = models[1].config.pad_id
    ids = [257, *b"odd"]  # 4 tokens -> even; drop one to get an odd prompt
    odd, _ = run(models, "pipo", [ids[:3]], threshold=-1.0)
    padded, _ = run(models, "pipo", [[*ids[:3], pad]], threshold=-1.0)
    assert odd[0].token_ids == padded[0].token_ids
    for prompt in ([257], [257, 65], [257, 65, 66]):
        (r,), _ = run(models, "pipo", [prompt])
        assert len(r.token_ids) == 24


def test_pad_never_returned_and_stops(models, monkeypatch):
    pad, eos = models[1].config.pad_id, models[1].config.eos_id
    results, _ = run(models, "pipo", threshold=0.5)
    assert all(pad not in r.token_ids for r in results)
    first, _ = run(models, "ar", ["Hello, world"])
    text = first[0].text
    stop = text[5:7]
    (r,), _ = run(models, "ar", ["Hello, world"], SamplingParams(max_new_tokens=24, stop=(stop,)))
    assert r.finish_reason == "stop" and r.text == text[: text.find(stop)]
    # EOS ends a request and is not part of its output: make the model pick it at the 3rd token.
    ar = models[0]
    calls = []

    def sample_eos_third(hidden, st, use_kernels, num_candidates=0):
        tokens, cand = type(ar).sample(ar, hidden, st, use_kernels, num_candidates)
        calls.append(1)
        return (torch.full_like(tokens, eos) if len(calls) == 3 else tokens), cand

    monkeypatch.setattr(ar, "sample", sample_eos_third)
    (r,) = Engine(ar, mode="ar").generate([Request("Hi", SamplingParams(max_new_tokens=8))])
    assert len(r.token_ids) == 2
    assert r.finish_reason == "eos" and eos not in r.token_ids


def test_sampling_is_reproducible(models):
    params = SamplingParams(
        temperature=0.9, top_k=50, top_p=0.9, seed=7, max_new_tokens=16, ignore_eos=True
    )
    for mode in ("ar", "pipo", "spec"):
        a, _ = run(models, mode, PROMPTS[:2], params)
        b, _ = run(models, mode, PROMPTS[:2], params)
        assert [r.token_ids for r in a] == [r.token_ids for r in b]
        assert all(r.finish_reason == "length" and len(r.token_ids) <= 16 for r in a)
    other, _ = run(
        models,
        "ar",
        PROMPTS[:2],
        SamplingParams(temperature=0.9, seed=8, max_new_tokens=16, ignore_eos=True),
    )
    assert [r.token_ids for r in other] != [r.token_ids for r in a]


@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
def test_pages_are_reused(models, mode):
    # 16 pages of 4 slots cannot hold the 4 requests at once; one at a time they all fit.
    engine = make_engine(models, mode, num_pages=16, page_size=4, max_batch_size=1)
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    results = engine.generate([Request(p, params) for p in PROMPTS])
    assert all(r.finish_reason == "length" and len(r.token_ids) == 20 for r in results)
    for cache in engine._caches():
        assert cache.num_free_pages == cache.num_pages


@pytest.mark.parametrize(
    "mode,overlap", [("ar", False), ("pipo", False), ("spec", False), ("ar", True), ("pipo", True)]
)
def test_out_of_pages_leaves_other_requests_intact(models, mode, overlap):
    short = SamplingParams(max_new_tokens=8, ignore_eos=True)
    long = SamplingParams(max_new_tokens=200, ignore_eos=True)
    (alone,), _ = run(models, mode, ["Hi"], short)
    kw = dict(overlap=True) if overlap else {}
    engine = make_engine(models, mode, num_pages=10, page_size=4, **kw)
    results = engine.generate([Request("Hello", long), Request("Hi", short)])
    assert results[0].finish_reason == "cache_full"
    assert "KV cache full" in results[0].error and len(results[0].token_ids) < 200
    assert results[1].finish_reason == "length" and results[1].token_ids == alone.token_ids
    for cache in engine._caches():
        assert cache.num_free_pages == cache.num_pages


def test_engine_argument_errors(models):
    ar, pipo = models
    with pytest.raises(ValueError, match="mode"):
        Engine(ar, mode="fast")
    with pytest.raises(ValueError, match="needs a PIPOModel"):
        Engine(ar, mode="pipo")
    with pytest.raises(ValueError, match="verifier"):
        Engine(pipo, mode="spec")
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Engine(ar, mode="ar").generate([Request([1, 999])])


# ---------------------------------------------------------------- the pipo command


@pytest.mark.parametrize("mode", ["ar", "pipo", "spec"])
def test_cli_modes(mode, capsys):
    rc = cli.main(
        [
            "generate",
            "--prompt",
            "Hi",
            "--mode",
            mode,
            "--max-new-tokens",
            "6",
            "--ignore-eos",
            "--threshold",
            "-1",
        ]
    )
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 0 and captured.out.endswith("\n")
    assert err[-1].startswith(f"mode={mode} ") and "tokens/s=" in err[-1]
    assert "new_tokens=6" in err[-1]


@requires_safetensors
def test_cli_with_checkpoint_and_reference_path(tmp_path, models, capsys):
    ar, pipo = models
    checkpoint.save(ar, tmp_path / "ar")
    checkpoint.save(pipo, tmp_path / "pipo")
    args = ["generate", "--prompt", "Hello", "--max-new-tokens", "12", "--ignore-eos"]
    outs = []
    for extra in (
        ["--mode", "ar", "--model", str(tmp_path / "ar")],
        [
            "--mode",
            "spec",
            "--model",
            str(tmp_path / "pipo"),
            "--verifier",
            str(tmp_path / "ar"),
            "--no-kernels",
        ],
    ):
        assert cli.main(args + extra) == 0
        outs.append(capsys.readouterr().out.splitlines()[0])
    assert outs[0] == outs[1]  # spec is lossless against the same AR model
    (want,), _ = run(models, "ar", ["Hello"], SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert outs[0] == want.text


def test_python_dash_m_pipo():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipo",
            "generate",
            "--prompt",
            "Hi",
            "--mode",
            "pipo",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    shipped = (checkpoint.BUILTIN_DIR / "pipo" / "config.json").is_file()
    assert shipped or "RANDOM weights" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("mode=pipo")
    assert proc.stdout.strip()  # the text

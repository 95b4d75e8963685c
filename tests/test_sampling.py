"""sample_tokens (docs/ops.md §3) on every backend available here, against the
pure-PyTorch references (float64 where it matters) and against exact sampling distributions."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run interpreted on CPU

import pytest
from conftest import assert_compiles_fullgraph, capture_graph, pipo_op

import pipo_kernels
from pipo_kernels import reference

HAS_CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def _backends(op: str) -> list:
    """Every backend that runs here, plus "cuda" (skipped without a GPU)."""
    found = [b for b in pipo_kernels.available_backends(op, CPU) if b != "cpu"]
    params = [pytest.param(b, CPU, id=f"{b}-cpu") for b in found]
    if "cpu" in pipo_kernels.available_backends(op, CPU):
        params.insert(0, pytest.param("cpu", CPU, id="cpu"))
    gpu = torch.device("cuda")
    params += [
        pytest.param(b, gpu, id=f"{b}-cuda", marks=requires_cuda) for b in ("cuda", "triton")
    ]
    return params


# ------------------------------------------------------------------------------------------------
# sample_tokens
# ------------------------------------------------------------------------------------------------

# One list of cases drives correctness, opcheck and torch.compile. Each row is
# (temperature, top_k, top_p, presence_penalty).
PIPO = (1.0, 20, 0.95, 1.5)  # PIPO's published evaluation setting
ROWS_MIXED = [
    (0.0, 0, 1.0, 1.5),  # greedy
    (1.0, 0, 1.0, 0.0),  # temperature only (full-vocabulary Gumbel-max)
    PIPO,
    (0.7, 5, 1.0, 0.5),  # top-k only
    (1.3, 0, 0.8, 1.5),  # nucleus only (usually the exact slow path on a flat distribution)
    (0.9, 100, 0.9, 0.0),  # top_k > 64: exact slow path
    (0.5, 3, 0.5, 2.0),
    (1.0, 100000, 1.0, 0.0),  # top_k >= V: no limit
]
SAMPLE_CASES = {
    # name: (rows, H, V, dtype, scale, num_candidates, with_seen)
    "mixed_f32": (ROWS_MIXED, 40, 300, torch.float32, 0.3, 4, True),
    "pipo_bf16": ([PIPO, PIPO, (0.0, 0, 1.0, 1.5)], 64, 259, torch.bfloat16, 0.3, 3, True),
    "small_vocab_f16": (
        [(1.0, 0, 0.9, 0.0), (0.8, 7, 0.7, 0.0)],
        24,
        33,
        torch.float16,
        1.0,
        2,
        False,
    ),
    "peaked_f32": ([(1.0, 0, 0.95, 0.0), (0.6, 0, 0.5, 1.0)], 32, 517, torch.float32, 2.0, 0, True),
    "empty": ([], 16, 70, torch.float32, 0.3, 2, True),
}


def make_sample_inputs(name: str, device=CPU, seed: int = 0) -> dict:
    rows, h, v, dtype, scale, k, with_seen = SAMPLE_CASES[name]
    g = torch.Generator().manual_seed(seed)
    b = len(rows)
    col = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    f32 = dict(dtype=torch.float32, device=device)
    return dict(
        hidden=torch.randn(b, h, generator=g).to(dtype).to(device),
        lm_head=(torch.randn(v, h, generator=g) * scale).to(dtype).to(device),
        temperature=torch.tensor(col[0], **f32),
        top_k=torch.tensor(col[1], dtype=torch.int32, device=device),
        top_p=torch.tensor(col[2], **f32),
        presence_penalty=torch.tensor(col[3], **f32),
        seen=torch.randint(
            -(2**31), 2**31 - 1, (b, (v + 31) // 32), generator=g, dtype=torch.int32
        ).to(device)
        if with_seen
        else None,
        seeds=torch.randint(0, 2**62, (b,), generator=g).to(device),
        offsets=torch.arange(b, device=device) * 7 + 3,
        num_candidates=k,
    )


def _ref64(inp: dict):
    """The reference in float64 on the CPU (same noise, same inputs upcast)."""
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    cpu["hidden"] = cpu["hidden"].double()
    cpu["lm_head"] = cpu["lm_head"].double()
    return reference.sample_tokens(**cpu)


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
@pytest.mark.parametrize(("backend", "device"), _backends("sample_tokens"))
def test_sample_tokens_matches_reference(case, backend, device):
    inp = make_sample_inputs(case, device)
    tokens, logprob, cand_ids, cand_lp = pipo_kernels.sample_tokens(**inp, backend=backend)
    r_tokens, r_logprob, r_ids, r_lp = _ref64(inp)
    b, k = len(SAMPLE_CASES[case][0]), inp["num_candidates"]
    assert tokens.shape == (b,) and tokens.dtype == torch.int64
    assert logprob.shape == (b,) and logprob.dtype == torch.float32
    assert cand_ids.shape == (b, k) and cand_ids.dtype == torch.int64
    assert cand_lp.shape == (b, k) and cand_lp.dtype == torch.float32
    torch.testing.assert_close(tokens.cpu(), r_tokens)
    torch.testing.assert_close(logprob.cpu(), r_logprob, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cand_ids.cpu(), r_ids)
    torch.testing.assert_close(cand_lp.cpu(), r_lp, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("backend", "device"), _backends("sample_tokens"))
def test_greedy_is_argmax_with_lowest_id_on_ties(backend, device):
    g = torch.Generator().manual_seed(1)
    b, h, v = 6, 24, 333
    hidden = torch.randn(b, h, generator=g)
    lm_head = torch.randn(v, h, generator=g) * 0.5
    lm_head[200] = lm_head[17]  # exact ties: ids 17 and 200, and 5 and 300 after the penalty
    hidden[0] = lm_head[17] * 4  # row 0's maximum is the tied pair
    seen = torch.zeros(b, (v + 31) // 32, dtype=torch.int32)
    seen[1, 0] = 1 << 5  # token 5 of row 1 is penalised
    zeros = torch.zeros(b)
    out = pipo_kernels.sample_tokens(
        hidden.to(device),
        lm_head.to(device),
        zeros.to(device),
        torch.zeros(b, dtype=torch.int32, device=device),
        torch.ones(b, device=device),
        torch.full((b,), 1.5, device=device),
        seen.to(device),
        torch.arange(b, device=device),
        torch.arange(b, device=device),
        backend=backend,
    )
    logits = hidden.double() @ lm_head.double().T
    logits[1, 5] -= 1.5
    assert out[0][0].item() == 17
    torch.testing.assert_close(out[0].cpu(), logits.argmax(dim=1))
    torch.testing.assert_close(
        out[1].cpu(), logits.log_softmax(1).gather(1, out[0].cpu()[:, None])[:, 0].float()
    )


# Statistical tests: many rows with the same hidden state and different offsets are many
# independent draws from one distribution.
def _exact_distribution(logits: torch.Tensor, t: float, k: int, p: float) -> torch.Tensor:
    """Float64 probabilities of one row after temperature, top-k and top-p (written
    independently of the reference: a plain loop over the sorted tokens)."""
    z = (logits / t).tolist()
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if 0 < k < len(z):
        order = order[:k]
    zmax = z[order[0]]
    w = [torch.exp(torch.tensor(z[i] - zmax, dtype=torch.float64)).item() for i in order]
    total = sum(w)
    kept, mass = [], 0.0
    for i, wi in zip(order, w, strict=True):
        if p < 1 and mass >= p:
            break
        kept.append((i, wi))
        mass += wi / total
    norm = sum(wi for _, wi in kept)
    probs = torch.zeros(len(z), dtype=torch.float64)
    for i, wi in kept:
        probs[i] = wi / norm
    return probs


STAT_SETTINGS = {
    "temperature": (0.7, 0, 1.0, 0.0),
    "top_k": (1.0, 6, 1.0, 0.0),
    "top_p": (1.0, 0, 0.8, 0.0),
    "presence_penalty": (1.0, 0, 1.0, 1.5),
    "pipo": PIPO,
}


def _stat_inputs(setting: str, rows: int, v: int, device=CPU) -> tuple[dict, torch.Tensor]:
    t, k, p, pen = STAT_SETTINGS[setting]
    g = torch.Generator().manual_seed(5)
    h = 16
    hidden = torch.randn(1, h, generator=g).expand(rows, h).contiguous()
    lm_head = torch.randn(v, h, generator=g) * 0.35
    seen_row = torch.zeros((v + 31) // 32, dtype=torch.int32)
    seen_row[0] = 0b1011  # tokens 0, 1 and 3
    logits = (hidden[0].double() @ lm_head.double().T).clone()
    logits[[0, 1, 3]] -= pen
    full = lambda x, dt=torch.float32: torch.full((rows,), x, dtype=dt, device=device)  # noqa: E731
    inp = dict(
        hidden=hidden.to(device),
        lm_head=lm_head.to(device),
        temperature=full(t),
        top_k=full(k, torch.int32),
        top_p=full(p),
        presence_penalty=full(pen),
        seen=seen_row.expand(rows, -1).contiguous().to(device),
        seeds=full(1234, torch.int64),
        offsets=torch.arange(rows, device=device) * 2 + 1,
    )
    return inp, _exact_distribution(logits, t, k, p)


def _check_frequencies(tokens, probs, bound):
    freq = torch.bincount(tokens.cpu(), minlength=probs.numel()).double() / tokens.numel()
    assert freq[probs == 0].sum() == 0, "sampled a token outside the filtered set"
    tv = 0.5 * (freq - probs).abs().sum().item()
    assert tv < bound, f"total variation {tv:.4f} >= {bound}"


@pytest.mark.parametrize("setting", list(STAT_SETTINGS))
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_sampled_frequencies_match_distribution(setting, backend):
    if backend not in pipo_kernels.available_backends("sample_tokens", CPU):
        pytest.skip(f"{backend} backend not available")
    rows, v = 20000, 40
    inp, probs = _stat_inputs(setting, rows, v)
    tokens, logprob, _, _ = pipo_kernels.sample_tokens(**inp, backend=backend)
    # Expected total variation of 20000 draws over <= 40 tokens is ~0.02.
    _check_frequencies(tokens, probs, bound=0.04)
    # token_logprob is the log-probability under the final (filtered, tempered) distribution.
    torch.testing.assert_close(logprob.double(), probs.log()[tokens], atol=1e-4, rtol=0)


@requires_cuda
@pytest.mark.parametrize("setting", list(STAT_SETTINGS))
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_sampled_frequencies_gpu(setting, backend):
    """The full-size frequency test of the CPU kernels, for the GPU kernels."""
    rows, v = 20000, 40
    inp, probs = _stat_inputs(setting, rows, v, torch.device("cuda"))
    tokens, logprob, _, _ = pipo_kernels.sample_tokens(**inp, backend=backend)
    _check_frequencies(tokens, probs, bound=0.04)
    torch.testing.assert_close(logprob.cpu().double(), probs.log()[tokens.cpu()], atol=1e-4, rtol=0)


@pytest.mark.parametrize("setting", ["pipo", "top_p"])
def test_sampled_frequencies_triton(setting):
    """The interpreted Triton kernel draws the reference's tokens, row by row (it adds exactly the
    reference's noise), on the statistical test's inputs; the reference's frequencies are tested
    at full size above (20000 draws, `test_sampled_frequencies_match_distribution[torch-*]`), so
    equal tokens carry the same statistics. 32 rows: the interpreter runs every row as its own
    program (300 rows took 90 s of CPU on the 2-core machine); on a GPU the CUDA and Triton
    kernels get the full-size frequency test (`test_sampled_frequencies_gpu`)."""
    if "triton" not in pipo_kernels.available_backends("sample_tokens", CPU):
        pytest.skip("triton not available")
    inp, probs = _stat_inputs(setting, 32, 8)
    tokens, _, _, _ = pipo_kernels.sample_tokens(**inp, backend="triton")
    assert probs[tokens].min() > 0, "sampled a token outside the filtered set"
    ref = _ref64({**inp, "num_candidates": 0})[0]
    assert int((tokens != ref).sum()) <= 1  # a float tie may flip one row


@pytest.mark.parametrize(("backend", "device"), _backends("sample_tokens"))
def test_same_seed_and_offset_same_tokens(backend, device):
    rows = 16 if backend == "triton" and device.type == "cpu" else 64  # interpreted: each row slow
    inp, _ = _stat_inputs("temperature", rows, 40, device)
    a = pipo_kernels.sample_tokens(**inp, backend=backend)[0]
    b = pipo_kernels.sample_tokens(**inp, backend=backend)[0]
    assert torch.equal(a, b)
    inp["offsets"] = inp["offsets"] + 1000
    c = pipo_kernels.sample_tokens(**inp, backend=backend)[0]
    assert (a != c).float().mean() > 0.3  # a fresh draw (flat distribution over 40 tokens)
    # Rows that share (seed, offset) draw the same token.
    inp["offsets"] = torch.zeros_like(inp["offsets"])
    d = pipo_kernels.sample_tokens(**inp, backend=backend)[0]
    assert (d == d[0]).all()


def test_cpu_matches_reference_on_many_draws():
    """Same noise: the C++ kernel's tokens equal the float64 reference's, row by row."""
    if "cpu" not in pipo_kernels.available_backends("sample_tokens", CPU):
        pytest.skip("cpu kernels not built")
    inp, _ = _stat_inputs("pipo", 4000, 300)
    tokens = pipo_kernels.sample_tokens(**inp, backend="cpu")[0]
    ref = _ref64({**inp, "num_candidates": 0})[0]
    assert (tokens == ref).float().mean() > 0.999


def test_gumbel_noise_is_the_documented_recipe():
    keys = reference.rng_keys(torch.tensor([0, -1, 2**40]), torch.tensor([0, 5, -(2**35)]))
    assert all((k >= 0).all() and (k < 2**32).all() for k in keys)
    noise = reference.gumbel_noise(
        torch.tensor([1, 2]), torch.tensor([3, 4]), torch.arange(8).expand(2, 8)
    )
    assert noise.dtype == torch.float32 and noise.isfinite().all()
    assert not torch.equal(noise[0], noise[1])
    u = torch.exp(
        -torch.exp(
            -reference.gumbel_noise(
                torch.tensor([9]), torch.tensor([0]), torch.arange(100000)[None]
            )
        )
    )
    assert abs(u.mean().item() - 0.5) < 0.01


# ------------------------------------------------------------------------------------------------
# Bad inputs, opcheck, torch.compile, CUDA graphs
# ------------------------------------------------------------------------------------------------

BAD_SAMPLE = {
    "vocab_mismatch_hidden_size": (
        "lm_head",
        lambda d: d.update(lm_head=d["lm_head"][:, :-1].contiguous()),
    ),
    "num_candidates_above_vocab": ("num_candidates", lambda d: d.update(num_candidates=65)),
    "bitmask_width": ("seen", lambda d: d.update(seen=d["seen"][:, :-1].contiguous())),
    "bitmask_dtype": ("seen", lambda d: d.update(seen=d["seen"].long())),
    "negative_top_k": ("top_k", lambda d: d["top_k"].__setitem__(1, -1)),
    "top_p_zero": ("top_p", lambda d: d["top_p"].__setitem__(0, 0.0)),
    "top_p_above_one": ("top_p", lambda d: d["top_p"].__setitem__(2, 1.5)),
    "negative_temperature": ("temperature", lambda d: d["temperature"].__setitem__(3, -0.5)),
    "top_k_dtype": ("top_k", lambda d: d.update(top_k=d["top_k"].long())),
    "seeds_length": ("seeds", lambda d: d.update(seeds=d["seeds"][:-1])),
}


@pytest.mark.parametrize("bad", list(BAD_SAMPLE))
@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_sample_tokens_bad_inputs(bad, backend):
    if backend not in pipo_kernels.available_backends("sample_tokens", CPU):
        pytest.skip(f"{backend} backend not available")
    name, edit = BAD_SAMPLE[bad]
    inp = make_sample_inputs("mixed_f32")
    edit(inp)
    with pytest.raises((RuntimeError, ValueError), match=name):
        pipo_kernels.sample_tokens(**inp, backend=backend)


def _sample_args(inp: dict) -> tuple:
    keys = ("hidden", "lm_head", "temperature", "top_k", "top_p", "presence_penalty", "seen")
    return (*(inp[k] for k in keys), inp["seeds"], inp["offsets"], inp["num_candidates"])


@pytest.mark.parametrize(
    ("case", "op"),
    [
        *((c, "sample_tokens") for c in ("mixed_f32", "pipo_bf16", "small_vocab_f16", "empty")),
        # The interpreted Triton op runs ~6 times per opcheck: one small case (pipo_bf16 took
        # 5x longer).
        ("small_vocab_f16", "sample_tokens_triton"),
    ],
)
def test_sample_tokens_opcheck(case, op):
    torch.library.opcheck(pipo_op(op), _sample_args(make_sample_inputs(case)))


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_torch_compile_fullgraph(suffix):
    sample = pipo_op("sample_tokens" + suffix)
    # the interpreted Triton op (on a CPU) runs on the small case: pipo_bf16 took 5x longer
    small = suffix == "_triton" and not HAS_CUDA

    def step(args):
        tokens, logprob, ids, lp = sample(*args)
        return tokens + 1, logprob * 2, ids, lp

    assert_compiles_fullgraph(
        step, _sample_args(make_sample_inputs("small_vocab_f16" if small else "pipo_bf16"))
    )


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture(backend):
    dev = torch.device("cuda")
    inp = make_sample_inputs("mixed_f32", dev)
    eager = pipo_kernels.sample_tokens(**inp, backend=backend)
    graph, out = capture_graph(lambda: pipo_kernels.sample_tokens(**inp, backend=backend))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(out, eager, strict=True):
        torch.testing.assert_close(got, want)
    inp["offsets"].add_(1)  # new draws without re-capturing
    graph.replay()
    torch.testing.assert_close(out[0], pipo_kernels.sample_tokens(**inp, backend=backend)[0])

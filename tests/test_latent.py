"""fold_pairs (k tokens per group, k = 1..4) and unfold_input (docs/ops.md §2) on every backend
against the float64 reference.

One list of samples (SAMPLES) drives correctness, opcheck, torch.compile and CUDA-graph capture.
Without a GPU, Triton runs in its interpreter (TRITON_INTERPRET=1): sizes stay small."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA, backends, opcheck_utils, skip_compile_if_interpreted

import pipo_kernels
from pipo_kernels import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Output rounding dominates: half a unit in the last place of values of magnitude ~1-4.
TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
}


def fold_args(n, h, o, v, dtype, device, ids=torch.int64, bias=True, act="none", k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(v, h, generator=g)
    w = torch.randn(o, k * h, generator=g) / (k * h) ** 0.5
    b = torch.randn(o, generator=g) if bias else None
    pair_ids = torch.randint(0, v, (n, k), generator=g).to(ids)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return dict(
        pair_ids=pair_ids.to(device),
        embedding=cast(emb),
        weight=cast(w),
        bias=cast(b),
        activation=act,
    )


def unfold_args(n, h, o, v, dtype, device, ids=torch.int64, eps=1e-6, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(v, h, generator=g)
    hidden = 4 * torch.randn(n, h + 3 if strided else h, generator=g)[:, :h]
    w = torch.randn(o, 2 * h, generator=g) / (2 * h) ** 0.5
    w_e, w_h = 0.5 + torch.rand(h, generator=g), 0.5 + torch.rand(h, generator=g)
    token_ids = torch.randint(0, v, (n,), generator=g).to(ids)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    hid = cast(hidden) if not strided else cast(4 * torch.randn(n, h + 3, generator=g))[:, :h]
    return dict(
        token_ids=token_ids.to(device),
        hidden=hid,
        embedding=cast(emb),
        embed_norm_weight=cast(w_e),
        hidden_norm_weight=cast(w_h),
        weight=cast(w),
        eps=eps,
    )


MAKE = {"fold_pairs": fold_args, "unfold_input": unfold_args}

# (op, n, h, o, v, options): odd sizes (H not a multiple of the vector width, O not a multiple of
# the output tile), N = 0, int32 ids, both activations, no bias, strided hidden rows.
SAMPLES = [
    ("fold_pairs", 0, 16, 8, 10, {}),
    ("fold_pairs", 1, 16, 4, 10, {}),
    ("fold_pairs", 5, 37, 13, 11, dict(ids=torch.int32, act="silu")),
    ("fold_pairs", 9, 64, 70, 50, dict(bias=False)),
    ("fold_pairs", 3, 24, 20, 7, dict(ids=torch.int32, bias=False, act="silu")),
    # Groups of k = 1, 3, 4 tokens (PIPO-4 folds four): odd H, N = 0 and 1, int32 ids.
    ("fold_pairs", 0, 16, 8, 10, dict(k=4)),
    ("fold_pairs", 1, 16, 4, 10, dict(k=4)),
    ("fold_pairs", 5, 37, 13, 11, dict(k=4, ids=torch.int32, act="silu")),
    ("fold_pairs", 4, 21, 9, 12, dict(k=3, bias=False)),
    ("fold_pairs", 6, 19, 7, 5, dict(k=1, ids=torch.int32)),
    ("unfold_input", 0, 16, 8, 10, {}),
    ("unfold_input", 1, 16, 4, 10, {}),
    ("unfold_input", 5, 37, 13, 11, dict(ids=torch.int32, eps=1e-5)),
    ("unfold_input", 9, 64, 70, 50, dict(strided=True)),
]
# Larger shapes that cross the CPU kernel's row (64), output (64) and column (512) blocks.
CPU_SAMPLES = [
    ("fold_pairs", 70, 600, 130, 300, dict(act="silu")),
    ("fold_pairs", 131, 520, 67, 1000, dict(ids=torch.int32)),
    ("fold_pairs", 70, 300, 130, 300, dict(k=4, act="silu")),
    ("fold_pairs", 65, 1030, 66, 200, dict(k=3, ids=torch.int32)),
    ("unfold_input", 70, 600, 130, 300, {}),
    ("unfold_input", 131, 1030, 67, 1000, dict(strided=True)),
]


def sample_id(s):
    op, n, h, o, _, opts = s
    extra = ",".join(
        f"{k}={getattr(x, '__name__', str(x).replace('torch.', ''))}" for k, x in opts.items()
    )
    return f"{op}-N{n}-H{h}-O{o}" + (f"-{extra}" if extra else "")


def run(op, args, backend):
    return getattr(pipo_kernels, op)(**args, backend=backend)


def expected(op, args):
    ref64 = {
        k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in args.items()
    }
    return getattr(reference, op)(**ref64)


def poison_allocator(n, o, dtype, device):
    """Leave a NaN block of the output's size in the allocator, so that elements a kernel forgets
    to write come back as NaN (reliable on CUDA's caching allocator, best effort on CPU)."""
    torch.full((max(n, 1), max(o, 1)), float("nan"), dtype=dtype, device=device)


def check_case(sample, dtype, device, backend):
    op, n, h, o, v, opts = sample
    args = MAKE[op](n, h, o, v, dtype, device, **opts)
    poison_allocator(n, o, dtype, device)
    out = run(op, args, backend)
    assert out.shape == (n, o) and out.dtype == dtype and out.device.type == device
    assert not out.isnan().any(), "unwritten or NaN output elements"
    torch.testing.assert_close(out.double(), expected(op, args), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES, ids=sample_id)
@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_matches_reference_cpu(sample, dtype, backend):
    if backend not in backends(sample[0], "cpu"):
        pytest.skip(f"{backend} unavailable on cpu")
    check_case(sample, dtype, "cpu", backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", CPU_SAMPLES, ids=sample_id)
def test_cpu_kernel_blocks(sample, dtype):
    if "cpu" not in backends(sample[0], "cpu"):
        pytest.skip("C++ CPU kernel not built")
    check_case(sample, dtype, "cpu", "cpu")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES + CPU_SAMPLES, ids=sample_id)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_matches_reference_cuda(sample, dtype, backend):
    check_case(sample, dtype, "cuda", backend)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("n", [1, 8, 64, 300])
@pytest.mark.parametrize("op", ["fold_pairs", "unfold_input"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_decode_and_prefill_regimes_cuda(op, n, dtype, backend):
    """Both GPU regimes (fused GEMV decode, gather + GEMM prefill) at a real hidden size."""
    check_case((op, n, 1024, 1024, 4096, {}), dtype, "cuda", backend)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("n", [1, 8, 9, 300])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_fold_k4_regimes_cuda(n, backend):
    """PIPO-4's fold (k = 4, weight [H, 4H]) in both GPU regimes at a real hidden size."""
    check_case(("fold_pairs", n, 1024, 1024, 4096, {"k": 4}), torch.bfloat16, "cuda", backend)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_fold_k_is_the_sum_of_per_token_projections(k):
    """Column block j of the weight multiplies token j's embedding: the fold equals the sum of k
    ordinary projections (float64, on every CPU backend), and fold_groups is fold_pairs."""
    assert pipo_kernels.fold_groups is pipo_kernels.fold_pairs
    args = fold_args(7, 13, 11, 17, torch.float32, "cpu", k=k, seed=k)
    h = 13
    emb, w, ids = args["embedding"].double(), args["weight"].double(), args["pair_ids"]
    want = sum(emb[ids[:, j]] @ w[:, j * h : (j + 1) * h].T for j in range(k)) + args["bias"]
    torch.testing.assert_close(
        reference.fold_pairs(**{**args, "weight": w, "embedding": emb}), want
    )
    for backend in backends("fold_pairs", "cpu"):
        got = pipo_kernels.fold_groups(**args, backend=backend)
        torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


def test_fold_k2_unchanged():
    """k = 2 through the generalised kernels gives what the pair fold gave: the concatenation of
    the two rows times the weight (the PIPO-2 compressor's contract)."""
    args = fold_args(9, 24, 16, 30, torch.float32, "cpu", act="silu")
    x = args["embedding"][args["pair_ids"]].flatten(1)
    want = torch.nn.functional.silu(torch.nn.functional.linear(x, args["weight"], args["bias"]))
    for backend in backends("fold_pairs", "cpu"):
        torch.testing.assert_close(pipo_kernels.fold_pairs(**args, backend=backend), want)


def test_mlp_compressor_equivalence():
    """The MLP compressor is fold_pairs(silu, O=2H) then an ordinary linear (docs/ops.md §2)."""
    args = fold_args(6, 32, 64, 20, torch.float32, "cpu", act="silu")
    w2 = torch.randn(32, 64) / 8
    x = torch.cat(
        [args["embedding"][args["pair_ids"][:, 0]], args["embedding"][args["pair_ids"][:, 1]]], 1
    )
    want = torch.nn.functional.linear(
        torch.nn.functional.silu(torch.nn.functional.linear(x, args["weight"], args["bias"])), w2
    )
    got = torch.nn.functional.linear(pipo_kernels.fold_pairs(**args), w2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# opcheck, torch.compile, CUDA graphs
# ---------------------------------------------------------------------------------------------

OPCHECK_SAMPLES = [s for s in SAMPLES if s[1] in (0, 5)]  # k = 2 and k = 4 among them


def positional(op, args):
    keys = (
        ("pair_ids", "embedding", "weight", "bias", "activation")
        if op == "fold_pairs"
        else (
            "token_ids",
            "hidden",
            "embedding",
            "embed_norm_weight",
            "hidden_norm_weight",
            "weight",
            "eps",
        )
    )
    return tuple(args[k] for k in keys)


@pytest.mark.parametrize("sample", OPCHECK_SAMPLES, ids=sample_id)
@pytest.mark.parametrize("suffix", ["", "_triton"], ids=["cxx", "triton"])
def test_opcheck(sample, suffix):
    op = sample[0]
    name = op + suffix
    if not hasattr(torch.ops.pipo, name):
        pytest.skip(f"torch.ops.pipo.{name} is not registered")
    device = "cuda" if HAS_CUDA else "cpu"
    args = MAKE[op](*sample[1:5], torch.float32, device, **sample[5])
    utils = opcheck_utils(device, is_triton=bool(suffix))
    torch.library.opcheck(getattr(torch.ops.pipo, name), positional(op, args), test_utils=utils)


COMPILED = [("fold_pairs", {}), ("fold_pairs", {"k": 4}), ("unfold_input", {})]


@pytest.mark.parametrize("kind", ["compiled", "triton"])
@pytest.mark.parametrize("op,opts", COMPILED, ids=["fold_pairs", "fold_k4", "unfold_input"])
def test_torch_compile_fullgraph(op, opts, kind):
    device = "cuda" if HAS_CUDA else "cpu"
    backend = kind if kind == "triton" else device
    skip_compile_if_interpreted(device, backend)
    if backend not in backends(op, device):
        pytest.skip(f"{backend} unavailable on {device}")
    args = MAKE[op](7, 32, 24, 20, torch.float32, device, **opts)
    fn = getattr(pipo_kernels, op)

    def step(a):
        return fn(**a, backend=backend) * 2 + 1

    torch._dynamo.reset()
    # Inductor on a GPU; aot_eager on the CPU keeps the test fast (no C++ compile of the graph).
    got = torch.compile(step, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")(args)
    torch.testing.assert_close(got, step(args))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("op,opts", COMPILED, ids=["fold_pairs", "fold_k4", "unfold_input"])
def test_cuda_graph_capture(op, opts, backend):
    args = MAKE[op](8, 256, 256, 1000, torch.bfloat16, "cuda", **opts)
    fn = getattr(pipo_kernels, op)
    fn(**args, backend=backend)  # compile / warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(**args, backend=backend)
    fresh = MAKE[op](8, 256, 256, 1000, torch.bfloat16, "cuda", seed=1, **opts)
    for k, v in fresh.items():  # new ids and rows, same buffers
        if torch.is_tensor(v) and k in ("pair_ids", "token_ids", "hidden"):
            args[k].copy_(v)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.double(), expected(op, args), **TOL[torch.bfloat16])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("op", ["fold_pairs", "unfold_input"])
def test_out_of_range_ids_read_as_zero_rows_cuda(op, backend, monkeypatch):
    """On a GPU an id outside the table is never followed: its embedding row counts as zeros."""
    monkeypatch.delenv("PIPO_VALIDATE", raising=False)
    args = MAKE[op](6, 64, 48, 30, torch.float32, "cuda")
    key = "pair_ids" if op == "fold_pairs" else "token_ids"
    args[key].view(-1)[1] = 10**6
    args[key].view(-1)[3] = -5
    out = run(op, args, backend)
    table = torch.cat([args["embedding"], torch.zeros_like(args["embedding"][:1])])
    ids = args[key].clone()
    ids[(ids < 0) | (ids >= 30)] = 30
    want = expected(op, {**args, key: ids, "embedding": table})
    torch.testing.assert_close(out.double(), want, **TOL[torch.float32])


# ---------------------------------------------------------------------------------------------
# bad inputs: every error names the argument
# ---------------------------------------------------------------------------------------------


def _bad_fold():
    a = lambda **kw: {**fold_args(3, 8, 6, 10, torch.float32, "cpu"), **kw}  # noqa: E731
    emb = torch.randn(10, 8)
    return [
        ("weight", a(weight=torch.randn(6, 8))),
        ("weight", a(weight=torch.randn(6, 16, dtype=torch.float16))),
        ("weight", a(weight=torch.randn(16, 6).t())),
        ("embedding", a(embedding=emb.to(torch.int64))),
        ("embedding", a(embedding=torch.randn(8, 10).t())),
        ("weight", a(pair_ids=torch.zeros(3, 3, dtype=torch.int64))),  # k = 3 needs [O, 3H]
        ("weight", a(pair_ids=torch.zeros(3, 1, dtype=torch.int64))),
        ("pair_ids", a(pair_ids=torch.zeros(3, 0, dtype=torch.int64))),
        ("pair_ids", a(pair_ids=torch.zeros(3, dtype=torch.int64))),
        ("pair_ids", a(pair_ids=torch.zeros(3, 2))),
        ("pair_ids", a(pair_ids=torch.tensor([[0, 1], [2, 10], [3, 4]]))),
        ("pair_ids", a(pair_ids=torch.tensor([[0, 1], [-1, 2], [3, 4]], dtype=torch.int32))),
        ("bias", a(bias=torch.randn(5))),
        ("bias", a(bias=torch.randn(6, dtype=torch.float64))),
        ("activation", a(activation="relu")),
    ]


def _bad_unfold():
    a = lambda **kw: {**unfold_args(3, 8, 6, 10, torch.float32, "cpu"), **kw}  # noqa: E731
    return [
        ("weight", a(weight=torch.randn(6, 9))),
        ("token_ids", a(token_ids=torch.tensor([0, 10, 1]))),
        ("token_ids", a(token_ids=torch.tensor([0, 1, -2], dtype=torch.int32))),
        ("token_ids", a(token_ids=torch.zeros(3, 1, dtype=torch.int64))),
        ("token_ids", a(token_ids=torch.zeros(3, dtype=torch.int16))),
        ("hidden", a(hidden=torch.randn(2, 8))),
        ("hidden", a(hidden=torch.randn(3, 7))),
        ("hidden", a(hidden=torch.randn(8, 3).t())),
        ("hidden", a(hidden=torch.randn(3, 8, dtype=torch.float16))),
        ("embed_norm_weight", a(embed_norm_weight=torch.randn(7))),
        ("hidden_norm_weight", a(hidden_norm_weight=torch.randn(8, 1))),
    ]


BAD = [("fold_pairs", *c) for c in _bad_fold()] + [("unfold_input", *c) for c in _bad_unfold()]


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
@pytest.mark.parametrize("case", BAD, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(BAD)])
def test_bad_inputs_name_the_argument(case, backend):
    op, name, args = case
    if backend not in backends(op, "cpu"):
        pytest.skip(f"{backend} unavailable on cpu")
    with pytest.raises((RuntimeError, ValueError), match=name):
        run(op, args, backend)

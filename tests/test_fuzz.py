"""Property-based fuzzing of every op on every backend (docs/ops.md, "Tensor views" and "Index
values out of range").

Hypothesis draws shapes (0 and 1 included), dtypes, a view of every tensor argument (plain,
offset, strided, transposed, expanded), index values in and out of range, NaN / inf in float
inputs and an argument on the wrong ("meta") device. Each case runs in a worker process
(tests/fuzz_cases.py, which also states the oracle), so a crashing kernel fails its case instead
of killing the suite; a dead worker is restarted for the next case.

Backends: PIPO_FUZZ_BACKENDS (comma-separated) or, by default, cpu, torch and triton (under the
interpreter on CPU tensors) here, plus cuda when a GPU is present. PIPO_FUZZ_EXAMPLES scales the
number of cases (default 1.0; benchmarks/gpu_check.sh runs the cuda backend under
compute-sanitizer). The runs are derandomized: CI sees the same cases every time.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import fuzz_cases as fc
import pytest
import torch
from conftest import HAS_CUDA

pytest.importorskip("hypothesis")  # the `test` extra installs it; a --no-deps GPU box may not
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipo_kernels as pk

OPS = fc.OPS
DEFAULT_BACKENDS = ("cpu", "torch", "triton") + (("cuda",) if HAS_CUDA else ())
BACKENDS = tuple(
    b for b in os.environ.get("PIPO_FUZZ_BACKENDS", ",".join(DEFAULT_BACKENDS)).split(",") if b
)
SCALE = float(os.environ.get("PIPO_FUZZ_EXAMPLES", "1"))
# Cases per (op, backend): the interpreter is slow, the compiled kernels are not.
EXAMPLES = {"cpu": 150, "torch": 50, "triton": 80, "cuda": 60}
EXAMPLES_OP = {("sample_tokens", "triton"): 12}  # up to ~1 s a case under the interpreter
# Generous: the first case of a worker includes its start (imports, CUDA init under a sanitizer).
CASE_TIMEOUT_S = float(os.environ.get("PIPO_FUZZ_TIMEOUT", "300"))


def device_of(backend: str) -> str:
    """cpu for the cpu backend, cuda for cuda; triton and torch on a GPU when there is one."""
    return "cpu" if backend == "cpu" or not HAS_CUDA else "cuda"


class Worker:
    """One long-lived worker process (spawned: safe with CUDA and OpenMP), restarted when a case
    kills it. Cases are plain dicts, so each costs one pipe round trip."""

    def __init__(self):
        self.proc = None

    def _start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=fc.worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def run(self, case: dict) -> str | None:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(case)
        if not self.conn.poll(CASE_TIMEOUT_S):
            self.stop()
            return f"timed out after {CASE_TIMEOUT_S} s"
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            self.proc = None
            return f"the worker process died (exit code {code}: a negative code is the signal)"

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
            self.proc = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.stop()


# ---------------------------------------------------------------------------------------------
# Strategies: the op-specific parameters of a case (shapes, options)

# Hypothesis leans towards the first value of a sampled_from and small integers: a typical size
# comes first, so that empty and size-1 tensors are drawn often but not most of the time.
dtypes = st.sampled_from(tuple(fc.DTYPES))
small = st.sampled_from((3, 0, 1, 5, 2))


def lists_of(elements, lengths=(2, 0, 1, 3)):
    return st.sampled_from(lengths).flatmap(lambda n: st.lists(elements, min_size=n, max_size=n))


KV = dict(
    dtype=dtypes,
    pages=st.integers(0, 3),
    page_size=st.sampled_from((1, 2, 4)),
    heads=st.integers(1, 2),
    head_dim=st.sampled_from((1, 4, 8)),
    n=small,
)
LATENT = dict(
    dtype=dtypes,
    n=small,
    vocab=st.integers(1, 9),
    hidden=st.sampled_from((1, 4, 16)),
    out=st.sampled_from((1, 3, 16)),
    ids32=st.booleans(),
    bias=st.booleans(),
    activation=st.sampled_from(("none", "silu")),
    fold=st.sampled_from((2, 4, 1, 3)),  # fold_pairs' tokens per group (unfold_input ignores it)
)
SAMPLE = dict(
    dtype=dtypes,
    batch=st.sampled_from((2, 0, 1, 3)),
    hidden=st.sampled_from((1, 8, 16)),
    vocab=st.sampled_from((1, 5, 40, 100)),
    seen=st.booleans(),
    candidates=st.sampled_from((0, 1, 3, 64)),
)
PAIR = dict(
    dtype=dtypes,
    batch=small,
    hidden=st.sampled_from((1, 8, 16)),
    threshold=st.sampled_from((-1.0, 0.0, 0.5, 1.0, 2.0)),
)
GROUP = dict(PAIR, steps=st.sampled_from((3, 0, 1, 2)))
NORM = dict(dtype=dtypes, n=small, hidden=st.sampled_from((8, 1, 16)))
# n up to 12: the CPU GEMV (at most 8 rows) and ATen's GEMM above it.
LINEAR = dict(
    dtype=dtypes,
    n=st.sampled_from((1, 0, 3, 12, 8)),
    k=st.sampled_from((17, 1, 16, 0)),
    out=st.sampled_from((5, 1, 8)),
    activation=st.sampled_from(("none", "swiglu")),
)
ROPE = dict(
    {k: v for k, v in KV.items() if k != "heads"},
    head_dim=st.sampled_from((4, 2, 8)),  # even: RoPE rotates pairs of channels
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 2),
    max_pos=st.integers(1, 6),
    partial=st.booleans(),
    norm=st.booleans(),
)
TREE = dict(
    sizes=lists_of(st.sampled_from((4, 0, 1, 5, 2))),
    spare_depth=st.integers(0, 1),
    vocab=st.integers(1, 6),
)


def attention_params(backend):
    head_dims = (64,) if backend == "cuda" else (1, 8, 16)
    return st.sampled_from((2, 0, 1, 3)).flatmap(
        lambda b: st.fixed_dictionaries(
            dict(
                dtype=dtypes,
                q_lens=st.lists(st.sampled_from((2, 0, 1, 3)), min_size=b, max_size=b),
                prefix=st.lists(st.sampled_from((3, 0, 1, 6)), min_size=b, max_size=b),
                page_size=st.sampled_from((1, 2, 4)),
                kv_heads=st.integers(1, 2),
                group=st.integers(1, 2),
                head_dim=st.sampled_from(head_dims),
                spare_pages=st.integers(0, 2),
                spare_cols=st.integers(0, 1),
                mask=st.booleans(),
                sm_scale=st.sampled_from((None, 0.3)),
                return_lse=st.booleans(),
                num_splits=st.integers(0, 3),
            )
        )
    )


# The op-specific parameters of a case: a dict of strategies, or a function of the backend.
PARAMS = {
    "kv_cache_append": KV,
    "kv_cache_compact": KV,
    "fold_pairs": LATENT,
    "unfold_input": LATENT,
    "sample_tokens": SAMPLE,
    "pair_out": PAIR,
    "group_out": GROUP,
    "paged_attention": attention_params,
    "verify_tree": TREE,
    "verify_tree_stochastic": TREE,
    "fused_add_rmsnorm": NORM,
    "qk_norm_rope_append": ROPE,
    "linear": LINEAR,
}


def op_params(op: str, backend: str):
    spec = PARAMS[op]
    return spec(backend) if callable(spec) else st.fixed_dictionaries(spec)


@st.composite
def cases(draw, op: str, backend: str) -> dict:
    names = fc.TENSOR_ARGS[op]
    # Most arguments plain or offset; a few with the unusual layouts, so each case isolates one.
    view = st.tuples(
        st.sampled_from(("strided", "expanded", "transposed", "strided", "offset")),
        st.integers(0, 3),
        st.integers(1, 9),
    )
    # (Hypothesis leans towards small integers: the rare choices below sit in the middle.)
    n_odd = draw(st.sampled_from((1, 0, 2, 1)))
    odd = set(draw(st.lists(st.sampled_from(names), min_size=n_odd, max_size=n_odd)))
    views = {
        n: draw(view) if n in odd else draw(st.sampled_from((("plain", 0, 0), ("offset", 0, 3))))
        for n in names
    }
    # About half the cases with valid index values, the others with one kind of bad value.
    bad = fc.CORRUPTIONS[op]
    corrupt = draw(st.sampled_from([c for b in bad for c in (b, None)] or [None]))
    floats = fc.FLOAT_ARGS[op]
    nonfinite = draw(st.lists(st.sampled_from(floats), max_size=1)) if floats else []
    if draw(st.integers(0, 4)) != 3:
        nonfinite = []
    meta_arg = draw(st.sampled_from(names)) if draw(st.integers(0, 14)) == 9 else None
    # GPU kernels skip index-value checks unless PIPO_VALIDATE=1: fuzzed both ways (the worker sets
    # PIPO_VALIDATE per case). So are the Triton kernels under the interpreter, whose checks would
    # otherwise always run on CPU tensors (the worker switches them off for unchecked cases).
    checked = draw(st.sampled_from((False, True, True))) if backend in ("cuda", "triton") else True
    return dict(
        op=op,
        backend=backend,
        device=device_of(backend),
        seed=draw(st.integers(0, 2**31 - 1)),
        params=draw(op_params(op, backend)),
        views=views,
        corrupt=corrupt,
        nonfinite=nonfinite,
        meta_arg=meta_arg,
        checked=checked,
    )


def available(op: str, backend: str) -> bool:
    return backend in pk.available_backends(op, torch.device(device_of(backend)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_fuzz(op, backend, worker):
    if not available(op, backend):
        pytest.skip(f"no {backend} backend for {op} here")

    @settings(
        max_examples=max(1, int(EXAMPLES_OP.get((op, backend), EXAMPLES[backend]) * SCALE)),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases(op, backend))
    def check(case):
        failure = worker.run(case)
        assert failure is None, f"{failure}\ncase: {case}"

    check()


# ---------------------------------------------------------------------------------------------
# The cases of the issue, as plain tests (in the test process: they must raise, not crash).

CPU_BACKENDS = [b for b in ("cpu", "triton", "torch") if b in BACKENDS]


def _cache(pages=4, size=4, heads=1, dim=8):
    k = torch.randn(pages, size, heads, dim)
    return k, torch.randn_like(k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_append_strided_slots_raise(backend):
    k, v = _cache()
    before = k.clone(), v.clone()
    key = torch.randn(3, 1, 8)
    slots2d = torch.tensor([[0, 10**12], [1, 10**12], [2, 10**12]])
    with pytest.raises((ValueError, RuntimeError), match=r"^slot_mapping: expected a contiguous"):
        pk.kv_cache_append(key, key, k, v, slots2d[:, 0], backend=backend)
    assert torch.equal(k, before[0]) and torch.equal(v, before[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("which", ["src_slots", "dst_slots"])
def test_compact_strided_slots_raise(backend, which):
    k, v = _cache()
    before = k.clone(), v.clone()
    both = {
        "src_slots": torch.tensor([[0, 5], [1, 6]])[:, 0],
        "dst_slots": torch.tensor([[7, 1], [8, 2]])[:, 0],
    }
    other = "dst_slots" if which == "src_slots" else "src_slots"
    both[other] = both[other].contiguous()
    with pytest.raises((ValueError, RuntimeError), match=rf"^{which}: expected a contiguous"):
        pk.kv_cache_compact(k, v, both["src_slots"], both["dst_slots"], backend=backend)
    assert torch.equal(k, before[0]) and torch.equal(v, before[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("which", ["token1", "token2"])
def test_pair_out_strided_tokens_raise(backend, which):
    h = 8
    tok = {"token1": torch.arange(3), "token2": torch.arange(3)}
    tok[which] = torch.arange(6)[::2]
    args = (torch.randn(3, h), torch.randn(3, h), tok["token1"], tok["token2"])
    weights = (torch.randn(2 * h), torch.randn(h, 2 * h), torch.randn(1, h))
    with pytest.raises((ValueError, RuntimeError), match=rf"^{which}: expected a contiguous"):
        pk.pair_out(*args, *weights, 0.5, -1, 1e-6, backend=backend)


def _attention_args(n_q=3):
    q = torch.randn(n_q, 2, 16)
    k, v = _cache(pages=2, size=4, heads=1, dim=16)
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    kv_lens = torch.tensor([6], dtype=torch.int32)
    indptr = torch.tensor([0, n_q], dtype=torch.int32)
    return q, k, v, table, kv_lens, indptr


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("indptr", [[-4, 3], [0, -2], [3, 0], [0, 2**31 - 1], [0, 4]])
def test_attention_bad_indptr_raises(backend, indptr):
    q, k, v, table, kv_lens, _ = _attention_args()
    bad = torch.tensor(indptr, dtype=torch.int32)
    with pytest.raises((ValueError, RuntimeError), match=r"^q_indptr:"):
        pk.paged_attention(q, k, v, table, kv_lens, bad, backend=backend)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend not fuzzed here")
@pytest.mark.parametrize(
    "indptr,kv_len", [([-4, 3], 6), ([0, -2], 6), ([3, 0], 6), ([0, 2**31 - 1], 6), ([0, 3], -5)]
)
def test_triton_attention_unchecked_clamps(indptr, kv_len, worker):
    """With its value checks off (a GPU without PIPO_VALIDATE), the Triton kernel clamps bad
    q_indptr / kv_lens entries instead of following them: the worker's guard bands catch any read
    or write past q, tree_mask or out."""
    if not available("paged_attention", "triton"):
        pytest.skip("no triton backend here")
    params = dict(
        dtype="f32",
        q_lens=[3],
        prefix=[3],
        page_size=4,
        kv_heads=1,
        group=2,
        head_dim=16,
        spare_pages=0,
        spare_cols=0,
        mask=True,
        sm_scale=None,
        return_lse=True,
        num_splits=1,
    )
    case = dict(
        op="paged_attention",
        backend="triton",
        device=device_of("triton"),
        seed=0,
        params=params,
        views={n: ("offset", 0, 8) for n in fc.TENSOR_ARGS["paged_attention"]},
        corrupt=None,
        nonfinite=[],
        meta_arg=None,
        checked=False,
        override=dict(q_indptr=indptr, kv_lens=[kv_len]),
    )
    assert worker.run(case) is None


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_expanded_q_works(backend):
    """q is only read: token / head strides are free, stride 0 (an expanded query) included."""
    q, k, v, table, kv_lens, indptr = _attention_args()
    q_exp = q[:1, :1].expand(3, 2, 16)
    assert q_exp.stride()[:2] == (0, 0)
    got = pk.paged_attention(q_exp, k, v, table, kv_lens, indptr, backend=backend)
    want = pk.paged_attention(q_exp.contiguous(), k, v, table, kv_lens, indptr, backend="torch")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


ROPE_PARAMS = dict(
    dtype="f32",
    pages=2,
    page_size=2,
    head_dim=4,
    n=3,
    kv_heads=1,
    group=2,
    max_pos=4,
    partial=False,
    norm=True,
)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("op", "arg", "view"),
    [
        ("qk_norm_rope_append", "q", ("expanded", 0, 2)),  # written in place: must raise
        ("qk_norm_rope_append", "k", ("strided", 0, 2)),  # strided token rows: must work
        ("qk_norm_rope_append", "positions", ("strided", 0, 2)),  # index tensor: must raise
        ("qk_norm_rope_append", "slot_mapping", ("offset", 0, 5)),  # offset: must work
        ("fused_add_rmsnorm", "x", ("expanded", 0, 2)),  # written in place: must raise
        ("fused_add_rmsnorm", "residual", ("transposed", 0, 1)),  # must raise
    ],
)
def test_fused_ops_views(op, arg, view, backend, worker):
    """The layouts of the fused per-layer ops that the random cases draw only rarely, judged by
    the fuzz oracle (works and equals the reference, or raises naming the argument)."""
    params = ROPE_PARAMS if op == "qk_norm_rope_append" else dict(dtype="f32", n=3, hidden=8)
    views = {n: ("plain", 0, 0) for n in fc.TENSOR_ARGS[op]}
    views[arg] = view
    case = dict(
        op=op,
        backend=backend,
        device=device_of(backend),
        seed=1,
        params=params,
        views=views,
        corrupt=None,
        nonfinite=[],
        meta_arg=None,
        checked=True,
    )
    assert worker.run(case) is None

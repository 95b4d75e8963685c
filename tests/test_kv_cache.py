"""kv_cache_append / kv_cache_compact on every backend against the reference."""

from dataclasses import dataclass

import pytest
import torch
from conftest import (
    HAS_CUDA,
    device_backend_params,
    opcheck_utils,
    requires_cuda,
    seeded,
    skip_compile_if_interpreted,
)

import pipo_kernels
from pipo_kernels import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Case:
    num_pages: int
    page_size: int
    heads: int
    head_dim: int
    tokens: int

    def __str__(self) -> str:
        return f"P{self.num_pages}xS{self.page_size}xH{self.heads}xD{self.head_dim}-N{self.tokens}"


# One list drives correctness, opcheck and compile: page sizes 1..128, head_dim 64/128/256,
# odd head counts, empty and full batches.
CASES = [
    Case(8, 16, 2, 64, 37),
    Case(3, 128, 1, 128, 129),
    Case(40, 1, 3, 256, 17),
    Case(5, 4, 8, 128, 20),
    Case(2, 8, 4, 64, 0),
    Case(1, 2, 2, 64, 2),
]


def make_caches(case: Case, dtype, device, seed=0):
    g = seeded(seed)
    shape = (case.num_pages, case.page_size, case.heads, case.head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype).to(device)
    v_cache = torch.randn(shape, generator=g).to(dtype).to(device)
    return k_cache, v_cache


def make_append_inputs(case: Case, dtype, device, seed=0):
    """Fresh random keys/values into distinct random slots, about a fifth of them skipped (-1)."""
    g = seeded(seed + 1)
    n = case.tokens
    num_slots = case.num_pages * case.page_size
    key = torch.randn(n, case.heads, case.head_dim, generator=g).to(dtype).to(device)
    value = torch.randn(n, case.heads, case.head_dim, generator=g).to(dtype).to(device)
    slots = torch.randperm(max(num_slots, n), generator=g)[:n] % num_slots
    slots = torch.unique(slots, sorted=False) if n else slots
    slots = torch.cat([slots, torch.full((n - slots.numel(),), -1, dtype=torch.int64)])
    slots[torch.rand(n, generator=g) < 0.2] = -1
    return key, value, slots.to(device)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Exact comparison of float tensors, NaN payloads included."""
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(bits(a.cpu()), bits(b.cpu()))


@pytest.mark.parametrize("device,backend", device_backend_params("kv_cache_append"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_append_matches_reference(device, backend, dtype, case):
    k_cache, v_cache = make_caches(case, dtype, device)
    key, value, slots = make_append_inputs(case, dtype, device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.kv_cache_append(key, value, k_ref, v_ref, slots)
    pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend=backend)
    assert_same(k_cache, k_ref)
    assert_same(v_cache, v_ref)


@pytest.mark.parametrize("device,backend", device_backend_params("kv_cache_append"))
def test_append_strided_views_of_fused_qkv(device, backend):
    """key/value as views into a fused [N, (Hq + 2 Hkv) * D] projection, the common drop-in case."""
    n, hq, hkv, d = 9, 4, 2, 64
    qkv = torch.randn(n, (hq + 2 * hkv) * d, generator=seeded(3)).to(torch.bfloat16).to(device)
    key = qkv[:, hq * d : (hq + hkv) * d].view(n, hkv, d)
    value = qkv[:, (hq + hkv) * d :].view(n, hkv, d)
    assert not key.is_contiguous()
    k_cache, v_cache = make_caches(Case(4, 4, hkv, d, n), torch.bfloat16, device)
    slots = torch.tensor([3, 0, 15, -1, 7, 8, 1, 2, 14], device=device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.kv_cache_append(key, value, k_ref, v_ref, slots)
    pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend=backend)
    assert_same(k_cache, k_ref)
    assert_same(v_cache, v_ref)


def compact_moves(case: Case, kind: str, device, seed=0):
    """Moves whose sources and destinations overlap: a shift (tree compaction), a cyclic
    permutation (every destination is another move's source), and random moves with skips."""
    g = seeded(seed + 2)
    num_slots = case.num_pages * case.page_size
    m = min(case.tokens, num_slots - 1)
    if kind == "shift":
        src = torch.arange(1, m + 1)
        dst = torch.arange(0, m)
    elif kind == "cycle":
        src = torch.randperm(num_slots, generator=g)[:m]
        dst = src.roll(1)
    else:
        perm = torch.randperm(num_slots, generator=g)
        src = torch.randint(0, num_slots, (m,), generator=g)
        dst = perm[:m].clone()
        src[torch.rand(m, generator=g) < 0.2] = -1
        dst[torch.rand(m, generator=g) < 0.1] = -1
    return src.to(device), dst.to(device)


@pytest.mark.parametrize("device,backend", device_backend_params("kv_cache_compact"))
@pytest.mark.parametrize("kind", ["shift", "cycle", "random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_compact_matches_reference(device, backend, kind, dtype, case):
    k_cache, v_cache = make_caches(case, dtype, device)
    src, dst = compact_moves(case, kind, device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.kv_cache_compact(k_ref, v_ref, src, dst)
    pipo_kernels.kv_cache_compact(k_cache, v_cache, src, dst, backend=backend)
    assert_same(k_cache, k_ref)
    assert_same(v_cache, v_ref)


def test_reference_compact_reads_before_writing():
    """The reference itself must implement the read-all-first semantics (a shift by one)."""
    cache = torch.arange(8.0).view(1, 8, 1, 1)
    other = cache.clone()
    reference.kv_cache_compact(cache, other, torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4]))
    assert cache.flatten().tolist() == [0, 1, 1, 2, 3, 5, 6, 7]


# --- bad inputs: a clear error naming the argument, and both caches unchanged -------------------


def _bad_append_inputs():
    """(label, argument named in the error, function(key, value, kc, vc, slots) -> new args)."""
    return [
        ("slot out of range", "slot_mapping", lambda k, v, kc, vc, s: (k, v, kc, vc, s + 1000)),
        ("slot dtype", "slot_mapping", lambda k, v, kc, vc, s: (k, v, kc, vc, s.int())),
        ("slot length", "slot_mapping", lambda k, v, kc, vc, s: (k, v, kc, vc, s[:-1])),
        ("key dtype", "key", lambda k, v, kc, vc, s: (k.half(), v, kc, vc, s)),
        ("key heads", "key", lambda k, v, kc, vc, s: (k[:, :1], v, kc, vc, s)),
        ("value head_dim", "value", lambda k, v, kc, vc, s: (k, v[..., :32], kc, vc, s)),
        ("value tokens", "value", lambda k, v, kc, vc, s: (k, v[:-1], kc, vc, s)),
        ("v_cache shape", "v_cache", lambda k, v, kc, vc, s: (k, v, kc, vc[:-1], s)),
        ("k_cache 3-D", "k_cache", lambda k, v, kc, vc, s: (k, v, kc[0], vc, s)),
        ("k_cache int", "k_cache", lambda k, v, kc, vc, s: (k, v, kc.int(), vc, s)),
        (
            "k_cache strided",
            "k_cache",
            lambda k, v, kc, vc, s: (k, v, kc.transpose(0, 1).contiguous().transpose(0, 1), vc, s),
        ),
        (
            "key inner stride",
            "key",
            lambda k, v, kc, vc, s: (k.transpose(1, 2).contiguous().transpose(1, 2), v, kc, vc, s),
        ),
    ]


@pytest.mark.parametrize("device,backend", device_backend_params("kv_cache_append"))
@pytest.mark.parametrize(
    "label,arg,mutate", _bad_append_inputs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_append_bad_inputs(device, backend, label, arg, mutate, monkeypatch):
    monkeypatch.setenv("PIPO_VALIDATE", "1")  # value checks on a GPU too
    case = Case(4, 4, 2, 64, 6)
    k_cache, v_cache = make_caches(case, torch.float32, device)
    key, value, slots = make_append_inputs(case, torch.float32, device)
    slots[0] = 5  # at least one live slot, so an out-of-range shift stays out of range
    args = mutate(key, value, k_cache, v_cache, slots)
    before = [t.clone() for t in args[2:4]]
    with pytest.raises((RuntimeError, ValueError), match=arg):
        pipo_kernels.kv_cache_append(*args, backend=backend)
    for t, b in zip(args[2:4], before, strict=True):
        assert_same(t, b)


def _bad_compact_inputs():
    return [
        ("src out of range", "src_slots", lambda kc, vc, s, d: (kc, vc, s + 100, d)),
        ("dst out of range", "dst_slots", lambda kc, vc, s, d: (kc, vc, s, d + 100)),
        ("dst repeated", "dst_slots", lambda kc, vc, s, d: (kc, vc, s, torch.zeros_like(d))),
        ("src dtype", "src_slots", lambda kc, vc, s, d: (kc, vc, s.int(), d)),
        ("length mismatch", "dst_slots", lambda kc, vc, s, d: (kc, vc, s, d[:-1])),
        ("v_cache dtype", "v_cache", lambda kc, vc, s, d: (kc, vc.half(), s, d)),
    ]


@pytest.mark.parametrize("device,backend", device_backend_params("kv_cache_compact"))
@pytest.mark.parametrize(
    "label,arg,mutate", _bad_compact_inputs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_compact_bad_inputs(device, backend, label, arg, mutate, monkeypatch):
    monkeypatch.setenv("PIPO_VALIDATE", "1")
    case = Case(4, 4, 2, 64, 6)
    k_cache, v_cache = make_caches(case, torch.float32, device)
    src = torch.tensor([1, 2, 3, 4], device=device)
    dst = torch.tensor([0, 1, 2, 3], device=device)
    args = mutate(k_cache, v_cache, src, dst)
    before = [t.clone() for t in args[:2]]
    with pytest.raises((RuntimeError, ValueError), match=arg):
        pipo_kernels.kv_cache_compact(*args, backend=backend)
    for t, b in zip(args[:2], before, strict=True):
        assert_same(t, b)


def test_explicit_unavailable_backend_is_an_error():
    k_cache, v_cache = make_caches(CASES[0], torch.float32, "cpu")
    key, value, slots = make_append_inputs(CASES[0], torch.float32, "cpu")
    with pytest.raises(ValueError, match="backend"):
        pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend="bogus")


# --- torch.library integration -------------------------------------------------------------------


def _op_variants(device):
    ops = []
    if pipo_kernels.HAS_C:
        ops.append(("c++", torch.ops.pipo.kv_cache_append, torch.ops.pipo.kv_cache_compact))
    if hasattr(torch.ops.pipo, "kv_cache_append_triton") and (
        device == "cuda" or pipo_kernels.triton_interpreting()
    ):
        ops.append(
            (
                "triton",
                torch.ops.pipo.kv_cache_append_triton,
                torch.ops.pipo.kv_cache_compact_triton,
            )
        )
    return ops


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_opcheck(device, case):
    variants = _op_variants(device)
    assert variants, "no compiled or Triton op to check"
    for name, append, compact in variants:
        utils = opcheck_utils(device, is_triton=name == "triton")
        k_cache, v_cache = make_caches(case, torch.bfloat16, device)
        key, value, slots = make_append_inputs(case, torch.bfloat16, device)
        torch.library.opcheck(append, (key, value, k_cache, v_cache, slots), test_utils=utils)
        src, dst = compact_moves(case, "cycle", device)
        torch.library.opcheck(compact, (k_cache, v_cache, src, dst), test_utils=utils)


@pytest.mark.parametrize("device,backend", device_backend_params("kv_cache_append"))
def test_torch_compile_fullgraph(device, backend):
    skip_compile_if_interpreted(device, backend)
    case = CASES[0]

    def step(key, value, k_cache, v_cache, slots, src, dst):
        pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend=backend)
        pipo_kernels.kv_cache_compact(k_cache, v_cache, src, dst, backend=backend)
        return k_cache.float().sum()

    compiled = torch.compile(step, fullgraph=True)
    k_cache, v_cache = make_caches(case, torch.float32, device)
    key, value, slots = make_append_inputs(case, torch.float32, device)
    src, dst = compact_moves(case, "shift", device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.kv_cache_append(key, value, k_ref, v_ref, slots)
    reference.kv_cache_compact(k_ref, v_ref, src, dst)
    compiled(key, value, k_cache, v_cache, slots, src, dst)
    assert_same(k_cache, k_ref)
    assert_same(v_cache, v_ref)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture(backend):
    case = CASES[0]
    k_cache, v_cache = make_caches(case, torch.bfloat16, "cuda")
    key, value, slots = make_append_inputs(case, torch.bfloat16, "cuda")
    src, dst = compact_moves(case, "cycle", "cuda")
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.kv_cache_append(key, value, k_ref, v_ref, slots)
    reference.kv_cache_compact(k_ref, v_ref, src, dst)
    k0, v0 = k_cache.clone(), v_cache.clone()
    # Warm up (Triton compiles on first call), then capture and replay on the original contents.
    pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend=backend)
    pipo_kernels.kv_cache_compact(k_cache, v_cache, src, dst, backend=backend)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend=backend)
        pipo_kernels.kv_cache_compact(k_cache, v_cache, src, dst, backend=backend)
    k_cache.copy_(k0)
    v_cache.copy_(v0)
    graph.replay()
    torch.cuda.synchronize()
    assert_same(k_cache, k_ref)
    assert_same(v_cache, v_ref)


@requires_cuda
def test_cuda_skips_out_of_range_without_validation(monkeypatch):
    """Without PIPO_VALIDATE the CUDA kernel never follows an out-of-range slot (no sync to check)."""
    monkeypatch.delenv("PIPO_VALIDATE", raising=False)
    case = Case(4, 4, 2, 64, 3)
    k_cache, v_cache = make_caches(case, torch.float16, "cuda")
    key, value, _ = make_append_inputs(case, torch.float16, "cuda")
    slots = torch.tensor([2, 10_000, -5], device="cuda")
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.kv_cache_append(key[:1], value[:1], k_ref, v_ref, slots[:1])
    pipo_kernels.kv_cache_append(key, value, k_cache, v_cache, slots, backend="cuda")
    assert_same(k_cache, k_ref)
    assert_same(v_cache, v_ref)


def test_default_backend_prefers_compiled_kernel():
    expected = "cuda" if HAS_CUDA else "cpu"
    device = torch.device("cuda" if HAS_CUDA else "cpu")
    if pipo_kernels.HAS_C:
        assert pipo_kernels.resolve("kv_cache_append", device) == expected

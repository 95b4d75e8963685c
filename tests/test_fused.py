"""fused_add_rmsnorm / qk_norm_rope_append on every backend against the reference."""

from dataclasses import dataclass

import pytest
import torch
from conftest import (
    device_backend_params,
    opcheck_utils,
    requires_cuda,
    seeded,
    skip_compile_if_interpreted,
)

import pipo_kernels
from pipo_kernels import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Kernel (dtype) vs the float64 reference: the kernels round to the dtype after each step, as the
# model does, so a few ulps of the dtype.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}


def assert_ulps(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to two ulps of the dtype at the inputs' O(1) scale: a near-tie of an intermediate
    rounding can go the other way after a float32 sum in another order (RoPE's differences can
    cancel, hence an absolute term)."""
    if a.dtype == torch.float32:  # no intermediate rounding: only the sum order differs
        torch.testing.assert_close(a, b)
        return
    eps = torch.finfo(a.dtype).eps
    torch.testing.assert_close(a, b, rtol=2 * eps, atol=4 * eps)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(bits(a.cpu()), bits(b.cpu()))


def rounds_like_torch(backend: str) -> bool:
    """Triton's interpreter rounds float32 -> bfloat16 toward zero (Triton 3.8; a GPU rounds to
    nearest even), so only the other backends are held to the reference's rounding."""
    return not (backend == "triton" and pipo_kernels.triton_interpreting())


def f64(t):
    return None if t is None else t.double()


# --- fused_add_rmsnorm -------------------------------------------------------------------------

# (N, H): decode and prefill rows, an odd hidden size, an empty batch.
NORM_SHAPES = [(1, 256), (7, 128), (13, 1000), (0, 64), (3, 4096)]


def make_norm_inputs(n, h, dtype, device, seed=0):
    g = seeded(seed)
    x = torch.randn(n, h, generator=g).to(dtype).to(device)
    residual = (torch.randn(n, h, generator=g) * 3).to(dtype).to(device)
    weight = (1 + 0.5 * torch.randn(h, generator=g)).to(dtype).to(device)
    return x, residual, weight


@pytest.mark.parametrize("device,backend", device_backend_params("fused_add_rmsnorm"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_add_rmsnorm_matches_reference(device, backend, dtype, shape):
    x, residual, weight = make_norm_inputs(*shape, dtype, device)
    x64, r64 = x.double(), residual.double()
    reference.fused_add_rmsnorm(x64, r64, weight.double(), 1e-6)
    x_same, r_same = x.clone(), residual.clone()
    reference.fused_add_rmsnorm(x_same, r_same, weight, 1e-6)
    pipo_kernels.fused_add_rmsnorm(x, residual, weight, 1e-6, backend=backend)
    torch.testing.assert_close(residual.double(), r64, **TOL[dtype])
    torch.testing.assert_close(x.double(), x64, **TOL[dtype])
    if rounds_like_torch(backend):
        # Same dtype: the rounding steps are the reference's (and the model's), up to two ulps.
        assert_same(residual, r_same)  # a rounded sum of two values: exact
        assert_ulps(x, x_same)


def test_add_rmsnorm_reference_is_the_model_norm():
    """The reference equals the model's plain residual add + RMSNorm, bit for bit, in bf16."""
    from pipo.model import RMSNorm

    x, residual, weight = make_norm_inputs(5, 256, torch.bfloat16, "cpu", seed=4)
    norm = RMSNorm(256, 1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(weight)
        s = residual + x
        want = norm(s)
    reference.fused_add_rmsnorm(x, residual, weight, 1e-6)
    assert_same(residual, s)
    assert_same(x, want)


# --- qk_norm_rope_append -----------------------------------------------------------------------


@dataclass(frozen=True)
class RopeCase:
    tokens: int
    q_heads: int
    kv_heads: int
    head_dim: int
    rot_dim: int
    num_pages: int
    page_size: int
    qk_norm: bool = True

    def __str__(self) -> str:
        norm = "norm" if self.qk_norm else "nonorm"
        return (
            f"N{self.tokens}-H{self.q_heads}/{self.kv_heads}-D{self.head_dim}-R{self.rot_dim}-"
            f"P{self.num_pages}xS{self.page_size}-{norm}"
        )


# GQA and MHA, head_dim 64 / 128 / 256, partial rotation (rot_dim < D), Llama-style without head
# norms, one decode token, an empty batch.
ROPE_CASES = [
    RopeCase(5, 4, 2, 64, 64, 4, 16),
    RopeCase(17, 8, 1, 128, 128, 3, 8),
    RopeCase(6, 2, 2, 128, 64, 2, 4, qk_norm=False),
    RopeCase(1, 16, 8, 64, 64, 1, 128),
    RopeCase(4, 4, 2, 256, 64, 2, 8),
    RopeCase(0, 4, 2, 64, 64, 2, 4),
]
MAX_POS = 50


def cos_sin_table(rot_dim: int, device, theta=10000.0) -> torch.Tensor:
    inv_freq = 1.0 / theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim)
    freqs = torch.arange(MAX_POS, dtype=torch.float32)[:, None] * inv_freq
    return torch.cat([freqs.cos(), freqs.sin()], 1).to(device)


def make_rope_inputs(case: RopeCase, dtype, device, seed=0, strided=True):
    """q, k, v (strided views into one fused QKV output unless strided=False), norm weights,
    table, positions, random cache contents and distinct slots, about a fifth skipped (-1)."""
    g = seeded(seed)
    n, hq, hkv, d = case.tokens, case.q_heads, case.kv_heads, case.head_dim
    qkv = torch.randn(n, (hq + 2 * hkv) * d, generator=g).to(dtype).to(device)
    q, k, v = qkv.view(n, hq + 2 * hkv, d).split([hq, hkv, hkv], dim=1)
    if not strided:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    wq = wk = None
    if case.qk_norm:
        wq = (1 + 0.5 * torch.randn(d, generator=g)).to(dtype).to(device)
        wk = (1 + 0.5 * torch.randn(d, generator=g)).to(dtype).to(device)
    table = cos_sin_table(case.rot_dim, device)
    positions = torch.randint(0, MAX_POS, (n,), generator=g).to(device)
    shape = (case.num_pages, case.page_size, hkv, d)
    k_cache = torch.randn(shape, generator=g).to(dtype).to(device)
    v_cache = torch.randn(shape, generator=g).to(dtype).to(device)
    num_slots = case.num_pages * case.page_size
    slots = torch.randperm(num_slots, generator=g)[:n]
    slots = torch.cat([slots, torch.full((n - slots.numel(),), -1, dtype=torch.int64)])
    slots[torch.rand(n, generator=g) < 0.2] = -1
    return [q, k, v, wq, wk, table, positions, k_cache, v_cache, slots.to(device)]


def run_rope(args, backend=None, eps=1e-6):
    pipo_kernels.qk_norm_rope_append(*args, eps, backend=backend)


@pytest.mark.parametrize("device,backend", device_backend_params("qk_norm_rope_append"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ROPE_CASES, ids=str)
def test_qk_rope_matches_reference(device, backend, dtype, case):
    args = make_rope_inputs(case, dtype, device)
    # float64 copies (the table, positions and slots stay as they are)
    want = [f64(t) if i not in (5, 6, 9) else t for i, t in enumerate(args)]
    reference.qk_norm_rope_append(*want, 1e-6)
    same = [t.clone() if i in (0, 7, 8) else t for i, t in enumerate(args)]
    reference.qk_norm_rope_append(*same, 1e-6)
    q, k_cache, v_cache = args[0], args[7], args[8]
    k_before = args[1].clone()
    run_rope(args, backend)
    torch.testing.assert_close(q.double(), want[0], **TOL[dtype])
    torch.testing.assert_close(k_cache.double(), want[7], **TOL[dtype])
    assert_same(v_cache, same[8])  # v is copied, and untouched slots keep their contents
    assert_same(args[1], k_before)  # k itself is only read
    if rounds_like_torch(backend):  # same rounding steps as the reference, to two ulps
        assert_ulps(q, same[0])
        assert_ulps(k_cache, same[7])


@pytest.mark.parametrize("device,backend", device_backend_params("qk_norm_rope_append"))
def test_qk_rope_contiguous_inputs(device, backend):
    case = ROPE_CASES[0]
    args = make_rope_inputs(case, torch.float32, device, seed=2, strided=False)
    want = [t.clone() if i in (0, 7, 8) else t for i, t in enumerate(args)]
    reference.qk_norm_rope_append(*want, 1e-6)
    run_rope(args, backend)
    for i in (0, 7, 8):
        torch.testing.assert_close(args[i], want[i], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device,backend", device_backend_params("qk_norm_rope_append"))
def test_qk_rope_all_slots_skipped_still_rotates_q(device, backend):
    case = ROPE_CASES[0]
    args = make_rope_inputs(case, torch.float32, device, seed=3)
    args[9] = torch.full_like(args[9], -1)
    q0, caches = args[0].clone(), [args[7].clone(), args[8].clone()]
    run_rope(args, backend)
    assert not torch.equal(args[0], q0)
    assert_same(args[7], caches[0])
    assert_same(args[8], caches[1])


def test_qk_rope_reference_is_the_model_attention_prologue():
    """The reference equals the model's q/k norm + apply_rope + index write, bit for bit (bf16)."""
    from pipo.model import RMSNorm, apply_rope, rope_cos_sin, rope_table

    case = RopeCase(7, 4, 2, 64, 64, 2, 8)
    args = make_rope_inputs(case, torch.bfloat16, "cpu", seed=5)
    q, k, v, wq, wk, _, positions, k_cache, v_cache, slots = args
    table = rope_table(MAX_POS, 64, 10000.0, "cpu")
    cos, sin = rope_cos_sin(positions, 64, 10000.0)
    assert_same(table[positions], torch.cat([cos[:, :32], sin[:, :32]], 1))
    norms = [RMSNorm(64, 1e-6).to(torch.bfloat16) for _ in range(2)]
    with torch.no_grad():
        norms[0].weight.copy_(wq)
        norms[1].weight.copy_(wk)
        q_want = apply_rope(norms[0](q), cos, sin)
        k_want = apply_rope(norms[1](k), cos, sin)
    kc, vc = k_cache.clone(), v_cache.clone()
    keep = slots >= 0
    kc.flatten(0, 1)[slots[keep]] = k_want[keep]
    vc.flatten(0, 1)[slots[keep]] = v[keep]
    args[5] = table
    reference.qk_norm_rope_append(*args, 1e-6)
    assert_same(args[0], q_want)
    assert_same(args[7], kc)
    assert_same(args[8], vc)


# --- bad inputs: a clear error naming the argument, nothing written -------------------------------


def _bad_rope_inputs():
    """(label, argument named in the error, function(list of args) -> new list)."""

    def sub(i, f):
        return lambda a: [f(t) if j == i else t for j, t in enumerate(a)]

    return [
        ("position out of range", "positions", sub(6, lambda p: p + MAX_POS)),
        ("negative position", "positions", sub(6, lambda p: p - MAX_POS)),
        ("positions dtype", "positions", sub(6, lambda p: p.int())),
        ("positions strided", "positions", sub(6, lambda p: p.repeat(2)[::2])),
        ("slot out of range", "slot_mapping", sub(9, lambda s: s.abs() + 1000)),
        ("slot dtype", "slot_mapping", sub(9, lambda s: s.int())),
        ("slot strided", "slot_mapping", sub(9, lambda s: s.repeat(2)[::2])),
        ("slot length", "slot_mapping", sub(9, lambda s: s[:-1])),
        ("q dtype", "q", sub(0, lambda q: q.half())),
        ("q head_dim", "q", sub(0, lambda q: q[..., :32])),
        ("q tokens", "q", sub(0, lambda q: q[:-1])),
        ("q inner stride", "q", sub(0, lambda q: q.transpose(1, 2).contiguous().transpose(1, 2))),
        ("k heads", "k", sub(1, lambda k: k[:, :1])),
        ("v tokens", "v", sub(2, lambda v: v[:-1])),
        ("q_norm_weight size", "q_norm_weight", sub(3, lambda w: w[:-1])),
        ("k_norm_weight dtype", "k_norm_weight", sub(4, lambda w: w.half())),
        ("table dtype", "cos_sin_cache", sub(5, lambda t: t.double())),
        ("table odd rot_dim", "cos_sin_cache", sub(5, lambda t: t[:, :-1].contiguous())),
        ("table too wide", "cos_sin_cache", sub(5, lambda t: torch.cat([t, t], 1))),
        ("k_cache dtype", "k_cache", sub(7, lambda c: c.half())),
        ("v_cache shape", "v_cache", sub(8, lambda c: c[:-1])),
    ]


@pytest.mark.parametrize("device,backend", device_backend_params("qk_norm_rope_append"))
@pytest.mark.parametrize(
    "label,arg,mutate", _bad_rope_inputs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_qk_rope_bad_inputs(device, backend, label, arg, mutate, monkeypatch):
    monkeypatch.setenv("PIPO_VALIDATE", "1")  # value checks on a GPU too
    args = mutate(make_rope_inputs(ROPE_CASES[0], torch.float32, device))
    args[9][0] = 3  # at least one live slot, so an out-of-range shift stays out of range
    written = [args[0], args[7], args[8]]
    before = [t.clone() for t in written]
    with pytest.raises((RuntimeError, ValueError), match=arg):
        run_rope(args, backend)
    for t, b in zip(written, before, strict=True):
        assert_same(t, b)


def _bad_norm_inputs():
    return [
        ("x 3-D", "x", lambda x, r, w: (x[None], r, w)),
        ("x int", "x", lambda x, r, w: (x.int(), r, w)),
        ("x strided", "x", lambda x, r, w: (x.t().contiguous().t(), r, w)),
        ("residual shape", "residual", lambda x, r, w: (x, r[:-1], w)),
        ("residual dtype", "residual", lambda x, r, w: (x, r.half(), w)),
        ("residual is x", "residual", lambda x, r, w: (x, x, w)),
        ("weight size", "weight", lambda x, r, w: (x, r, w[:-1])),
        ("weight dtype", "weight", lambda x, r, w: (x, r, w.double())),
    ]


@pytest.mark.parametrize("device,backend", device_backend_params("fused_add_rmsnorm"))
@pytest.mark.parametrize(
    "label,arg,mutate", _bad_norm_inputs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_add_rmsnorm_bad_inputs(device, backend, label, arg, mutate):
    args = mutate(*make_norm_inputs(4, 64, torch.float32, device))
    before = [t.clone() for t in args[:2]]
    with pytest.raises((RuntimeError, ValueError), match=arg):
        pipo_kernels.fused_add_rmsnorm(*args, 1e-6, backend=backend)
    for t, b in zip(args[:2], before, strict=True):
        assert_same(t, b)


# --- torch.library integration -----------------------------------------------------------------


def _variants(device, op):
    out = []
    if pipo_kernels.HAS_C:
        out.append(("c++", getattr(torch.ops.pipo, op)))
    if hasattr(torch.ops.pipo, f"{op}_triton") and (
        device == "cuda" or pipo_kernels.triton_interpreting()
    ):
        out.append(("triton", getattr(torch.ops.pipo, f"{op}_triton")))
    return out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("case", ROPE_CASES[:3], ids=str)
def test_opcheck(device, case):
    variants = _variants(device, "qk_norm_rope_append") + _variants(device, "fused_add_rmsnorm")
    assert variants, "no compiled or Triton op to check"
    for name, op in variants:
        utils = opcheck_utils(device, is_triton=name == "triton")
        if "rope" in str(op):
            args = make_rope_inputs(case, torch.bfloat16, device)
        else:
            args = [*make_norm_inputs(case.tokens, case.head_dim, torch.bfloat16, device)]
        torch.library.opcheck(op, (*args, 1e-6), test_utils=utils)


@pytest.mark.parametrize("device,backend", device_backend_params("qk_norm_rope_append"))
def test_torch_compile_fullgraph(device, backend):
    skip_compile_if_interpreted(device, backend)
    case = ROPE_CASES[0]

    def step(args, x, residual, weight):
        pipo_kernels.qk_norm_rope_append(*args, 1e-6, backend=backend)
        pipo_kernels.fused_add_rmsnorm(x, residual, weight, 1e-6, backend=backend)
        return args[0].float().sum() + x.float().sum()

    args = make_rope_inputs(case, torch.float32, device)
    norm = make_norm_inputs(4, 256, torch.float32, device)
    want = [t.clone() if i in (0, 7, 8) else t for i, t in enumerate(args)]
    reference.qk_norm_rope_append(*want, 1e-6)
    norm_want = [t.clone() for t in norm]
    reference.fused_add_rmsnorm(*norm_want, 1e-6)
    torch.compile(step, fullgraph=True)(args, *norm)
    for i in (0, 7, 8):
        torch.testing.assert_close(args[i], want[i], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(norm[0], norm_want[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(norm[1], norm_want[1], atol=1e-6, rtol=1e-6)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture(backend):
    args = make_rope_inputs(ROPE_CASES[0], torch.bfloat16, "cuda")
    norm = make_norm_inputs(4, 256, torch.bfloat16, "cuda")
    start = [t.clone() for t in (args[0], args[7], args[8], norm[0], norm[1])]
    want = [t.clone() if i in (0, 7, 8) else t for i, t in enumerate(args)]
    reference.qk_norm_rope_append(*want, 1e-6)
    norm_want = [t.clone() for t in norm]
    reference.fused_add_rmsnorm(*norm_want, 1e-6)
    run_rope(args, backend)  # warm-up (Triton compiles on the first call)
    pipo_kernels.fused_add_rmsnorm(*norm, 1e-6, backend=backend)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_rope(args, backend)
        pipo_kernels.fused_add_rmsnorm(*norm, 1e-6, backend=backend)
    for t, s in zip((args[0], args[7], args[8], norm[0], norm[1]), start, strict=True):
        t.copy_(s)
    graph.replay()
    torch.cuda.synchronize()
    for i in (0, 7, 8):
        torch.testing.assert_close(args[i], want[i])
    torch.testing.assert_close(norm[0], norm_want[0])


@requires_cuda
def test_cuda_skips_out_of_range_without_validation(monkeypatch):
    """Without PIPO_VALIDATE a token with an out-of-range position or slot is skipped."""
    monkeypatch.delenv("PIPO_VALIDATE", raising=False)
    case = RopeCase(3, 4, 2, 64, 64, 2, 4)
    args = make_rope_inputs(case, torch.float16, "cuda")
    args[6] = torch.tensor([1, 10_000, 2], device="cuda")
    args[9] = torch.tensor([0, 1, 10_000], device="cuda")
    want = [t.clone() if i in (0, 7, 8) else t for i, t in enumerate(args)]
    only_first = [t[:1] if i in (0, 1, 2, 6, 9) else t for i, t in enumerate(want)]
    q_rest = want[0][1:2].clone()
    reference.qk_norm_rope_append(*only_first, 1e-6)
    # token 2 has a valid position (q rotated) but an out-of-range slot (no cache write)
    q2 = [t[2:] if i in (0, 1, 2, 6, 9) else t for i, t in enumerate(want)]
    q2[9] = torch.tensor([-1], device="cuda")
    reference.qk_norm_rope_append(*q2, 1e-6)
    run_rope(args, "cuda")
    torch.testing.assert_close(args[0][:1], want[0][:1])
    assert_same(args[0][1:2], q_rest)
    torch.testing.assert_close(args[0][2:], want[0][2:])
    assert_same(args[7], want[7])
    assert_same(args[8], want[8])


# --- the model's kernel path and the benchmarks ----------------------------------------------------


def test_decode_step_runs_no_eager_norm_or_rope_ops():
    """One AR decode step of the built-in model on the kernel path: every norm and RoPE goes
    through the fused ops (one qk_norm_rope_append per layer, 2 fused_add_rmsnorm per layer plus
    the final norm), none of the eager chains' ops remain."""
    from benchmarks.count_ops import count, make_step

    step, model = make_step("pipo", "ar", None)
    c = count(step)
    layers = model.config.num_layers
    assert c.ops["pipo.qk_norm_rope_append"] == layers
    assert c.ops["pipo.fused_add_rmsnorm"] == 2 * layers + 1
    for op in ("aten.pow", "aten.rsqrt", "aten.mean", "aten.neg", "aten.cat", "aten.add"):
        assert c.ops[op] == 0, op


def test_bench_fused_quick(tmp_path):
    import json

    from benchmarks import bench_fused

    argv = ["--device", "cpu", "--quick", "--presets", "tiny", "--tokens", "1"]
    bench_fused.main([*argv, "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "fused.json").read_text())["rows"]
    assert {r["op"] for r in rows} == {"fused_add_rmsnorm", "qk_norm_rope_append"}
    assert all(r["us"] > 0 and r["vs_baseline"] > 0 for r in rows)


@pytest.mark.parametrize("qk_norm", [True, False], ids=["qwen3", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@torch.no_grad()
def test_model_layers_fused_match_eager(qk_norm, dtype):
    """The decoder stack on the kernel path (fused ops) against the plain path, with and without
    q/k norms, prefill then a decode step; the RoPE table is shared by a smaller second cache."""
    from pipo_helpers import small_config

    from pipo.model import ARModel

    model = ARModel(small_config(qk_norm=qk_norm)).eval()
    model.init_random(3, std=0.08)
    model = model.to(dtype)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (7,), generator=g)
    outs = []
    for use_kernels in (False, True):
        for pages in (8, 4):  # the second, smaller cache reuses the first one's table
            cache = model.new_cache(num_pages=pages, page_size=4)
            cache.reserve(0, 8)
            meta = _meta(model, cache, 0, 7)
            hidden = model(ids, meta, cache, use_kernels)
            step = model(ids[:1], _meta(model, cache, 7, 1), cache, use_kernels)
            outs.append((hidden, step, cache.k_caches[1].clone(), cache.v_caches[0].clone()))
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    for ref, ker in zip(outs[:2], outs[2:], strict=True):
        for a, b in zip(ref, ker, strict=True):
            torch.testing.assert_close(b, a, **tol)


def _meta(model, cache, start, n):
    from pipo.model import AttnMeta

    return AttnMeta(
        positions=torch.arange(start, start + n),
        slot_mapping=torch.tensor(cache.slots(0, start, start + n)),
        block_table=cache.block_table([0]),
        kv_lens=torch.tensor([start + n], dtype=torch.int32),
        q_indptr=torch.tensor([0, n], dtype=torch.int32),
    )

"""paged_attention's prefill / tree kernels (Triton "tc", CUDA tensor cores) and the path chooser.

The Triton tc kernel runs under the interpreter at reduced sizes (q_len <= 100, kv_len <= 300);
the CUDA tensor-core kernel and the long shapes (q_len 1000+) need a GPU and are skipped here.
Every result is checked against the float64 reference with poisoned outputs.
"""

import logging

import pytest
import torch
from conftest import HAS_CUDA, requires_cuda, seeded
from test_attention import TOL, Case, check_against_reference, make_inputs, poison_allocator

import pipo_kernels
from pipo_kernels import _backend, attention, reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Interpreter-sized prefill and tree shapes: odd lengths, pages of 1 / 16 / 128 (KV tiles
# spanning pages, and inside one page), GQA 1 and 4, head_dim 64 and 128, prefixes that are not
# a multiple of the KV tile, zero-length sequences.
CASES = [
    Case("causal-p16-gqa4-d128", (97, 33), (203, 0), 8, 2, 128, 16),
    Case("causal-p1-gqa1-d64", (61,), (45,), 2, 2, 64, 1),
    Case("causal-p128-gqa4-odd", (100, 1, 0, 37), (190, 7, 3, 0), 4, 1, 64, 128),
    Case("tree-p16-gqa4-d128", (23, 9), (277, 100), 8, 2, 128, 16, "tree"),
    Case("tree-p128-gqa1", (17,), (283,), 4, 4, 64, 128, "tree", mask_cols=5),
    Case("random-mask-p1", (12, 5), (31, 2), 4, 1, 64, 1, "random"),
]

# GPU-only: the lengths the issue asks for (q_len 1000+ across many pages, trees over long
# contexts, head_dim 256).
LONG_CASES = [
    Case("long-causal-p16-gqa4-d128", (1031, 7), (0, 2050), 32, 8, 128, 16),
    Case("long-causal-p1-gqa8-d64", (1500,), (333,), 16, 2, 64, 1),
    Case("long-causal-p128-d256", (1203, 64), (77, 0), 8, 2, 256, 128),
    Case("long-tree-p16-d128", (64, 33), (4093, 1000), 32, 8, 128, 16, "tree"),
    Case("long-tree-p128-d256", (61,), (8191,), 16, 4, 256, 128, "tree", mask_cols=3),
]


def run(args, backend, kernel, monkeypatch, **kwargs):
    monkeypatch.setenv("PIPO_ATTN_KERNEL", kernel)
    poison_allocator(args[0])
    return pipo_kernels.paged_attention(*args, return_lse=True, backend=backend, **kwargs)


# --- the Triton tc kernel ------------------------------------------------------------------------

TRITON_DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=requires_cuda)]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_tc_matches_reference(device, dtype, case, monkeypatch):
    args = make_inputs(case, dtype, device, seed=1)
    out, lse = run(args, "triton", "tc", monkeypatch)
    check_against_reference(args, out, lse, dtype)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=str)
def test_triton_tc_equals_split_kernel(device, case, monkeypatch):
    """The two Triton kernels agree to float32 rounding on the same inputs."""
    args = make_inputs(case, torch.float32, device, seed=2)
    tc, lse_tc = run(args, "triton", "tc", monkeypatch)
    split, lse_split = run(args, "triton", "split", monkeypatch, num_splits=1)
    torch.testing.assert_close(tc, split, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_tc, lse_split, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("splits", [2, 5])
def test_triton_tc_split_kv(device, splits, monkeypatch):
    """Forced KV splits (split boundaries inside the unmasked and the masked tiles, splits that
    see nothing) merge to the unsplit result."""
    case = Case("splits", (37, 0, 5), (90, 3, 60), 4, 1, 64, 16)
    args = make_inputs(case, torch.float32, device, seed=3)
    one, lse_one = run(args, "triton", "tc", monkeypatch, num_splits=1)
    check_against_reference(args, one, lse_one, torch.float32)
    out, lse = run(args, "triton", "tc", monkeypatch, num_splits=splits)
    torch.testing.assert_close(out, one, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, lse_one, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_tc_strided_q_and_sm_scale(device, monkeypatch):
    case = Case("strided", (40, 3), (70, 9), 4, 2, 64, 16)
    args = make_inputs(case, torch.float16, device, seed=4)
    q = args[0]
    fused = torch.randn(q.shape[0], 8 * 64, generator=seeded(9)).half().to(device)
    fused[:, : 4 * 64] = q.reshape(q.shape[0], -1)
    args[0] = fused[:, : 4 * 64].view(q.shape[0], 4, 64)
    out, lse = run(args, "triton", "tc", monkeypatch, sm_scale=0.2)
    check_against_reference(args, out, lse, torch.float16, sm_scale=0.2)


def _empty_batch(device):
    q = torch.zeros(0, 4, 64, device=device)
    cache = torch.zeros(2, 16, 2, 64, device=device)
    table = torch.zeros(0, 3, dtype=torch.int32, device=device)
    kv_lens = torch.zeros(0, dtype=torch.int32, device=device)
    indptr = torch.zeros(1, dtype=torch.int32, device=device)
    return [q, cache, cache.clone(), table, kv_lens, indptr, None]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("kernel", ["tc", "split"])
def test_triton_empty_batch(device, kernel, monkeypatch):
    out, lse = run(_empty_batch(device), "triton", kernel, monkeypatch)
    assert out.shape == (0, 4, 64) and lse.shape == (0, 4)


def test_triton_op_rejects_unknown_kernel():
    if not pipo_kernels.triton_interpreting() and not HAS_CUDA:
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    args = make_inputs(CASES[1], torch.float32, "cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="kernel"):
        torch.ops.pipo.paged_attention_triton(*args, None, False, 0, "fast")


# --- the CUDA tensor-core kernel (GPU only) ------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("kernel", ["tc", "split"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES + LONG_CASES, ids=str)
def test_cuda_prefill_kernels_match_reference(kernel, dtype, case, monkeypatch):
    """PIPO_ATTN_KERNEL=tc: the tensor-core kernel for float16 / bfloat16 (float32 stays on the
    CUDA-core kernel); split: the CUDA-core kernel on the same long shapes."""
    args = make_inputs(case, dtype, "cuda", seed=5)
    out, lse = run(args, "cuda", kernel, monkeypatch)
    check_against_reference(args, out, lse, dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LONG_CASES, ids=str)
def test_cuda_triton_tc_long(dtype, case, monkeypatch):
    args = make_inputs(case, dtype, "cuda", seed=6)
    out, lse = run(args, "triton", "tc", monkeypatch)
    check_against_reference(args, out, lse, dtype)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("splits", [0, 1, 3])
def test_cuda_tc_split_kv(backend, splits, monkeypatch):
    case = LONG_CASES[3]
    args = make_inputs(case, torch.bfloat16, "cuda", seed=7)
    out, lse = run(args, backend, "tc", monkeypatch, num_splits=splits)
    check_against_reference(args, out, lse, torch.bfloat16)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_tc_never_follows_out_of_range_pages(backend, monkeypatch):
    """Without PIPO_VALIDATE a page outside the cache is masked: the result equals the same
    call with that page's positions removed from every query's view (tree mask columns kept)."""
    monkeypatch.delenv("PIPO_VALIDATE", raising=False)
    case = Case("oob", (40,), (96,), 8, 2, 64, 16)
    args = make_inputs(case, torch.bfloat16, "cuda", seed=8)
    bad = [t.clone() if t is not None else None for t in args]
    bad[3][0, 2] = 1 << 30  # positions 32..47 of the prefix
    out, _ = run(bad, backend, "tc", monkeypatch)
    # Expected: the good table with positions 32..47 masked out, densely in float64.
    q, k_cache, v_cache, table = (t.double() if t.is_floating_point() else t for t in args[:4])
    k = reference.gather_kv(k_cache, table[0], 136).repeat_interleave(4, dim=1)
    v = reference.gather_kv(v_cache, table[0], 136).repeat_interleave(4, dim=1)
    mask = reference.attention_mask(40, 136, None, q.device)
    mask[:, 32:48] = False
    scores = torch.einsum("qhd,khd->hqk", q, k) * 64**-0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    expected = torch.einsum("hqk,khd->qhd", probs, v)
    atol, rtol = TOL[torch.bfloat16]
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_tc_graph_capture(backend, monkeypatch):
    monkeypatch.setenv("PIPO_ATTN_KERNEL", "tc")
    case = CASES[3]
    args = make_inputs(case, torch.bfloat16, "cuda")
    fresh = make_inputs(case, torch.bfloat16, "cuda", seed=11)
    pipo_kernels.paged_attention(*args, return_lse=True, backend=backend)  # warm-up / compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = pipo_kernels.paged_attention(*args, return_lse=True, backend=backend)
    for t, f in zip(args, fresh, strict=True):
        if t is not None:
            t.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    check_against_reference(args, out, lse, torch.bfloat16)


# --- the path chooser ----------------------------------------------------------------------------


def _fresh_choice(monkeypatch, **env):
    for name in ("PIPO_ATTN_PATH", "PIPO_BACKEND", "PIPO_ATTN_KERNEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    attention._choose_path.cache_clear()


def test_shape_classes():
    args = make_inputs(CASES[3], torch.float32, "cpu")
    q, table, mask = args[0], args[3], args[6]
    assert attention.shape_class(q, table, mask) == "tree"
    assert attention.shape_class(q, table, None) == "prefill"
    assert attention.shape_class(q[:2], table, None) == "decode"
    assert attention.shape_class(q[:0], table, None) == "decode"


def test_path_table_is_explicit():
    """Every (device, class) entry names a backend; decode stays on the CUDA kernels."""
    for (kind, cls), backend in attention.PATH_TABLE.items():
        assert kind in ("cuda", "cpu") and cls in attention.SHAPE_CLASSES
        assert backend in _backend.BACKENDS
    assert attention.PATH_TABLE[("cuda", "decode")] == "cuda"


def test_chooser_logs_once_per_class(monkeypatch, caplog):
    _fresh_choice(monkeypatch)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="pipo_kernels"):
        for _ in range(3):
            for cls in attention.SHAPE_CLASSES:
                attention.choose_path(cpu, cls)
    lines = [r.getMessage() for r in caplog.records if "paged_attention, " in r.getMessage()]
    assert len(lines) == 3, lines
    assert all("on cpu tensors" in line for line in lines)


def test_chooser_env_override(monkeypatch):
    cpu = torch.device("cpu")
    _fresh_choice(monkeypatch, PIPO_ATTN_PATH="prefill=torch")
    assert attention.choose_path(cpu, "prefill") == "torch"
    assert attention.choose_path(cpu, "decode") == pipo_kernels.resolve("paged_attention", cpu)
    _fresh_choice(monkeypatch, PIPO_ATTN_PATH="torch")
    assert {attention.choose_path(cpu, c) for c in attention.SHAPE_CLASSES} == {"torch"}
    # An explicit backend argument beats the variable.
    _fresh_choice(monkeypatch, PIPO_ATTN_PATH="torch")
    if pipo_kernels.HAS_C:
        assert attention.choose_path(cpu, "prefill", "cpu") == "cpu"


@pytest.mark.parametrize(
    "value", ["prefil=torch", "prefill=fast", "tree=cuda,bogus", "gpu", "prefill=cuda"]
)
def test_chooser_rejects_bad_path_setting(value, monkeypatch):
    """Unknown classes / backends, or a backend that cannot run on the device, are errors."""
    _fresh_choice(monkeypatch, PIPO_ATTN_PATH=value)
    with pytest.raises(ValueError, match="PIPO_ATTN_PATH"):
        attention.choose_path(torch.device("cpu"), "prefill")


def test_bad_kernel_setting_is_an_error(monkeypatch):
    if not pipo_kernels.triton_interpreting() and not HAS_CUDA:
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    _fresh_choice(monkeypatch, PIPO_ATTN_KERNEL="fastest")
    device = "cuda" if HAS_CUDA else "cpu"
    args = make_inputs(CASES[1], torch.float32, device)
    with pytest.raises(ValueError, match="PIPO_ATTN_KERNEL"):
        pipo_kernels.paged_attention(*args, backend="triton")


@requires_cuda
def test_cuda_default_paths_follow_the_table(monkeypatch):
    _fresh_choice(monkeypatch)
    gpu = torch.device("cuda")
    for cls in attention.SHAPE_CLASSES:
        table = attention.PATH_TABLE[("cuda", cls)]
        if _backend.why_unavailable("paged_attention", table, gpu) is None:
            assert attention.choose_path(gpu, cls) == table

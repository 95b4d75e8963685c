"""paged_attention on long query blocks: causal prefill of 1000+ queries over many pages (page
sizes 1, 16 and 128, odd lengths, a cached prefix, several sequences, a chunk after a long
prefix) and draft trees over long contexts, for every dtype and head_dim, on every backend,
against the float64 reference.

The inputs of a (case, head_dim) are drawn once as values every dtype holds exactly (bfloat16
values, the few below float16's normal range set to 0), so one float64 reference serves all
dtypes and backends: the reference is most of this file's run time. Full sizes run on the cpu
and torch backends and on CUDA; Triton under the interpreter gets reduced sizes of the same
shapes (the interpreter runs each program in Python)."""

import dataclasses

import pytest
import torch
from conftest import device_backend_params
from test_attention import DTYPES, LSE_TOL, TOL, Case, make_inputs, poison_allocator

import pipo_kernels
from pipo_kernels import reference

CUDA_HEAD_DIMS = (64, 128, 256)  # what the CUDA kernel is instantiated for

# Full-size shapes; head_dim is filled in per test. GQA groups 4, 8 and 1.
LONG = [
    Case("causal-1037-page16", (1037,), (0,), 4, 1, 0, 16),
    Case("causal-prefix-page1", (1001, 3), (290, 1200), 8, 1, 0, 1),
    Case("chunks-page128", (1203, 0, 517), (77, 5, 1536), 2, 2, 0, 128),
    Case("tree64-over-4k", (64, 17), (4033, 1500), 8, 2, 0, 64, "tree", mask_cols=5),
]
# The Triton interpreter's sizes: still several query tiles and KV splits, odd lengths, pages 1
# and 128, a tree behind a prefix longer than a KV tile.
REDUCED = [
    Case("causal-1037-page16", (77,), (0,), 4, 1, 0, 16),
    Case("causal-prefix-page1", (45, 3), (29, 70), 8, 1, 0, 1),
    Case("chunks-page128", (53, 0, 37), (7, 5, 136), 2, 2, 0, 128),
    Case("tree64-over-4k", (33, 17), (201, 90), 8, 2, 0, 64, "tree", mask_cols=5),
]
# Every case at head_dim 128; every head_dim (80: not a power of two) on the first and last.
SHAPES = [(i, 128) for i in range(len(LONG))] + [(i, d) for i in (0, 3) for d in (64, 80, 256)]

_inputs: dict = {}


def exact_inputs(case: Case, seed: int):
    """make_inputs in bfloat16 with |x| < 2**-14 set to 0, then the float64 reference (out, lse),
    cached per shape: every dtype represents these values exactly."""
    key = (case, seed)
    if key not in _inputs:
        args = make_inputs(case, torch.bfloat16, "cpu", seed=seed)
        for i in (0, 1, 2):
            args[i] = args[i].masked_fill(args[i].abs() < 2.0**-14, 0)
        f64 = [t.double() if t is not None and t.is_floating_point() else t for t in args]
        _inputs[key] = (args, reference.paged_attention(*f64, return_lse=True))
    return _inputs[key]


def check_long(out, lse, ref, dtype):
    ref_out, ref_lse = ref
    # Every row of these shapes sees at least one position: an unwritten row (zeros of a fresh
    # page, or the NaN the allocator was poisoned with) cannot match.
    assert torch.isfinite(ref_out).all() and torch.isfinite(ref_lse).all()
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(lse.double().cpu(), ref_lse, atol=LSE_TOL[dtype], rtol=1e-5)


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{LONG[s[0]].name}-d{s[1]}")
def test_long_blocks_match_reference(device, backend, dtype, shape):
    index, head_dim = shape
    if backend == "cuda" and head_dim not in CUDA_HEAD_DIMS:
        pytest.skip(f"the CUDA kernel supports head_dim {CUDA_HEAD_DIMS}")
    interpreted = backend == "triton" and device == "cpu"
    case = dataclasses.replace((REDUCED if interpreted else LONG)[index], head_dim=head_dim)
    if interpreted and (head_dim != 128 and index != 0):
        pytest.skip("interpreter: every head_dim on one reduced shape only")
    args, ref = exact_inputs(case, seed=index)
    args = [None if t is None else t.to(device=device, dtype=_dtype_of(t, dtype)) for t in args]
    poison_allocator(args[0])
    out, lse = pipo_kernels.paged_attention(*args, return_lse=True, backend=backend)
    check_long(out, lse, ref, dtype)


def _dtype_of(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if t.is_floating_point() else t.dtype


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
def test_long_prefill_forced_splits(device, backend):
    """A long causal block with its KV split 3 ways (merged through the log-sum-exp) and the
    automatic choice: every split sees a different part of the diagonal."""
    if backend == "torch":
        pytest.skip("the reference has no KV splits")
    interpreted = backend == "triton" and device == "cpu"
    case = dataclasses.replace((REDUCED if interpreted else LONG)[1], head_dim=64)
    args, ref = exact_inputs(case, seed=1)
    args = [None if t is None else t.to(device) for t in args]
    for splits in (3, 0):
        out, lse = pipo_kernels.paged_attention(
            *args, return_lse=True, num_splits=splits, backend=backend
        )
        check_long(out, lse, ref, torch.bfloat16)


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
def test_long_lower_triangular_tree_equals_causal(device, backend):
    """A tril tree_mask over a 1000+ query block gives the causal result (per-block tree masking
    against causal block skipping), with a cached prefix in front."""
    interpreted = backend == "triton" and device == "cpu"
    n, prefix = (70, 40) if interpreted else (1029, 300)
    case = Case("tril", (n,), (prefix,), 4, 1, 64, 16)
    args = make_inputs(case, torch.float32, device, seed=4)
    tril = torch.ones(n, n + 3, dtype=torch.bool).tril().to(device)
    causal, lse_c = pipo_kernels.paged_attention(*args[:6], return_lse=True, backend=backend)
    tree, lse_t = pipo_kernels.paged_attention(*args[:6], tril, return_lse=True, backend=backend)
    torch.testing.assert_close(tree, causal, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse_t, lse_c, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512bf16"])
def test_long_blocks_every_cpu_kernel_copy(isa, monkeypatch):
    """Each instruction-set copy of the CPU kernel (PIPO_CPU_ISA caps the choice; a copy the CPU
    lacks falls back to a lower one) on a 1000+ query causal block and a tree over 4k."""
    if not pipo_kernels.HAS_C:
        pytest.skip("pipo_kernels._C is not built")
    monkeypatch.setenv("PIPO_CPU_ISA", isa)
    for index in (0, 3):
        case = dataclasses.replace(LONG[index], head_dim=64)
        args, ref = exact_inputs(case, seed=index)
        for dtype in DTYPES:
            typed = [None if t is None else t.to(_dtype_of(t, dtype)) for t in args]
            out, lse = pipo_kernels.paged_attention(*typed, return_lse=True, backend="cpu")
            check_long(out, lse, ref, dtype)

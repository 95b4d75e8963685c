"""linear on every backend against the reference (float64), odd shapes, strided rows, errors."""

import pytest
import torch
from conftest import device_backend_params, opcheck_utils, requires_cuda, seeded

import pipo_kernels
from pipo_kernels import reference

TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}
# (N, K, O): decode rows (1 to 8: the CPU GEMV), a prefill-sized N (ATen's GEMM), K not a
# multiple of the 16-float vector, O not a multiple of the 8-row tile, empty batches.
SHAPES = [
    (1, 256, 768),
    (2, 17, 9),
    (3, 33, 16),
    (4, 1, 3),
    (7, 100, 34),
    (8, 64, 130),
    (9, 48, 24),
    (40, 40, 10),
    (0, 16, 8),
    (1, 5, 1),
]


def make_inputs(n, k, o, dtype, device, seed=0, row_stride=None):
    g = seeded(seed)
    x = torch.randn(n, row_stride or k, generator=g)[:, :k].to(device, dtype)
    w = (torch.randn(o, k, generator=g) * k**-0.5).to(device, dtype)
    return x, w


@pytest.mark.parametrize("device,backend", device_backend_params("linear"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["none", "swiglu"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device, backend, dtype, activation, shape):
    n, k, o = shape
    if activation == "swiglu":
        o += o % 2
    x, w = make_inputs(n, k, o, dtype, device, seed=n + k + o)
    got = pipo_kernels.linear(x, w, activation, backend=backend)
    want = reference.linear(x.double().cpu(), w.double().cpu(), activation)
    assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
    torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])


@pytest.mark.parametrize("device,backend", device_backend_params("linear"))
@pytest.mark.parametrize("activation", ["none", "swiglu"])
def test_strided_rows(device, backend, activation):
    """Rows of x read through their stride (a column slice of a wider buffer)."""
    for n in (1, 2, 5):
        x, w = make_inputs(n, 40, 22, torch.float32, device, seed=n, row_stride=57)
        assert n == 1 or not x.is_contiguous()
        got = pipo_kernels.linear(x, w, activation, backend=backend)
        want = reference.linear(x.double(), w.double(), activation)
        torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


def test_gemv_equals_aten_path(monkeypatch):
    """The AVX-512 GEMV and the ATen path (PIPO_CPU_ISA=generic) agree to float32 rounding, and
    NaN / inf propagate through both alike."""
    if not pipo_kernels.HAS_C:
        pytest.skip("needs the compiled CPU kernels")
    x, w = make_inputs(3, 70, 26, torch.float32, "cpu", seed=5)
    x[1, 3] = float("nan")
    w[4, 0] = float("inf")
    for activation in ("none", "swiglu"):
        fast = torch.ops.pipo.linear(x, w, activation)
        monkeypatch.setenv("PIPO_CPU_ISA", "generic")
        slow = torch.ops.pipo.linear(x, w, activation)
        monkeypatch.delenv("PIPO_CPU_ISA")
        torch.testing.assert_close(fast, slow, equal_nan=True, atol=1e-5, rtol=1e-5)
        assert torch.isnan(fast[1]).all()


@pytest.mark.parametrize("device,backend", device_backend_params("linear"))
def test_bad_arguments_raise(device, backend):
    x, w = make_inputs(2, 16, 6, torch.float32, device)
    bad = [
        ((x, w, "gelu"), "activation"),
        ((x, w[:, :15].contiguous()), "weight"),
        ((x, w[:5].contiguous(), "swiglu"), "weight"),
        ((x, w.half()), "weight"),
        ((x, w.t().contiguous().t()), "weight"),
        ((x.t(), torch.randn(6, 2, device=device)), "x"),
        ((x[0], w), "x"),
        ((x.long(), w.long()), "x"),
    ]
    for args, name in bad:
        with pytest.raises((ValueError, RuntimeError), match=rf"^{name}:"):
            pipo_kernels.linear(*args, backend=backend)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("activation", ["none", "swiglu"])
def test_opcheck(device, activation):
    if not pipo_kernels.HAS_C:
        pytest.skip("needs the compiled kernels")
    for n in (1, 12):
        x, w = make_inputs(n, 32, 12, torch.float32, device)
        torch.library.opcheck(
            torch.ops.pipo.linear, (x, w, activation), test_utils=opcheck_utils(device, False)
        )


@pytest.mark.parametrize("device,backend", device_backend_params("linear"))
def test_torch_compile_fullgraph(device, backend):
    x, w = make_inputs(1, 64, 40, torch.float32, device)

    def mlp(x, w, down):
        return pipo_kernels.linear(pipo_kernels.linear(x, w, "swiglu", backend=backend), down)

    down = make_inputs(1, 20, 64, torch.float32, device, seed=3)[1]
    got = torch.compile(mlp, fullgraph=True)(x, w, down)
    want = reference.linear(reference.linear(x.double(), w.double(), "swiglu"), down.double())
    torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


def test_backend_follows_environment_changes(monkeypatch):
    """PIPO_BACKEND set or removed between calls changes the next call's backend (the wrappers
    read os.environ's raw table rather than os.environ.get)."""
    from pipo_kernels import _backend

    cpu = torch.device("cpu")
    monkeypatch.setenv("PIPO_BACKEND", "torch")
    assert _backend.resolve("linear", cpu) == "torch"
    monkeypatch.delenv("PIPO_BACKEND")
    assert _backend.resolve("linear", cpu) == ("cpu" if pipo_kernels.HAS_C else "torch")

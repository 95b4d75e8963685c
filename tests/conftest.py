"""Shared test setup: Triton runs under its interpreter on CPU tensors when no GPU is present, and
helpers that every op's tests use (devices, backends, fresh random inputs)."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton compiles anything; pipo_kernels imports triton after this.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

import pipo_kernels

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Every device the tests run on; "cuda" is kept in the list so a GPU-less run reports it skipped.
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=requires_cuda)]


def backends(op: str, device: str) -> list[str]:
    """Every backend that can run `op` on `device` here (for the triton backend on CPU tensors this
    needs TRITON_INTERPRET=1, which this conftest sets on machines without a GPU)."""
    if device == "cuda" and not HAS_CUDA:
        return []
    return pipo_kernels.available_backends(op, torch.device(device))


def device_backend_params(op: str) -> list:
    """(device, backend) pairs for parametrize, with the CUDA ones present but skipped without a GPU."""
    params = []
    for device in ("cpu", "cuda"):
        names = (
            backends(op, device) if (device == "cpu" or HAS_CUDA) else ["cuda", "triton", "torch"]
        )
        marks = [] if device == "cpu" else [requires_cuda]
        params += [pytest.param(device, b, id=f"{device}-{b}", marks=marks) for b in names]
    return params


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Tracing a Triton kernel through AOT dispatch needs a GPU: under TRITON_INTERPRET=1 the
# interpreter would run the kernel on fake tensors. On CPU the Triton ops are opchecked with these.
OPCHECK_INTERPRETED = ("test_schema", "test_autograd_registration", "test_faketensor")


def opcheck_utils(device: str, is_triton: bool):
    """The torch.library.opcheck test_utils that apply to an op variant on `device`."""
    if is_triton and device == "cpu":
        return OPCHECK_INTERPRETED
    return (
        "test_schema",
        "test_autograd_registration",
        "test_faketensor",
        "test_aot_dispatch_dynamic",
    )


def skip_compile_if_interpreted(device: str, backend: str) -> None:
    if device == "cpu" and backend == "triton":
        pytest.skip("torch.compile of a Triton op needs a GPU (the interpreter cannot trace)")


def capture_graph(fn):
    """Runs `fn` once on a side stream (the warm-up: Triton compilation, first allocations of each
    size), then captures one call of it in a CUDA graph. Returns (graph, the outputs the graph
    writes on every replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def pipo_op(name: str):
    """torch.ops.pipo.<name>, or skip the test when it is not registered."""
    if not hasattr(torch.ops.pipo, name):
        pytest.skip(f"{name} not registered")
    return getattr(torch.ops.pipo, name)


def assert_compiles_fullgraph(step, *args) -> None:
    """torch.compile(step, fullgraph=True) gives step's eager results (aot_eager: the graph is
    traced through the fake kernels, then run eagerly)."""
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), step(*args), strict=True):
        torch.testing.assert_close(got, want)

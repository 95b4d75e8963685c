"""The build itself: the compiled extension loads and carries the kernels it should."""

import os
import shutil
import subprocess

import pytest
import torch

import pipo_kernels
from pipo_kernels import _backend
from pipo_kernels._registry import NAMES as OPS
from pipo_kernels._registry import TRITON_NAMES


def test_extension_loaded_with_cpu_kernels():
    assert pipo_kernels.HAS_C, "pipo_kernels._C failed to load: see the warning at import"
    for op in OPS:
        assert _backend.has_kernel(op, "CPU"), op


@pytest.mark.skipif(
    torch.version.cuda is None
    or shutil.which("nvcc") is None
    or os.environ.get("PIPO_BUILD_CUDA") == "0",
    reason="CUDA kernels are built only when torch is a CUDA build and nvcc is found",
)
def test_cuda_kernels_built_when_toolkit_present():
    """A CUDA-capable build must carry the CUDA kernels whether or not a GPU is visible."""
    for op in OPS:
        assert _backend.has_kernel(op, "CUDA"), (
            f"{op} has no CUDA kernel: was the extension built with nvcc?"
        )


def test_triton_ops_registered():
    if not _backend.triton_importable():
        pytest.skip("triton is not installed")
    for op in TRITON_NAMES:
        assert _backend.has_triton_op(op), op


def _dynamic_section(path: str) -> str:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run([readelf, "-dW", path], capture_output=True, text=True).stdout


def test_extension_shares_the_process_libstdcxx():
    """_C must link libstdc++.so.6 dynamically, like torch. A private static copy next to torch's
    shared one made every integer formatted into an error message crash the process (seen on a
    GPU machine: std::ostream's num_put facet resolved into the wrong copy)."""
    if not pipo_kernels.HAS_C:
        pytest.skip("pipo_kernels._C is not built")
    so = pipo_kernels._C.__file__
    assert "libstdc++.so" in _dynamic_section(so), f"{so} does not link libstdc++ dynamically"
    nm = shutil.which("nm")
    if nm is not None:
        defined = subprocess.run([nm, "-D", "--defined-only", so], capture_output=True, text=True)
        assert "_ZNSt6locale7classicEv" not in defined.stdout, f"{so} carries its own libstdc++"


def test_integer_in_error_message_raises():
    """The error path that crashed on the GPU machine: a shape check whose message formats
    integers (through c10::str / std::ostream)."""
    k_cache = torch.zeros(2, 4, 2, 8)
    with pytest.raises(
        RuntimeError, match=r"k_cache: expected a 4-D tensor, got shape \[4, 2, 8\]"
    ):
        torch.ops.pipo.kv_cache_append(
            torch.zeros(1, 2, 8),
            torch.zeros(1, 2, 8),
            k_cache[0],
            k_cache[1],
            torch.zeros(1, dtype=torch.long),
        )

"""The build itself: the compiled extension loads and carries the kernels it should."""

import os
import shutil

import pytest
import torch

import pipo_kernels
from pipo_kernels import _backend

OPS = [
    "kv_cache_append",
    "kv_cache_compact",
    "fold_pairs",
    "unfold_input",
    "sample_tokens",
    "pair_out",
    "paged_attention",
    "verify_tree",
    "verify_tree_stochastic",
]


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
    for op in OPS:
        assert _backend.has_triton_op(op), op

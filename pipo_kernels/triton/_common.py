"""Helpers shared by the Triton ops of this package."""

from __future__ import annotations

import torch
from torch.library import triton_op

from .._backend import triton_interpreting


def register(name: str, mutates_args):
    """triton_op on a GPU, so torch.compile sees the kernels. Under the interpreter an opaque
    custom op with a fake kernel instead: tracing into a triton_op would run the interpreter on
    fake tensors."""
    if triton_interpreting():
        return torch.library.custom_op(name, mutates_args=mutates_args)
    return triton_op(name, mutates_args=mutates_args)


def dot_in_float32(dtype: torch.dtype) -> bool:
    """IEEE float32 tl.dot for float32 inputs (no TF32), and for every dtype under the Triton
    interpreter, whose float16 / bfloat16 tl.dot returns wrong values (Triton 3.8)."""
    return dtype == torch.float32 or triton_interpreting()

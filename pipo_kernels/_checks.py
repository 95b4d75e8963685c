"""Argument checks of the Python-side (Triton) kernels, mirroring csrc/checks.h: every message
names the argument and what was expected."""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fail(name: str, expected: str, got: object) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def check_dim(t: torch.Tensor, dim: int, name: str) -> None:
    if t.dim() != dim:
        fail(name, f"a {dim}-D tensor", f"shape {tuple(t.shape)}")


def check_dtype(t: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    if t.dtype != dtype:
        fail(name, f"dtype {dtype}", t.dtype)


def check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        fail(name, "float32, float16 or bfloat16", t.dtype)


def check_like(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.dtype != ref.dtype:
        fail(name, f"the dtype of {ref_name} ({ref.dtype})", t.dtype)
    if t.device != ref.device:
        fail(name, f"the device of {ref_name} ({ref.device})", t.device)


def check_contiguous(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        fail(name, "a contiguous tensor", f"strides {t.stride()} for shape {tuple(t.shape)}")


def check_index(t: torch.Tensor, dim: int, dtype: torch.dtype, name: str) -> None:
    """An index tensor the kernels read by flat position (csrc/checks.h check_index): a strided
    view would be read as raw storage, and a hidden copy would allocate behind a CUDA graph."""
    check_dim(t, dim, name)
    check_dtype(t, dtype, name)
    check_contiguous(t, name)


def check_size(t: torch.Tensor, dim: int, size: int, name: str, what: str) -> None:
    if t.shape[dim] != size:
        fail(name, f"size {size} in dim {dim} ({what})", f"shape {tuple(t.shape)}")


def validate_enabled() -> bool:
    """PIPO_VALIDATE=1: also check index values where that needs a device-to-host sync."""
    return os.environ.get("PIPO_VALIDATE", "0") not in ("", "0")


def should_check_values(t: torch.Tensor, sync_ok: bool = False) -> bool:
    """Index values are checked on the CPU always, on a GPU only with PIPO_VALIDATE=1 or when the
    caller accepts a sync (the torch backend, whose indexing would follow a bad index), and never
    while tracing: fake and functional tensors (torch.compile, opcheck, export) carry no values."""
    if torch.compiler.is_compiling() or type(t) is not torch.Tensor:
        return False
    return t.device.type == "cpu" or sync_ok or validate_enabled()

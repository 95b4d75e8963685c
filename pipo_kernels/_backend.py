"""Backend choice for every op.

Each public function takes ``backend=`` ("cuda" | "triton" | "cpu" | "torch"). An explicit choice
must be available for the tensors' device, or a ValueError says why. With ``backend=None`` the
environment variable PIPO_BACKEND is tried first (when available), then the device's preference
order below. Falling back from the compiled kernel to a slower backend is logged once per op on
the ``pipo_kernels`` logger, never silent.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import cache

import torch

log = logging.getLogger("pipo_kernels")

BACKENDS = ("cuda", "triton", "cpu", "torch")

# Fastest first, per device type. "torch" (the pure-PyTorch reference) runs anywhere.
PREFERENCE = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}


@cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the compiled extension registered `pipo::op` for a dispatch key ("CPU" / "CUDA")."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"pipo::{op}", dispatch_key)
    except RuntimeError:  # the op itself is unknown: the extension did not load
        return False


def has_op(op: str) -> bool:
    """Whether `torch.ops.pipo.op` is registered (C++ ops exist once pipo_kernels._C loaded)."""
    return hasattr(torch.ops.pipo, op)


def has_triton_op(op: str) -> bool:
    return hasattr(torch.ops.pipo, f"{op}_triton")


def why_unavailable(op: str, backend: str, device: torch.device) -> str | None:
    """None when `backend` can run `op` on `device`, else the reason."""
    kind = device.type
    if backend == "torch":
        return None
    if backend in ("cuda", "cpu"):
        if kind != backend:
            return f"the {backend} kernels take {backend} tensors, got {kind} tensors"
        if not has_kernel(op, backend.upper()):
            return (
                f"pipo_kernels._C has no {backend} kernel for {op} "
                + (
                    "(built without CUDA: see README, 'What gets built')"
                    if backend == "cuda"
                    else ""
                )
            ).strip()
        return None
    if backend == "triton":
        if not triton_importable() or not has_triton_op(op):
            return "triton is not installed"
        if kind == "cuda" or (kind == "cpu" and triton_interpreting()):
            return None
        return f"Triton runs on cuda tensors (or on cpu with TRITON_INTERPRET=1), got {kind}"
    return f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}"


# os.environ.get encodes the key and decodes the value on every call (2 of the ~3 us a wrapper
# spent choosing its backend, on every op call of a decode step); on POSIX the same variables are
# read from os.environ's own bytes table, which every os.environ / monkeypatch change updates.
_raw = getattr(os.environ, "_data", None) if os.name == "posix" else None
_ENV_BYTES: dict[bytes, bytes] | None = _raw if isinstance(_raw, dict) else None


def _env_pair() -> tuple[str | bytes | None, str | bytes | None]:
    table = _ENV_BYTES
    if table is not None:
        return table.get(b"PIPO_BACKEND"), table.get(b"TRITON_INTERPRET")
    return os.environ.get("PIPO_BACKEND"), os.environ.get("TRITON_INTERPRET")


# torch.compile treats the choice as a constant of the traced graph (it only depends on the
# installed kernels, the device and the environment), so wrappers trace with fullgraph=True.
@torch.compiler.assume_constant_result
def resolve(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that will run `op` for tensors on `device`."""
    env, interpret = _env_pair()
    return _resolve(op, device.type, backend, env, interpret)


@cache  # the choice is on every op call's path: decide once per (op, device, setting)
def _resolve(
    op: str, kind: str, backend: str | None, env: str | bytes | None, _interpret: object
) -> str:
    device = torch.device(kind)
    if isinstance(env, bytes):  # os.environ's raw value (_env_pair)
        env = os.fsdecode(env)
    if backend is not None:
        reason = why_unavailable(op, backend, device)
        if reason is not None:
            raise ValueError(f"backend: {backend!r} cannot run {op}: {reason}")
        return backend
    if env and why_unavailable(op, env, device) is None:
        return env
    skipped: list[str] = []
    for cand in PREFERENCE.get(kind, ("torch",)):
        reason = why_unavailable(op, cand, device)
        if reason is None:
            if skipped:
                log.warning(
                    "pipo_kernels.%s on %s tensors: using the %s backend (%s)",
                    op,
                    kind,
                    cand,
                    "; ".join(skipped),
                )
            return cand
        skipped.append(f"{cand}: {reason}")
    raise AssertionError("unreachable: the torch backend is always available")


def available_backends(op: str, device: torch.device) -> list[str]:
    """Every backend that can run `op` on `device`, in the order `resolve` tries them."""
    order = PREFERENCE.get(device.type, ()) + BACKENDS
    return [b for b in dict.fromkeys(order) if why_unavailable(op, b, device) is None]

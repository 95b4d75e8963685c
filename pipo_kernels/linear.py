"""The decoder's projections ``linear`` (docs/ops.md §6): ``x @ weight.T``, or the SwiGLU of a
fused [gate; up] weight. Public wrapper, argument checks and fake kernel.

At decode sizes (a few rows) a projection reads its whole weight for a few multiply-adds per
value: on the CPU the C++ kernel streams the weight rows with AVX-512 (docs/engine.md measures it
against ATen); larger products and GPUs use ATen's GEMM (MKL / cuBLAS).
"""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import check_contiguous, check_dim, check_float, check_like, check_size, fail

__all__ = ["linear"]

ACTIVATIONS = ("none", "swiglu")


def check_linear_args(x, weight, activation) -> None:
    """Shape / dtype / device checks of linear."""
    if activation not in ACTIVATIONS:
        fail("activation", "'none' or 'swiglu'", repr(activation))
    check_dim(x, 2, "x")
    check_float(x, "x")
    if x.shape[1] > 1 and x.stride(1) != 1:
        fail("x", "each row contiguous (stride(1) == 1)", f"strides {x.stride()}")
    check_dim(weight, 2, "weight")
    check_size(weight, 1, x.shape[1], "weight", "in_features of x")
    check_like(weight, x, "weight", "x")
    check_contiguous(weight, "weight")
    if activation == "swiglu" and weight.shape[0] % 2:
        fail("weight", "an even number of rows ([gate; up]) for swiglu", tuple(weight.shape))


def _linear_fake(x, weight, activation="none"):
    check_linear_args(x, weight, activation)
    out = weight.shape[0] // 2 if activation == "swiglu" else weight.shape[0]
    return x.new_empty(x.shape[0], out)


if _backend.has_op("linear"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::linear")(_linear_fake)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str = "none",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """A bias-free projection: ``x @ weight.T`` ("none"), or ``silu(x @ gate.T) * (x @ up.T)``
    for ``weight = [gate; up]`` ("swiglu", the MLP's gate and up projections in one pass).

    float32 products of at most 8 rows run the CPU kernel's AVX-512 GEMV (float32 accumulation
    in another order than ATen's: results agree to rounding, not bit for bit); other shapes,
    float16 / bfloat16 and CPUs without AVX-512 run ATen's matmul, rounded as the eager layers.

    Args:
        x: [N, K] float32 / float16 / bfloat16; rows may be strided, each row contiguous.
        weight: [O, K], x's dtype and device, contiguous. For "swiglu" O is even: rows [0, O/2)
            are the gate projection, rows [O/2, O) the up projection.
        activation: "none" or "swiglu".
        backend: "cuda" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        [N, O] ("none") or [N, O/2] ("swiglu"), x's dtype, contiguous.

    Example::

        qkv = pipo_kernels.linear(h, torch.cat([wq, wk, wv]))             # [N, Hq*D + 2*Hkv*D]
        a = pipo_kernels.linear(h, torch.cat([w_gate, w_up]), "swiglu")  # [N, I]
    """
    impl = _backend.resolve("linear", x.device, backend)
    if impl == "torch":
        check_linear_args(x, weight, activation)
        return reference.linear(x, weight, activation)
    return torch.ops.pipo.linear(x, weight, activation)

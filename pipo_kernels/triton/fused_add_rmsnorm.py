"""Triton kernel of pipo::fused_add_rmsnorm: one program per row adds the residual, stores it and
normalises the stored sum, with the row held in registers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..fused import _fused_add_rmsnorm_fake, check_add_rmsnorm_args
from ._common import register


@triton.jit
def _fused_add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, h, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < h
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * h + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + row * h + offs, mask=mask, other=0.0).to(tl.float32)
    # Round the sum to the storage dtype first: the norm reads the residual as it is stored.
    s = (x + r).to(dt)
    tl.store(res_ptr + row * h + offs, s, mask=mask)
    sf = s.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(sf * sf, axis=0) / h + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (sf * inv).to(dt).to(tl.float32) * w
    tl.store(x_ptr + row * h + offs, y.to(dt), mask=mask)


@register("pipo::fused_add_rmsnorm_triton", mutates_args={"x", "residual"})
def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> None:
    check_add_rmsnorm_args(x, residual, weight)
    n, h = x.shape
    if n == 0 or h == 0:
        return
    wrap_triton(_fused_add_rmsnorm_kernel)[(n,)](
        x, residual, weight, h, eps, BLOCK=triton.next_power_of_2(h)
    )


# Shape-only fake: without it, tracing under TRITON_INTERPRET=1 would run the interpreter on
# fake tensors.
fused_add_rmsnorm.register_fake(_fused_add_rmsnorm_fake)

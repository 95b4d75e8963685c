"""PIPO's confidence head and gate ``pair_out`` (docs/ops.md §3): which second tokens of the
pairs are committed. Public wrapper, argument checks and fake kernel."""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import (
    check_contiguous,
    check_dim,
    check_float,
    check_index,
    check_like,
    check_size,
    fail,
)

__all__ = ["pair_out"]


def check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1, fc2) -> None:
    check_dim(hidden, 2, "hidden")
    check_float(hidden, "hidden")
    check_contiguous(hidden, "hidden")
    batch, h = hidden.shape
    if mtp_hidden.shape != hidden.shape:
        fail("mtp_hidden", f"the shape of hidden {tuple(hidden.shape)}", tuple(mtp_hidden.shape))
    for t, name in (
        (mtp_hidden, "mtp_hidden"),
        (norm_weight, "norm_weight"),
        (fc1, "fc1_weight"),
        (fc2, "fc2_weight"),
    ):
        check_like(t, hidden, name, "hidden")
        check_contiguous(t, name)
    check_dim(norm_weight, 1, "norm_weight")
    check_size(norm_weight, 0, 2 * h, "norm_weight", "2 * hidden size")
    check_dim(fc1, 2, "fc1_weight")
    check_size(fc1, 0, h, "fc1_weight", "hidden size")
    check_size(fc1, 1, 2 * h, "fc1_weight", "2 * hidden size")
    check_dim(fc2, 2, "fc2_weight")
    check_size(fc2, 0, 1, "fc2_weight", "one output")
    check_size(fc2, 1, h, "fc2_weight", "hidden size")
    for t, name in ((token1, "token1"), (token2, "token2")):
        check_index(t, 1, torch.int64, name)
        if t.device != hidden.device:
            fail(name, f"the device of hidden ({hidden.device})", t.device)
        check_size(t, 0, batch, name, "batch size of hidden")


def _pair_out_fake(hidden, mtp_hidden, token1, token2, norm_weight, fc1, fc2, thr, pad_id, eps):
    check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1, fc2)
    batch = hidden.shape[0]
    return (
        torch.empty(batch, 2, dtype=torch.int64, device=hidden.device),
        torch.empty(batch, dtype=torch.float32, device=hidden.device),
    )


if _backend.has_op("pair_out"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::pair_out")(_pair_out_fake)


def pair_out(
    hidden: torch.Tensor,
    mtp_hidden: torch.Tensor,
    token1: torch.Tensor,
    token2: torch.Tensor,
    norm_weight: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc2_weight: torch.Tensor,
    threshold: float,
    pad_id: int,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PIPO's confidence head and gate: which second tokens of the pairs are committed.

    confidence = sigmoid(fc2_weight @ silu(fc1_weight @ (rmsnorm([hidden; mtp_hidden]) *
    norm_weight))), RMSNorm over the 2H features, float32 accumulation. pairs[b] = (token1[b],
    token2[b]) when threshold < 0 (always commit) or (threshold < 1 and confidence[b] >=
    threshold); otherwise (token1[b], pad_id) (threshold >= 1: always PAD).

    Args:
        hidden, mtp_hidden: [B, H] float32 / float16 / bfloat16 (backbone and MTP hidden states).
        token1, token2: [B] int64.
        norm_weight: [2H]; fc1_weight: [H, 2H]; fc2_weight: [1, H]; all hidden's dtype.
        threshold: the gate (float); pad_id: the PAD token id; eps: RMSNorm epsilon.
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        pairs [B, 2] int64 and confidence [B] float32.

    Example::

        pairs, conf = pipo_kernels.pair_out(h, m, t1, t2, nw, fc1, fc2, threshold=0.5,
                                            pad_id=0, eps=1e-6)
    """
    impl = _backend.resolve("pair_out", hidden.device, backend)
    args = (hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight, fc2_weight)
    if impl == "torch":
        check_pair_out_args(*args)
        return reference.pair_out(*args, float(threshold), int(pad_id), float(eps))
    if impl == "triton":
        return torch.ops.pipo.pair_out_triton(*args, float(threshold), int(pad_id), float(eps))
    return torch.ops.pipo.pair_out(*args, float(threshold), int(pad_id), float(eps))

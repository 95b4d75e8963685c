"""PIPO's confidence head and gate (docs/ops.md §3): ``pair_out``, which second tokens of the
pairs are committed, and its generalisation ``group_out`` to groups of k = 1 + J tokens (J MTP
chain steps, the longest passing prefix committed). Public wrappers, argument checks and fake
kernels."""

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

__all__ = ["group_out", "pair_out"]


def _check_head(hidden, mtp_hidden, norm_weight, fc1, fc2) -> None:
    """The hidden states and the confidence head's weights (mtp_hidden's shape checked before)."""
    h = hidden.shape[1]
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


def check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1, fc2) -> None:
    check_dim(hidden, 2, "hidden")
    check_float(hidden, "hidden")
    check_contiguous(hidden, "hidden")
    batch = hidden.shape[0]
    if mtp_hidden.shape != hidden.shape:
        fail("mtp_hidden", f"the shape of hidden {tuple(hidden.shape)}", tuple(mtp_hidden.shape))
    _check_head(hidden, mtp_hidden, norm_weight, fc1, fc2)
    for t, name in ((token1, "token1"), (token2, "token2")):
        check_index(t, 1, torch.int64, name)
        if t.device != hidden.device:
            fail(name, f"the device of hidden ({hidden.device})", t.device)
        check_size(t, 0, batch, name, "batch size of hidden")


def check_group_out_args(hidden, mtp_hidden, tokens, norm_weight, fc1, fc2) -> None:
    check_dim(hidden, 2, "hidden")
    check_float(hidden, "hidden")
    check_contiguous(hidden, "hidden")
    batch, h = hidden.shape
    check_dim(mtp_hidden, 3, "mtp_hidden")
    if mtp_hidden.shape[0] != batch or mtp_hidden.shape[2] != h:
        fail("mtp_hidden", f"shape [{batch}, J, {h}] (hidden is [B, H])", tuple(mtp_hidden.shape))
    _check_head(hidden, mtp_hidden, norm_weight, fc1, fc2)
    check_index(tokens, 2, torch.int64, "tokens")
    if tokens.device != hidden.device:
        fail("tokens", f"the device of hidden ({hidden.device})", tokens.device)
    check_size(tokens, 0, batch, "tokens", "batch size of hidden")
    check_size(tokens, 1, 1 + mtp_hidden.shape[1], "tokens", "1 + J, J = mtp_hidden.shape[1]")


def _pair_out_fake(hidden, mtp_hidden, token1, token2, norm_weight, fc1, fc2, thr, pad_id, eps):
    check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1, fc2)
    batch = hidden.shape[0]
    return (
        torch.empty(batch, 2, dtype=torch.int64, device=hidden.device),
        torch.empty(batch, dtype=torch.float32, device=hidden.device),
    )


def _group_out_fake(hidden, mtp_hidden, tokens, norm_weight, fc1, fc2, thr, pad_id, eps):
    check_group_out_args(hidden, mtp_hidden, tokens, norm_weight, fc1, fc2)
    batch, steps = mtp_hidden.shape[0], mtp_hidden.shape[1]
    return (
        torch.empty(batch, 1 + steps, dtype=torch.int64, device=hidden.device),
        torch.empty(batch, steps, dtype=torch.float32, device=hidden.device),
    )


if _backend.has_op("pair_out"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::pair_out")(_pair_out_fake)
if _backend.has_op("group_out"):  # absent from a pipo_kernels._C built before group_out
    torch.library.register_fake("pipo::group_out")(_group_out_fake)


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


def group_out(
    hidden: torch.Tensor,
    mtp_hidden: torch.Tensor,
    tokens: torch.Tensor,
    norm_weight: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc2_weight: torch.Tensor,
    threshold: float,
    pad_id: int,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PIPO's confidence head and gate for groups of k = 1 + J tokens (J MTP chain steps).

    confidence[b, j] = sigmoid(fc2_weight @ silu(fc1_weight @ (rmsnorm([hidden[b];
    mtp_hidden[b, j]]) * norm_weight))): pair_out's head applied to each step j, RMSNorm over 2H,
    float32 accumulation. groups[b, 0] = tokens[b, 0] always; groups[b, j+1] = tokens[b, j+1] when
    groups[b, j] was committed and step j passes the gate (threshold < 0: always; threshold >= 1:
    never; otherwise confidence[b, j] >= threshold), else pad_id: the longest passing prefix is
    kept and every position after the first failing step is PAD. With J = 1 this is
    :func:`pair_out` (tokens = [token1, token2], mtp_hidden = mtp_hidden[:, None]).

    Args:
        hidden: [B, H] float32 / float16 / bfloat16, contiguous (backbone hidden state).
        mtp_hidden: [B, J, H], hidden's dtype, contiguous (the MTP chain's states; J >= 0).
        tokens: [B, 1 + J] int64, contiguous (token 1 from the backbone, tokens 2..k from the
            chain).
        norm_weight: [2H]; fc1_weight: [H, 2H]; fc2_weight: [1, H]; all hidden's dtype.
        threshold: the gate (float); pad_id: the PAD token id; eps: RMSNorm epsilon.
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        groups [B, 1 + J] int64 and confidence [B, J] float32.

    Example::

        groups, conf = pipo_kernels.group_out(h, m, toks, nw, fc1, fc2, threshold=0.5,
                                              pad_id=0, eps=1e-6)  # m: [B, 3, H] for k = 4
    """
    impl = _backend.resolve("group_out", hidden.device, backend)
    args = (hidden, mtp_hidden, tokens, norm_weight, fc1_weight, fc2_weight)
    if impl == "torch":
        check_group_out_args(*args)
        return reference.group_out(*args, float(threshold), int(pad_id), float(eps))
    if impl == "triton":
        return torch.ops.pipo.group_out_triton(*args, float(threshold), int(pad_id), float(eps))
    return torch.ops.pipo.group_out(*args, float(threshold), int(pad_id), float(eps))

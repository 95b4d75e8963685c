"""Fused latent projection (docs/ops.md §2): the pair-in fold (k tokens per group, k = 2 for
pairs) and the pair-out unfold input. Public wrappers, argument checks shared with the Triton
kernels, and fake kernels."""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import (
    check_contiguous,
    check_dim,
    check_float,
    check_like,
    check_size,
    fail,
    should_check_values,
)

__all__ = ["fold_groups", "fold_pairs", "unfold_input"]

ACTIVATIONS = ("none", "silu")


def _check_index(t: torch.Tensor, name: str) -> None:
    if t.dtype not in (torch.int32, torch.int64):
        fail(name, "dtype int32 or int64", t.dtype)


def _check_table_and_weight(embedding: torch.Tensor, weight: torch.Tensor, parts: int) -> None:
    """embedding [V, H] and weight [O, parts * H] (parts: tokens per group, or the two halves of
    unfold_input's input)."""
    check_dim(embedding, 2, "embedding")
    check_float(embedding, "embedding")
    check_contiguous(embedding, "embedding")
    check_dim(weight, 2, "weight")
    if weight.shape[1] != parts * embedding.shape[1]:
        fail(
            "weight",
            f"shape [O, {parts * embedding.shape[1]}] ({parts} * hidden size of embedding)",
            f"shape {tuple(weight.shape)}",
        )
    check_like(weight, embedding, "weight", "embedding")
    check_contiguous(weight, "weight")


def check_fold_args(pair_ids, embedding, weight, bias, activation) -> None:
    """Shape / dtype / device checks of fold_pairs (no index values: see check_token_values).
    The group size k is pair_ids.shape[1]; weight must then have k * H columns."""
    check_dim(pair_ids, 2, "pair_ids")
    if pair_ids.shape[1] < 1:
        fail("pair_ids", "at least one token id per group (shape [N, k], k >= 1)", "k = 0")
    _check_table_and_weight(embedding, weight, pair_ids.shape[1])
    _check_index(pair_ids, "pair_ids")
    if pair_ids.device != embedding.device:
        fail("pair_ids", f"the device of embedding ({embedding.device})", pair_ids.device)
    check_contiguous(pair_ids, "pair_ids")
    if bias is not None:
        check_dim(bias, 1, "bias")
        check_size(bias, 0, weight.shape[0], "bias", "out features of weight")
        check_like(bias, embedding, "bias", "embedding")
        check_contiguous(bias, "bias")
    if activation not in ACTIVATIONS:
        fail("activation", '"none" or "silu"', repr(activation))


def check_unfold_args(
    token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight
) -> None:
    """Shape / dtype / device checks of unfold_input (no index values)."""
    _check_table_and_weight(embedding, weight, 2)
    h = embedding.shape[1]
    check_dim(token_ids, 1, "token_ids")
    _check_index(token_ids, "token_ids")
    if token_ids.device != embedding.device:
        fail("token_ids", f"the device of embedding ({embedding.device})", token_ids.device)
    check_contiguous(token_ids, "token_ids")
    check_dim(hidden, 2, "hidden")
    check_size(hidden, 0, token_ids.shape[0], "hidden", "number of token_ids")
    check_size(hidden, 1, h, "hidden", "hidden size of embedding")
    check_like(hidden, embedding, "hidden", "embedding")
    if hidden.stride(1) != 1 or (hidden.shape[0] > 1 and hidden.stride(0) < h):
        fail("hidden", "contiguous, non-overlapping rows", f"strides {hidden.stride()}")
    for t, name in (
        (embed_norm_weight, "embed_norm_weight"),
        (hidden_norm_weight, "hidden_norm_weight"),
    ):
        check_dim(t, 1, name)
        check_size(t, 0, h, name, "hidden size of embedding")
        check_like(t, embedding, name, "embedding")
        check_contiguous(t, name)


def check_token_values(ids: torch.Tensor, vocab: int, name: str) -> None:
    """Every id must name a row of the embedding (reads the values: a sync on a GPU)."""
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(
            f"{name}: token id {lo if lo < 0 else hi} is out of range for an embedding of "
            f"{vocab} rows"
        )


def _fold_pairs_fake(pair_ids, embedding, weight, bias, activation) -> torch.Tensor:
    check_fold_args(pair_ids, embedding, weight, bias, activation)
    return embedding.new_empty(pair_ids.shape[0], weight.shape[0])


def _unfold_input_fake(
    token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight, eps
) -> torch.Tensor:
    check_unfold_args(token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight)
    return embedding.new_empty(token_ids.shape[0], weight.shape[0])


if _backend.has_op("fold_pairs"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::fold_pairs")(_fold_pairs_fake)
    torch.library.register_fake("pipo::unfold_input")(_unfold_input_fake)


def fold_pairs(
    pair_ids: torch.Tensor,
    embedding: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Fold groups of k tokens into latents: ``act(weight @ [e(ids[n,0]); ...; e(ids[n,k-1])] +
    bias)``, k = ``pair_ids.shape[1]`` (k = 2: PIPO's pairs; any k >= 1).

    The embedding gather, the concatenation, the projection, the bias and the activation run as one
    kernel; neither the gathered [N, k, H] rows nor the [N, k*H] concatenation is written to memory.
    The linear compressor of PIPO is one call; the MLP compressor is
    ``fold_pairs(..., activation="silu")`` with weight [kH, kH], then an ordinary linear.
    :func:`fold_groups` is the same function under the general name.

    Args:
        pair_ids: [N, k] int32 or int64, contiguous, k >= 1; N may be 0.
        embedding: [V, H] float32 / float16 / bfloat16, contiguous.
        weight: [O, k*H], the embedding's dtype, contiguous; columns [j*H, (j+1)*H) multiply the
            embedding of token j of the group (j = 0 .. k-1).
        bias: [O] or None, the embedding's dtype.
        activation: "none" or "silu".
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        [N, O] in the embedding's dtype (float32 accumulation).

    A token id outside [0, V) raises ValueError/RuntimeError on CPU; on a GPU (where checking
    would need a sync) it is never read: its embedding row counts as zeros, and ``PIPO_VALIDATE=1``
    turns the check on.

    Example::

        emb = torch.randn(1000, 256, dtype=torch.bfloat16)
        w = torch.randn(256, 512, dtype=torch.bfloat16) / 512**0.5
        pairs = torch.tensor([[1, 2], [3, 4], [5, 0]])
        z = pipo_kernels.fold_pairs(pairs, emb, w)  # [3, 256]
        w4 = torch.randn(256, 1024, dtype=torch.bfloat16) / 1024**0.5
        z4 = pipo_kernels.fold_groups(torch.tensor([[1, 2, 3, 4]]), emb, w4)  # [1, 256]
    """
    impl = _backend.resolve("fold_pairs", embedding.device, backend)
    if impl == "torch":
        check_fold_args(pair_ids, embedding, weight, bias, activation)
        if should_check_values(pair_ids, sync_ok=True):
            check_token_values(pair_ids, embedding.shape[0], "pair_ids")
        return reference.fold_pairs(pair_ids, embedding, weight, bias, activation)
    if impl == "triton":
        return torch.ops.pipo.fold_pairs_triton(pair_ids, embedding, weight, bias, activation)
    return torch.ops.pipo.fold_pairs(pair_ids, embedding, weight, bias, activation)


# The general name of the k-token fold. The same function object, so that every argument name,
# backend and check is fold_pairs' (the op stays pipo::fold_pairs: one schema, no second op).
fold_groups = fold_pairs


def unfold_input(
    token_ids: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    embed_norm_weight: torch.Tensor,
    hidden_norm_weight: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Build the MTP head's input: ``weight @ [rmsnorm(e(token_ids[n])) * embed_norm_weight;
    rmsnorm(hidden[n]) * hidden_norm_weight]`` (embedding half first, no bias).

    The gather, both RMSNorms, the concatenation and the projection run as one kernel; the
    normalised rows are not written to memory (nor rounded to the input dtype: float32 throughout).

    Args:
        token_ids: [N] int32 or int64, contiguous (the token chosen after each hidden state).
        hidden: [N, H], the embedding's dtype; rows may be strided, each row contiguous.
        embedding: [V, H] float32 / float16 / bfloat16, contiguous.
        embed_norm_weight, hidden_norm_weight: [H], the embedding's dtype.
        weight: [O, 2H], the embedding's dtype, contiguous.
        eps: RMSNorm epsilon, added to the mean square.
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        [N, O] in the embedding's dtype (float32 accumulation).

    Token ids out of range: as in :func:`fold_pairs` (error on CPU; zero row on a GPU unless
    ``PIPO_VALIDATE=1``, a zero row normalises to zeros).

    Example::

        x = pipo_kernels.unfold_input(token1, h_last, emb, w_e, w_h, w_fc, eps=1e-6)  # [B, H]
    """
    impl = _backend.resolve("unfold_input", embedding.device, backend)
    args = (token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight)
    if impl == "torch":
        check_unfold_args(*args)
        if should_check_values(token_ids, sync_ok=True):
            check_token_values(token_ids, embedding.shape[0], "token_ids")
        return reference.unfold_input(*args, eps)
    if impl == "triton":
        return torch.ops.pipo.unfold_input_triton(*args, float(eps))
    return torch.ops.pipo.unfold_input(*args, float(eps))

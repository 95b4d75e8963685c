"""Draft-tree verification (docs/ops.md §4b): public wrappers, argument checks and fake kernels
of ``verify_tree`` (greedy) and ``verify_tree_stochastic`` (speculative sampling)."""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import check_contiguous, check_dim, check_dtype, check_size, fail, should_check_values

__all__ = ["verify_tree", "verify_tree_stochastic"]


def _check_same_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        fail(name, f"the device of {ref_name} ({ref.device})", t.device)


def _check_index_tensor(t, dtype, name, nodes, draft_tokens) -> None:
    check_dim(t, 1, name)
    check_dtype(t, dtype, name)
    check_contiguous(t, name)
    if nodes is not None:
        check_size(t, 0, nodes, name, "number of nodes of draft_tokens")
    _check_same_device(t, draft_tokens, name, "draft_tokens")


def check_tree_args(draft_tokens, parents, q_indptr, max_depth) -> None:
    """Shape / dtype / device checks shared by both ops (mirrors csrc/verify.h)."""
    check_dim(draft_tokens, 1, "draft_tokens")
    check_dtype(draft_tokens, torch.int64, "draft_tokens")
    check_contiguous(draft_tokens, "draft_tokens")
    nodes = draft_tokens.shape[0]
    _check_index_tensor(parents, torch.int32, "parents", nodes, draft_tokens)
    _check_index_tensor(q_indptr, torch.int32, "q_indptr", None, draft_tokens)
    if q_indptr.shape[0] < 1:
        fail("q_indptr", "B + 1 >= 1 entries", f"shape {tuple(q_indptr.shape)}")
    if not isinstance(max_depth, int) or not 0 <= max_depth < 2**30:
        fail("max_depth", "an int with 0 <= max_depth < 2**30", max_depth)


def check_greedy_args(draft_tokens, parents, q_indptr, target_tokens, max_depth) -> None:
    check_tree_args(draft_tokens, parents, q_indptr, max_depth)
    _check_index_tensor(
        target_tokens, torch.int64, "target_tokens", draft_tokens.shape[0], draft_tokens
    )


def check_stochastic_args(
    draft_tokens, parents, q_indptr, draft_probs, target_probs, seeds, offsets, max_depth
) -> None:
    check_tree_args(draft_tokens, parents, q_indptr, max_depth)
    check_dim(draft_probs, 2, "draft_probs")
    check_dtype(draft_probs, torch.float32, "draft_probs")
    check_contiguous(draft_probs, "draft_probs")
    check_size(draft_probs, 0, draft_tokens.shape[0], "draft_probs", "number of nodes")
    _check_same_device(draft_probs, draft_tokens, "draft_probs", "draft_tokens")
    if target_probs.shape != draft_probs.shape:
        fail(
            "target_probs",
            f"the shape of draft_probs {tuple(draft_probs.shape)}",
            f"shape {tuple(target_probs.shape)}",
        )
    check_dtype(target_probs, torch.float32, "target_probs")
    check_contiguous(target_probs, "target_probs")
    _check_same_device(target_probs, draft_tokens, "target_probs", "draft_tokens")
    batch = q_indptr.shape[0] - 1
    for t, name in ((seeds, "seeds"), (offsets, "offsets")):
        check_dim(t, 1, name)
        check_dtype(t, torch.int64, name)
        check_contiguous(t, name)
        check_size(t, 0, batch, name, "batch size B = len(q_indptr) - 1")
        _check_same_device(t, draft_tokens, name, "draft_tokens")


def check_tree_values(draft_tokens, parents, q_indptr, max_depth, vocab=None) -> None:
    """Index-value checks (need the values: CPU always, GPU only with PIPO_VALIDATE=1)."""
    ip = q_indptr.cpu().long()
    nodes = parents.shape[0]
    if int(ip[0]) != 0:
        fail("q_indptr", "q_indptr[0] == 0", int(ip[0]))
    lens = ip[1:] - ip[:-1]
    if (lens < 0).any():
        b = int((lens < 0).nonzero()[0])
        fail("q_indptr", "non-decreasing values", f"q_indptr[{b + 1}] < q_indptr[{b}]")
    if int(ip[-1]) != nodes:
        fail("q_indptr", f"q_indptr[B] == number of nodes ({nodes})", int(ip[-1]))
    if nodes == 0:
        return
    seq = torch.repeat_interleave(torch.arange(lens.shape[0]), lens)
    start = ip[:-1][seq]
    local = torch.arange(nodes) - start
    par = parents.cpu().long()
    root = local == 0
    bad_root = root & (par != -1)
    bad_edge = ~root & ((par < 0) | (par >= local))
    for bad, what in ((bad_root, "is the root and must have parent -1"), (bad_edge, None)):
        if bad.any():
            i = int(bad.nonzero()[0])
            b, node, p = int(seq[i]), int(local[i]), int(par[i])
            msg = what or f"expected 0 <= parent < {node} (local indices, parents before children)"
            raise ValueError(f"parents: node {node} of sequence {b} has parent {p}; {msg}")
    # Round k of depth[i] = depth[parent] + 1 settles every node of depth <= k; stop once nothing
    # changes or a node is already too deep.
    glob = torch.where(root, torch.arange(nodes), start + par)
    depth = torch.zeros(nodes, dtype=torch.long)
    while True:
        new = torch.where(root, 0, depth[glob] + 1)
        if torch.equal(new, depth) or (new > max_depth).any():
            depth = new
            break
        depth = new
    if (depth > max_depth).any():
        i = int((depth > max_depth).nonzero()[0])
        raise ValueError(
            f"parents: node {int(local[i])} of sequence {int(seq[i])} has depth > max_depth = "
            f"{max_depth}"
        )
    if vocab is not None:
        tok = draft_tokens.cpu()
        bad = ~root & ((tok < 0) | (tok >= vocab))
        if bad.any():
            i = int(bad.nonzero()[0])
            fail(
                "draft_tokens",
                f"tokens in [0, {vocab}) (node {int(local[i])} of sequence {int(seq[i])})",
                int(tok[i]),
            )


def empty_outputs(draft_tokens: torch.Tensor, q_indptr: torch.Tensor, max_depth: int):
    """(accept_len [B] int32, accept_index [B, max_depth + 1] int32, bonus_token [B] int64)."""
    batch = q_indptr.shape[0] - 1
    return (
        draft_tokens.new_empty((batch,), dtype=torch.int32),
        draft_tokens.new_empty((batch, max_depth + 1), dtype=torch.int32),
        draft_tokens.new_empty((batch,), dtype=torch.int64),
    )


def _verify_tree_fake(draft_tokens, parents, q_indptr, target_tokens, max_depth):
    check_greedy_args(draft_tokens, parents, q_indptr, target_tokens, max_depth)
    return empty_outputs(draft_tokens, q_indptr, max_depth)


def _verify_tree_stochastic_fake(
    draft_tokens, parents, q_indptr, draft_probs, target_probs, seeds, offsets, max_depth
):
    check_stochastic_args(
        draft_tokens, parents, q_indptr, draft_probs, target_probs, seeds, offsets, max_depth
    )
    return empty_outputs(draft_tokens, q_indptr, max_depth)


if _backend.has_op("verify_tree"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::verify_tree")(_verify_tree_fake)
    torch.library.register_fake("pipo::verify_tree_stochastic")(_verify_tree_stochastic_fake)


def verify_tree(
    draft_tokens: torch.Tensor,
    parents: torch.Tensor,
    q_indptr: torch.Tensor,
    target_tokens: torch.Tensor,
    max_depth: int,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy verification of B draft trees (exactly lossless for greedy decoding).

    Sequence b owns the nodes ``q_indptr[b] : q_indptr[b+1]``; node 0 of each tree is the last
    committed token. A node is accepted when its parent is accepted and its draft token equals the
    target's token after its parent; the accepted path ends at the deepest accepted node (lowest
    index on ties).

    Args:
        draft_tokens: [Nq] int64, the token of every node (node 0's is not compared).
        parents: [Nq] int32, each node's parent as an index local to its sequence; -1 for node 0.
            Parents come before their children (0 <= parents[i] < i for i > 0).
        q_indptr: [B+1] int32 prefix sums of the tree sizes (q_indptr[0] = 0, q_indptr[B] = Nq).
            An empty tree gives accept_len 0, accept_index all -1 and bonus_token -1.
        target_tokens: [Nq] int64, the target model's token after each node (argmax or sample).
        max_depth: the deepest node depth the caller built (root = depth 0); it fixes the width
            of accept_index without a device-to-host sync (docs/ops.md §4b).
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        accept_len: [B] int32, accepted draft tokens (root excluded).
        accept_index: [B, max_depth + 1] int32, the accepted path's nodes from the root, as
            indices local to the sequence (add q_indptr[b] for a global index), padded with -1.
        bonus_token: [B] int64, target_tokens of the last accepted node.

    Invalid trees (bad q_indptr, parents not earlier nodes, depth > max_depth) raise ValueError /
    RuntimeError on CPU; on a GPU they are only checked with ``PIPO_VALIDATE=1`` (otherwise the
    offending nodes are never accepted).

    Example::

        # one tree: root -> 1 ("a"), root -> 2 ("b"), 1 -> 3 ("c"); the target says b after root
        draft = torch.tensor([7, 11, 12, 13], device="cuda")
        parents = torch.tensor([-1, 0, 0, 1], dtype=torch.int32, device="cuda")
        indptr = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
        target = torch.tensor([12, 13, 20, 21], device="cuda")
        n, idx, bonus = pipo_kernels.verify_tree(draft, parents, indptr, target, max_depth=2)
        # n = [1], idx = [[0, 2, -1]], bonus = [20]
    """
    impl = _backend.resolve("verify_tree", draft_tokens.device, backend)
    if impl == "torch":
        check_greedy_args(draft_tokens, parents, q_indptr, target_tokens, max_depth)
        if should_check_values(q_indptr, sync_ok=True):
            check_tree_values(draft_tokens, parents, q_indptr, max_depth)
        return reference.verify_tree(draft_tokens, parents, q_indptr, target_tokens, max_depth)
    if impl == "triton":
        return torch.ops.pipo.verify_tree_triton(
            draft_tokens, parents, q_indptr, target_tokens, max_depth
        )
    return torch.ops.pipo.verify_tree(draft_tokens, parents, q_indptr, target_tokens, max_depth)


def verify_tree_stochastic(
    draft_tokens: torch.Tensor,
    parents: torch.Tensor,
    q_indptr: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    max_depth: int,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Speculative sampling on B draft trees: the emitted tokens follow the target distribution
    exactly (Leviathan et al. on chains; SpecInfer's rule for several children).

    Walking from the root, at node u with children c1 < c2 < ... the residual starts as
    p = target_probs[u] and q = draft_probs[u]; child c (token x) is accepted with probability
    min(1, p[x] / q[x]); on rejection p becomes max(0, p - q) renormalised and the next child is
    tried. On acceptance the walk moves to c; when every child is rejected (or u is a leaf, or at
    depth max_depth) the bonus token is sampled from the current residual. The guarantee assumes
    the children of u were drawn independently from draft_probs[u] (with replacement).

    Randomness is counter-based: uniform k of sequence b comes from a splitmix64 hash of
    (seeds[b], offsets[b], k), identical on every backend, so equal inputs give equal outputs.

    Args:
        draft_tokens, parents, q_indptr, max_depth: as in ``verify_tree``. Non-root draft tokens
            must be in [0, V) (others are never accepted on a GPU; checked on CPU).
        draft_probs: [Nq, V] float32; row i is the draft distribution node i's children were
            sampled from. Rows must sum to 1.
        target_probs: [Nq, V] float32; row i is the target's distribution after node i. Rows must
            sum to 1 (the residuals derived from them are renormalised by the op).
        seeds, offsets: [B] int64, the random stream of each sequence (advance offsets between
            calls to get fresh randomness).
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Returns:
        accept_len [B] int32, accept_index [B, max_depth + 1] int32 (local node indices, -1
        padded), bonus_token [B] int64 (-1 only if the final residual is all zeros).

    Example::

        n, idx, bonus = pipo_kernels.verify_tree_stochastic(
            draft, parents, indptr, draft_probs, target_probs, seeds, offsets, max_depth=4
        )
        emitted = [draft[indptr[b] + i] for i in idx[b, 1 : n[b] + 1]] + [bonus[b]]
    """
    args = (draft_tokens, parents, q_indptr, draft_probs, target_probs, seeds, offsets, max_depth)
    impl = _backend.resolve("verify_tree_stochastic", draft_tokens.device, backend)
    if impl == "torch":
        check_stochastic_args(*args)
        if should_check_values(q_indptr, sync_ok=True):
            check_tree_values(draft_tokens, parents, q_indptr, max_depth, draft_probs.shape[1])
        return reference.verify_tree_stochastic(*args)
    if impl == "triton":
        return torch.ops.pipo.verify_tree_stochastic_triton(*args)
    return torch.ops.pipo.verify_tree_stochastic(*args)

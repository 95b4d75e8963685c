"""Triton kernel of pipo::verify_tree: one program per sequence. Every node walks up to the root
(at most max_depth steps) checking that each draft token on the way matches the target token after
its parent; a max-reduction of (depth, -index) over the accepted nodes picks the path's end."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import should_check_values
from ..verify import _verify_tree_fake, check_greedy_args, check_tree_values, empty_outputs

# Index bound of the (depth, index) key: nodes are local indices < 2**31.
_INDEX_MAX = 2**31 - 1


@triton.jit
def _verify_tree_kernel(
    draft_ptr,
    parents_ptr,
    indptr_ptr,
    target_ptr,
    len_ptr,
    index_ptr,
    bonus_ptr,
    num_nodes,
    max_depth,
    INDEX_MAX: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    # Out-of-range q_indptr values are clamped (checked on CPU / with PIPO_VALIDATE=1).
    start = tl.minimum(tl.maximum(tl.load(indptr_ptr + b).to(tl.int64), 0), num_nodes)
    end = tl.minimum(tl.maximum(tl.load(indptr_ptr + b + 1).to(tl.int64), start), num_nodes)
    n = end - start
    best_key = tl.full((), -1, tl.int64)
    for base in range(0, n, BLOCK_N):
        node = base + tl.arange(0, BLOCK_N).to(tl.int64)
        ok = node < n
        cur = node
        depth = tl.zeros([BLOCK_N], dtype=tl.int64)
        for _ in range(0, max_depth):
            step = ok & (cur != 0)
            par = tl.load(parents_ptr + start + cur, mask=step, other=0).to(tl.int64)
            good = step & (par >= 0) & (par < cur)
            tok = tl.load(draft_ptr + start + cur, mask=good, other=0)
            want = tl.load(target_ptr + start + par, mask=good, other=0)
            ok = ok & (~step | (good & (tok == want)))
            cur = tl.where(good, par, cur)
            depth += step.to(tl.int64)
        # A node that did not reach the root in max_depth steps is too deep to be reported.
        ok = ok & (cur == 0)
        key = tl.where(ok, depth * 4294967296 + (INDEX_MAX - node), -1)
        best_key = tl.maximum(best_key, tl.max(key, axis=0))
    found = best_key >= 0
    best_depth = tl.where(found, best_key >> 32, 0)
    best = tl.where(found, INDEX_MAX - (best_key & 4294967295), 0)
    tl.store(len_ptr + b, best_depth.to(tl.int32))
    bonus = tl.load(target_ptr + start + best, mask=found, other=-1)
    tl.store(bonus_ptr + b, bonus)
    row = index_ptr + b * (max_depth + 1)
    cols = tl.arange(0, BLOCK_D)
    pad = (cols <= max_depth) & ((cols > best_depth) | ~found)
    tl.store(row + cols, tl.full([BLOCK_D], -1, tl.int32), mask=pad)
    cur = best
    for k in range(0, max_depth + 1):
        pos = best_depth - k
        live = found & (pos >= 0)
        tl.store(row + pos, cur.to(tl.int32), mask=live)
        cur = tl.load(parents_ptr + start + cur, mask=live & (pos > 0), other=0).to(tl.int64)


@triton_op("pipo::verify_tree_triton", mutates_args={})
def verify_tree(
    draft_tokens: torch.Tensor,
    parents: torch.Tensor,
    q_indptr: torch.Tensor,
    target_tokens: torch.Tensor,
    max_depth: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_greedy_args(draft_tokens, parents, q_indptr, target_tokens, max_depth)
    if should_check_values(q_indptr):
        check_tree_values(draft_tokens, parents, q_indptr, max_depth)
    accept_len, accept_index, bonus_token = empty_outputs(draft_tokens, q_indptr, max_depth)
    batch = q_indptr.shape[0] - 1
    if batch == 0:
        return accept_len, accept_index, bonus_token
    wrap_triton(_verify_tree_kernel)[(batch,)](
        draft_tokens,
        parents,
        q_indptr,
        target_tokens,
        accept_len,
        accept_index,
        bonus_token,
        draft_tokens.shape[0],
        max_depth,
        INDEX_MAX=_INDEX_MAX,
        BLOCK_N=64,
        BLOCK_D=max(triton.next_power_of_2(max_depth + 1), 16),  # few compiled variants
    )
    return accept_len, accept_index, bonus_token


# Shape-only fake: without it, tracing with TRITON_INTERPRET=1 would run the interpreter on fake
# tensors.
verify_tree.register_fake(_verify_tree_fake)

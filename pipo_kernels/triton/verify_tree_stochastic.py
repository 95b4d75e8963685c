"""Triton kernel of pipo::verify_tree_stochastic: one program per sequence walks its tree (the
walk is sequential); every pass over the vocabulary (residual mass, inverse-CDF sampling) is
vectorised over BLOCK_V entries. The random numbers are the splitmix64-based uniforms of
pipo_kernels.reference.verify_uniform, bit for bit."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.language.extra import libdevice

from .._backend import triton_interpreting
from .._checks import should_check_values
from ..verify import (
    _verify_tree_stochastic_fake,
    check_stochastic_args,
    check_tree_values,
    empty_outputs,
)


@triton.jit
def _mix64(z):
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _uniform(stream, step):
    h = _mix64(stream + (step + 1).to(tl.uint64) * 0x9E3779B97F4A7C15)
    return (h >> 40).to(tl.float32) * (1.0 / 16777216.0)


# Float32 products and sums rounded one at a time (never fused into an FMA), so the compiled
# kernel rounds exactly like the C++ kernels and the reference; the interpreter (numpy) never fuses.
@triton.jit
def _mul(a, b, EXACT: tl.constexpr):
    if EXACT:
        return libdevice.mul_rn(a, b)
    else:
        return a * b


@triton.jit
def _sub(a, b, EXACT: tl.constexpr):
    if EXACT:
        return libdevice.sub_rn(a, b)
    else:
        return a - b


@triton.jit
def _residual(t_ptr, q_ptr, scale, v, mask, EXACT: tl.constexpr):
    t = tl.load(t_ptr + v, mask=mask, other=0.0)
    q = tl.load(q_ptr + v, mask=mask, other=0.0)
    return tl.maximum(_sub(t, _mul(scale, q, EXACT), EXACT), 0.0)


@triton.jit
def _residual_mass(t_ptr, q_ptr, scale, vocab, BLOCK_V: tl.constexpr, EXACT: tl.constexpr):
    # Summed in float64 and rounded once, like every other backend.
    acc = tl.zeros([BLOCK_V], dtype=tl.float64)
    for v0 in range(0, vocab, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        acc += _residual(t_ptr, q_ptr, scale, v, v < vocab, EXACT).to(tl.float64)
    return tl.sum(acc, axis=0).to(tl.float32)


@triton.jit
def _verify_tree_stochastic_kernel(
    draft_ptr,
    parents_ptr,
    indptr_ptr,
    dprobs_ptr,
    tprobs_ptr,
    seeds_ptr,
    offsets_ptr,
    len_ptr,
    index_ptr,
    bonus_ptr,
    num_nodes,
    vocab,
    max_depth,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EXACT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    start = tl.minimum(tl.maximum(tl.load(indptr_ptr + b).to(tl.int64), 0), num_nodes)
    end = tl.minimum(tl.maximum(tl.load(indptr_ptr + b + 1).to(tl.int64), start), num_nodes)
    n = end - start
    seed = tl.load(seeds_ptr + b).to(tl.uint64)
    stream = _mix64(_mix64(seed) + tl.load(offsets_ptr + b).to(tl.uint64))
    row = index_ptr + b * (max_depth + 1)
    tl.store(row, 0, mask=n > 0)
    # Loop-carried scalars start as typed tensors (compiled Triton requires fixed types).
    u = n * 0
    depth = n * 0
    step = n * 0
    scale = tl.full((), 0.0, tl.float32)
    mass = tl.full((), 0.0, tl.float32)
    walking = n > 0
    while walking:
        t_ptr = tprobs_ptr + (start + u) * vocab
        q_ptr = dprobs_ptr + (start + u) * vocab
        scale = tl.full((), 0.0, tl.float32)
        mass = _residual_mass(t_ptr, q_ptr, scale, vocab, BLOCK_V, EXACT)
        nxt = u * 0 - 1
        # Children in index order; none is tried at max_depth (they could not be reported).
        last = tl.where(depth < max_depth, n, u + 1)
        for c in range(u + 1, last):
            par = tl.load(parents_ptr + start + c).to(tl.int64)
            x = tl.load(draft_ptr + start + c)
            if (nxt < 0) & (par == u) & (x >= 0) & (x < vocab):
                r = _uniform(stream, step)
                step += 1
                qx = tl.load(q_ptr + x)
                px = tl.maximum(_sub(tl.load(t_ptr + x), _mul(scale, qx, EXACT), EXACT), 0.0)
                if _mul(_mul(r, qx, EXACT), mass, EXACT) < px:
                    nxt = c + u * 0  # int64, whatever the loop variable's type
                else:
                    # Rejected: residual max(0, t - (scale + mass) q), unless that is all zeros.
                    new_scale = scale + mass
                    new_mass = _residual_mass(t_ptr, q_ptr, new_scale, vocab, BLOCK_V, EXACT)
                    if new_mass > 0.0:
                        scale = new_scale
                        mass = new_mass
        walking = nxt >= 0
        if walking:
            u = nxt
            depth += 1
            tl.store(row + depth, u.to(tl.int32))
    tl.store(len_ptr + b, depth.to(tl.int32))
    cols = tl.arange(0, BLOCK_D)
    pad = (cols <= max_depth) & ((cols > depth) | (n == 0))
    tl.store(row + cols, tl.full([BLOCK_D], -1, tl.int32), mask=pad)

    # Bonus token: inverse CDF of the final residual, running sums in float64.
    t_ptr = tprobs_ptr + (start + u) * vocab
    q_ptr = dprobs_ptr + (start + u) * vocab
    target = _mul(_uniform(stream, step), mass, EXACT).to(tl.float64)
    carry = tl.zeros((), dtype=tl.float64)
    first = tl.full((), 2**62, tl.int64)
    last_positive = tl.full((), -1, tl.int64)
    for v0 in range(0, tl.where(n > 0, vocab, 0), BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        live = v < vocab
        p = _residual(t_ptr, q_ptr, scale, v, live, EXACT)
        p64 = p.to(tl.float64)
        cum = tl.cumsum(p64, axis=0) + carry
        first = tl.minimum(first, tl.min(tl.where(live & (cum > target), v, 2**62), axis=0))
        last_positive = tl.maximum(last_positive, tl.max(tl.where(p > 0.0, v, -1), axis=0))
        carry += tl.sum(p64, axis=0)
    bonus = tl.where(first < 2**62, first, last_positive)
    tl.store(bonus_ptr + b, bonus)


@triton_op("pipo::verify_tree_stochastic_triton", mutates_args={})
def verify_tree_stochastic(
    draft_tokens: torch.Tensor,
    parents: torch.Tensor,
    q_indptr: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    max_depth: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (draft_tokens, parents, q_indptr, draft_probs, target_probs, seeds, offsets)
    check_stochastic_args(*args, max_depth)
    vocab = draft_probs.shape[1]
    if should_check_values(q_indptr):
        check_tree_values(draft_tokens, parents, q_indptr, max_depth, vocab)
    accept_len, accept_index, bonus_token = empty_outputs(draft_tokens, q_indptr, max_depth)
    batch = q_indptr.shape[0] - 1
    if batch == 0:
        return accept_len, accept_index, bonus_token
    wrap_triton(_verify_tree_stochastic_kernel)[(batch,)](
        *args,
        accept_len,
        accept_index,
        bonus_token,
        draft_tokens.shape[0],
        vocab,
        max_depth,
        BLOCK_V=min(max(triton.next_power_of_2(vocab), 128), 1024),
        BLOCK_D=max(triton.next_power_of_2(max_depth + 1), 16),  # few compiled variants
        EXACT=not triton_interpreting(),
    )
    return accept_len, accept_index, bonus_token


# Shape-only fake: without it, tracing with TRITON_INTERPRET=1 would run the interpreter on fake
# tensors.
verify_tree_stochastic.register_fake(_verify_tree_stochastic_fake)

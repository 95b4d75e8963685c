"""Triton kernels of pipo::sample_tokens (semantics: pipo_kernels/sampling.py).

Stage 1, grid (vocabulary tiles, row blocks): a [BLOCK_B, BLOCK_V] tile of logits from tl.dot
over H chunks (float32 accumulation, IEEE for float32 inputs), penalty and temperature; per (row,
tile) it stores the max and sum of exponentials, the best packed (value, id) key (greedy argmax
or Gumbel-max winner) and the row's best min(k_track, BLOCK_V) keys (tl.sort), where k_track is
the number of candidates the row needs. Rows on the exact slow path (top_k > 64, or top_k = 0
with top_p < 1) also write their z to the [B, V] workspace.
Stage 2, one program per row: merges the tiles (log-sum-exp, best key, a running sorted list of
the best 64 candidates), applies top-k / top-p to that list, samples and writes the outputs;
it flags the rows whose nucleus does not end inside the list.
Stage 3, one program per flagged row: exact top-k and top-p thresholds by bisection on the
float order of z over the workspace, then one Gumbel-max pass.

A (value, id) pair is packed into one int64 key whose signed order is (value ascending, id
descending), so the larger key is the better candidate and ties go to the lower id.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._backend import triton_interpreting
from .._checks import should_check_values
from ..sampling import (
    MAX_CANDIDATES,
    _sample_tokens_fake,
    check_sample_args,
    check_sample_values,
    sample_outputs,
)
from ._common import dot_in_float32, register

MIN_KEY = tl.constexpr(-(2**63))  # a plain global is not visible to @triton.jit


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _rng_keys(seed, offset):
    a = _mix32(seed.to(tl.uint32) ^ 0x9E3779B9)
    a = _mix32(a ^ (seed >> 32).to(tl.uint32))
    a = _mix32(a ^ offset.to(tl.uint32))
    a = _mix32(a ^ (offset >> 32).to(tl.uint32))
    return a, _mix32(a ^ 0x85EBCA6B)


@triton.jit
def _gumbel(k0, k1, ids):
    h = _mix32(_mix32(ids.to(tl.uint32) + k0) ^ k1)
    u = (2 * (h >> 9) + 1).to(tl.float32) * 5.9604644775390625e-08
    return -tl.log(-tl.log(u))


@triton.jit
def _order_key(z):
    """int32 whose signed order is the float order of z."""
    b = z.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _key_value(o):
    b = tl.where(o >= 0, o, o ^ 0x7FFFFFFF)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _pack(z, ids):
    return (_order_key(z).to(tl.int64) << 32) | (0xFFFFFFFF - ids.to(tl.int64))


@triton.jit
def _unpack(key):
    z = _key_value((key >> 32).to(tl.int32))
    return z, (0xFFFFFFFF - (key & 0xFFFFFFFF)).to(tl.int32)


@triton.jit
def _row_plan(t, k, p, V, NUM_CAND: tl.constexpr, MAXC: tl.constexpr):
    """Per-row mode: (greedy, small_k, nucleus_only, slow_k, need_winner, k_track, t_eff)."""
    greedy = t <= 0
    sampling = t > 0
    limit_k = (k > 0) & (k < V)
    no_limit = (k <= 0) | (k >= V)
    small_k = sampling & limit_k & (k <= MAXC)
    slow_k = sampling & limit_k & (k > MAXC)
    nucleus_only = sampling & no_limit & (p < 1)
    need_winner = sampling & no_limit & (p >= 1)
    k_track = tl.maximum(tl.where(small_k, k, 0), NUM_CAND)
    k_track = tl.maximum(k_track, tl.where(nucleus_only, tl.minimum(V, MAXC), 0))
    t_eff = tl.where(greedy, 1.0, t)
    return greedy, small_k, nucleus_only, slow_k, need_winner, k_track, t_eff


@triton.jit
def _sample_tiles_kernel(
    hidden_ptr,
    lm_head_ptr,
    temp_ptr,
    top_k_ptr,
    top_p_ptr,
    pen_ptr,
    seen_ptr,
    seeds_ptr,
    offsets_ptr,
    tile_m_ptr,
    tile_s_ptr,
    tile_best_ptr,
    tile_best_z_ptr,
    tile_cand_ptr,
    full_z_ptr,
    B,
    H,
    V,
    n_tiles,
    words,
    HAS_SEEN: tl.constexpr,
    NUM_CAND: tl.constexpr,
    MAXC: tl.constexpr,
    KT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    tile = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tile * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < B
    col_ok = cols < V
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    acc = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        h_ok = hh < H
        x = tl.load(
            hidden_ptr + rows64[:, None] * H + hh[None, :],
            mask=row_ok[:, None] & h_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            lm_head_ptr + cols64[:, None] * H + hh[None, :],
            mask=col_ok[:, None] & h_ok[None, :],
            other=0.0,
        )
        if IEEE:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))

    t = tl.load(temp_ptr + rows, mask=row_ok, other=0.0)
    k = tl.load(top_k_ptr + rows, mask=row_ok, other=0)
    p = tl.load(top_p_ptr + rows, mask=row_ok, other=1.0)
    _, _, nucleus_only, slow_k, need_winner, k_track, t_eff = _row_plan(t, k, p, V, NUM_CAND, MAXC)
    if HAS_SEEN:
        words_v = tl.load(
            seen_ptr + rows64[:, None] * words + (cols64 >> 5)[None, :],
            mask=row_ok[:, None] & col_ok[None, :],
            other=0,
        )
        bit = (words_v >> (cols & 31)[None, :]) & 1
        pen = tl.load(pen_ptr + rows, mask=row_ok, other=0.0)
        acc = tl.where(bit != 0, acc - pen[:, None], acc)
    z = acc / t_eff[:, None]
    z = tl.where(col_ok[None, :], z, -float("inf"))

    m = tl.max(z, axis=1)
    s = tl.sum(tl.exp(z - m[:, None]), axis=1)
    out = rows64 * n_tiles + tile
    tl.store(tile_m_ptr + out, m, mask=row_ok)
    tl.store(tile_s_ptr + out, s, mask=row_ok)

    seed = tl.load(seeds_ptr + rows, mask=row_ok, other=0)
    offset = tl.load(offsets_ptr + rows, mask=row_ok, other=0)
    k0, k1 = _rng_keys(seed, offset)
    noise = _gumbel(k0[:, None], k1[:, None], cols[None, :])
    score = tl.where(need_winner[:, None], z + noise, z)
    best = tl.max(tl.where(col_ok[None, :], _pack(score, cols[None, :]), MIN_KEY), axis=1)
    best_z = tl.max(tl.where(_pack(score, cols[None, :]) == best[:, None], z, -float("inf")), 1)
    tl.store(tile_best_ptr + out, best, mask=row_ok)
    tl.store(tile_best_z_ptr + out, best_z, mask=row_ok)

    if tl.max(tl.where(row_ok, k_track, 0)) > 0:
        keys = tl.where(col_ok[None, :], _pack(z, cols[None, :]), MIN_KEY)
        keys = tl.sort(keys, dim=1, descending=True)
        j = tl.arange(0, BLOCK_V)
        keep = row_ok[:, None] & (j[None, :] < tl.minimum(k_track, KT)[:, None])
        tl.store(tile_cand_ptr + out[:, None] * KT + j[None, :], keys, mask=keep)

    slow = nucleus_only | slow_k
    tl.store(
        full_z_ptr + rows64[:, None] * V + cols64[None, :],
        z,
        mask=(row_ok & slow)[:, None] & col_ok[None, :],
    )


@triton.jit
def _sample_merge_kernel(
    temp_ptr,
    top_k_ptr,
    top_p_ptr,
    seeds_ptr,
    offsets_ptr,
    tile_m_ptr,
    tile_s_ptr,
    tile_best_ptr,
    tile_best_z_ptr,
    tile_cand_ptr,
    tokens_ptr,
    logprob_ptr,
    cand_ids_ptr,
    cand_lp_ptr,
    slow_ptr,
    lse_ptr,
    V,
    n_tiles,
    NUM_CAND: tl.constexpr,
    MAXC: tl.constexpr,
    KT: tl.constexpr,
    LIST: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(temp_ptr + row)
    k = tl.load(top_k_ptr + row)
    p = tl.load(top_p_ptr + row)
    greedy, small_k, nucleus_only, slow_k, need_winner, k_track, _ = _row_plan(
        t, k, p, V, NUM_CAND, MAXC
    )
    base = row * n_tiles
    # Log-sum-exp and the best key over the tiles.
    m = -float("inf")
    s = 0.0
    best = MIN_KEY
    best_z = -float("inf")
    for t0 in range(0, n_tiles, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        ok = tt < n_tiles
        tm = tl.load(tile_m_ptr + base + tt, mask=ok, other=-float("inf"))
        ts = tl.load(tile_s_ptr + base + tt, mask=ok, other=0.0)
        new_m = tl.maximum(m, tl.max(tm))
        s = s * tl.exp(m - new_m) + tl.sum(tl.where(ok, ts * tl.exp(tm - new_m), 0.0))
        m = new_m
        tb = tl.load(tile_best_ptr + base + tt, mask=ok, other=MIN_KEY)
        tbz = tl.load(tile_best_z_ptr + base + tt, mask=ok, other=-float("inf"))
        chunk_best = tl.max(tb)
        if chunk_best > best:
            best = chunk_best
            best_z = tl.max(tl.where(tb == chunk_best, tbz, -float("inf")))
    lse = m + tl.log(s)
    tl.store(lse_ptr + row, lse)

    # The best k_track candidates: a sorted list whose first MAXC entries are kept each step.
    j = tl.arange(0, LIST)
    cands = tl.full([LIST], MIN_KEY, dtype=tl.int64)
    kt = tl.minimum(k_track, KT)
    total = n_tiles * kt
    for i0 in range(0, total, LIST - MAXC):
        idx = i0 + j - MAXC
        ok = (j >= MAXC) & (idx < total)
        safe = tl.where(ok, idx, 0)
        addr = (base + safe // tl.maximum(kt, 1)) * KT + safe % tl.maximum(kt, 1)
        new = tl.load(tile_cand_ptr + addr, mask=ok, other=MIN_KEY)
        cands = tl.sort(tl.where(j < MAXC, cands, new), descending=True)
    cz, cid = _unpack(cands)
    if NUM_CAND > 0:
        tl.store(cand_ids_ptr + row * NUM_CAND + j, cid.to(tl.int64), mask=j < NUM_CAND)
        tl.store(cand_lp_ptr + row * NUM_CAND + j, cz - lse, mask=j < NUM_CAND)

    # Top-k / top-p on the sorted list; for nucleus-only rows it is the prefix of the vocabulary.
    n_list = tl.where(small_k, k, tl.minimum(V, MAXC))
    allowed = j < n_list
    lse_a = tl.where(small_k, 0.0, lse)
    if small_k:
        zmax = tl.max(tl.where(allowed, cz, -float("inf")))
        lse_a = zmax + tl.log(tl.sum(tl.where(allowed, tl.exp(cz - zmax), 0.0)))
    prob = tl.where(allowed, tl.exp(cz - lse_a), 0.0)
    before = tl.cumsum(prob, axis=0) - prob
    nucleus = allowed & (before < tl.where(p >= 1, 2.0, p))
    complete = small_k | (V <= MAXC) | (tl.sum(prob) >= p)
    slow = slow_k | (nucleus_only & (complete == 0))
    k0, k1 = _rng_keys(tl.load(seeds_ptr + row), tl.load(offsets_ptr + row))
    score = tl.where(nucleus, cz + _gumbel(k0, k1, cid), -float("inf"))
    pick = tl.argmax(score, axis=0)
    tok_z = tl.sum(tl.where(j == pick, cz, 0.0))
    tok = tl.sum(tl.where(j == pick, cid, 0))
    zmax_n = tl.max(tl.where(nucleus, cz, -float("inf")))
    lse_n = zmax_n + tl.log(tl.sum(tl.where(nucleus, tl.exp(cz - zmax_n), 0.0)))
    _, best_id = _unpack(best)
    if greedy | need_winner:
        tok = best_id
        tok_z = best_z
        lse_n = lse
    tl.store(tokens_ptr + row, tok.to(tl.int64), mask=slow == 0)
    tl.store(logprob_ptr + row, tok_z - lse_n, mask=slow == 0)
    tl.store(slow_ptr + row, slow.to(tl.int32))


@triton.jit
def _count_ge(z_ptr, V, thr, BLOCK: tl.constexpr):
    cnt = 0
    for v0 in range(0, V, BLOCK):
        vv = v0 + tl.arange(0, BLOCK)
        o = _order_key(tl.load(z_ptr + vv, mask=vv < V, other=-float("inf")))
        cnt += tl.sum(((o.to(tl.int64) >= thr) & (vv < V)).to(tl.int32))
    return cnt


@triton.jit
def _mass_above(z_ptr, V, thr, lse, BLOCK: tl.constexpr):
    """Sum of exp(z - lse) over the z whose order key is > thr."""
    mass = 0.0
    for v0 in range(0, V, BLOCK):
        vv = v0 + tl.arange(0, BLOCK)
        z = tl.load(z_ptr + vv, mask=vv < V, other=-float("inf"))
        above = (_order_key(z).to(tl.int64) > thr) & (vv < V)
        mass += tl.sum(tl.where(above, tl.exp(z - lse), 0.0))
    return mass


@triton.jit
def _sample_exact_kernel(
    full_z_ptr,
    top_k_ptr,
    top_p_ptr,
    seeds_ptr,
    offsets_ptr,
    slow_ptr,
    lse_ptr,
    tokens_ptr,
    logprob_ptr,
    V,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(slow_ptr + row) != 0:
        z_ptr = full_z_ptr + row * V
        k = tl.load(top_k_ptr + row)
        p = tl.load(top_p_ptr + row)
        k_allowed = tl.where((k > 0) & (k < V), k, V)
        lse = tl.load(lse_ptr + row)
        zmax = -float("inf")
        kmin = 2147483647
        kmax = -2147483648
        for v0 in range(0, V, BLOCK):
            vv = v0 + tl.arange(0, BLOCK)
            z = tl.load(z_ptr + vv, mask=vv < V, other=-float("inf"))
            o = _order_key(z)
            zmax = tl.maximum(zmax, tl.max(z))
            kmin = tl.minimum(kmin, tl.min(tl.where(vv < V, o, 2147483647)))
            kmax = tl.maximum(kmax, tl.max(tl.where(vv < V, o, -2147483648)))
        # theta: the k-th largest order key (the largest t with count(key >= t) >= k).
        lo = kmin.to(tl.int64)
        hi = kmax.to(tl.int64) + 1
        n_iter = tl.where(k_allowed < V, 33, 0)
        for _ in range(n_iter):
            mid = lo + (hi - lo) // 2
            if _count_ge(z_ptr, V, mid, BLOCK) >= k_allowed:
                lo = mid
            else:
                hi = mid
        theta = lo
        ties_k = k_allowed - _count_ge(z_ptr, V, theta + 1, BLOCK)
        z_theta = _key_value(theta.to(tl.int32))
        lse_a = lse
        if k_allowed < V:
            s_a = _mass_above(z_ptr, V, theta, zmax, BLOCK) + ties_k * tl.exp(z_theta - zmax)
            lse_a = zmax + tl.log(s_a)
        # z*: the largest t >= theta whose top-k mass at or above t reaches top_p.
        lo = theta
        hi = kmax.to(tl.int64) + 1
        n_iter = tl.where(p < 1, 33, 0)
        for _ in range(n_iter):
            mid = lo + (hi - lo) // 2
            mass = _mass_above(z_ptr, V, mid - 1, lse_a, BLOCK)
            if mid <= theta:
                mass = _mass_above(z_ptr, V, theta, lse_a, BLOCK) + ties_k * tl.exp(z_theta - lse_a)
            if mass >= p:
                lo = mid
            else:
                hi = mid
        zstar = lo
        z_star = _key_value(zstar.to(tl.int32))
        avail = ties_k
        if zstar != theta:
            avail = _count_ge(z_ptr, V, zstar, BLOCK) - _count_ge(z_ptr, V, zstar + 1, BLOCK)
        r = avail
        if p < 1:
            above = _mass_above(z_ptr, V, zstar, lse_a, BLOCK)
            need = tl.ceil((p - above) / tl.exp(z_star - lse_a)).to(tl.int32)
            r = tl.minimum(avail, tl.maximum(need, 1))
        # One pass: Gumbel-max and log-sum-exp over the nucleus (ties at z* by ascending id).
        k0, k1 = _rng_keys(tl.load(seeds_ptr + row), tl.load(offsets_ptr + row))
        best = -float("inf")
        best_id = 0
        best_z = 0.0
        m_n = -float("inf")
        s_n = 0.0
        seen_ties = 0
        for v0 in range(0, V, BLOCK):
            vv = v0 + tl.arange(0, BLOCK)
            ok = vv < V
            z = tl.load(z_ptr + vv, mask=ok, other=-float("inf"))
            o = _order_key(z).to(tl.int64)
            tie = (o == zstar) & ok
            rank = seen_ties + tl.cumsum(tie.to(tl.int32), axis=0) - tie.to(tl.int32)
            seen_ties += tl.sum(tie.to(tl.int32))
            member = ok & ((o > zstar) | (tie & (rank < r)))
            score = tl.where(member, z + _gumbel(k0, k1, vv), -float("inf"))
            i = tl.argmax(score, axis=0)
            chunk_best = tl.max(score)
            if chunk_best > best:
                best = chunk_best
                best_id = v0 + i
                best_z = tl.sum(tl.where(tl.arange(0, BLOCK) == i, z, 0.0))
            cm = tl.max(tl.where(member, z, -float("inf")))
            new_m = tl.maximum(m_n, cm)
            s_n = s_n * tl.exp(m_n - new_m) + tl.sum(tl.where(member, tl.exp(z - new_m), 0.0))
            m_n = new_m
        tl.store(tokens_ptr + row, best_id.to(tl.int64))
        tl.store(logprob_ptr + row, best_z - (m_n + tl.log(s_n)))


@register("pipo::sample_tokens_triton", mutates_args=())
def sample_tokens(
    hidden: torch.Tensor,
    lm_head: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    presence_penalty: torch.Tensor,
    seen: torch.Tensor | None,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    num_candidates: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_sample_args(
        hidden,
        lm_head,
        temperature,
        top_k,
        top_p,
        presence_penalty,
        seen,
        seeds,
        offsets,
        num_candidates,
    )
    # Plain tensors only: no value checks while tracing (fake or functional tensors).
    if type(temperature) is torch.Tensor and should_check_values(temperature):
        check_sample_values(temperature, top_k, top_p)
    outs = sample_outputs(hidden, num_candidates)
    tokens, logprob, cand_ids, cand_lp = outs
    batch, h = hidden.shape
    vocab = lm_head.shape[0]
    if batch == 0:
        return outs
    # Stage 2 keeps a running sorted list of `merge_list` keys: the best 64 plus merge_list - 64
    # new ones per step. The interpreter's tl.sort is slow, hence its smaller sizes.
    interp = triton_interpreting()
    block_v, block_b, block_h = (64, 16, 32) if interp else (128, 16, 64)
    merge_list = 128 if interp else 1024
    n_tiles = triton.cdiv(vocab, block_v)
    kt = min(MAX_CANDIDATES, block_v)
    dev = hidden.device
    f32 = dict(dtype=torch.float32, device=dev)
    tile_m = torch.empty(batch, n_tiles, **f32)
    tile_s = torch.empty(batch, n_tiles, **f32)
    tile_best = torch.empty(batch, n_tiles, dtype=torch.int64, device=dev)
    tile_best_z = torch.empty(batch, n_tiles, **f32)
    tile_cand = torch.empty(batch, n_tiles, kt, dtype=torch.int64, device=dev)
    # Written only for rows on the exact slow path (top_k > 64, or top_k = 0 with top_p < 1).
    full_z = torch.empty(batch, vocab, **f32)
    slow = torch.empty(batch, dtype=torch.int32, device=dev)
    lse = torch.empty(batch, **f32)
    words = (vocab + 31) // 32
    wrap_triton(_sample_tiles_kernel)[(n_tiles, triton.cdiv(batch, block_b))](
        hidden,
        lm_head,
        temperature,
        top_k,
        top_p,
        presence_penalty,
        seen if seen is not None else seeds,
        seeds,
        offsets,
        tile_m,
        tile_s,
        tile_best,
        tile_best_z,
        tile_cand,
        full_z,
        batch,
        h,
        vocab,
        n_tiles,
        words,
        HAS_SEEN=seen is not None,
        NUM_CAND=num_candidates,
        MAXC=MAX_CANDIDATES,
        KT=kt,
        IEEE=dot_in_float32(hidden.dtype),
        BLOCK_B=block_b,
        BLOCK_V=block_v,
        BLOCK_H=block_h,
    )
    wrap_triton(_sample_merge_kernel)[(batch,)](
        temperature,
        top_k,
        top_p,
        seeds,
        offsets,
        tile_m,
        tile_s,
        tile_best,
        tile_best_z,
        tile_cand,
        tokens,
        logprob,
        cand_ids,
        cand_lp,
        slow,
        lse,
        vocab,
        n_tiles,
        NUM_CAND=num_candidates,
        MAXC=MAX_CANDIDATES,
        KT=kt,
        LIST=merge_list,
        BLOCK_T=256,
    )
    wrap_triton(_sample_exact_kernel)[(batch,)](
        full_z, top_k, top_p, seeds, offsets, slow, lse, tokens, logprob, vocab, BLOCK=1024
    )
    return outs


if triton_interpreting():
    sample_tokens.register_fake(_sample_tokens_fake)

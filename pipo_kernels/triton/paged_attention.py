"""Triton kernels of pipo::paged_attention: flash attention over the paged cache, two kernels.

Both run one program per (query tile, kv head, KV split). A tile holds BLOCK_M query rows of one
sequence, a row being a (query, head of the kv head's GQA group) pair, so every K/V tile gathered
through the block table serves the whole group; QK^T and PV are tl.dot products (tensor cores on a
GPU) with float32 accumulation and an online softmax. The grid comes from shapes only (an upper
bound on the number of tiles, ceil(Nq * group / BLOCK_M) + B); each program finds its sequence
from q_indptr and exits when it has none. With several splits, each writes a float32 partial
output and its log-sum-exp, and a third kernel merges them.

- ``split`` (_paged_attention_kernel, decode shapes): tiles of 16-64 rows, KV tiles of 32, the
  mask evaluated on every KV tile, KV splits whenever the grid is under two programs per SM.
- ``tc`` (_paged_prefill_kernel, prefill and tree shapes): tiles of up to 128 rows and KV tiles
  of 64 on a GPU; the KV tiles every row of the tile fully sees (the cached prefix, and for causal
  tiles the keys up to the tile's first query) run without any mask, only the last few (the
  diagonal, or the tree's columns) evaluate it; causal tiles stop at the tile's last query; the
  heaviest tiles of a sequence (its last queries) are launched first; one block-table lookup per
  KV tile when pages hold whole KV tiles; KV splits only when the grid is under one program per SM.

Which kernel runs is ``kernel`` ("auto": tc when a tree_mask is given or Nq > B, else split).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import should_check_values
from ..attention import _paged_attention_fake, check_args, check_values, outputs_like
from ._common import dot_in_float32

LN2 = math.log(2.0)


@triton.jit
def _clamp(x, lo, hi):
    return tl.minimum(tl.maximum(x, lo), hi)


@triton.jit
def _paged_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    kv_lens_ptr,
    indptr_ptr,
    mask_ptr,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    q_stride_tok,
    q_stride_head,
    bt_stride,
    mask_cols,
    num_tokens,
    num_pages,
    num_splits,
    batch,
    scale_log2,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    SPLIT: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # Float arguments arrive as float64 when inductor launches the kernel: pin them to float32.
    scale_log2 = tl.cast(scale_log2, tl.float32)
    tile = tl.program_id(0)
    hkv = tl.program_id(1)
    split = tl.program_id(2)

    # Which sequence owns this tile: sequences' tile counts, prefix-summed.
    # q_indptr is not checked on the fast path (no sync): each sequence's query range is clamped
    # into [0, num_tokens], as in the verify kernels, so a bad entry is never followed.
    bs = tl.arange(0, BLOCK_B)
    in_batch = bs < batch
    starts = _clamp(tl.load(indptr_ptr + bs, mask=in_batch, other=0), 0, num_tokens)
    ends = _clamp(tl.load(indptr_ptr + bs + 1, mask=in_batch, other=0), starts, num_tokens)
    tiles = ((ends - starts) * GROUP + BLOCK_M - 1) // BLOCK_M
    done = tl.cumsum(tiles, 0)
    b = tl.sum((done <= tile).to(tl.int32), 0)
    if b >= batch:
        return
    t_in = tile - tl.sum(tl.where(bs < b, tiles, 0), 0)

    q_start = tl.sum(tl.where(bs == b, starts, 0), 0)
    q_len = tl.sum(tl.where(bs == b, ends, 0), 0) - q_start
    kv_len = _clamp(tl.load(kv_lens_ptr + b), 0, bt_stride * PAGE_SIZE)
    prefix = kv_len - q_len
    n_rows = q_len * GROUP

    rows = t_in * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // GROUP
    head = hkv * GROUP + rows % GROUP
    token = q_start + qi
    row_ok = (rows < n_rows) & (token < num_tokens)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_off = token.to(tl.int64) * q_stride_tok + head * q_stride_head
    q = tl.load(
        q_ptr + q_off[:, None] + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
    )
    if UPCAST:
        q = q.to(tl.float32)

    # Positions this program reads: the tile's visible range, cut to this split's share.
    last_qi = (tl.minimum(t_in * BLOCK_M + BLOCK_M, n_rows) - 1) // GROUP
    hi = kv_len if HAS_MASK else prefix + last_qi + 1
    hi = tl.minimum(hi, bt_stride * PAGE_SIZE)
    chunk = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
    chunk = tl.maximum(chunk, BLOCK_N)
    lo = split * chunk
    hi = tl.minimum(hi, lo + chunk)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    row_stride = NUM_KV_HEADS * HEAD_DIM
    for start in range(lo, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        pos_ok = pos < hi
        page = tl.load(bt_ptr + b * bt_stride + pos // PAGE_SIZE, mask=pos_ok, other=-1)
        # Pages out of range are never followed: their positions count as masked.
        page_ok = pos_ok & (page >= 0) & (page < num_pages)
        kv_off = (page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE) * row_stride + hkv * HEAD_DIM
        kv_mask = page_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        key = pos - prefix
        if HAS_MASK:
            m_ok = row_ok[:, None] & ((key >= 0) & (key < mask_cols) & pos_ok)[None, :]
            m_off = token.to(tl.int64)[:, None] * mask_cols + key[None, :]
            seen_q = tl.load(mask_ptr + m_off, mask=m_ok, other=0) != 0
        else:
            seen_q = key[None, :] <= qi[:, None]
        seen = page_ok[None, :] & ((key < 0)[None, :] | seen_q)
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    _store_rows(
        acc, m_i, l_i, token, head, row_ok, split, num_tokens, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, offs_d, d_ok, NUM_Q_HEADS, HEAD_DIM, SPLIT, WRITE_LSE,
    )  # fmt: skip


@triton.jit
def _store_rows(
    acc,
    m_i,
    l_i,
    token,
    head,
    row_ok,
    split,
    num_tokens,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    offs_d,
    d_ok,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLIT: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    """Normalises a tile's rows and writes them (with SPLIT: as float32 partials of the split)."""
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(
        empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453
    )
    idx = token.to(tl.int64) * NUM_Q_HEADS + head
    o_mask = row_ok[:, None] & d_ok[None, :]
    if SPLIT:
        part = split.to(tl.int64) * num_tokens * NUM_Q_HEADS + idx
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], o, mask=o_mask)
        tl.store(part_lse_ptr + part, lse, mask=row_ok)
    else:
        out = o.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :], out, mask=o_mask)
        if WRITE_LSE:
            tl.store(lse_ptr + idx, lse, mask=row_ok)


@triton.jit
def _attend_tile(
    acc,
    m_i,
    l_i,
    q,
    start,
    hi,
    prefix,
    qi,
    token,
    row_ok,
    b,
    hkv,
    k_ptr,
    v_ptr,
    bt_ptr,
    mask_ptr,
    bt_stride,
    mask_cols,
    num_pages,
    scale_log2,
    offs_d,
    d_ok,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One KV tile [start, start + BLOCK_N) of the online softmax. MASKED False: every row sees
    every position of the tile (only a page outside the cache is masked)."""
    pos = start + tl.arange(0, BLOCK_N)
    if PAGE_SIZE % BLOCK_N == 0:
        # The tile lies inside one page (start is a multiple of BLOCK_N): one table lookup.
        page = tl.load(bt_ptr + b * bt_stride + start // PAGE_SIZE)
        page_ok = (page >= 0) & (page < num_pages) & (pos < hi)
        slot = page.to(tl.int64) * PAGE_SIZE + start % PAGE_SIZE + tl.arange(0, BLOCK_N)
    else:
        pos_ok = pos < hi
        page = tl.load(bt_ptr + b * bt_stride + pos // PAGE_SIZE, mask=pos_ok, other=-1)
        page_ok = pos_ok & (page >= 0) & (page < num_pages)
        slot = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
    # Positions on pages outside the cache are never followed: they count as masked.
    kv_off = slot * (NUM_KV_HEADS * HEAD_DIM) + hkv * HEAD_DIM
    kv_mask = page_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        key = pos - prefix
        if HAS_MASK:
            m_ok = row_ok[:, None] & ((key >= 0) & (key < mask_cols) & (pos < hi))[None, :]
            m_off = token.to(tl.int64)[:, None] * mask_cols + key[None, :]
            seen_q = tl.load(mask_ptr + m_off, mask=m_ok, other=0) != 0
        else:
            seen_q = key[None, :] <= qi[:, None]
        seen = page_ok[None, :] & ((key < 0)[None, :] | seen_q)
    else:
        seen = page_ok[None, :]
    s = tl.where(seen, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptr + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        v = v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _paged_prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    kv_lens_ptr,
    indptr_ptr,
    mask_ptr,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    q_stride_tok,
    q_stride_head,
    bt_stride,
    mask_cols,
    num_tokens,
    num_pages,
    num_splits,
    batch,
    scale_log2,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    SPLIT: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    scale_log2 = tl.cast(scale_log2, tl.float32)  # float64 when inductor launches the kernel
    tile = tl.program_id(0)
    hkv = tl.program_id(1)
    split = tl.program_id(2)

    # The owning sequence, as in _paged_attention_kernel (q_indptr clamped, never followed).
    bs = tl.arange(0, BLOCK_B)
    in_batch = bs < batch
    starts = _clamp(tl.load(indptr_ptr + bs, mask=in_batch, other=0), 0, num_tokens)
    ends = _clamp(tl.load(indptr_ptr + bs + 1, mask=in_batch, other=0), starts, num_tokens)
    tiles = ((ends - starts) * GROUP + BLOCK_M - 1) // BLOCK_M
    done = tl.cumsum(tiles, 0)
    b = tl.sum((done <= tile).to(tl.int32), 0)
    if b >= batch:
        return
    # Within a sequence, the last queries (the most keys under a causal mask) go first.
    t_in = tl.sum(tl.where(bs == b, done, 0), 0) - 1 - tile

    q_start = tl.sum(tl.where(bs == b, starts, 0), 0)
    q_len = tl.sum(tl.where(bs == b, ends, 0), 0) - q_start
    kv_len = _clamp(tl.load(kv_lens_ptr + b), 0, bt_stride * PAGE_SIZE)
    prefix = kv_len - q_len
    n_rows = q_len * GROUP

    rows = t_in * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // GROUP
    head = hkv * GROUP + rows % GROUP
    token = q_start + qi
    row_ok = (rows < n_rows) & (token < num_tokens)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_off = token.to(tl.int64) * q_stride_tok + head * q_stride_head
    q = tl.load(
        q_ptr + q_off[:, None] + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
    )
    if UPCAST:
        q = q.to(tl.float32)

    # [lo, hi): the positions the tile sees, cut to this split's share; [lo, mid): the whole
    # KV tiles every row of the tile sees (the prefix; causal: also the keys up to its first query).
    first_qi = (t_in * BLOCK_M) // GROUP
    last_qi = (tl.minimum(t_in * BLOCK_M + BLOCK_M, n_rows) - 1) // GROUP
    hi = kv_len if HAS_MASK else prefix + last_qi + 1
    full = prefix if HAS_MASK else prefix + first_qi + 1
    chunk = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
    chunk = tl.maximum(chunk, BLOCK_N)
    lo = split * chunk
    hi = tl.minimum(hi, lo + chunk)
    mid = lo + tl.maximum(tl.minimum(full, hi) - lo, 0) // BLOCK_N * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, mid, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, start, hi, prefix, qi, token, row_ok, b, hkv, k_ptr, v_ptr,
            bt_ptr, mask_ptr, bt_stride, mask_cols, num_pages, scale_log2, offs_d, d_ok,
            NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE, BLOCK_N, HAS_MASK, False, PRECISION, UPCAST,
        )  # fmt: skip
    for start in range(mid, hi, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, start, hi, prefix, qi, token, row_ok, b, hkv, k_ptr, v_ptr,
            bt_ptr, mask_ptr, bt_stride, mask_cols, num_pages, scale_log2, offs_d, d_ok,
            NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE, BLOCK_N, HAS_MASK, True, PRECISION, UPCAST,
        )  # fmt: skip
    _store_rows(
        acc, m_i, l_i, token, head, row_ok, split, num_tokens, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, offs_d, d_ok, NUM_Q_HEADS, HEAD_DIM, SPLIT, WRITE_LSE,
    )  # fmt: skip


@triton.jit
def _paged_attention_merge_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    lse_ptr,
    rows,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    lse = tl.load(part_lse_ptr + s * rows + row, mask=s_ok, other=float("-inf"))
    mx = tl.max(lse, 0)
    w = tl.where(
        s_ok & (lse > float("-inf")), tl.exp(lse - tl.where(mx == float("-inf"), 0.0, mx)), 0.0
    )
    total = tl.sum(w, 0)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    parts = tl.load(
        part_out_ptr + (s[:, None] * rows + row) * HEAD_DIM + d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    o = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + row * HEAD_DIM + d, o.to(out_ptr.dtype.element_ty), mask=d_ok)
    if WRITE_LSE:
        tl.store(
            lse_ptr + row,
            tl.where(total > 0, mx + tl.log(tl.where(total > 0, total, 1.0)), float("-inf")),
        )


def _auto_splits(q: torch.Tensor, programs: int, capacity: int, min_per_sm: int) -> int:
    """KV splits for about two programs per SM when the grid has fewer than min_per_sm programs
    per SM, at least 256 positions of the block table's capacity per split, at most 64. From
    shapes only (no kv_lens values)."""
    if q.device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    if programs >= min_per_sm * sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, max(programs, 1)), triton.cdiv(capacity, 256), 64))


KERNELS = ("auto", "split", "tc")


def choose_kernel(kernel: str, n_tokens: int, batch: int, has_mask: bool) -> str:
    """ "split" or "tc" for `kernel` ("auto": tc for tree and prefill shapes, split for decode)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    return "tc" if has_mask or n_tokens > batch else "split"


def tile_config(kernel: str, q: torch.Tensor, rows_per_seq: int) -> tuple[int, int, dict]:
    """(BLOCK_M, BLOCK_N, launch options) of a kernel for q's device and head_dim. The split
    kernel keeps Triton's default warps and stages. The GPU sizes of the tc kernel are the usual
    flash-attention ones, untested on a GPU; under the interpreter it uses small tiles (the
    interpreter runs a tile as numpy arrays)."""
    fit_m = max(16, min(64, triton.next_power_of_2(max(rows_per_seq, 1))))
    if kernel == "split":
        return fit_m, 32, {}
    if q.device.type != "cuda":
        return fit_m, 32, {"num_warps": 4}
    if q.shape[2] > 128:  # K and V tiles of 256 columns: smaller tiles to fit shared memory
        return fit_m, 32, {"num_warps": 4, "num_stages": 2}
    block_m = max(16, min(128, triton.next_power_of_2(max(rows_per_seq, 1))))
    return block_m, 64, {"num_warps": 8 if block_m == 128 else 4, "num_stages": 2}


@triton_op("pipo::paged_attention_triton", mutates_args=())
def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    kv_lens: torch.Tensor,
    q_indptr: torch.Tensor,
    tree_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    return_lse: bool = False,
    num_splits: int = 0,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    check_args(q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask, num_splits)
    n_tokens, n_heads, head_dim = q.shape
    batch, max_pages = block_table.shape
    kernel = choose_kernel(kernel, n_tokens, batch, tree_mask is not None)
    if should_check_values(block_table):
        check_values(q, k_cache, block_table, kv_lens, q_indptr, tree_mask)
    out, lse = outputs_like(q, return_lse)
    num_pages, page_size, n_kv_heads, _ = k_cache.shape
    if n_tokens == 0 or batch == 0:
        return out, lse
    group = n_heads // n_kv_heads
    rows_per_seq = triton.cdiv(n_tokens * group, batch)
    block_m, block_n, launch = tile_config(kernel, q, rows_per_seq)
    block_d = max(16, triton.next_power_of_2(head_dim))
    n_tiles = triton.cdiv(n_tokens * group, block_m) + batch
    min_per_sm = 2 if kernel == "split" else 1
    splits = num_splits or _auto_splits(q, n_tiles * n_kv_heads, max_pages * page_size, min_per_sm)
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    # Triton's interpreter computes bfloat16 tl.dot wrongly: multiply in float32 there (the tc
    # kernel does so for float16 too, as the other ops' kernels, see _common.dot_in_float32).
    if kernel == "split":
        upcast = q.device.type == "cpu" and q.dtype == torch.bfloat16
    else:
        upcast = q.dtype != torch.float32 and dot_in_float32(q.dtype)
    if splits > 1:
        part_out = q.new_empty(splits, n_tokens, n_heads, head_dim, dtype=torch.float32)
        part_lse = q.new_empty(splits, n_tokens, n_heads, dtype=torch.float32)
    else:
        part_out = part_lse = out
    body = _paged_attention_kernel if kernel == "split" else _paged_prefill_kernel
    wrap_triton(body)[(n_tiles, n_kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        block_table,
        kv_lens,
        q_indptr,
        q if tree_mask is None else tree_mask,
        out,
        lse if return_lse else out,
        part_out,
        part_lse,
        q.stride(0),
        q.stride(1),
        max_pages,
        0 if tree_mask is None else tree_mask.shape[1],
        n_tokens,
        num_pages,
        splits,
        batch,
        scale / LN2,
        NUM_Q_HEADS=n_heads,
        NUM_KV_HEADS=n_kv_heads,
        GROUP=group,
        HEAD_DIM=head_dim,
        PAGE_SIZE=page_size,
        BLOCK_B=triton.next_power_of_2(batch + 1),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        HAS_MASK=tree_mask is not None,
        SPLIT=splits > 1,
        WRITE_LSE=return_lse,
        PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32",
        UPCAST=upcast,
        **launch,
    )
    if splits > 1:
        wrap_triton(_paged_attention_merge_kernel)[(n_tokens * n_heads,)](
            part_out,
            part_lse,
            out,
            lse if return_lse else out,
            n_tokens * n_heads,
            splits,
            HEAD_DIM=head_dim,
            BLOCK_S=triton.next_power_of_2(splits),
            BLOCK_D=block_d,
            WRITE_LSE=return_lse,
        )
    return out, lse


# Shape-only fake: without it, tracing with TRITON_INTERPRET=1 would run the interpreter on fake tensors.
@paged_attention.register_fake
def _fake(
    q,
    k_cache,
    v_cache,
    block_table,
    kv_lens,
    q_indptr,
    tree_mask=None,
    sm_scale=None,
    return_lse=False,
    num_splits=0,
    kernel="auto",
):
    choose_kernel(kernel, q.shape[0], block_table.shape[0], tree_mask is not None)
    args = (q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask)
    return _paged_attention_fake(*args, sm_scale, return_lse, num_splits)

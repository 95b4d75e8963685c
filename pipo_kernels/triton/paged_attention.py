"""Triton kernels of pipo::paged_attention: split-KV flash attention over the paged cache.

One program per (query tile, kv head, KV split). A tile holds BLOCK_M query rows of one sequence,
a row being a (query, head of the kv head's GQA group) pair, so every K/V tile gathered through the
block table serves the whole group. The grid comes from shapes only (an upper bound on the number
of tiles, ceil(Nq * group / BLOCK_M) + B); each program finds its sequence from q_indptr and
exits when it has none. With several splits, each writes a float32 partial output and its
log-sum-exp, and a second kernel merges them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import should_check_values
from ..attention import _paged_attention_fake, check_args, check_values, outputs_like

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


def _auto_splits(q: torch.Tensor, programs: int, capacity: int) -> int:
    """Enough KV splits for about two programs per SM, from shapes only (no kv_lens values)."""
    if q.device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, max(programs, 1)), triton.cdiv(capacity, 256), 64))


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
) -> tuple[torch.Tensor, torch.Tensor]:
    check_args(q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask, num_splits)
    if should_check_values(block_table):
        check_values(q, k_cache, block_table, kv_lens, q_indptr, tree_mask)
    out, lse = outputs_like(q, return_lse)
    n_tokens, n_heads, head_dim = q.shape
    batch, max_pages = block_table.shape
    num_pages, page_size, n_kv_heads, _ = k_cache.shape
    if n_tokens == 0 or batch == 0:
        return out, lse
    group = n_heads // n_kv_heads
    rows_per_seq = triton.cdiv(n_tokens * group, batch)
    block_m = max(16, min(64, triton.next_power_of_2(rows_per_seq)))
    block_n = 32
    block_d = max(16, triton.next_power_of_2(head_dim))
    n_tiles = triton.cdiv(n_tokens * group, block_m) + batch
    splits = num_splits or _auto_splits(q, n_tiles * n_kv_heads, max_pages * page_size)
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    # Triton's interpreter computes bfloat16 tl.dot wrongly: multiply in float32 there.
    interpret_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
    if splits > 1:
        part_out = q.new_empty(splits, n_tokens, n_heads, head_dim, dtype=torch.float32)
        part_lse = q.new_empty(splits, n_tokens, n_heads, dtype=torch.float32)
    else:
        part_out = part_lse = out
    wrap_triton(_paged_attention_kernel)[(n_tiles, n_kv_heads, splits)](
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
        PRECISION="ieee" if q.dtype == torch.float32 or interpret_bf16 else "tf32",
        UPCAST=interpret_bf16,
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
paged_attention.register_fake(_paged_attention_fake)

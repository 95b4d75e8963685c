"""Fused per-layer ops (docs/ops.md §5): residual add + RMSNorm, and q/k-norm + RoPE + KV-cache
append. Public wrappers, argument checks and fake kernels.

Both replace chains of small eager ops the decoder layer runs once per layer and step (the
residual add and the norm's pow / mean / rsqrt / mul; the two head norms, the two rotary
embeddings and the cache append), so a decode step launches far fewer kernels.
"""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import (
    check_contiguous,
    check_dim,
    check_dtype,
    check_float,
    check_index,
    check_like,
    check_size,
    fail,
    should_check_values,
)
from .kv_cache import _check_caches as check_caches
from .kv_cache import check_slot_values, num_slots

__all__ = ["fused_add_rmsnorm", "qk_norm_rope_append"]


def _same_storage_start(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b start at the same address (an aliasing mistake). Fake and functional
    tensors carry no addresses, so tracing skips it; the C++ entry points check it at run time."""
    if torch.compiler.is_compiling() or type(a) is not torch.Tensor or not a.numel():
        return False
    return a.data_ptr() == b.data_ptr()


def check_add_rmsnorm_args(x, residual, weight) -> None:
    """Shape / dtype / device checks of fused_add_rmsnorm."""
    check_dim(x, 2, "x")
    check_float(x, "x")
    check_contiguous(x, "x")
    if residual.shape != x.shape:
        fail("residual", f"the shape of x {tuple(x.shape)}", tuple(residual.shape))
    check_like(residual, x, "residual", "x")
    check_contiguous(residual, "residual")
    if _same_storage_start(residual, x):
        raise ValueError("residual: must not share memory with x")
    check_dim(weight, 1, "weight")
    check_size(weight, 0, x.shape[1], "weight", "hidden size of x")
    check_like(weight, x, "weight", "x")
    check_contiguous(weight, "weight")


def _check_head_block(t: torch.Tensor, heads: int, head_dim: int, name: str) -> None:
    """t [N, heads, head_dim]: token rows may be strided, each token's block contiguous."""
    check_dim(t, 3, name)
    check_size(t, 1, heads, name, "num_heads")
    check_size(t, 2, head_dim, name, "head_dim of the cache")
    if t.shape[0] > 1 and t.stride(0) < heads * head_dim:
        fail(name, "non-overlapping token rows", f"stride(0) = {t.stride(0)}")
    if t.stride(2) != 1 or (heads > 1 and t.stride(1) != head_dim):
        fail(name, "each token's [num_heads, head_dim] block contiguous", f"strides {t.stride()}")


def check_qk_rope_args(
    q, k, v, q_norm_weight, k_norm_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping
) -> None:
    """Shape / dtype / device checks of qk_norm_rope_append (no index values)."""
    check_caches(k_cache, v_cache)
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    check_dim(q, 3, "q")
    for t, name, heads in ((q, "q", q.shape[1]), (k, "k", kv_heads), (v, "v", kv_heads)):
        _check_head_block(t, heads, head_dim, name)
        check_like(t, k_cache, name, "k_cache")
        if name != "k":
            check_size(t, 0, k.shape[0], name, "num_tokens of k")
    if _same_storage_start(q, k) or _same_storage_start(q, v):
        raise ValueError("q: must not share memory with k or v (q is written in place)")
    check_index(slot_mapping, 1, torch.int64, "slot_mapping")
    if slot_mapping.device != k_cache.device:
        fail("slot_mapping", f"the device of k_cache ({k_cache.device})", slot_mapping.device)
    check_size(slot_mapping, 0, k.shape[0], "slot_mapping", "num_tokens of k")
    for w, name in ((q_norm_weight, "q_norm_weight"), (k_norm_weight, "k_norm_weight")):
        if w is not None:
            check_dim(w, 1, name)
            check_size(w, 0, head_dim, name, "head_dim")
            check_like(w, k_cache, name, "k_cache")
            check_contiguous(w, name)
    check_dim(cos_sin_cache, 2, "cos_sin_cache")
    check_dtype(cos_sin_cache, torch.float32, "cos_sin_cache")
    check_contiguous(cos_sin_cache, "cos_sin_cache")
    if cos_sin_cache.device != k_cache.device:
        fail("cos_sin_cache", f"the device of k_cache ({k_cache.device})", cos_sin_cache.device)
    rot = cos_sin_cache.shape[1]
    if rot % 2 or not 2 <= rot <= head_dim:
        fail("cos_sin_cache", f"an even rot_dim from 2 to head_dim ({head_dim}) in dim 1", rot)
    check_index(positions, 1, torch.int64, "positions")
    if positions.device != k_cache.device:
        fail("positions", f"the device of k_cache ({k_cache.device})", positions.device)
    check_size(positions, 0, k.shape[0], "positions", "num_tokens of k")


def check_position_values(positions: torch.Tensor, max_pos: int) -> None:
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= max_pos):
        bad = int(positions.min()) if int(positions.min()) < 0 else int(positions.max())
        raise ValueError(
            f"positions: position {bad} is out of range for a cos_sin_cache of {max_pos} rows"
        )


def check_qk_rope_values(positions, cos_sin_cache, slot_mapping, k_cache) -> None:
    check_position_values(positions, cos_sin_cache.shape[0])
    check_slot_values(slot_mapping, num_slots(k_cache), "slot_mapping")


def _fused_add_rmsnorm_fake(x, residual, weight, eps) -> None:
    check_add_rmsnorm_args(x, residual, weight)


def _qk_norm_rope_append_fake(
    q,
    k,
    v,
    q_norm_weight,
    k_norm_weight,
    cos_sin_cache,
    positions,
    k_cache,
    v_cache,
    slot_mapping,
    eps,
) -> None:
    check_qk_rope_args(
        q,
        k,
        v,
        q_norm_weight,
        k_norm_weight,
        cos_sin_cache,
        positions,
        k_cache,
        v_cache,
        slot_mapping,
    )


if _backend.has_op("fused_add_rmsnorm"):  # the C++ ops exist only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::fused_add_rmsnorm")(_fused_add_rmsnorm_fake)
    torch.library.register_fake("pipo::qk_norm_rope_append")(_qk_norm_rope_append_fake)


def fused_add_rmsnorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    backend: str | None = None,
) -> None:
    """Residual add and RMSNorm in one pass, in place: ``residual += x``, then
    ``x = rmsnorm(residual) * weight`` (FlashInfer's / vLLM's fused_add_rmsnorm).

    Rounding follows the model's plain PyTorch: the sum is stored in the dtype and the norm reads
    the stored value; the normalised row is rounded to the dtype before the weight multiplies it.
    Accumulation is float32.

    Args:
        x: [N, H] float32 / float16 / bfloat16, contiguous: the branch output on entry, the
            normalised next-layer input on return.
        residual: [N, H], x's dtype, contiguous, distinct from x: the residual stream, updated.
            A decoder starts it at zero, so the first call adds the embeddings in exactly.
        weight: [H], x's dtype: the norm's weight.
        eps: added to the mean square.
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Example::

        residual = torch.zeros_like(h)           # h: [N, H] embeddings
        pipo_kernels.fused_add_rmsnorm(h, residual, w_in, 1e-6)   # residual = h, h = norm(h)
        a = attention(h)
        pipo_kernels.fused_add_rmsnorm(a, residual, w_post, 1e-6)  # residual += a, a = norm
    """
    impl = _backend.resolve("fused_add_rmsnorm", x.device, backend)
    if impl == "torch":
        check_add_rmsnorm_args(x, residual, weight)
        reference.fused_add_rmsnorm(x, residual, weight, float(eps))
    elif impl == "triton":
        torch.ops.pipo.fused_add_rmsnorm_triton(x, residual, weight, float(eps))
    else:
        torch.ops.pipo.fused_add_rmsnorm(x, residual, weight, float(eps))


def qk_norm_rope_append(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    eps: float,
    *,
    backend: str | None = None,
) -> None:
    """Per-head RMSNorm of q and k, rotary embedding, and the K/V append, in one pass.

    For every token n and head: ``y = rmsnorm(x) * w`` (skipped when the weight is None, e.g.
    Llama), then rotate-half RoPE on the first rot_dim channels with
    ``cos, sin = cos_sin_cache[positions[n]]`` (channels past rot_dim pass through). q is
    overwritten with the result; the rotated k and the unchanged v are written to cache slot
    ``slot_mapping[n]`` (negative: no cache write; q is still rotated). k and v are not modified.
    Each step rounds to the dtype as the model's plain PyTorch does.

    Args:
        q: [N, Hq, D], the cache's dtype; modified in place.
        k, v: [N, Hkv, D], the cache's dtype. Token rows of q, k, v may be strided (views into a
            fused QKV output); each token's [heads, D] block must be contiguous.
        q_norm_weight, k_norm_weight: [D], the cache's dtype, or None (no head norm).
        cos_sin_cache: [max_pos, rot_dim] float32, contiguous: row p holds cos(p * inv_freq) in
            its first rot_dim / 2 columns and sin(p * inv_freq) in the rest (any scaling of
            inv_freq, e.g. Llama-3's, is baked into the table). rot_dim even, at most D.
        positions: [N] int64, contiguous, each in [0, max_pos).
        k_cache, v_cache: [num_pages, page_size, Hkv, D], contiguous; modified.
        slot_mapping: [N] int64, contiguous; negative = skip the cache write.
        eps: the head norms' epsilon.
        backend: "cuda" | "triton" | "cpu" | "torch", or None for the fastest available one.

    Out-of-range positions or slots raise on CPU; on a GPU such a token is skipped without a sync
    (q left as it was, nothing written), and ``PIPO_VALIDATE=1`` turns the check on.

    Example::

        inv_freq = 1.0 / 1e6 ** (torch.arange(0, 128, 2).float() / 128)
        freqs = torch.arange(4096).float()[:, None] * inv_freq          # [4096, 64]
        cos_sin = torch.cat([freqs.cos(), freqs.sin()], 1).cuda()        # [4096, 128]
        q, k, v = qkv.view(n, 32 + 8 + 8, 128).split([32, 8, 8], dim=1)  # strided views
        pipo_kernels.qk_norm_rope_append(
            q, k, v, wq, wk, cos_sin, positions, k_cache, v_cache, slots, 1e-6
        )
    """
    impl = _backend.resolve("qk_norm_rope_append", k_cache.device, backend)
    args = (q, k, v, q_norm_weight, k_norm_weight, cos_sin_cache, positions)
    args += (k_cache, v_cache, slot_mapping)
    if impl == "torch":
        check_qk_rope_args(*args)
        if should_check_values(positions, sync_ok=True):  # its indexing would follow a bad index
            check_qk_rope_values(positions, cos_sin_cache, slot_mapping, k_cache)
        reference.qk_norm_rope_append(*args, float(eps))
    elif impl == "triton":
        torch.ops.pipo.qk_norm_rope_append_triton(*args, float(eps))
    else:
        torch.ops.pipo.qk_norm_rope_append(*args, float(eps))

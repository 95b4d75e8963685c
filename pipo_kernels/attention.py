"""Paged attention for chunked prefill, decode and draft-tree verification (docs/ops.md §4):
public wrapper, argument checks, the fake kernel and the path chooser."""

from __future__ import annotations

import os
from functools import cache

import torch

from . import _backend, reference
from ._checks import (
    check_contiguous,
    check_dim,
    check_dtype,
    check_float,
    check_like,
    check_size,
    fail,
    should_check_values,
)

__all__ = ["PATH_TABLE", "choose_path", "paged_attention", "shape_class"]

# --- path chooser -------------------------------------------------------------------------------
# A call's shape class, from shapes only (no sync, so graphs and torch.compile keep working):
# "tree" when a tree_mask is given, "decode" when Nq <= B (one query per sequence on average),
# "prefill" otherwise. Every kernel computes every class correctly; the class only picks the
# faster one.
SHAPE_CLASSES = ("decode", "prefill", "tree")

# The backend that serves a shape class on a device when the call names none (backend=None):
# (device type, class) -> backend. Absent entries, or a backend this install lacks, fall back to
# the op-wide order of _backend.PREFERENCE. Inside a backend the kernel follows the class as well
# (Triton: "tc" for prefill / tree, "split" for decode; CUDA: the tensor-core kernel for float16 /
# bfloat16 prefill / tree, the CUDA-core one otherwise; PIPO_ATTN_KERNEL=auto|split|tc forces it).
# UNTESTED ON GPU: no GPU measurement backs the prefill / tree entries yet (decode keeps the
# measured CUDA kernels). The Triton tc kernel is the default there because its semantics are
# tested under the Triton interpreter, while the CUDA tensor-core kernel is only compiled. Replace
# these entries with what benchmarks/bench_attention.py measures fastest on a GPU.
PATH_TABLE: dict[tuple[str, str], str] = {
    ("cuda", "decode"): "cuda",
    ("cuda", "prefill"): "triton",
    ("cuda", "tree"): "triton",
}

ATTN_KERNELS = ("auto", "split", "tc")


def shape_class(q: torch.Tensor, block_table: torch.Tensor, tree_mask) -> str:
    """ "tree", "decode" or "prefill" for a call's shapes (see SHAPE_CLASSES)."""
    if tree_mask is not None:
        return "tree"
    return "decode" if q.shape[0] <= block_table.shape[0] else "prefill"


def _parse_path_env(env: str) -> dict[str, str]:
    """PIPO_ATTN_PATH: "class=backend" pairs separated by commas (e.g. "prefill=cuda,tree=cuda"),
    or one backend name for every class."""
    from ._backend import BACKENDS

    if not env:
        return {}
    if "=" not in env:
        pairs = {c: env.strip() for c in SHAPE_CLASSES}
    else:
        pairs = {}
        for item in env.split(","):
            cls, _, name = item.partition("=")
            pairs[cls.strip()] = name.strip()
    for cls, name in pairs.items():
        if cls not in SHAPE_CLASSES or name not in BACKENDS:
            raise ValueError(
                f"PIPO_ATTN_PATH: expected class=backend pairs (classes {', '.join(SHAPE_CLASSES)}"
                f"; backends {', '.join(BACKENDS)}) or one backend, got {env!r}"
            )
    return pairs


def _kernel_name(kind: str, cls: str, backend: str, kernel_env: str) -> str:
    if kernel_env != "auto":
        return kernel_env
    if backend == "triton":
        return "split" if cls == "decode" else "tc"
    if backend == "cuda":
        return "CUDA-core" if cls == "decode" else "tensor-core (float16 / bfloat16)"
    return "default"


@torch.compiler.assume_constant_result
def choose_path(device: torch.device, cls: str, backend: str | None = None) -> str:
    """The backend that runs paged_attention for shape class `cls` on `device`: `backend` when
    given, else PIPO_ATTN_PATH's entry for the class, else PIPO_BACKEND, else PATH_TABLE, else
    the op-wide order. Logged once per (device type, class, setting) on the pipo_kernels logger."""
    env = os.environ
    return _choose_path(
        device.type,
        cls,
        backend,
        env.get("PIPO_ATTN_PATH", ""),
        env.get("PIPO_BACKEND"),
        env.get("PIPO_ATTN_KERNEL", "auto"),
        env.get("TRITON_INTERPRET"),
    )


@cache
def _choose_path(kind, cls, backend, path_env, backend_env, kernel_env, interpret) -> str:
    device = torch.device(kind)
    if backend is not None:
        return _backend.resolve("paged_attention", device, backend)
    wanted, source = _parse_path_env(path_env).get(cls), "PIPO_ATTN_PATH"
    if wanted is not None:
        reason = _backend.why_unavailable("paged_attention", wanted, device)
        if reason is not None:
            raise ValueError(f"PIPO_ATTN_PATH: {wanted!r} cannot run paged_attention: {reason}")
        chosen = wanted
    else:
        table = PATH_TABLE.get((kind, cls))
        if (
            table is not None
            and not backend_env
            and _backend.why_unavailable("paged_attention", table, device) is None
        ):
            chosen, source = table, "PATH_TABLE" + ("" if cls == "decode" else ", untested on GPU")
        else:
            chosen, source = _backend.resolve("paged_attention", device), "backend order"
    _backend.log.info(
        "pipo_kernels.paged_attention, %s shapes on %s tensors: %s backend, %s kernel (%s)",
        cls,
        kind,
        chosen,
        _kernel_name(kind, cls, chosen, kernel_env),
        source,
    )
    return chosen


@torch.compiler.assume_constant_result
def kernel_setting() -> str:
    """PIPO_ATTN_KERNEL ("auto" unless set): which kernel a backend runs (see PATH_TABLE)."""
    kernel = os.environ.get("PIPO_ATTN_KERNEL", "auto")
    if kernel not in ATTN_KERNELS:
        fail("PIPO_ATTN_KERNEL", f"one of {', '.join(ATTN_KERNELS)}", repr(kernel))
    return kernel


def check_args(q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask, num_splits) -> None:
    """Shape / dtype / device checks (no index values: see check_values)."""
    check_dim(q, 3, "q")
    check_float(q, "q")
    if q.stride(2) != 1:
        fail("q", "each head's head_dim values contiguous", f"strides {q.stride()}")
    check_dim(k_cache, 4, "k_cache")
    check_like(k_cache, q, "k_cache", "q")
    check_contiguous(k_cache, "k_cache")
    if v_cache.shape != k_cache.shape:
        fail("v_cache", f"the shape of k_cache {tuple(k_cache.shape)}", tuple(v_cache.shape))
    check_like(v_cache, q, "v_cache", "q")
    check_contiguous(v_cache, "v_cache")
    hq, hkv = q.shape[1], k_cache.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(
            f"q: num_q_heads ({hq}) must be a multiple of num_kv_heads of k_cache ({hkv})"
        )
    check_size(q, 2, k_cache.shape[3], "q", "head_dim of k_cache")
    check_dim(block_table, 2, "block_table")
    check_dtype(block_table, torch.int32, "block_table")
    batch = block_table.shape[0]
    for t, name, n, what in (
        (block_table, "block_table", None, None),
        (kv_lens, "kv_lens", batch, "batch size of block_table"),
        (q_indptr, "q_indptr", batch + 1, "batch size of block_table + 1"),
    ):
        if n is not None and what is not None:
            check_dim(t, 1, name)
            check_dtype(t, torch.int32, name)
            check_size(t, 0, n, name, what)
        if t.device != q.device:
            fail(name, f"the device of q ({q.device})", t.device)
        check_contiguous(t, name)
    if tree_mask is not None:
        check_dim(tree_mask, 2, "tree_mask")
        check_dtype(tree_mask, torch.bool, "tree_mask")
        if tree_mask.device != q.device:
            fail("tree_mask", f"the device of q ({q.device})", tree_mask.device)
        check_contiguous(tree_mask, "tree_mask")
        check_size(tree_mask, 0, q.shape[0], "tree_mask", "num_tokens of q")
    if num_splits < 0:
        fail("num_splits", "0 (automatic) or a positive count", num_splits)


def check_values(q, k_cache, block_table, kv_lens, q_indptr, tree_mask) -> None:
    """Range checks of the index values (a device-to-host copy; see should_check_values)."""
    indptr = q_indptr.tolist()
    lens = kv_lens.tolist()
    table = block_table.cpu()
    num_pages, page_size = k_cache.shape[0], k_cache.shape[1]
    capacity = block_table.shape[1] * page_size
    if indptr[0] != 0:
        fail("q_indptr", "q_indptr[0] == 0", indptr[0])
    if indptr[-1] != q.shape[0]:
        fail("q_indptr", f"the last entry to equal num_tokens of q ({q.shape[0]})", indptr[-1])
    for b, kv_len in enumerate(lens):
        q_len = indptr[b + 1] - indptr[b]
        if q_len < 0:
            fail("q_indptr", "non-decreasing values", f"q_indptr[{b + 1}] < q_indptr[{b}]")
        if kv_len < q_len:
            raise ValueError(
                f"kv_lens: kv_lens[{b}] = {kv_len} is smaller than the sequence's number of "
                f"queries ({q_len}); the queries must already be in the cache"
            )
        if kv_len > capacity:
            raise ValueError(
                f"kv_lens: kv_lens[{b}] = {kv_len} exceeds the capacity of its block_table row "
                f"({block_table.shape[1]} pages of {page_size})"
            )
        if tree_mask is not None and q_len > tree_mask.shape[1]:
            fail(
                "tree_mask",
                f"at least {q_len} columns (the queries of sequence {b})",
                f"shape {tuple(tree_mask.shape)}",
            )
        used = table[b, : -(-kv_len // page_size)]
        bad = ((used < 0) | (used >= num_pages)).nonzero()
        if bad.numel():
            j = int(bad[0, 0])
            raise ValueError(
                f"block_table: entry [{b}, {j}] = {int(used[j])} is out of range for a cache of "
                f"{num_pages} pages"
            )


def outputs_like(q: torch.Tensor, return_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """out [Nq, Hq, D] in q's dtype and lse [Nq, Hq] float32 ([0] without return_lse)."""
    out = q.new_empty(q.shape[0], q.shape[1], q.shape[2])
    lse_shape = (q.shape[0], q.shape[1]) if return_lse else (0,)
    return out, q.new_empty(lse_shape, dtype=torch.float32)


def _paged_attention_fake(
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
):
    check_args(q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask, num_splits)
    return outputs_like(q, return_lse)


if _backend.has_op("paged_attention"):  # the C++ op exists only when pipo_kernels._C loaded
    torch.library.register_fake("pipo::paged_attention")(_paged_attention_fake)


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
    *,
    num_splits: int = 0,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ragged query blocks over a paged KV cache: chunked prefill (causal), decode
    (one query per sequence) and draft-tree verification (boolean tree mask) in one op.

    Sequence b owns queries ``q[q_indptr[b]:q_indptr[b+1]]`` (q_len_b of them); they are the last
    q_len_b of its ``kv_lens[b]`` cached positions (already appended, RoPE applied). Query j of b
    sees every position ``< kv_lens[b] - q_len_b`` and, among the query positions, position k
    when ``k <= j`` (tree_mask None: causal) or when ``tree_mask[q_indptr[b] + j, k]`` is set.

    Args:
        q: [Nq, Hq, D] float32 / float16 / bfloat16; each head's D values contiguous (token and
            head strides are free, e.g. a view into a fused QKV output). D: 64, 128 or 256 on the
            CUDA backend, any size elsewhere.
        k_cache, v_cache: [num_pages, page_size, Hkv, D], q's dtype, contiguous (paged NHD).
            Hq must be a multiple of Hkv; query head h reads kv head h // (Hq // Hkv).
        block_table: [B, max_pages] int32; logical page j of sequence b is physical page
            ``block_table[b, j]``. Entries past a sequence's last page are never read.
        kv_lens: [B] int32, cached positions per sequence (queries included), >= q_len_b.
        q_indptr: [B + 1] int32 prefix sums of the query counts; q_indptr[B] == Nq. Sequences
            with no query (q_len 0) are allowed.
        tree_mask: optional [Nq, M] bool with M >= max q_len_b; row q_indptr[b] + j says which
            of sequence b's query positions query j sees (columns >= q_len_b are ignored).
        sm_scale: score scale; default 1 / sqrt(D).
        return_lse: also return lse [Nq, Hq] float32, the natural log-sum-exp of the scaled
            scores each query sees.
        num_splits: KV splits per sequence (0: automatic from the shapes). The result does not
            depend on it beyond float rounding; tests and tuning force it.
        backend: "cuda" | "triton" | "cpu" | "torch", or None: the backend PATH_TABLE (and the
            PIPO_ATTN_PATH / PIPO_BACKEND variables) give for the call's shape class (decode /
            prefill / tree, see shape_class). The kernel inside the CUDA and Triton backends
            follows the class too, or PIPO_ATTN_KERNEL=split|tc (docs/ops.md §4, "Paths").

    Returns:
        out [Nq, Hq, D] in q's dtype (softmax and accumulation in float32), or (out, lse) with
        return_lse. A query that sees no position (an all-false tree_mask row over an empty
        prefix) gets out = 0 and lse = -inf.

    Errors (ValueError / RuntimeError naming the argument): wrong shapes, dtypes or devices; Hq
    not a multiple of Hkv; tree_mask not [Nq, >= max q_len] bool; and, on the CPU always (on a GPU
    with PIPO_VALIDATE=1), q_indptr not starting at 0 / ending at Nq, kv_lens[b] < q_len_b or
    beyond the block table row, a used block_table entry outside [0, num_pages). Without
    PIPO_VALIDATE the GPU kernels never follow an out-of-range page: its positions are masked.

    Example::

        # two sequences: a 3-node draft tree over 5 cached tokens, and a single decode query
        q = torch.randn(4, 16, 128, dtype=torch.bfloat16, device="cuda")
        k_cache = torch.randn(8, 16, 4, 128, dtype=torch.bfloat16, device="cuda")
        v_cache = torch.randn_like(k_cache)
        block_table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device="cuda")
        kv_lens = torch.tensor([8, 20], dtype=torch.int32, device="cuda")
        q_indptr = torch.tensor([0, 3, 4], dtype=torch.int32, device="cuda")
        tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 0, 0]], device="cuda").bool()
        out, lse = pipo_kernels.paged_attention(
            q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree, return_lse=True
        )
    """
    impl = choose_path(q.device, shape_class(q, block_table, tree_mask), backend)
    args = (q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask)
    if impl == "torch":
        check_args(*args, num_splits)
        if should_check_values(block_table, sync_ok=True):
            check_values(q, k_cache, block_table, kv_lens, q_indptr, tree_mask)
        return reference.paged_attention(*args, sm_scale, return_lse)
    if impl == "triton":
        out, lse = torch.ops.pipo.paged_attention_triton(
            *args, sm_scale, return_lse, num_splits, kernel_setting()
        )
    else:
        out, lse = torch.ops.pipo.paged_attention(*args, sm_scale, return_lse, num_splits)
    return (out, lse) if return_lse else out

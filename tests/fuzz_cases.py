"""The worker side of tests/test_fuzz.py: builds one fuzz case (an op's arguments as arbitrary
strided views with guard bands around them), runs it on a backend and judges the result.

A case is plain data (a dict), drawn by hypothesis in the test process and executed here in a
separate worker process, so that a crash of a kernel is a failing case rather than a dead suite.

Oracle (``run_case``): the same call through the torch backend on contiguous copies is the
reference. The backend under test must then either
  * succeed, give the reference's outputs (exact for integer outputs and cache contents, dtype
    tolerances for floats) and write nothing outside its outputs, or
  * raise ValueError / RuntimeError whose message starts with an argument's name ("slot_mapping:
    expected ...") and leave every tensor it was given bit-identical.
It must succeed when every argument's layout follows the documented rule (``LAYOUT`` below, the
table of docs/ops.md "Tensor views") and the reference accepts the values; it must raise, naming an
argument that breaks its rule, when one does. Every tensor lives inside a larger buffer whose
elements outside the view (guard bands, gaps between strided rows) hold NaN / poison values: a
write past a view changes them, a read past a view poisons the output. Under Triton's interpreter
every load and store is also checked against the spans of the launch's tensor arguments
(``_install_interpreter_bounds_check``), which catches accesses far outside any buffer.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import traceback
import warnings

import torch

from pipo.ops import OPS  # every op of the package, in docs order

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
TOL = {
    torch.float32: dict(atol=2e-4, rtol=2e-4),
    torch.float16: dict(atol=6e-3, rtol=6e-3),
    torch.bfloat16: dict(atol=5e-2, rtol=3e-2),
}
INT_POISON = {torch.int64: 2**40 + 7, torch.int32: 2**30 + 7}
VIEW_KINDS = ("plain", "offset", "strided", "transposed", "expanded")


def _tensor_args(op: str) -> tuple[str, ...]:
    """The op's tensor arguments in call order, from the public function's annotations."""
    import pipo_kernels

    sig = inspect.signature(getattr(pipo_kernels, op))
    return tuple(n for n, p in sig.parameters.items() if "Tensor" in str(p.annotation))


TENSOR_ARGS = {op: _tensor_args(op) for op in OPS}
MUTATED = {
    "kv_cache_append": ("k_cache", "v_cache"),
    "kv_cache_compact": ("k_cache", "v_cache"),
    "fused_add_rmsnorm": ("x", "residual"),
    "qk_norm_rope_append": ("q", "k_cache", "v_cache"),
}
# Mutating ops that compute what they write (compared with dtype tolerances, not bit for bit).
COMPUTED = ("fused_add_rmsnorm", "qk_norm_rope_append")
# Float inputs that NaN / inf may be planted in.
FLOAT_ARGS = {
    "kv_cache_append": ("key", "value", "k_cache"),
    "kv_cache_compact": ("k_cache", "v_cache"),
    "fold_pairs": ("embedding", "weight", "bias"),
    "unfold_input": ("hidden", "embedding", "weight"),
    "sample_tokens": ("hidden", "lm_head", "presence_penalty"),
    "pair_out": ("hidden", "mtp_hidden", "fc1_weight"),
    "group_out": ("hidden", "mtp_hidden", "fc1_weight"),
    "paged_attention": ("q", "k_cache", "v_cache"),
    "verify_tree": (),
    "verify_tree_stochastic": ("draft_probs", "target_probs"),
    "fused_add_rmsnorm": ("x", "residual", "weight"),
    "qk_norm_rope_append": ("q", "k", "k_cache"),
    "linear": ("x", "weight"),
}
# Ops whose outputs are defined for non-finite inputs (NaN / inf propagate per row): compared with
# the reference. The others (a softmax over a masked range, sampling, acceptance tests) only have
# to stay memory-safe and raise nothing but clean errors.
NONFINITE_EXACT = (
    "kv_cache_append",
    "kv_cache_compact",
    "fold_pairs",
    "unfold_input",
    "fused_add_rmsnorm",
    "qk_norm_rope_append",
    "linear",
)
# Index-value corruptions each op's builder knows (None: valid values).
CORRUPTIONS = {
    "kv_cache_append": ("slot_high", "slot_huge"),
    "kv_cache_compact": ("src_high", "dst_high", "dst_repeat"),
    "fold_pairs": ("id_high", "id_negative"),
    "unfold_input": ("id_high", "id_negative"),
    "sample_tokens": ("temperature_negative", "temperature_nan", "top_k_negative", "top_p_zero"),
    "pair_out": (),
    "group_out": (),
    "paged_attention": (
        "indptr_negative",
        "indptr_decreasing",
        "indptr_huge",
        "indptr_last",
        "kv_lens_huge",
        "kv_lens_small",
        "kv_lens_negative",
        "block_table_bad",
        "mask_narrow",
    ),
    "verify_tree": ("indptr_negative", "indptr_decreasing", "indptr_huge", "parent_bad", "depth"),
    "verify_tree_stochastic": (
        "indptr_negative",
        "indptr_decreasing",
        "indptr_huge",
        "parent_bad",
        "depth",
        "token_bad",
    ),
    "fused_add_rmsnorm": (),
    "qk_norm_rope_append": ("pos_high", "pos_negative", "slot_high"),
    "linear": (),
}


# ---------------------------------------------------------------------------------------------
# Layout rules (docs/ops.md, "Tensor views"): the layouts every backend accepts.


def contiguous(t: torch.Tensor) -> bool:
    return t.is_contiguous()


def token_block(t: torch.Tensor) -> bool:
    """[N, H, D] with each token's [H, D] block dense and token rows not overlapping."""
    _, heads, dim = t.shape
    return (
        t.stride(2) == 1
        and (heads == 1 or t.stride(1) == dim)
        and (t.shape[0] <= 1 or t.stride(0) >= heads * dim)
    )


def dense_rows(t: torch.Tensor) -> bool:
    """[N, H] with each row dense and rows not overlapping."""
    return t.stride(1) == 1 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1])


def last_dim_dense(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1


def rows_dense(t: torch.Tensor) -> bool:
    """[N, K] with each row dense (rows may overlap: the op only reads them)."""
    return t.shape[1] <= 1 or t.stride(1) == 1


LAYOUT = {
    ("kv_cache_append", "key"): token_block,
    ("kv_cache_append", "value"): token_block,
    ("unfold_input", "hidden"): dense_rows,
    ("paged_attention", "q"): last_dim_dense,
    ("qk_norm_rope_append", "q"): token_block,
    ("qk_norm_rope_append", "k"): token_block,
    ("qk_norm_rope_append", "v"): token_block,
    ("linear", "x"): rows_dense,
}


def layout_ok(op: str, name: str, t: torch.Tensor, backend: str) -> bool:
    rule = LAYOUT.get((op, name), contiguous)
    if not rule(t):
        return False
    if backend == "cuda" and op == "paged_attention" and name in ("k_cache", "v_cache"):
        return t.data_ptr() % 16 == 0  # the CUDA kernel copies 16-byte rows
    return True


# ---------------------------------------------------------------------------------------------
# Builders: contiguous CPU values of every argument from the case's parameters.


def _randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _randint(g, lo, hi, *shape, dtype=torch.int64):
    return torch.randint(lo, hi, shape, generator=g, dtype=dtype)


def _pick(g, n: int) -> int:
    return int(torch.randint(n, (), generator=g)) if n > 0 else 0


def build_kv_cache_append(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    pages, size, heads, dim, n = p["pages"], p["page_size"], p["heads"], p["head_dim"], p["n"]
    slots = torch.full((n,), -1, dtype=torch.int64)
    live = torch.randperm(pages * size, generator=g)[:n]
    slots[: live.numel()] = live
    slots[torch.rand(n, generator=g) < 0.2] = -1
    slots = slots[torch.randperm(n, generator=g)]
    if n and corrupt == "slot_high":
        slots[_pick(g, n)] = pages * size + _pick(g, 3)
    if n and corrupt == "slot_huge":
        slots[_pick(g, n)] = 2**40
    cache = (pages, size, heads, dim)
    tensors = dict(
        key=_randn(g, n, heads, dim, dtype=dt),
        value=_randn(g, n, heads, dim, dtype=dt),
        k_cache=_randn(g, *cache, dtype=dt),
        v_cache=_randn(g, *cache, dtype=dt),
        slot_mapping=slots,
    )
    return tensors, {}


def build_kv_cache_compact(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    pages, size, heads, dim, m = p["pages"], p["page_size"], p["heads"], p["head_dim"], p["n"]
    n_slots = pages * size
    src = _randint(g, 0, max(n_slots, 1), m) if n_slots else torch.full((m,), -1)
    dst = torch.full((m,), -1, dtype=torch.int64)
    live = torch.randperm(n_slots, generator=g)[:m]
    dst[: live.numel()] = live
    dst = dst[torch.randperm(m, generator=g)]
    src[torch.rand(m, generator=g) < 0.15] = -1
    if m and corrupt == "src_high":
        src[_pick(g, m)] = n_slots + _pick(g, 2**20)
    if m and corrupt == "dst_high":
        dst[_pick(g, m)] = n_slots
    if m > 1 and corrupt == "dst_repeat":
        src[:2] = src[:2].clamp_min(0)
        dst[1] = dst[0] = max(int(dst[0]), 0)
    cache = (pages, size, heads, dim)
    tensors = dict(
        k_cache=_randn(g, *cache, dtype=dt),
        v_cache=_randn(g, *cache, dtype=dt),
        src_slots=src,
        dst_slots=dst,
    )
    return tensors, {}


def _ids(p, g, corrupt, *shape):
    ids = _randint(g, 0, p["vocab"], *shape, dtype=torch.int32 if p["ids32"] else torch.int64)
    flat = ids.view(-1)
    if flat.numel() and corrupt == "id_high":
        flat[_pick(g, flat.numel())] = p["vocab"] + _pick(g, 3)
    if flat.numel() and corrupt == "id_negative":
        flat[_pick(g, flat.numel())] = -1 - _pick(g, 3)
    return ids


def build_fold_pairs(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    h, o = p["hidden"], p["out"]
    tensors = dict(
        pair_ids=_ids(p, g, corrupt, p["n"], p["fold"]),
        embedding=_randn(g, p["vocab"], h, dtype=dt),
        weight=_randn(g, o, p["fold"] * h, dtype=dt, scale=(p["fold"] * h) ** -0.5),
        bias=_randn(g, o, dtype=dt) if p["bias"] else None,
    )
    return tensors, dict(activation=p["activation"])


def build_unfold_input(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    n, h, o = p["n"], p["hidden"], p["out"]
    tensors = dict(
        token_ids=_ids(p, g, corrupt, n),
        hidden=_randn(g, n, h, dtype=dt),
        embedding=_randn(g, p["vocab"], h, dtype=dt),
        embed_norm_weight=_randn(g, h, dtype=dt),
        hidden_norm_weight=_randn(g, h, dtype=dt),
        weight=_randn(g, o, 2 * h, dtype=dt, scale=(2 * h) ** -0.5),
    )
    return tensors, dict(eps=1e-6)


def build_sample_tokens(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    b, h, v = p["batch"], p["hidden"], p["vocab"]
    temperature = torch.tensor([0.0, 0.7, 1.0])[_randint(g, 0, 3, b)]
    top_k = torch.tensor([0, 1, 3, 100], dtype=torch.int32)[_randint(g, 0, 4, b)]
    top_p = torch.tensor([1.0, 0.9, 0.5])[_randint(g, 0, 3, b)]
    if b and corrupt == "temperature_negative":
        temperature[_pick(g, b)] = -0.5
    if b and corrupt == "temperature_nan":
        temperature[_pick(g, b)] = math.nan
    if b and corrupt == "top_k_negative":
        top_k[_pick(g, b)] = -2
    if b and corrupt == "top_p_zero":
        top_p[_pick(g, b)] = 0.0
    words = (v + 31) // 32
    seen = None
    if p["seen"]:
        seen = _randint(g, -(2**31), 2**31, b, words, dtype=torch.int64).to(torch.int32)
    tensors = dict(
        hidden=_randn(g, b, h, dtype=dt),
        lm_head=_randn(g, v, h, dtype=dt, scale=h**-0.5 * 3),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        presence_penalty=torch.tensor([0.0, 1.5])[_randint(g, 0, 2, b)],
        seen=seen,
        seeds=_randint(g, -(2**62), 2**62, b),
        offsets=_randint(g, 0, 2**40, b),
    )
    return tensors, dict(num_candidates=min(p["candidates"], v))


def build_pair_out(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    b, h = p["batch"], p["hidden"]
    tensors = dict(
        hidden=_randn(g, b, h, dtype=dt),
        mtp_hidden=_randn(g, b, h, dtype=dt),
        token1=_randint(g, 0, 1000, b),
        token2=_randint(g, 0, 1000, b),
        norm_weight=_randn(g, 2 * h, dtype=dt),
        fc1_weight=_randn(g, h, 2 * h, dtype=dt, scale=(2 * h) ** -0.5),
        fc2_weight=_randn(g, 1, h, dtype=dt, scale=h**-0.5),
    )
    return tensors, dict(threshold=p["threshold"], pad_id=-7, eps=1e-6)


def build_group_out(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    b, h, j = p["batch"], p["hidden"], p["steps"]
    tensors = dict(
        hidden=_randn(g, b, h, dtype=dt),
        mtp_hidden=_randn(g, b, j, h, dtype=dt),
        tokens=_randint(g, 0, 1000, b, 1 + j),
        norm_weight=_randn(g, 2 * h, dtype=dt),
        fc1_weight=_randn(g, h, 2 * h, dtype=dt, scale=(2 * h) ** -0.5),
        fc2_weight=_randn(g, 1, h, dtype=dt, scale=h**-0.5),
    )
    return tensors, dict(threshold=p["threshold"], pad_id=-7, eps=1e-6)


def _corrupt_indptr(indptr, g, corrupt):
    n = indptr.numel()
    if corrupt == "indptr_negative":  # the first entry half the time: a negative query start
        indptr[0 if _pick(g, 2) else _pick(g, n)] = -1 - _pick(g, 4)
    elif corrupt == "indptr_decreasing" and n > 1:
        i = 1 + _pick(g, n - 1)
        indptr[i] = indptr[i - 1] - 1 - _pick(g, 3)
    elif corrupt == "indptr_huge":
        indptr[_pick(g, n)] = 2**31 - 1 - _pick(g, 2)


def build_paged_attention(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    size, hkv, group, dim = p["page_size"], p["kv_heads"], p["group"], p["head_dim"]
    q_lens = p["q_lens"]
    kv = [q + pre for q, pre in zip(q_lens, p["prefix"], strict=True)]
    batch = len(kv)
    need = [-(-n // size) for n in kv]
    max_pages = max(need, default=0) + p["spare_cols"]
    num_pages = sum(need) + p["spare_pages"]
    perm = torch.randperm(num_pages, generator=g).to(torch.int32)
    # Entries past a sequence's last page are never read: fill them with junk.
    table = _randint(g, -(2**31), 2**31 - 1, batch, max_pages, dtype=torch.int32)
    used = 0
    for b, k in enumerate(need):
        table[b, :k] = perm[used : used + k]
        used += k
    n_q = sum(q_lens)
    indptr = torch.tensor([0, *torch.tensor(q_lens, dtype=torch.int64).cumsum(0).tolist()])
    indptr = indptr.to(torch.int32)
    kv_lens = torch.tensor(kv, dtype=torch.int32)
    mask = None
    if p["mask"]:
        cols = max(q_lens, default=0) + p["spare_cols"]
        if corrupt == "mask_narrow" and max(q_lens, default=0) > 0:
            cols = max(q_lens) - 1
        mask = torch.rand(n_q, max(cols, 0), generator=g) < 0.6
    _corrupt_indptr(indptr, g, corrupt)
    if corrupt == "indptr_last":
        indptr[-1] = n_q + 1 + _pick(g, 3)
    if batch:
        b = _pick(g, batch)
        if corrupt == "kv_lens_huge":
            kv_lens[b] = [2**31 - 1, max_pages * size + 1][_pick(g, 2)]
        if corrupt == "kv_lens_small" and q_lens[b] > 0:
            kv_lens[b] = q_lens[b] - 1
        if corrupt == "kv_lens_negative":
            kv_lens[b] = -1 - _pick(g, 2**31 - 1)
        if corrupt == "block_table_bad" and need[b] > 0:
            table[b, _pick(g, need[b])] = [-1, num_pages, 2**31 - 1][_pick(g, 3)]
    cache = (num_pages, size, hkv, dim)
    tensors = dict(
        q=_randn(g, n_q, hkv * group, dim, dtype=dt),
        k_cache=_randn(g, *cache, dtype=dt),
        v_cache=_randn(g, *cache, dtype=dt),
        block_table=table,
        kv_lens=kv_lens,
        q_indptr=indptr,
        tree_mask=mask,
    )
    scalars = dict(sm_scale=p["sm_scale"], return_lse=p["return_lse"], num_splits=p["num_splits"])
    return tensors, scalars


def _tree(p, g, corrupt, vocab):
    sizes = p["sizes"]
    parents, depth = [], []
    for n in sizes:
        local = []
        for i in range(n):
            local.append(-1 if i == 0 else _pick(g, i))
            depth.append(0 if i == 0 else depth[len(depth) - i + local[i]] + 1)
        parents += local
    parents = torch.tensor(parents, dtype=torch.int32)
    n_q = sum(sizes)
    indptr = torch.tensor([0, *torch.tensor(sizes, dtype=torch.int64).cumsum(0).tolist()])
    indptr = indptr.to(torch.int32)
    max_depth = max(depth, default=0) + p["spare_depth"]
    draft = _randint(g, 0, vocab, n_q)
    nonroot = [i for i in range(n_q) if parents[i] >= 0]
    _corrupt_indptr(indptr, g, corrupt)
    if nonroot and corrupt == "parent_bad":
        i = nonroot[_pick(g, len(nonroot))]
        parents[i] = [-1, int(parents[i]) + 2**20, 2**31 - 1][_pick(g, 3)]
    if corrupt == "depth" and max(depth, default=0) > 0:
        max_depth = max(depth) - 1
    if nonroot and corrupt == "token_bad":
        draft[nonroot[_pick(g, len(nonroot))]] = [vocab, -1, 2**62][_pick(g, 3)]
    return draft, parents, indptr, max_depth


def build_verify_tree(p, g, corrupt):
    vocab = p["vocab"]
    draft, parents, indptr, max_depth = _tree(p, g, corrupt, vocab)
    target = _randint(g, 0, vocab, draft.numel())
    tensors = dict(draft_tokens=draft, parents=parents, q_indptr=indptr, target_tokens=target)
    return tensors, dict(max_depth=max_depth)


def _probs(g, rows, vocab):
    x = torch.rand(rows, vocab, generator=g, dtype=torch.float64) ** 4
    x[torch.rand(rows, vocab, generator=g) < 0.2] = 0.0
    x[:, 0] += 1e-3
    return (x / x.sum(1, keepdim=True)).float()


def build_verify_tree_stochastic(p, g, corrupt):
    vocab = p["vocab"]
    draft, parents, indptr, max_depth = _tree(p, g, corrupt, vocab)
    batch = len(p["sizes"])
    tensors = dict(
        draft_tokens=draft,
        parents=parents,
        q_indptr=indptr,
        draft_probs=_probs(g, draft.numel(), vocab),
        target_probs=_probs(g, draft.numel(), vocab),
        seeds=_randint(g, -(2**62), 2**62, batch),
        offsets=_randint(g, 0, 2**40, batch),
    )
    return tensors, dict(max_depth=max_depth)


def build_fused_add_rmsnorm(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    n, h = p["n"], p["hidden"]
    tensors = dict(
        x=_randn(g, n, h, dtype=dt),
        residual=_randn(g, n, h, dtype=dt),
        weight=_randn(g, h, dtype=dt),
    )
    return tensors, dict(eps=1e-6)


def build_qk_norm_rope_append(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    n, hkv, d, max_pos = p["n"], p["kv_heads"], p["head_dim"], p["max_pos"]
    hq = hkv * p["group"]
    rot = d // 2 if p["partial"] and d % 4 == 0 else d  # an even rot_dim from 2 to d
    tensors, _ = build_kv_cache_append(
        dict(p, heads=hkv), g, "slot_high" * (corrupt == "slot_high")
    )
    positions = _randint(g, 0, max_pos, n)
    if n and corrupt == "pos_high":
        positions[_pick(g, n)] = max_pos + _pick(g, 3)
    if n and corrupt == "pos_negative":
        positions[_pick(g, n)] = -1 - _pick(g, 3)
    norm = p["norm"]
    tensors = dict(
        q=_randn(g, n, hq, d, dtype=dt),
        k=tensors["key"],
        v=tensors["value"],
        q_norm_weight=_randn(g, d, dtype=dt) if norm else None,
        k_norm_weight=_randn(g, d, dtype=dt) if norm else None,
        cos_sin_cache=_randn(g, max_pos, rot),
        positions=positions,
        k_cache=tensors["k_cache"],
        v_cache=tensors["v_cache"],
        slot_mapping=tensors["slot_mapping"],
    )
    return tensors, dict(eps=1e-6)


def build_linear(p, g, corrupt):
    dt = DTYPES[p["dtype"]]
    n, k, o = p["n"], p["k"], p["out"] * (2 if p["activation"] == "swiglu" else 1)
    tensors = dict(
        x=_randn(g, n, k, dtype=dt),
        weight=_randn(g, o, k, dtype=dt, scale=max(k, 1) ** -0.5),
    )
    return tensors, dict(activation=p["activation"])


BUILDERS = {
    name[len("build_") :]: fn for name, fn in globals().items() if name.startswith("build_")
}


# ---------------------------------------------------------------------------------------------
# Views with guard bands


def _poison(dtype: torch.dtype):
    if dtype.is_floating_point:
        return math.nan
    if dtype == torch.bool:
        return True
    return INT_POISON.get(dtype, -1)


def make_view(t: torch.Tensor, kind: str, dim: int, pad: int, device: str):
    """(buffer, view): `view` has t's shape and values (t's first slice along `dim` repeated for
    "expanded") and lives inside the 1-D `buffer`, every other element of which is poison."""
    shape = list(t.shape)
    nd = len(shape)
    dim = dim % nd if nd else 0
    if kind == "plain" or nd == 0:
        buf = t.detach().clone().reshape(-1).to(device)
        return buf, buf.view(shape)
    extent = list(shape)
    order = list(range(nd))  # dims from outermost to innermost in memory
    if kind == "strided":
        extent[dim] = 2 * shape[dim]
    elif kind == "transposed" and nd > 1:
        order = order[::-1]
    elif kind == "expanded":
        extent[dim] = min(shape[dim], 1)
    strides = [0] * nd
    step = 1
    for d in reversed(order):
        strides[d] = step * (2 if kind == "strided" and d == dim else 1)
        step *= extent[d]
    if kind == "expanded":
        strides[dim] = 0
    size = step + 2 * pad
    buf = torch.full((size,), _poison(t.dtype), dtype=t.dtype)
    view = buf.as_strided(shape, strides, pad)
    if kind == "expanded" and shape[dim] > 1:
        view.select(dim, 0).copy_(t.select(dim, 0))
    else:
        view.copy_(t)
    buf = buf.to(device)
    return buf, buf.as_strided(shape, strides, pad)


def footprint(buf: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """Bool mask over `buf`: the elements `view` covers."""
    mark = torch.zeros(buf.shape, dtype=torch.bool, device="cpu")
    mark.as_strided(view.shape, view.stride(), view.storage_offset()).fill_(True)
    return mark


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of t (CPU, contiguous), so NaN compares equal to the same NaN."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype.is_floating_point:
        return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def plant_nonfinite(t: torch.Tensor, g: torch.Generator) -> None:
    flat = t.view(-1)
    for _ in range(min(flat.numel(), 2)):
        flat[_pick(g, flat.numel())] = [math.nan, math.inf, -math.inf][_pick(g, 3)]


# ---------------------------------------------------------------------------------------------
# Running a case


def call(op: str, tensors: dict, scalars: dict, backend: str):
    import pipo_kernels

    fn = getattr(pipo_kernels, op)
    args = [tensors[n] for n in TENSOR_ARGS[op]]
    if op == "fold_pairs":
        return fn(*args, scalars["activation"], backend=backend)
    if op in ("kv_cache_append", "kv_cache_compact"):
        return fn(*args, backend=backend)
    if op == "paged_attention":
        return fn(
            *args,
            scalars["sm_scale"],
            scalars["return_lse"],
            num_splits=scalars["num_splits"],
            backend=backend,
        )
    rest = {k: v for k, v in scalars.items()}
    return fn(*args, **rest, backend=backend)


def names_argument(err: BaseException, names) -> bool:
    msg = str(err)
    return any(re.match(rf"\s*{re.escape(n)}:", msg) for n in names)


def _compare(op, got, want, dtype, scalars, ref_outputs_conf=None):
    """None when the outputs match the reference, else the first difference."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {i}: {a.dtype}{tuple(a.shape)} != reference {b.dtype}{tuple(b.shape)}"
        if op == "pair_out" and i == 0:
            # A confidence within rounding of the threshold may gate either way.
            conf, thr = want[1].detach().cpu(), scalars["threshold"]
            near = (conf - thr).abs() < 1e-2
            a, b = a.clone(), b.clone()
            a[near, 1] = b[near, 1]
        if op == "group_out" and i == 0:
            # From the first step within rounding of the threshold on, the gate may go either way.
            conf, thr = want[1].detach().cpu(), scalars["threshold"]
            near = ((conf - thr).abs() < 1e-2).long().cumsum(1).bool()
            a, b = a.clone(), b.clone()
            a[:, 1:][near] = b[:, 1:][near]
        if a.dtype.is_floating_point:
            tol = TOL[dtype]  # float32 outputs of low-precision inputs carry their rounding
            if not torch.allclose(a.double(), b.double(), equal_nan=True, **tol):
                diff = (a.double() - b.double()).abs().nan_to_num(math.inf).max()
                return f"output {i}: max abs difference {float(diff):.3g} from the reference"
        elif not torch.equal(a, b):
            return f"output {i}: {a.tolist()} != reference {b.tolist()}"
    return None


OUTCOMES: dict[str, int] = {}  # how the passing cases passed (a tally for tuning the strategies)


def _passed(how: str) -> None:
    OUTCOMES[how] = OUTCOMES.get(how, 0) + 1


def run_case(case: dict) -> str | None:
    """Runs one case; returns None when it passes, else what went wrong."""
    op, backend, device = case["op"], case["backend"], case["device"]
    g = torch.Generator().manual_seed(case["seed"])
    values, scalars = BUILDERS[op](case["params"], g, case["corrupt"])
    if values.get(case["meta_arg"]) is None:  # e.g. an absent optional bias
        case = {**case, "meta_arg": None}
    for name, value in case.get("override", {}).items():  # hand-written index values
        values[name] = torch.tensor(value, dtype=values[name].dtype)
    for name in case["nonfinite"]:
        if values.get(name) is not None:
            plant_nonfinite(values[name], g)
    floats = [t.dtype for t in values.values() if t is not None and t.is_floating_point()]
    float_dtype = floats[0] if floats else torch.float32

    bufs, views = {}, {}
    for name, t in values.items():
        if t is None:
            views[name] = None
            continue
        kind, dim, pad = case["views"][name]
        dev = "meta" if name == case["meta_arg"] else device
        bufs[name], views[name] = make_view(t, kind, dim, pad, dev)
    before = {n: bits(b) for n, b in bufs.items() if b.device.type != "meta"}

    # The reference: the torch backend on contiguous CPU copies of the same values.
    if case["meta_arg"] is None:
        ref_in = {n: None if v is None else v.detach().cpu().contiguous() for n, v in views.items()}
    else:
        ref_in = {n: None if v is None else values[n].clone() for n, v in views.items()}
    ref_err = None
    try:
        ref_out = call(op, ref_in, scalars, "torch")
    except (ValueError, RuntimeError) as e:
        ref_err = e

    bad_layout = [
        n
        for n, v in views.items()
        if v is not None and v.device.type != "meta" and not layout_ok(op, n, v, backend)
    ]
    try:
        out = call(op, views, scalars, backend)
        err = None
    except Exception as e:  # judged below
        err = e

    for n, buf in bufs.items():
        if n not in before:
            continue
        now = bits(buf)
        changed = now != before[n]
        if err is None and n in MUTATED.get(op, ()):
            changed &= ~footprint(buf, views[n])
        if bool(changed.any()):
            where = "outside the view" if err is None else "although the call raised"
            return f"{n}: {int(changed.sum())} element(s) of its buffer changed {where}"

    arg_names = (*TENSOR_ARGS[op], *scalars, "backend")
    if err is not None:
        if not isinstance(err, (ValueError, RuntimeError)):
            return f"raised {type(err).__name__} (not ValueError/RuntimeError): {err}"
        if not names_argument(err, arg_names):
            return f"error does not start with an argument's name: {str(err)[:300]}"
        if case["meta_arg"] is not None:
            return _passed("raised: meta device")
        if bad_layout:
            if not names_argument(err, bad_layout):
                return f"expected an error naming one of {bad_layout}, got: {str(err)[:300]}"
            return _passed("raised: layout")
        if ref_err is None:
            return f"raised although every layout is documented to work: {str(err)[:300]}"
        ref_name = str(ref_err).split(":", 1)[0].strip()
        if not names_argument(err, (ref_name,)):
            return f"the reference's error names {ref_name}, this one: {str(err)[:300]}"
        return _passed("raised: values")
    if case["meta_arg"] is not None:
        return f"accepted {case['meta_arg']} on the meta device"
    if bad_layout:
        return f"accepted {bad_layout} although their layout is documented to raise"
    if ref_err is not None:
        if not case["checked"]:  # an unchecked fast path: bad values ignored, outputs unspecified
            return _passed("unchecked: bad values ignored")
        return f"accepted inputs the reference rejects ({str(ref_err)[:200]})"
    if case["nonfinite"] and op not in NONFINITE_EXACT:
        return _passed("non-finite: memory-safe")
    got = out if op not in MUTATED else tuple(views[n] for n in MUTATED[op])
    want = ref_out if op not in MUTATED else tuple(ref_in[n] for n in MUTATED[op])
    if op in COMPUTED:
        diff = _compare(op, got, want, float_dtype, scalars)
        return diff if diff is not None else _passed("equal to the reference")
    if op in MUTATED:  # caches are copies: bit-exact
        for n, a, b in zip(MUTATED[op], got, want, strict=True):
            if not torch.equal(bits(a), bits(b)):
                return f"{n}: contents differ from the reference"
        return _passed("equal to the reference")
    diff = _compare(op, got, want, float_dtype, scalars)
    return diff if diff is not None else _passed("equal to the reference")


def _set_triton_value_checks(on: bool) -> None:
    """Turns the Triton ops' index-value checks off, as on a GPU without PIPO_VALIDATE (bad
    indices must then be ignored by the kernels themselves), or back on."""
    import pipo_kernels._checks as checks
    import pipo_kernels.triton as pt

    for name in pt.__all__:
        mod = getattr(pt, name)
        if hasattr(mod, "should_check_values"):
            mod.should_check_values = checks.should_check_values if on else (lambda t: False)


class OutOfBounds(Exception):
    """A Triton kernel touched memory outside every tensor argument of its launch."""


def _install_interpreter_bounds_check() -> None:
    """A memcheck for Triton's interpreter: every load and store of a launch must fall inside the
    span of one of the launch's tensor arguments (the interpreter itself follows any pointer)."""
    import numpy as np
    from triton.runtime import interpreter as ti

    spans: list[tuple[int, int]] = []
    init_args = ti.GridExecutor._init_args_hst

    def init_args_checked(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        spans.clear()
        for arg in (*args_hst, *kwargs_hst.values()):
            if isinstance(arg, torch.Tensor) and arg.numel():
                last = sum((n - 1) * st for n, st in zip(arg.shape, arg.stride(), strict=True))
                spans.append((arg.data_ptr(), arg.data_ptr() + (last + 1) * arg.element_size()))
        return args_hst, kwargs_hst

    def check(ptrs, mask, what):
        addr = np.asarray(ptrs.data).astype(np.uint64)
        live = np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)
        size = np.dtype(ti._get_np_dtype(ptrs.get_element_ty())).itemsize
        ok = ~live
        for lo, hi in spans:
            ok |= (addr >= lo) & (addr + size <= hi)
        if not ok.all():
            bad = int(addr[~ok].flat[0])
            raise OutOfBounds(f"{what} of {size} bytes at {bad:#x}, outside every tensor argument")

    load, store = (
        ti.InterpreterBuilder.create_masked_load,
        ti.InterpreterBuilder.create_masked_store,
    )

    def load_checked(self, ptrs, mask, *rest):
        check(ptrs, mask, "load")
        return load(self, ptrs, mask, *rest)

    def store_checked(self, ptrs, value, mask, *rest):
        check(ptrs, mask, "store")
        return store(self, ptrs, value, mask, *rest)

    ti.GridExecutor._init_args_hst = init_args_checked
    ti.InterpreterBuilder.create_masked_load = load_checked
    ti.InterpreterBuilder.create_masked_store = store_checked


def worker_main(conn) -> None:
    """Loop of the worker process: receive a case, send back None or the failure text."""
    torch.set_num_threads(1)
    # NaN / inf inputs make the Triton interpreter's numpy warn; the oracle judges the results.
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    import pipo_kernels  # registers the ops before the first case

    if pipo_kernels._backend.triton_interpreting():
        _install_interpreter_bounds_check()

    while True:
        try:
            case = conn.recv()
        except EOFError:
            return
        if case["device"] != "cpu":
            os.environ["PIPO_VALIDATE"] = "1" if case["checked"] else "0"
        elif case["backend"] == "triton":
            _set_triton_value_checks(case["checked"])
        try:
            result = run_case(case)
        except Exception:  # a harness error is reported, not raised
            result = "harness error:\n" + traceback.format_exc()
        conn.send(result)
        if result is not None and "CUDA error" in result:
            return  # the CUDA context is unusable after a device fault: a fresh worker takes over

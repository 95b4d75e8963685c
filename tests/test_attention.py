"""paged_attention on every backend against a dense float64 reference with an explicit mask."""

from dataclasses import dataclass

import pytest
import torch
from conftest import (
    device_backend_params,
    opcheck_utils,
    requires_cuda,
    seeded,
    skip_compile_if_interpreted,
)

import pipo_kernels
from pipo_kernels import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (out atol, out rtol) against the float64 reference computed from the same rounded inputs.
TOL = {torch.float32: (2e-5, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1e-2)}
LSE_TOL = {torch.float32: 2e-5, torch.float16: 2e-4, torch.bfloat16: 2e-4}


@dataclass(frozen=True)
class Case:
    name: str
    q_lens: tuple[int, ...]
    prefix: tuple[int, ...]  # cached positions before each sequence's queries
    heads: int
    kv_heads: int
    head_dim: int
    page_size: int
    mask: str | None = None  # None: causal; "tree": ancestor masks; "random": any boolean mask
    mask_cols: int = 0  # extra tree_mask columns beyond max q_len
    sm_scale: float | None = None

    def __str__(self) -> str:
        return self.name


# One list drives correctness, opcheck and compile: decode, chunked prefill and trees; page sizes
# 1..128; head_dim 64/128/256; GQA groups 1, 3, 4, 8; zero-length sequences; Nq = 0.
CASES = [
    Case("decode", (1, 1, 1), (5, 0, 37), 4, 2, 64, 16),
    Case("prefill-gqa3", (7, 0, 3), (0, 4, 9), 6, 2, 64, 4),
    Case("tree-mqa-page1", (5, 3), (11, 0), 8, 1, 64, 1, "tree", sm_scale=0.3),
    Case("tree-page128-d128", (6, 1, 4), (40, 3, 0), 4, 1, 128, 128, "tree", mask_cols=3),
    Case("random-mask-d256", (4, 2), (9, 20), 2, 2, 256, 8, "random"),
    Case("empty", (0, 0), (3, 0), 4, 4, 64, 2),
]


def tree_masks(q_lens, extra_cols, g):
    """Per sequence, a random tree over its queries (node 0 the root, parents earlier): query j
    sees its ancestors and itself."""
    cols = max(q_lens, default=0) + extra_cols
    rows = []
    for q_len in q_lens:
        m = torch.zeros(q_len, cols, dtype=torch.bool)
        for j in range(q_len):
            if j:
                parent = int(torch.randint(0, j, (1,), generator=g))
                m[j] = m[parent]
            m[j, j] = True
        rows.append(m)
    return torch.cat(rows) if rows else torch.zeros(0, cols, dtype=torch.bool)


def make_inputs(case: Case, dtype, device, seed=0, spare_pages=3):
    """Fresh random q and caches; each sequence's pages are a random subset of the cache."""
    g = seeded(seed)
    kv_lens = [q + p for q, p in zip(case.q_lens, case.prefix, strict=True)]
    pages_per_seq = [-(-n // case.page_size) for n in kv_lens]
    max_pages = max(pages_per_seq) + 1
    num_pages = sum(pages_per_seq) + spare_pages
    perm = torch.randperm(num_pages, generator=g)
    table = torch.full((len(kv_lens), max_pages), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages_per_seq):
        table[b, :n] = perm[used : used + n].int()
        used += n
    shape = (num_pages, case.page_size, case.kv_heads, case.head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    n_q = sum(case.q_lens)
    q = torch.randn(n_q, case.heads, case.head_dim, generator=g).to(dtype)
    indptr = torch.tensor([0, *torch.tensor(case.q_lens).cumsum(0).tolist()], dtype=torch.int32)
    mask = None
    if case.mask == "tree":
        mask = tree_masks(case.q_lens, case.mask_cols, g)
    elif case.mask == "random":
        mask = torch.rand(n_q, max(case.q_lens) + case.mask_cols, generator=g) < 0.5
    args = [q, k_cache, v_cache, table, torch.tensor(kv_lens, dtype=torch.int32), indptr, mask]
    return [None if t is None else t.to(device) for t in args]


def to64(args):
    return [t.double() if t is not None and t.is_floating_point() else t for t in args]


def poison_allocator(like: torch.Tensor, count: int = 4) -> None:
    """Frees NaN-filled blocks of `like`'s size so the op's freshly allocated outputs likely reuse
    them: an element the kernel never writes then shows up as NaN."""
    blocks = [torch.full_like(like, float("nan")) for _ in range(count)]
    del blocks


def check_against_reference(args, out, lse, dtype, sm_scale=None):
    ref_out, ref_lse = reference.paged_attention(*to64(args), sm_scale, return_lse=True)
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref_out.shape
    torch.testing.assert_close(out.double().cpu(), ref_out.cpu(), atol=atol, rtol=rtol)
    if lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
        torch.testing.assert_close(
            lse.double().cpu(), ref_lse.cpu(), atol=LSE_TOL[dtype], rtol=1e-5
        )


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(device, backend, dtype, case):
    args = make_inputs(case, dtype, device)
    poison_allocator(args[0])
    out, lse = pipo_kernels.paged_attention(
        *args, sm_scale=case.sm_scale, return_lse=True, backend=backend
    )
    check_against_reference(args, out, lse, dtype, case.sm_scale)
    out_only = pipo_kernels.paged_attention(*args, sm_scale=case.sm_scale, backend=backend)
    torch.testing.assert_close(out_only, out, atol=0, rtol=0)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512bf16"])
def test_every_cpu_kernel_copy(isa, monkeypatch):
    """The CPU kernel is compiled once per instruction set; PIPO_CPU_ISA caps the runtime choice
    so each copy this CPU can run is checked (a copy the CPU lacks falls back to a lower one)."""
    if not pipo_kernels.HAS_C:
        pytest.skip("pipo_kernels._C is not built")
    monkeypatch.setenv("PIPO_CPU_ISA", isa)
    for case in CASES[:5]:
        for dtype in DTYPES:
            args = make_inputs(case, dtype, "cpu", seed=3)
            out, lse = pipo_kernels.paged_attention(
                *args, sm_scale=case.sm_scale, return_lse=True, num_splits=2, backend="cpu"
            )
            check_against_reference(args, out, lse, dtype, case.sm_scale)


def test_reference_against_plain_sdpa():
    """The reference itself: one causal sequence with no prefix is plain causal SDPA."""
    case = Case("one", (9,), (0,), 4, 2, 64, 4)
    q, k_cache, v_cache, table, kv_lens, indptr, _ = make_inputs(case, torch.float64, "cpu")
    k = reference.gather_kv(k_cache, table[0], 9).repeat_interleave(2, dim=1)
    v = reference.gather_kv(v_cache, table[0], 9).repeat_interleave(2, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
    ).transpose(0, 1)
    out = reference.paged_attention(q, k_cache, v_cache, table, kv_lens, indptr)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
def test_lower_triangular_tree_mask_equals_causal(device, backend):
    case = Case("chains", (5, 3, 8), (17, 0, 6), 8, 2, 64, 4)
    args = make_inputs(case, torch.float32, device, seed=5)
    tril = [torch.ones(n, 8, dtype=torch.bool).tril() for n in case.q_lens]
    mask = torch.cat(tril).to(device)
    causal, lse_c = pipo_kernels.paged_attention(*args[:6], return_lse=True, backend=backend)
    tree, lse_t = pipo_kernels.paged_attention(*args[:6], mask, return_lse=True, backend=backend)
    torch.testing.assert_close(tree, causal, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse_t, lse_c, atol=1e-6, rtol=1e-6)


def _split_backends():
    return [p for p in device_backend_params("paged_attention") if p.values[1] != "torch"]


@pytest.mark.parametrize("device,backend", _split_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_kv_equals_unsplit(device, backend, dtype):
    """Forcing 2, 3 or 7 KV splits (merged through the log-sum-exp) matches one split, including
    splits that see nothing (7 splits of a short sequence) and the automatic choice."""
    case = Case("long", (3, 1, 0, 2), (190, 70, 5, 0), 8, 2, 64, 16, "tree")
    args = make_inputs(case, dtype, device, seed=7)
    one, lse_one = pipo_kernels.paged_attention(
        *args, return_lse=True, num_splits=1, backend=backend
    )
    check_against_reference(args, one, lse_one, dtype)
    for splits in (0, 2, 3, 7):
        out, lse = pipo_kernels.paged_attention(
            *args, return_lse=True, num_splits=splits, backend=backend
        )
        atol = 1e-6 if dtype == torch.float32 else TOL[dtype][0]
        torch.testing.assert_close(out, one, atol=atol, rtol=1e-5)
        torch.testing.assert_close(lse, lse_one, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
def test_query_that_sees_nothing(device, backend):
    """An all-false tree_mask row over an empty prefix: output 0 and lse -inf (not NaN)."""
    case = Case("blind", (3,), (0,), 2, 1, 64, 4, "tree")
    args = make_inputs(case, torch.float32, device)
    args[6][1] = False
    out, lse = pipo_kernels.paged_attention(*args, return_lse=True, num_splits=2, backend=backend)
    assert torch.equal(out[1].cpu(), torch.zeros_like(out[1].cpu()))
    assert torch.isneginf(lse[1]).all()
    check_against_reference(args, out, lse, torch.float32)


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
def test_strided_q_view_of_fused_qkv(device, backend):
    case = Case("strided", (4, 2), (6, 1), 4, 2, 64, 8)
    args = make_inputs(case, torch.float16, device, seed=2)
    q = args[0]
    fused = torch.randn(q.shape[0], 8 * 64, generator=seeded(9)).half().to(device)
    fused[:, : 4 * 64] = q.reshape(q.shape[0], -1)
    args[0] = fused[:, : 4 * 64].view(q.shape[0], 4, 64)
    assert not args[0].is_contiguous()
    out, lse = pipo_kernels.paged_attention(*args, return_lse=True, backend=backend)
    check_against_reference(args, out, lse, torch.float16)


# --- bad inputs: a clear error naming the argument ----------------------------------------------


def _bad_inputs():
    """(label, argument named in the error, function(args) -> args)."""

    def with_(i, f):
        return lambda a: [f(t) if j == i else t for j, t in enumerate(a)]

    return [
        ("mask rows", "tree_mask", with_(6, lambda m: m[:-1])),
        ("mask columns", "tree_mask", with_(6, lambda m: m[:, :2])),
        ("mask dtype", "tree_mask", with_(6, lambda m: m.int())),
        ("mask 1-D", "tree_mask", with_(6, lambda m: m[:, 0])),
        ("page out of range", "block_table", with_(3, lambda t: t + 1000)),
        ("negative page", "block_table", with_(3, lambda t: t - 1000)),
        ("kv_len < q_len", "kv_lens", with_(4, lambda n: n.clamp_max(2))),
        ("kv_len beyond table", "kv_lens", with_(4, lambda n: n + 10_000)),
        ("head ratio", "q", with_(0, lambda q: q[:, :3])),
        ("head_dim", "q", with_(0, lambda q: q[..., :32])),
        ("indptr length", "q_indptr", with_(5, lambda p: p[:-1])),
        ("indptr end", "q_indptr", with_(5, lambda p: p.clone().fill_(0))),
        ("indptr dtype", "q_indptr", with_(5, lambda p: p.long())),
        ("block_table dtype", "block_table", with_(3, lambda t: t.long())),
        ("v_cache dtype", "v_cache", with_(2, lambda v: v.half())),
        ("k_cache shape", "k_cache", with_(1, lambda k: k[..., :32])),
    ]


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
@pytest.mark.parametrize(
    "label,arg,mutate", _bad_inputs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_bad_inputs(device, backend, label, arg, mutate, monkeypatch):
    monkeypatch.setenv("PIPO_VALIDATE", "1")  # value checks on a GPU too
    case = Case("bad", (3, 4), (5, 2), 4, 2, 64, 4, "tree")
    args = mutate(make_inputs(case, torch.float32, device))
    with pytest.raises((RuntimeError, ValueError), match=arg):
        pipo_kernels.paged_attention(*args, backend=backend)


def test_negative_num_splits_is_an_error():
    args = make_inputs(CASES[0], torch.float32, "cpu")
    for backend in pipo_kernels.available_backends("paged_attention", torch.device("cpu")):
        if backend != "torch":
            with pytest.raises((RuntimeError, ValueError), match="num_splits"):
                pipo_kernels.paged_attention(*args, num_splits=-1, backend=backend)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_never_follows_out_of_range_pages(backend, monkeypatch):
    """Without PIPO_VALIDATE, positions on an out-of-range page are masked, not read."""
    monkeypatch.delenv("PIPO_VALIDATE", raising=False)
    case = Case("oob", (2,), (14,), 4, 2, 64, 4)
    args = make_inputs(case, torch.float32, "cuda")
    good = [t.clone() if t is not None else None for t in args]
    assert good[6] is None
    args[3][0, 1] = 1 << 30  # page 1 holds positions 4..7
    out = pipo_kernels.paged_attention(*args, backend=backend)
    # Expected: the good table with positions 4..7 masked out, computed densely in float64.
    q, k_cache, v_cache, table = (t.double() if t.is_floating_point() else t for t in good[:4])
    k = reference.gather_kv(k_cache, table[0], 16).repeat_interleave(2, dim=1)
    v = reference.gather_kv(v_cache, table[0], 16).repeat_interleave(2, dim=1)
    mask = reference.attention_mask(2, 16, None, q.device)
    mask[:, 4:8] = False
    scores = torch.einsum("qhd,khd->hqk", q, k) * 64**-0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    expected = torch.einsum("hqk,khd->qhd", probs, v)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


# --- torch.library integration -------------------------------------------------------------------


def _op_variants(device):
    ops = []
    if pipo_kernels.HAS_C:
        ops.append(("c++", torch.ops.pipo.paged_attention))
    if hasattr(torch.ops.pipo, "paged_attention_triton") and (
        device == "cuda" or pipo_kernels.triton_interpreting()
    ):
        ops.append(("triton", torch.ops.pipo.paged_attention_triton))
    return ops


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_opcheck(device, case):
    variants = _op_variants(device)
    assert variants, "no compiled or Triton op to check"
    args = make_inputs(case, torch.bfloat16, device)
    for name, op in variants:
        utils = opcheck_utils(device, is_triton=name == "triton")
        torch.library.opcheck(op, (*args, case.sm_scale, True, 2), test_utils=utils)
        torch.library.opcheck(op, (*args, None, False, 0), test_utils=utils)


@pytest.mark.parametrize("device,backend", device_backend_params("paged_attention"))
def test_torch_compile_fullgraph(device, backend):
    skip_compile_if_interpreted(device, backend)
    if backend == "torch":
        pytest.skip("the reference loops over sequences on the host (data-dependent)")
    case = CASES[2]

    def step(q, k_cache, v_cache, table, kv_lens, indptr, mask):
        out, lse = pipo_kernels.paged_attention(
            q, k_cache, v_cache, table, kv_lens, indptr, mask, return_lse=True, backend=backend
        )
        return out.float() * 2, lse

    compiled = torch.compile(step, fullgraph=True)
    args = make_inputs(case, torch.float32, device)
    out, lse = compiled(*args)
    check_against_reference(args, out / 2, lse, torch.float32)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_graph_capture(backend, case):
    args = make_inputs(case, torch.bfloat16, "cuda")
    fresh = make_inputs(case, torch.bfloat16, "cuda", seed=11)
    pipo_kernels.paged_attention(*args, return_lse=True, backend=backend)  # warm-up / compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = pipo_kernels.paged_attention(*args, return_lse=True, backend=backend)
    # Replay on new contents of the same buffers (same shapes and page layout).
    for t, f in zip(args, fresh, strict=True):
        if t is not None:
            t.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    check_against_reference(args, out, lse, torch.bfloat16)


def test_default_backend_prefers_compiled_kernel():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pipo_kernels.HAS_C:
        assert pipo_kernels.resolve("paged_attention", device) == device.type

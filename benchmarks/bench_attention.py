"""Benchmark paged_attention: decode (one query per sequence) and draft-tree verification (a tree
mask over the query block) on the paged cache; with --prefill, the prefill sweep: causal prefill
(q_len = kv_len, 512 ... 16k) and trees of 16-64 nodes over 4k-32k contexts.

Baselines, measured in the same run on the same inputs:
  * sdpa   — torch scaled_dot_product_attention on KV already gathered into contiguous
             [B, Hkv, L, D] tensors (enable_gqa; the gather is not timed): a dense boolean mask
             for decode / trees; for causal prefill is_causal=True (its causal block skipping).
             On a GPU restricted to the flash and memory-efficient backends; on a CPU torch's
             default choice (its flash-style CPU kernel).
  * flex   — torch FlexAttention (compiled) with a block mask built from the same tree/causal
             rule, on the same gathered KV (GPU by default; --flex on CPU, slow to compile).
  * flashinfer — BatchPrefillWithPagedKVCacheWrapper on the same paged cache (causal, or a
             custom mask for trees), where flashinfer is importable (plan() is not timed).
Every function of one shape is timed in turn, round after round, so that all see the same machine
load. Reported per row: median µs, ratio to each baseline (>1 = faster); decode / trees: KV bytes
read / time and its fraction of the copy bandwidth (read + write) measured in the same run;
prefill and long trees: TFLOP/s (the visible query-key pairs: 4 * Hq * D flops each) and its
fraction of the matmul rate measured in the same run for the dtype (frac_limit).

    python -m benchmarks.bench_attention            # decode / tree sweep -> attention.json
    python -m benchmarks.bench_attention --quick    # a couple of minutes on a CPU
    python -m benchmarks.bench_attention --prefill  # prefill sweep -> attention_prefill.json
    python -m benchmarks.bench_attention --prefill --quick   # its CPU-sized grid (minutes)

The prefill sweep writes its JSON after every shape, so a run stopped at a time limit keeps the
shapes it finished; the most important shapes (4k and 16k prefill, a 64-node tree over 4k) come
first.
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
import torch.nn.functional as F

import pipo_kernels
from benchmarks.common import (
    PRESETS,
    Case,
    backends_for,
    bench_parser,
    copy_bandwidth_gbs,
    device_name,
    format_table,
    matmul_tflops,
    report,
    result_columns,
    run_cases,
    sweep,
    write_results,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BENCH_PRESETS = ("qwen3.5-4b", "llama3-8b")
# The prefill sweep's head shapes (q heads, kv heads, head_dim), named by GQA group and head_dim:
# Qwen3-4B / Llama-3-8B (group 4, d 128), Qwen3.5-4B (group 4, d 256), and group 8 at both.
PREFILL_SHAPES = {
    "gqa4-d128": (32, 8, 128),
    "gqa8-d128": (32, 4, 128),
    "gqa4-d256": (16, 4, 256),
    "gqa8-d256": (16, 2, 256),
}


def tree_mask(nodes: int, g: torch.Generator) -> torch.Tensor:
    """[nodes, nodes] bool ancestor mask of a random tree (parents precede children)."""
    m = torch.zeros(nodes, nodes, dtype=torch.bool)
    for j in range(nodes):
        if j:
            m[j] = m[int(torch.randint(0, j, (1,), generator=g))]
        m[j, j] = True
    return m


def head_shape(name: str) -> tuple[int, int, int]:
    """(q heads, kv heads, head_dim) of a preset or a PREFILL_SHAPES name."""
    if name in PREFILL_SHAPES:
        return PREFILL_SHAPES[name]
    p = PRESETS[name]
    return p["q_heads"], p["kv_heads"], p["head_dim"]


def make_problem(preset, batch, kv_len, q_len, page_size, dtype, device, seed=0, causal=False):
    """Equal-length sequences on randomly permuted pages; q_len 1 is decode, a causal block
    (`causal`: no mask, the queries' own causal rule) or else a tree."""
    hq, hkv, d = head_shape(preset)
    g = torch.Generator().manual_seed(seed)
    pages_per_seq = -(-kv_len // page_size)
    num_pages = batch * pages_per_seq
    table = torch.randperm(num_pages, generator=g).view(batch, pages_per_seq).int()
    k_cache = torch.randn(num_pages, page_size, hkv, d, generator=g).to(dtype)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch * q_len, hq, d, generator=g).to(dtype)
    kv_lens = torch.full((batch,), kv_len, dtype=torch.int32)
    indptr = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32)
    tree = q_len > 1 and not causal
    trees = torch.stack([tree_mask(q_len, g) for _ in range(batch)]) if tree else None
    mask = None if trees is None else trees.reshape(batch * q_len, q_len)
    args = [q, k_cache, v_cache, table, kv_lens, indptr, mask]
    return [None if t is None else t.to(device) for t in args], trees


def gathered(args, trees, batch, kv_len, q_len, dense_mask=True):
    """Contiguous q [B, Hq, q_len, D], k / v [B, Hkv, L, D] and the dense mask [B, 1, q_len, L]
    (None without `dense_mask`: causal prefill, whose baselines take is_causal instead)."""
    q, k_cache, v_cache, table = args[:4]
    from pipo_kernels.reference import gather_kv

    k = torch.stack([gather_kv(k_cache, table[b], kv_len) for b in range(batch)]).transpose(1, 2)
    v = torch.stack([gather_kv(v_cache, table[b], kv_len) for b in range(batch)]).transpose(1, 2)
    qd = q.view(batch, q_len, q.shape[1], q.shape[2]).transpose(1, 2)
    dense = None
    if dense_mask:
        dense = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool, device=q.device)
        if trees is not None:
            dense[:, 0, :, kv_len - q_len :] = trees.to(q.device)
    return qd.contiguous(), k.contiguous(), v.contiguous(), dense


def sdpa_fn(qd, k, v, dense):
    """SDPA with the dense mask, or causal (is_causal) when `dense` is None; on a GPU only the
    flash and memory-efficient backends may run it (an error, not the math fallback, otherwise)."""
    call = partial(
        F.scaled_dot_product_attention,
        qd,
        k,
        v,
        attn_mask=dense,
        is_causal=dense is None,
        enable_gqa=True,
    )
    if qd.device.type != "cuda":
        return call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def fused():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return call()

    return fused


def flex_fn(qd, k, v, trees, kv_len, q_len):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    prefix = kv_len - q_len
    if trees is None:

        def mask_mod(b, h, qi, kv):
            return kv <= prefix + qi
    else:
        tree = trees.to(qd.device)

        def mask_mod(b, h, qi, kv):
            key = kv - prefix
            return (key < 0) | tree[b, qi, key.clamp(min=0)]

    block = create_block_mask(mask_mod, qd.shape[0], None, q_len, kv_len, device=qd.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return partial(compiled, qd, k, v, block_mask=block, enable_gqa=True)


def flashinfer_fn(args, trees, batch, kv_len, q_len, causal=False):
    import flashinfer

    q, k_cache, v_cache, table = args[:4]
    device = q.device
    page_size = k_cache.shape[1]
    pages = table.shape[1]
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
    mask = {"causal": True}
    if not causal:
        dense = torch.ones(batch, q_len, kv_len, dtype=torch.bool)
        if trees is not None:
            dense[:, :, kv_len - q_len :] = trees.cpu()
        else:
            dense[:, :, kv_len - q_len :] = torch.ones(q_len, q_len, dtype=torch.bool).tril()
        mask = {"custom_mask": dense.reshape(-1).to(device)}
    last = kv_len - (pages - 1) * page_size
    wrapper.plan(
        args[5],
        torch.arange(0, batch * pages + 1, pages, dtype=torch.int32, device=device),
        table.reshape(-1),
        torch.full((batch,), last, dtype=torch.int32, device=device),
        q.shape[1],
        k_cache.shape[2],
        q.shape[2],
        page_size,
        q_data_type=q.dtype,
        **mask,
    )
    return partial(wrapper.run, q, (k_cache, v_cache))


def baseline_fns(t_args, trees, dense_kv, use_flex, label, failed, causal=False) -> dict:
    """The baselines of one shape by name: sdpa always; flex when `use_flex`, flashinfer on a GPU,
    each run once here and dropped with failed(name, label, exception) when it cannot run.
    dense_kv: what gathered() returns."""
    qd, k, v, dense = dense_kv
    batch, q_len, kv_len = qd.shape[0], qd.shape[2], k.shape[2]
    fns = {"sdpa": sdpa_fn(qd, k, v, dense)}
    makers = {}
    if use_flex:
        makers["flex"] = partial(flex_fn, qd, k, v, trees, kv_len, q_len)
    if qd.device.type != "cpu":
        makers["flashinfer"] = partial(flashinfer_fn, t_args, trees, batch, kv_len, q_len, causal)
    for name, make in makers.items():
        try:
            fns[name] = make()
            fns[name]()
        except Exception as exc:  # ImportError included (not installed): report, keep the rest
            fns.pop(name, None)
            failed(name, label, exc)
    return fns


def cases(args, presets, grid, dtype, device, use_flex, max_tokens):
    printed: set[tuple] = set()

    def failed(name: str, label: str, exc: Exception) -> None:  # first of each kind only
        if (name, type(exc)) not in printed:
            printed.add((name, type(exc)))
            print(f"{name} baseline failed for {label}: {type(exc).__name__}: {exc}")

    configs = [(p, *c) for p, c in itertools.product(presets, grid) if c[2] * c[3] <= max_tokens]
    for seed, (preset, kind, q_len, batch, kv_len) in enumerate(configs):
        t_args, trees = make_problem(
            preset, batch, kv_len, q_len, args.page_size, dtype, device, seed=seed
        )
        k_cache = t_args[1]
        kv_bytes = 2 * batch * kv_len * k_cache.shape[2] * k_cache.shape[3] * k_cache.element_size()
        qd, k, v, dense = gathered(t_args, trees, batch, kv_len, q_len)
        label = f"{preset} {kind} B{batch} L{kv_len}"
        fns = baseline_fns(t_args, trees, (qd, k, v, dense), use_flex, label, failed)
        yield Case(
            dict(preset=preset, kind=kind, q_len=q_len, batch=batch, kv_len=kv_len),
            partial(_on_backend, t_args),
            fns,
            op="paged_attention",
            bytes=kv_bytes,  # K and V of every sequence, read once
        )
        del qd, k, v, dense, fns


def _on_backend(t_args, backend):
    return pipo_kernels.paged_attention(*t_args, backend=backend)


def run(args) -> list[dict]:
    presets = args.presets or list(BENCH_PRESETS)
    if args.quick:
        grid = [("decode", 1, b, kv) for b in (1, 8) for kv in (512, 4096)]
        grid += [("tree", n, b, kv) for n in (16, 64) for b in (1, 4) for kv in (512, 4096)]
    else:
        # Sized for the GPU check (FlexAttention compiles once per shape): decode and trees at
        # a short and a long context, batch 1 (one sequence must fill the GPU) up to 64.
        kvs = args.kv_lens or [512, 4096, 32768]
        grid = [("decode", 1, b, kv) for b in (1, 64) for kv in kvs]
        grid += [("tree", n, b, kv) for n in (4, 16, 64) for b in (1, 8, 64) for kv in kvs[::2]]

    def make_cases(device, _):
        on_cpu = device.type == "cpu"
        max_tokens = args.max_tokens or (1 << 17 if on_cpu else 1 << 21)
        use_flex = args.flex or not on_cpu
        return cases(args, presets, grid, DTYPES[args.dtype], device, use_flex, max_tokens)

    return run_cases(
        "attention",
        args,
        make_cases,
        [
            ("preset", "preset", ""),
            ("kind", "kind", ""),
            ("q_len", "q/seq", "d"),
            ("batch", "B", "d"),
            ("kv_len", "KV len", "d"),
        ],
        extra={"dtype": args.dtype, "page_size": args.page_size},
        with_torch=False,
        budget_s=0.5 if args.quick else 1.0,
        interleaved=True,
    )


# --- the prefill sweep ----------------------------------------------------------------------------

# (kind, shape, q_len, batch, kv_len, page_size). The first rows are the targets' shapes, so a run
# stopped at its time limit has them; the rest of the grid follows.
PREFILL_FIRST = [
    ("prefill", "gqa4-d128", 4096, 1, 4096, 16),
    ("tree", "gqa4-d128", 64, 1, 4096, 16),
    ("prefill", "gqa4-d128", 16384, 1, 16384, 16),
    ("decode", "gqa4-d128", 1, 1, 4096, 16),
    ("prefill", "gqa4-d128", 2048, 8, 2048, 16),
]


def prefill_grid(quick: bool) -> list[tuple]:
    if quick:
        # CPU-sized: 512 and 2k on three head shapes, one 4k, batch 8 and page 64 once each,
        # 16- and 64-node trees over 4k, decode at 4k.
        grid = [
            ("prefill", shape, n, 1, n, 16)
            for n in (512, 2048)
            for shape in ("gqa4-d128", "gqa8-d128", "gqa4-d256")
        ]
        grid += [
            ("prefill", "gqa4-d128", 4096, 1, 4096, 16),
            ("prefill", "gqa4-d128", 2048, 1, 2048, 64),
            ("prefill", "gqa4-d128", 512, 8, 512, 16),
            ("tree", "gqa4-d128", 16, 1, 4096, 16),
            ("tree", "gqa4-d128", 64, 1, 4096, 16),
            ("decode", "gqa4-d128", 1, 1, 4096, 16),
            ("decode", "gqa4-d128", 1, 8, 4096, 16),
        ]
        return grid
    grid = list(PREFILL_FIRST)
    grid += [
        ("prefill", shape, n, b, n, page)
        for shape in PREFILL_SHAPES
        for n in (512, 1024, 2048, 4096, 8192, 16384)
        for b in (1, 8)
        for page in (16, 64)
    ]
    grid += [
        ("tree", shape, nodes, b, kv, 16)
        for shape in ("gqa4-d128", "gqa4-d256")
        for kv in (4096, 16384, 32768)
        for nodes in (16, 64)
        for b in (1, 8)
    ]
    grid += [("decode", "gqa4-d128", 1, b, kv, 16) for b in (1, 8) for kv in (4096, 32768)]
    return list(dict.fromkeys(grid))


def visible_pairs(kind: str, batch: int, q_len: int, kv_len: int, trees) -> int:
    """(query, key) pairs the op computes over the batch: causal L(L+1)/2, a tree's prefix plus
    its ancestor pairs, a decode query's whole context."""
    if kind == "prefill":
        return batch * q_len * (q_len + 1) // 2
    if trees is None:
        return batch * kv_len
    return batch * q_len * (kv_len - q_len) + int(trees.sum())


def prefill_cases(args, grid, dtype, device, peak_tflops, skipped):
    use_flex = args.flex or device.type != "cpu"
    if not use_flex:
        skipped.append(
            "flex: not timed on a CPU without --flex (FlexAttention runs there only through "
            "torch.compile, one inductor C++ compile per shape)"
        )

    def failed(name, label, exc):
        skipped.append(f"{name} {label}: {type(exc).__name__}: {exc}"[:300])

    for seed, (kind, shape, q_len, batch, kv_len, page) in enumerate(grid):
        label = f"{kind} {shape} B{batch} q{q_len} L{kv_len} page{page}"
        try:
            t_args, trees = make_problem(
                shape, batch, kv_len, q_len, page, dtype, device, seed, causal=kind == "prefill"
            )
            qd, k, v, dense = gathered(t_args, trees, batch, kv_len, q_len, kind != "prefill")
        except torch.OutOfMemoryError:
            skipped.append(f"{label}: out of memory")
            continue

        fns = baseline_fns(
            t_args, trees, (qd, k, v, dense), use_flex, label, failed, kind == "prefill"
        )
        hq, hkv, d = head_shape(shape)
        k_cache = t_args[1]
        kv_bytes = 2 * batch * kv_len * hkv * d * k_cache.element_size()
        flops = 4 * hq * d * visible_pairs(kind, batch, q_len, kv_len, trees)
        yield Case(
            dict(
                shape=shape,
                kind=kind,
                q_len=q_len,
                batch=batch,
                kv_len=kv_len,
                page_size=page,
                heads=f"{hq}/{hkv}",
                head_dim=d,
            ),
            partial(_on_backend, t_args),
            fns,
            op="paged_attention",
            bytes=kv_bytes,
            flops=flops,
            # Decode is bound by the KV bytes (gbs, frac_copy_bw); the rest by the matmul rate.
            limit=None if kind == "decode" else ("matmul", flops / (peak_tflops * 1e12) * 1e3),
        )
        del qd, k, v, dense, fns, t_args
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_prefill(args) -> list[dict]:
    """The prefill sweep, its JSON rewritten after every shape (see the module docstring)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    copy_gbs = copy_bandwidth_gbs(device)
    peak = matmul_tflops(device, dtype)
    grid = prefill_grid(args.quick)
    if args.kv_lens:
        grid = [c for c in grid if c[4] in args.kv_lens]
    skipped: list[str] = []
    extra = {
        "dtype": args.dtype,
        "grid": "quick (CPU-sized: prefill_grid(quick=True))" if args.quick else "full",
        "copy_bandwidth_gbs": copy_gbs,
        "matmul_tflops": peak,
        "matmul": f"{'8192' if device.type == 'cuda' else '1024'}^3 {args.dtype} torch.matmul",
        "skipped": skipped,
    }
    print(
        f"attention_prefill | device {device_name(device)} | copy BW {copy_gbs:.1f} GB/s | "
        f"{args.dtype} matmul {peak:.3f} TFLOP/s | {len(grid)} shapes"
    )
    backends = partial(backends_for, device=device, triton_on_cpu=args.triton, with_torch=False)
    rows: list[dict] = []
    for case in prefill_cases(args, grid, dtype, device, peak, skipped):
        new = sweep(
            [case],
            device,
            backends,
            copy_gbs=copy_gbs,
            budget_s=1.0 if args.quick else 2.0,
            desc="attention_prefill",
            timing={"min_runs": 3 if device.type == "cpu" else 5},
            interleaved=True,
        )
        rows += new
        write_results("attention_prefill", device, rows, extra, out_dir=args.out)
        print(format_table(new, PREFILL_COLUMNS + result_columns(new)), flush=True)
    report("attention_prefill", device, rows, PREFILL_COLUMNS, extra, args.out)
    for line in skipped:
        print("skipped:", line)
    return rows


PREFILL_COLUMNS = [
    ("shape", "shape", ""),
    ("kind", "kind", ""),
    ("q_len", "q/seq", "d"),
    ("batch", "B", "d"),
    ("kv_len", "KV len", "d"),
    ("page_size", "page", "d"),
]


def main(argv=None) -> None:
    parser = bench_parser(__doc__, quick_help="fewer shapes (the prefill sweep: CPU-sized)")
    parser.add_argument(
        "--prefill", action="store_true", help="the prefill sweep (attention_prefill.json)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument(
        "--kv-lens",
        nargs="*",
        type=int,
        help="KV lengths of the full sweep (trees: every other); --prefill: only these",
    )
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="skip shapes with batch * KV length above this (default 128k on CPU, 2M on GPU)",
    )
    parser.add_argument("--flex", action="store_true", help="also time FlexAttention on CPU")
    args = parser.parse_args(argv)
    (run_prefill if args.prefill else run)(args)


if __name__ == "__main__":
    main()

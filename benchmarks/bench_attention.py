"""Benchmark paged_attention: decode (one query per sequence) and draft-tree verification (a tree
mask over the query block) on the paged cache.

Baselines, measured in the same run on the same inputs:
  * sdpa   — torch scaled_dot_product_attention with a dense boolean mask on KV already gathered
             into contiguous [B, Hkv, L, D] tensors (enable_gqa); the gather is not timed.
  * flex   — torch FlexAttention (compiled) with a block mask built from the same tree/causal
             rule, on the same gathered KV (GPU by default; --flex on CPU, slow to compile).
  * flashinfer — BatchPrefillWithPagedKVCacheWrapper with a custom mask on the same paged cache,
             where flashinfer is importable (plan() is not timed).
Every function of one shape is timed in turn, round after round, so that all see the same machine
load. Reported per row: median µs, ratio to each baseline (>1 = faster), KV bytes read / time, and its
fraction of the copy bandwidth (read + write) measured in the same run.

    python -m benchmarks.bench_attention            # full sweep
    python -m benchmarks.bench_attention --quick    # a couple of minutes on a CPU
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
import torch.nn.functional as F

import pipo_kernels
from benchmarks.common import PRESETS, Case, bench_parser, run_cases

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BENCH_PRESETS = ("qwen3.5-4b", "llama3-8b")


def tree_mask(nodes: int, g: torch.Generator) -> torch.Tensor:
    """[nodes, nodes] bool ancestor mask of a random tree (parents precede children)."""
    m = torch.zeros(nodes, nodes, dtype=torch.bool)
    for j in range(nodes):
        if j:
            m[j] = m[int(torch.randint(0, j, (1,), generator=g))]
        m[j, j] = True
    return m


def make_problem(preset, batch, kv_len, q_len, page_size, dtype, device, seed=0):
    """Equal-length sequences on randomly permuted pages; q_len 1 is decode, else a tree."""
    p = PRESETS[preset]
    hq, hkv, d = p["q_heads"], p["kv_heads"], p["head_dim"]
    g = torch.Generator().manual_seed(seed)
    pages_per_seq = -(-kv_len // page_size)
    num_pages = batch * pages_per_seq
    table = torch.randperm(num_pages, generator=g).view(batch, pages_per_seq).int()
    k_cache = torch.randn(num_pages, page_size, hkv, d, generator=g).to(dtype)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch * q_len, hq, d, generator=g).to(dtype)
    kv_lens = torch.full((batch,), kv_len, dtype=torch.int32)
    indptr = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32)
    trees = torch.stack([tree_mask(q_len, g) for _ in range(batch)]) if q_len > 1 else None
    mask = None if trees is None else trees.reshape(batch * q_len, q_len)
    args = [q, k_cache, v_cache, table, kv_lens, indptr, mask]
    return [None if t is None else t.to(device) for t in args], trees


def gathered(args, trees, batch, kv_len, q_len):
    """Contiguous q [B, Hq, q_len, D], k / v [B, Hkv, L, D] and the dense mask [B, 1, q_len, L]."""
    q, k_cache, v_cache, table = args[:4]
    from pipo_kernels.reference import gather_kv

    k = torch.stack([gather_kv(k_cache, table[b], kv_len) for b in range(batch)]).transpose(1, 2)
    v = torch.stack([gather_kv(v_cache, table[b], kv_len) for b in range(batch)]).transpose(1, 2)
    qd = q.view(batch, q_len, q.shape[1], q.shape[2]).transpose(1, 2)
    dense = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool, device=q.device)
    if trees is not None:
        dense[:, 0, :, kv_len - q_len :] = trees.to(q.device)
    return qd.contiguous(), k.contiguous(), v.contiguous(), dense


def sdpa_fn(qd, k, v, dense):
    return partial(F.scaled_dot_product_attention, qd, k, v, attn_mask=dense, enable_gqa=True)


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


def flashinfer_fn(args, trees, batch, kv_len, q_len):
    import flashinfer

    q, k_cache, v_cache, table = args[:4]
    device = q.device
    page_size = k_cache.shape[1]
    pages = table.shape[1]
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
    dense = torch.ones(batch, q_len, kv_len, dtype=torch.bool)
    if trees is not None:
        dense[:, :, kv_len - q_len :] = trees.cpu()
    else:
        dense[:, :, kv_len - q_len :] = torch.ones(q_len, q_len, dtype=torch.bool).tril()
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
        custom_mask=dense.reshape(-1).to(device),
        q_data_type=q.dtype,
    )
    return partial(wrapper.run, q, (k_cache, v_cache))


def cases(args, presets, grid, dtype, device, use_flex, max_tokens):
    configs = [(p, *c) for p, c in itertools.product(presets, grid) if c[2] * c[3] <= max_tokens]
    for seed, (preset, kind, q_len, batch, kv_len) in enumerate(configs):
        t_args, trees = make_problem(
            preset, batch, kv_len, q_len, args.page_size, dtype, device, seed=seed
        )
        k_cache = t_args[1]
        kv_bytes = 2 * batch * kv_len * k_cache.shape[2] * k_cache.shape[3] * k_cache.element_size()
        qd, k, v, dense = gathered(t_args, trees, batch, kv_len, q_len)
        fns = {"sdpa": sdpa_fn(qd, k, v, dense)}
        if use_flex:
            try:
                fns["flex"] = flex_fn(qd, k, v, trees, kv_len, q_len)
                fns["flex"]()
            except Exception as exc:  # report, keep benchmarking the rest
                fns.pop("flex")
                print(f"flex attention failed for {preset} {kind} B{batch} L{kv_len}: {exc}")
        if device.type != "cpu":
            try:
                fns["flashinfer"] = flashinfer_fn(t_args, trees, batch, kv_len, q_len)
                fns["flashinfer"]()
            except Exception as exc:  # ImportError included: not installed
                fns.pop("flashinfer", None)
                if seed == 0:
                    print(f"flashinfer baseline unavailable: {type(exc).__name__}: {exc}")
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


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument(
        "--kv-lens", nargs="*", type=int, help="KV lengths of the full sweep (trees: every other)"
    )
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="skip shapes with batch * KV length above this (default 128k on CPU, 2M on GPU)",
    )
    parser.add_argument("--flex", action="store_true", help="also time FlexAttention on CPU")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

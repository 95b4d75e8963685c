"""Benchmark kv_cache_append and kv_cache_compact on every available backend.

Baseline: the code a user would write, `index_copy_` on the flattened cache (append) and an
index-gather + index_put_ (compaction). Reported per row: median time, effective bandwidth (bytes
read + written), ratio to the baseline measured in the same run (>1 = faster) and fraction of the
copy bandwidth measured in the same run.

    python -m benchmarks.bench_kv_cache            # full sweep
    python -m benchmarks.bench_kv_cache --quick    # a couple of minutes on a CPU
"""

from __future__ import annotations

import itertools
from functools import partial

import torch

import pipo_kernels
from benchmarks.common import (
    PRESETS,
    Case,
    backends_for,
    bench_parser,
    copy_bandwidth_gbs,
    report,
    sweep,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PAGE_SIZE = 16


def make_append(preset: str, tokens: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    p = PRESETS[preset]
    heads, dim = p["kv_heads"], p["head_dim"]
    g = torch.Generator(device="cpu").manual_seed(seed)
    num_pages = 2 * (tokens + PAGE_SIZE - 1) // PAGE_SIZE + 1
    k_cache = torch.randn(num_pages, PAGE_SIZE, heads, dim, generator=g).to(dtype).to(device)
    v_cache = torch.randn_like(k_cache)
    key = torch.randn(tokens, heads, dim, generator=g).to(dtype).to(device)
    value = torch.randn_like(key)
    # Scattered destinations, as a batch of sequences on a fragmented page pool would give.
    slots = torch.randperm(num_pages * PAGE_SIZE, generator=g)[:tokens].to(device)
    return key, value, k_cache, v_cache, slots


def baseline_append(key, value, k_cache, v_cache, slots):
    heads, dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, heads, dim).index_copy_(0, slots, key)
    v_cache.view(-1, heads, dim).index_copy_(0, slots, value)


def baseline_compact(k_cache, v_cache, src, dst):
    for cache in (k_cache, v_cache):
        rows = cache.view(-1, cache.shape[2], cache.shape[3])
        rows.index_put_((dst,), rows.index_select(0, src))


def cases(presets, token_counts, dtype, device):
    for preset, tokens in itertools.product(presets, token_counts):
        key, value, k_cache, v_cache, slots = make_append(preset, tokens, dtype, device)
        row_bytes = key[0].numel() * key.element_size()
        tensors = (key, value, k_cache, v_cache, slots)
        # K and V rows, each read once and written once.
        yield Case(
            dict(op="append", preset=preset, tokens=tokens),
            partial(_on_backend, pipo_kernels.kv_cache_append, tensors),
            {"baseline": partial(baseline_append, *tensors)},
            op="kv_cache_append",
            bytes=4 * tokens * row_bytes,
        )
        if tokens >= 2:  # move half of the new rows one slot along their (overlapping) slots
            m = tokens // 2
            cargs = (k_cache, v_cache, slots[:m].contiguous(), slots[1 : m + 1].contiguous())
            yield Case(
                dict(op="compact", preset=preset, tokens=m),
                partial(_on_backend, pipo_kernels.kv_cache_compact, cargs),
                {"baseline": partial(baseline_compact, *cargs)},
                op="kv_cache_compact",
                bytes=4 * m * row_bytes,
            )


def _on_backend(fn, args, backend):
    return fn(*args, backend=backend)


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    copy_gbs = copy_bandwidth_gbs(device)
    backends = partial(backends_for, device=device, triton_on_cpu=args.triton)
    print(
        f"device {device} | copy bandwidth (read+write) {copy_gbs:.1f} GB/s | "
        f"backends {backends('kv_cache_append')}"
    )
    presets = args.presets or (["tiny", "llama3-8b"] if args.quick else list(PRESETS))
    token_counts = args.tokens or ([1, 256, 4096] if args.quick else [1, 16, 256, 4096, 16384])
    rows = sweep(
        cases(presets, token_counts, dtype, device),
        device,
        backends,
        copy_gbs=copy_gbs,
        budget_s=0.2 if args.quick else 0.5,
        desc="kv_cache",
    )
    report(
        "kv_cache",
        device,
        rows,
        [
            ("op", "op", ""),
            ("preset", "preset", ""),
            ("tokens", "tokens", "d"),
            ("backend", "backend", ""),
            ("us", "median µs", ".1f"),
            ("baseline_us", "baseline µs", ".1f"),
            ("gbs", "GB/s", ".1f"),
            ("vs_baseline", "x baseline", ".2f"),
            ("frac_copy_bw", "of copy BW", ".0%"),
        ],
        {"copy_bandwidth_gbs": copy_gbs, "dtype": args.dtype},
        out_dir=args.out,
    )
    return rows


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument("--tokens", nargs="*", type=int)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

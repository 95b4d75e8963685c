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
from benchmarks.common import PRESETS, Case, bench_parser, run_cases

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
        append = (key, value, k_cache, v_cache, slots)
        yield _case("kv_cache_append", baseline_append, append, preset, tokens, row_bytes)
        if tokens >= 2:  # move half of the new rows one slot along their (overlapping) slots
            m = tokens // 2
            moves = (k_cache, v_cache, slots[:m].contiguous(), slots[1 : m + 1].contiguous())
            yield _case("kv_cache_compact", baseline_compact, moves, preset, m, row_bytes)


def _case(op: str, baseline, args: tuple, preset: str, rows: int, row_bytes: int) -> Case:
    return Case(
        dict(op=op.removeprefix("kv_cache_"), preset=preset, tokens=rows),
        partial(_on_backend, getattr(pipo_kernels, op), args),
        {"baseline": partial(baseline, *args)},
        op=op,
        bytes=4 * rows * row_bytes,  # K and V rows, each read once and written once
    )


def _on_backend(fn, args, backend):
    return fn(*args, backend=backend)


def run(args) -> list[dict]:
    presets = args.presets or (["tiny", "llama3-8b"] if args.quick else list(PRESETS))
    token_counts = args.tokens or ([1, 256, 4096] if args.quick else [1, 16, 256, 4096, 16384])
    return run_cases(
        "kv_cache",
        args,
        lambda device, _: cases(presets, token_counts, DTYPES[args.dtype], device),
        [("op", "op", ""), ("preset", "preset", ""), ("tokens", "tokens", "d")],
        extra={"dtype": args.dtype},
    )


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument("--tokens", nargs="*", type=int)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

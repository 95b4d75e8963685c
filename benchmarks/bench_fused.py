"""Benchmark the fused per-layer ops fused_add_rmsnorm and qk_norm_rope_append on every backend.

Baselines: the eager code the model ran before these ops, per layer. For the norm, the residual
add then the model's RMSNorm (``s = residual + x; RMSNorm(s)``); for the attention prologue, the
two head RMSNorms, two ``apply_rope`` calls on a precomputed cos/sin (the per-step cos/sin
computation is not counted) and ``pipo_kernels.kv_cache_append`` on the same backend. Reported per
row: median time, effective bandwidth (bytes the fused op must read + write), ratio to the
baseline measured in the same run (>1 = faster) and fraction of the copy bandwidth measured in
the same run.

    python -m benchmarks.bench_fused            # full sweep
    python -m benchmarks.bench_fused --quick    # well under a minute on a CPU
"""

from __future__ import annotations

import itertools
from functools import partial

import torch

import pipo_kernels
from benchmarks.common import (
    PRESETS,
    bench_parser,
    copy_bandwidth_gbs,
    format_table,
    progress,
    time_fn,
    write_results,
)
from pipo.model import RMSNorm, apply_rope

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PAGE_SIZE = 16
MAX_POS = 8192
EPS = 1e-6


def make_norm(preset: str, tokens: int, dtype, device, seed=0):
    h = PRESETS[preset]["hidden"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, h, generator=g).to(dtype).to(device)
    residual = torch.randn(tokens, h, generator=g).to(dtype).to(device)
    norm = RMSNorm(h, EPS).to(dtype=dtype, device=device)
    return x, residual, norm


def make_rope(preset: str, tokens: int, dtype, device, seed=0):
    """q/k/v as views into one fused QKV output, norms, the cos/sin table, caches, slots."""
    p = PRESETS[preset]
    hq, hkv, d = p["q_heads"], p["kv_heads"], p["head_dim"]
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=g).to(dtype).to(device)
    q, k, v = qkv.view(tokens, hq + 2 * hkv, d).split([hq, hkv, hkv], dim=1)
    norms = [RMSNorm(d, EPS).to(dtype=dtype, device=device) for _ in range(2)]
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = torch.arange(MAX_POS, dtype=torch.float32)[:, None] * inv_freq
    table = torch.cat([freqs.cos(), freqs.sin()], 1).to(device)
    positions = torch.randint(0, MAX_POS, (tokens,), generator=g).to(device)
    cos = torch.cat([table[positions, : d // 2]] * 2, 1)
    sin = torch.cat([table[positions, d // 2 :]] * 2, 1)
    num_pages = 2 * (tokens + PAGE_SIZE - 1) // PAGE_SIZE + 1
    k_cache = torch.zeros(num_pages, PAGE_SIZE, hkv, d, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_pages * PAGE_SIZE, generator=g)[:tokens].to(device)
    return dict(
        q=q,
        k=k,
        v=v,
        norms=norms,
        table=table,
        positions=positions,
        cos=cos,
        sin=sin,
        k_cache=k_cache,
        v_cache=v_cache,
        slots=slots,
    )


def baseline_norm(x, residual, norm):
    return norm(residual + x)


def baseline_rope(r, backend):
    q = apply_rope(r["norms"][0](r["q"]), r["cos"], r["sin"])
    k = apply_rope(r["norms"][1](r["k"]), r["cos"], r["sin"])
    pipo_kernels.kv_cache_append(k, r["v"], r["k_cache"], r["v_cache"], r["slots"], backend=backend)
    return q


def fused_rope(r, backend):
    pipo_kernels.qk_norm_rope_append(
        r["q"],
        r["k"],
        r["v"],
        r["norms"][0].weight,
        r["norms"][1].weight,
        r["table"],
        r["positions"],
        r["k_cache"],
        r["v_cache"],
        r["slots"],
        EPS,
        backend=backend,
    )


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    copy_gbs = copy_bandwidth_gbs(device)
    presets = args.presets or (["tiny", "qwen3-4b"] if args.quick else list(PRESETS))
    token_counts = args.tokens or ([1, 256] if args.quick else [1, 16, 256, 4096])
    budget = 0.2 if args.quick else 0.5
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []

    def backends(op):
        return [
            b
            for b in pipo_kernels.available_backends(op, device)
            if not (b == "triton" and device.type == "cpu" and not args.triton)
        ]

    def measure(op, preset, tokens, moved, baseline, kernel):
        for backend in backends(op):
            base = time_fn(partial(baseline, backend=backend), device, budget_s=budget)
            t = time_fn(partial(kernel, backend=backend), device, budget_s=budget)
            gbs = moved / (t.median_ms * 1e-3) / 1e9
            rows.append(
                dict(
                    op=op,
                    preset=preset,
                    tokens=tokens,
                    backend=backend,
                    us=t.median_ms * 1e3,
                    baseline_us=base.median_ms * 1e3,
                    gbs=gbs,
                    vs_baseline=base.median_ms / t.median_ms,
                    frac_copy_bw=gbs / copy_gbs,
                    runs=t.runs,
                )
            )

    with torch.no_grad():
        for preset, tokens in progress(
            list(itertools.product(presets, token_counts)), desc="fused"
        ):
            x, residual, norm = make_norm(preset, tokens, dtype, device)
            h = x.shape[1]
            # Each call of the in-place op changes x and residual; rows stay finite (x is a norm
            # output from the second call on), so repeated timing is representative.
            measure(
                "fused_add_rmsnorm",
                preset,
                tokens,
                (4 * tokens * h + h) * elem,
                lambda backend, a=(x, residual, norm): baseline_norm(*a),
                lambda backend, a=(x, residual, norm): pipo_kernels.fused_add_rmsnorm(
                    a[0], a[1], a[2].weight, EPS, backend=backend
                ),
            )
            r = make_rope(preset, tokens, dtype, device)
            p = PRESETS[preset]
            d, hq, hkv = p["head_dim"], p["q_heads"], p["kv_heads"]
            # q read + written; k and v read, written to the cache; table row, position, slot.
            moved = tokens * ((2 * hq + 4 * hkv) * d * elem + d * 4 + 16) + 2 * d * elem
            # A fresh copy of q per call is not needed: RoPE of a rotated q costs the same.
            measure(
                "qk_norm_rope_append",
                preset,
                tokens,
                moved,
                partial(baseline_rope, r),
                partial(fused_rope, r),
            )
    path = write_results(
        "fused",
        device,
        rows,
        {"copy_bandwidth_gbs": copy_gbs, "dtype": args.dtype},
        out_dir=args.out,
    )
    print(f"device {device} | copy bandwidth (read+write) {copy_gbs:.1f} GB/s | dtype {args.dtype}")
    print(
        format_table(
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
        )
    )
    print(f"results: {path}")
    return rows


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument("--tokens", nargs="*", type=int)
    parser.add_argument(
        "--triton", action="store_true", help="also time Triton on CPU (interpreted: slow)"
    )
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

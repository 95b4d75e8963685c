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
from benchmarks.common import PRESETS, Case, bench_parser, run_cases
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


def baseline_rope(r):
    q = apply_rope(r["norms"][0](r["q"]), r["cos"], r["sin"])
    k = apply_rope(r["norms"][1](r["k"]), r["cos"], r["sin"])
    pipo_kernels.kv_cache_append(k, r["v"], r["k_cache"], r["v_cache"], r["slots"])
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


def fused_norm(x, residual, norm, backend):
    pipo_kernels.fused_add_rmsnorm(x, residual, norm.weight, EPS, backend=backend)


def cases(presets, token_counts, dtype, device):
    elem = torch.empty((), dtype=dtype).element_size()
    for preset, tokens in itertools.product(presets, token_counts):
        x, residual, norm = make_norm(preset, tokens, dtype, device)
        h = x.shape[1]
        # Each call of the in-place op changes x and residual; rows stay finite (x is a norm
        # output from the second call on), so repeated timing is representative.
        yield Case(
            dict(op="fused_add_rmsnorm", preset=preset, tokens=tokens),
            partial(fused_norm, x, residual, norm),
            {"baseline": partial(baseline_norm, x, residual, norm)},
            op="fused_add_rmsnorm",
            bytes=(4 * tokens * h + h) * elem,
        )
        r = make_rope(preset, tokens, dtype, device)
        p = PRESETS[preset]
        d, hq, hkv = p["head_dim"], p["q_heads"], p["kv_heads"]
        # q read + written; k and v read, written to the cache; table row, position, slot.
        # A fresh copy of q per call is not needed: RoPE of a rotated q costs the same.
        yield Case(
            dict(op="qk_norm_rope_append", preset=preset, tokens=tokens),
            partial(fused_rope, r),
            {"baseline": partial(baseline_rope, r)},
            op="qk_norm_rope_append",
            bytes=tokens * ((2 * hq + 4 * hkv) * d * elem + d * 4 + 16) + 2 * d * elem,
        )


def run(args) -> list[dict]:
    presets = args.presets or (["tiny", "qwen3-4b"] if args.quick else list(PRESETS))
    token_counts = args.tokens or ([1, 256] if args.quick else [1, 16, 256, 4096])
    with torch.no_grad():
        return run_cases(
            "fused",
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

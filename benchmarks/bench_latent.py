"""Benchmark fold_pairs (k = 2 and k = 4 tokens per group) and unfold_input on every available
backend.

Baselines, measured in the same run: the eager code a user would write (F.embedding + torch.cat +
F.linear (+ silu) for the fold; two RMSNorms + torch.cat + F.linear for the unfold) and
torch.compile of the same function. Reported per row: median time, ratio to both baselines
(>1 = faster) and the fraction of the limit measured in the same run:
  - decode sizes (N <= 256): weight bytes / copy bandwidth (read + write) — the time to stream the
    weight once;
  - prefill sizes (N >= 2048): torch.matmul on the pre-concatenated [N, kH] input — the matrix
    units' time for the same GEMM without the gather.
The weight is [H, kH] (the linear compressor of PIPO-k, k = 2 for pairs, 4 for PIPO-4; the MTP
input projection has k = 2). The vocabulary is capped at 32768 rows: each call gathers kN rows
whatever V is. `--fold 2 4` picks the fold's group sizes (default both).

    python -m benchmarks.bench_latent            # full sweep
    python -m benchmarks.bench_latent --quick    # a couple of minutes on a CPU
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
import torch.nn.functional as F

import pipo_kernels
from benchmarks.common import PRESETS, Case, bench_parser, run_cases, time_fn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BENCH_PRESETS = ("tiny", "qwen3-4b", "llama3-8b")
DECODE_MAX_ROWS = 256
EPS = 1e-6
MAX_VOCAB = 32768


def make_inputs(op: str, preset: str, n: int, dtype, device, seed: int = 0, k: int = 2) -> dict:
    """Inputs of one case; k: tokens per fold group (unfold_input always has 2 parts)."""
    h = PRESETS[preset]["hidden"]
    v = min(PRESETS[preset]["vocab"], MAX_VOCAB)
    g = torch.Generator(device="cpu").manual_seed(seed)
    dev = dict(dtype=dtype, device=device)
    emb = torch.randn(v, h, generator=g).to(**dev)
    weight = (torch.randn(h, k * h, generator=g) / (k * h) ** 0.5).to(**dev)
    if op == "fold_pairs":
        ids = torch.randint(0, v, (n, k), generator=g).to(device)
        bias = torch.randn(h, generator=g).to(**dev)
        return dict(pair_ids=ids, embedding=emb, weight=weight, bias=bias, activation="none")
    return dict(
        token_ids=torch.randint(0, v, (n,), generator=g).to(device),
        hidden=torch.randn(n, h, generator=g).to(**dev),
        embedding=emb,
        embed_norm_weight=(0.5 + torch.rand(h, generator=g)).to(**dev),
        hidden_norm_weight=(0.5 + torch.rand(h, generator=g)).to(**dev),
        weight=weight,
        eps=EPS,
    )


def eager_fold(pair_ids, embedding, weight, bias, activation):
    x = torch.cat([F.embedding(pair_ids[:, j], embedding) for j in range(pair_ids.shape[1])], -1)
    y = F.linear(x, weight, bias)
    return F.silu(y) if activation == "silu" else y


def _rmsnorm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def eager_unfold(token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight, eps):
    e = _rmsnorm(F.embedding(token_ids, embedding), embed_norm_weight, eps)
    h = _rmsnorm(hidden, hidden_norm_weight, eps)
    return F.linear(torch.cat([e, h], -1), weight)


EAGER = {"fold_pairs": eager_fold, "unfold_input": eager_unfold}


def concatenated(op: str, a: dict) -> torch.Tensor:
    """The [N, kH] input the GEMM reads, built outside the timed region."""
    if op == "fold_pairs":
        return a["embedding"][a["pair_ids"]].flatten(1).contiguous()
    return torch.cat([a["embedding"][a["token_ids"]], a["hidden"]], -1).contiguous()


def cases(args, ops, presets, sizes, dtype, device, copy_gbs, budget, folds=(2,)):
    # Default (automatic) dynamic shapes: one recompile marks N dynamic, so the sweep does not
    # compile once per shape; this is also what a serving loop would get.
    compiled = {op: torch.compile(EAGER[op]) for op in ops}
    variants = [(op, k) for op in ops for k in (folds if op == "fold_pairs" else (2,))]
    for (op, k), preset, n in itertools.product(variants, presets, sizes):
        h = PRESETS[preset]["hidden"]
        flops = 2 * n * h * k * h
        if device.type == "cpu" and args.quick and flops > args.cpu_max_gflop * 1e9:
            continue  # quick CPU runs skip the GEMMs that take seconds each
        a = make_inputs(op, preset, n, dtype, device, k=k)
        baselines = {"eager": partial(EAGER[op], **a)}
        if not args.no_compile:
            baselines["compile"] = partial(compiled[op], **a)
        weight_bytes = a["weight"].numel() * a["weight"].element_size()
        if n <= DECODE_MAX_ROWS:
            limit = ("weight/copyBW", weight_bytes / (copy_gbs * 1e9) * 1e3)
        else:
            x, w = concatenated(op, a), a["weight"]
            matmul = time_fn(lambda x=x, w=w: torch.matmul(x, w.t()), device, budget_s=budget)
            limit = ("matmul", matmul.median_ms)
        yield Case(
            dict(op=op, k=k, preset=preset, hidden=h, n=n),
            partial(_on_backend, getattr(pipo_kernels, op), a),
            baselines,
            flops=flops,
            limit=limit,
        )


def _on_backend(fn, kwargs, backend):
    return fn(**kwargs, backend=backend)


def run(args) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    ops = args.ops or ["fold_pairs", "unfold_input"]
    presets = args.presets or (["tiny", "qwen3-4b"] if args.quick else list(BENCH_PRESETS))
    sizes = args.tokens or ([1, 8, 64, 256, 2048] if args.quick else [1, 8, 64, 256, 2048, 16384])
    budget = 0.2 if args.quick else 0.5
    folds = tuple(args.fold or (2, 4))

    def make_cases(device, copy_gbs):
        dtype = DTYPES[args.dtype]
        return cases(args, ops, presets, sizes, dtype, device, copy_gbs, budget, folds)

    return run_cases(
        "latent",
        args,
        make_cases,
        [("op", "op", ""), ("k", "k", "d"), ("preset", "preset", ""), ("n", "N", "d")],
        extra={"dtype": args.dtype, "threads": torch.get_num_threads()},
        budget_s=budget,
    )


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--ops", nargs="*", choices=list(EAGER))
    parser.add_argument("--presets", nargs="*", choices=list(BENCH_PRESETS))
    parser.add_argument("--tokens", nargs="*", type=int, help="values of N (rows)")
    parser.add_argument(
        "--fold", nargs="*", type=int, help="tokens per fold_pairs group (default: 2 4)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--cpu-max-gflop",
        type=float,
        default=3.0,
        help="with --quick on a CPU, skip shapes above this many GFLOP per call",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

"""Tokens/s of the three generation modes (ar, pipo, spec) on random weights of a model preset.

    python -m benchmarks.bench_engine --quick                  # tiny preset, batch 1 and 4
    python -m benchmarks.bench_engine --preset qwen3-4b --device cuda --dtype bf16

Random weights say nothing about token2 commit rates or acceptance lengths (a random confidence
head and drafter decide those); the numbers measure the engine and the ops for the given number
of passes. Each row is the median of ``--repeats`` timed generate() calls after one warm-up call;
"x ar" is the ratio to the ar row of the same batch size in the same run.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import bench_parser, format_table, write_results
from pipo.checkpoint import load_builtin
from pipo.config import PRESETS, preset
from pipo.engine import MODES, Engine, Request, SamplingParams

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run(args) -> list[dict]:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cfg = preset(args.preset)
    ar = load_builtin("ar", cfg, 1, device, dtype)
    pipo = load_builtin("pipo", cfg, 2, device, dtype)
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    rows = []
    for batch in args.batch:
        prompts = [f"Request {i}: the PIPO engine" for i in range(batch)]
        ar_tps = None
        for mode in MODES:
            engine = Engine(
                ar if mode == "ar" else pipo,
                mode=mode,
                verifier=ar if mode == "spec" else None,
                use_kernels=not args.no_kernels,
                threshold=args.threshold,
                max_batch_size=batch,
            )
            stats = []
            for _ in range(args.repeats + 1):
                engine.generate([Request(p, params) for p in prompts])
                stats.append(engine.stats)
            stats = stats[1:]
            tps = statistics.median(s.tokens_per_s for s in stats)
            ar_tps = ar_tps or tps
            s = stats[0]
            rows.append(
                {
                    "mode": mode,
                    "preset": args.preset,
                    "batch": batch,
                    "tokens_per_s": tps,
                    "vs_ar": tps / ar_tps,
                    "tokens_per_pass": s.tokens_per_pass,
                    "token2_commit_rate": s.token2_commit_rate if mode == "pipo" else None,
                    "mean_accept_len": s.mean_accept_len if mode == "spec" else None,
                }
            )
    extra = {
        "dtype": args.dtype,
        "kernels": not args.no_kernels,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "weights": "random",
    }
    path = write_results(f"engine_{args.preset}", device, rows, extra, out_dir=args.out)
    print(
        format_table(
            rows,
            [
                ("mode", "mode", ""),
                ("preset", "preset", ""),
                ("batch", "batch", "d"),
                ("tokens_per_s", "tokens/s", ".1f"),
                ("vs_ar", "x ar", ".2f"),
                ("tokens_per_pass", "tokens/pass", ".2f"),
                ("token2_commit_rate", "token2 commit", ".2f"),
                ("mean_accept_len", "accept len", ".2f"),
            ],
        )
    )
    print(f"results: {path}")
    return rows


def main(argv=None) -> None:
    parser = bench_parser(__doc__, quick_help="64 new tokens, one timed run")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="default fp32 on CPU, bf16 on GPU"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--no-kernels", action="store_true", help="plain-PyTorch reference path")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "fp32" if args.device == "cpu" else "bf16"
    if args.quick:
        args.new_tokens, args.repeats = 64, 1
    run(args)


if __name__ == "__main__":
    main()

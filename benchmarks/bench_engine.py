"""Tokens/s of the three generation modes (ar, pipo, spec) on random weights of a preset.

    python benchmarks/bench_engine.py --quick                 # tiny preset, CPU, batch 1 and 4
    python benchmarks/bench_engine.py --preset qwen3-4b --device cuda --dtype bfloat16

Random weights say nothing about token2 commit rates or acceptance lengths (they only fix the
number of passes); the numbers measure the engine and the ops. Each row is the median of
``--repeats`` timed runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from pipo.checkpoint import load_builtin
from pipo.config import PRESETS, preset
from pipo.engine import Engine, Request, SamplingParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--no-kernels", action="store_true")
    parser.add_argument("--quick", action="store_true", help="64 new tokens, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 64, 1
    cfg, dtype = preset(args.preset), DTYPES[args.dtype]
    ar = load_builtin("ar", cfg, 1, args.device, dtype)
    pipo = load_builtin("pipo", cfg, 2, args.device, dtype)
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    use_kernels = not args.no_kernels
    print(
        f"preset={args.preset} device={args.device} dtype={args.dtype} kernels={use_kernels} "
        f"threads={torch.get_num_threads()} new_tokens={args.new_tokens}"
    )
    print(f"{'mode':<6}{'batch':>6}{'tokens/s':>11}{'tokens/pass':>13}{'commit':>8}{'accept':>8}")
    for batch in args.batch:
        prompts = [f"Request {i}: the PIPO engine" for i in range(batch)]
        for mode in ("ar", "pipo", "spec"):
            model = ar if mode == "ar" else pipo
            engine = Engine(
                model,
                mode=mode,
                verifier=ar if mode == "spec" else None,
                use_kernels=use_kernels,
                threshold=args.threshold,
                max_batch_size=batch,
            )
            runs = []
            for _ in range(args.repeats + 1):
                engine.generate([Request(p, params) for p in prompts])
                runs.append(engine.stats)
            stats = runs[1:]
            tps = statistics.median(s.tokens_per_s for s in stats)
            s = stats[0]
            commit = f"{s.token2_commit_rate:.2f}" if mode == "pipo" else "-"
            accept = f"{s.mean_accept_len:.2f}" if mode == "spec" else "-"
            print(
                f"{mode:<6}{batch:>6}{tps:>11.1f}{s.tokens_per_pass:>13.2f}{commit:>8}{accept:>8}"
            )


if __name__ == "__main__":
    main()

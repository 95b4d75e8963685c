"""Interleaved tokens/s of this checkout's engine against another checkout's, in one process.

    OMP_NUM_THREADS=1 python scripts/compare_engines.py --old /path/to/other/checkout --batch 1

The other checkout's ``python/pipo`` is imported as package ``pipo_old`` next to this one's
``pipo`` (both use this checkout's ``pipo_kernels``). Each round runs every configuration once
(old, new and new with ``compile_step``; ar, pipo θ=0 and θ=0.5), so a shared machine's load
changes hit them alike; medians over the rounds, ratios to ar of the same engine. Besides the
wall-clock rates, ``cpu ms/pass`` is the thread's CPU time of a generate (time.thread_time,
prefill included) per backbone pass: on a shared, oversubscribed machine it leaves out the time
the process waited for a core, so it varies far less with the load than the wall clock (cache
evictions by other jobs still count).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_e2e import prompt_text_ids
from benchmarks.count_ops import load_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sampled", action="store_true", help="T=0.8, top-p 0.95")
    parser.add_argument("--no-compile", action="store_true", help="skip compile_step=True")
    args = parser.parse_args()
    load_package(args.old / "python" / "pipo", "pipo_old")
    import pipo_old.checkpoint as old_ck
    import pipo_old.config as old_cfg
    import pipo_old.engine as old_engine

    import pipo.checkpoint as new_ck
    import pipo.config as new_cfg
    import pipo.engine as new_engine

    torch.set_num_threads(1)
    packages = {"old": (old_engine, old_ck, old_cfg), "new": (new_engine, new_ck, new_cfg)}

    def make(tag, mode, threshold, **kw):
        engine_mod, ck, cfg = packages[tag]
        model = ck.load_builtin(mode, cfg.preset("tiny"), 1 if mode == "ar" else 2, "cpu")
        engine = engine_mod.Engine(
            model,
            mode=mode,
            threshold=threshold,
            num_pages=64 * args.batch,
            page_size=16,
            max_batch_size=args.batch,
            **kw,
        )
        return engine, engine_mod

    configs = {}
    for tag in ("old", "new"):
        for mode, th in (("ar", 0.0), ("pipo", 0.0), ("pipo", 0.5)):
            configs[(tag, mode, th)] = make(tag, mode, th)
    for mode, th in (("ar", 0.0), ("pipo", 0.0), ("pipo", 0.5)):
        if not args.no_compile:
            configs[("new+compile", mode, th)] = make("new", mode, th, compile_step=True)
    prompts = [prompt_text_ids(128, seed=i) for i in range(args.batch)]

    def generate(engine, mod):
        params = mod.SamplingParams(
            max_new_tokens=128,
            ignore_eos=True,
            temperature=0.8 if args.sampled else 0.0,
            top_p=0.95 if args.sampled else 1.0,
            seed=1,
        )
        start = time.thread_time()
        engine.generate([mod.Request(p, params) for p in prompts])
        engine.stats.cpu_s = time.thread_time() - start  # read back below
        return engine.stats

    for engine, mod in configs.values():  # warm-up (and compilation)
        generate(engine, mod)
    stats = {key: [] for key in configs}
    for _ in range(args.rounds):
        for key, (engine, mod) in configs.items():
            stats[key].append(generate(engine, mod))
    kind = "T=0.8 top-p 0.95" if args.sampled else "greedy"
    print(
        f"batch {args.batch}, prompt 128, 128 new tokens, {kind}, 1 thread, "
        f"medians of {args.rounds} interleaved rounds"
    )
    for key, runs in stats.items():
        tps = statistics.median(s.tokens_per_s for s in runs)
        ar = statistics.median(s.tokens_per_s for s in stats[(key[0], "ar", 0.0)])
        step = statistics.median(s.tpot_s * s.tokens_per_pass for s in runs) * 1e3
        cpu = statistics.median(s.cpu_s / s.backbone_passes for s in runs) * 1e3
        cpu_tps = statistics.median(s.new_tokens / s.cpu_s for s in runs)
        cpu_ar = statistics.median(s.new_tokens / s.cpu_s for s in stats[(key[0], "ar", 0.0)])
        print(
            f"{key[0]:<12} {key[1]:<5} θ={key[2]:<4} tokens/s {tps:7.1f}  x ar {tps / ar:5.2f}  "
            f"ms/step {step:6.3f}  tok/pass {runs[0].tokens_per_pass:.2f}  | cpu: ms/pass "
            f"{cpu:6.3f} tokens/s {cpu_tps:7.1f} x ar {cpu_tps / cpu_ar:5.2f}"
        )


if __name__ == "__main__":
    main()

"""Interleaved tokens/s of modes ar and pipo on the built-in model, and where a decode step's time goes.

    OMP_NUM_THREADS=1 python scripts/profile_decode.py --repeats 5 --profile

Each round runs every configuration once (ar, pipo at each threshold, greedy and sampled), so a
shared machine's load changes hit them alike; the table gives medians over the rounds and the
ratio to ar of the same round. ``--profile`` then runs torch.profiler over one generation per
mode and prints the ops with the most self CPU time, and cProfile's Python functions by own
time. Uses only Engine's public API, so it runs against any version of the engine.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from benchmarks.bench_e2e import prompt_text_ids
from pipo.checkpoint import load_builtin
from pipo.config import preset
from pipo.engine import Engine, Request, SamplingParams


def engine_for(models, mode: str, threshold: float, batch: int, **kw) -> Engine:
    return Engine(
        models[mode],
        mode=mode,
        threshold=threshold,
        num_pages=64 * batch,
        page_size=16,
        max_batch_size=batch,
        **kw,
    )


def generate(engine: Engine, args, sampled: bool):
    params = SamplingParams(
        max_new_tokens=args.new_tokens,
        ignore_eos=True,
        temperature=0.8 if sampled else 0.0,
        top_p=0.95 if sampled else 1.0,
        seed=1,
    )
    prompts = [prompt_text_ids(args.prompt_len, seed=i) for i in range(args.batch)]
    engine.generate([Request(p, params) for p in prompts])
    return engine.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="also the torch.compile'd step (compile_step)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = preset("tiny")
    models = {"ar": load_builtin("ar", cfg, 1, "cpu"), "pipo": load_builtin("pipo", cfg, 2, "cpu")}
    configs = [("ar", 0.0, False), ("ar", 0.0, True)]
    configs += [("pipo", t, False) for t in args.thresholds] + [("pipo", 0.0, True)]
    engines = {c: engine_for(models, c[0], c[1], args.batch) for c in configs}
    if args.compile:
        compiled = [("ar", 0.0, False, "compiled")]
        compiled += [("pipo", t, False, "compiled") for t in args.thresholds]
        for c in compiled:
            engines[c] = engine_for(models, c[0], c[1], args.batch, compile_step=True)
        configs += compiled
    for c, e in engines.items():  # warm-up
        generate(e, args, c[2])
    rows: dict[tuple, list] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for c, e in engines.items():
            rows[c].append(generate(e, args, c[2]))
    ar_tps = {s: statistics.median(x.tokens_per_s for x in rows[("ar", 0.0, s)]) for s in (0, 1)}
    print(
        f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"1 thread, medians of {args.repeats} interleaved rounds"
    )
    print(f"{'config':<24}{'tokens/s':>10}{'x ar':>7}{'ms/step':>9}{'tok/pass':>9}{'ttft ms':>9}")
    for (mode, t, sampled, *compiled), stats in rows.items():
        tps = statistics.median(x.tokens_per_s for x in stats)
        step = statistics.median(x.tpot_s * x.tokens_per_pass for x in stats) * 1e3
        ttft = statistics.median(x.ttft_s for x in stats) * 1e3
        name = f"{mode}{f' θ={t}' if mode == 'pipo' else ''}{' T=0.8/p=0.95' if sampled else ''}"
        base = ar_tps[int(sampled)]
        if compiled:
            name += " compiled"
            base = statistics.median(x.tokens_per_s for x in rows[("ar", 0.0, False, "compiled")])
        ratio = tps / base
        print(
            f"{name:<24}{tps:>10.1f}{ratio:>7.2f}{step:>9.3f}"
            f"{stats[0].tokens_per_pass:>9.2f}{ttft:>9.2f}"
        )
    if not args.profile:
        return
    for c in (("ar", 0.0, False), ("pipo", 0.0, False)):
        e = engines[c]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            stats = generate(e, args, False)
        steps = stats.backbone_passes / args.batch
        print(f"\n== {c[0]}: torch.profiler, one generation ({steps:.0f} passes per request)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        generate(e, args, False)
        pr.disable()
        print(f"== {c[0]}: cProfile ({time.perf_counter() - t0:.3f} s under the profiler)")
        pstats.Stats(pr).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()

"""Run every benchmark (benchmarks/bench_*.py), then draw plots and write a markdown summary.

    python -m benchmarks.run_all [--quick] [--out DIR] [--only kv_cache latent ...] [--no-plots]
    pipo bench --quick                  # the same, from a source checkout

Each benchmark writes its JSON to DIR (default benchmarks/results/local/<device>/, ignored by
git; name a folder under benchmarks/results/ to publish); a failing benchmark
is reported and the others still run (exit status 1). Then benchmarks.plots draws DIR/plots/*.png
(skipped with a message when matplotlib is missing) and benchmarks.summarize writes DIR/SUMMARY.md
from all the JSON in DIR.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

from benchmarks import summarize
from benchmarks.common import LOCAL_RESULTS_DIR, device_name, progress

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the op benchmarks: bench_<name>.py -> <name>."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def _plots(out: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "plots skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr
        )
        return
    from benchmarks import plots

    written = plots.write_plots(out)
    print(f"plots: {len(written)} in {out / 'plots'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick preset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, help="results folder (default benchmarks/results/local/<device>/)"
    )
    parser.add_argument("--only", nargs="*", help="run only these benchmarks (names after bench_)")
    parser.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw DIR/plots/*.png before the summary (default: on)",
    )
    args = parser.parse_args(argv)
    out = args.out or LOCAL_RESULTS_DIR / device_name(torch.device(args.device))
    names = [n for n in discover() if not args.only or n in args.only]
    unknown = sorted(set(args.only or ()) - set(discover()))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {discover()}")
    failures = []
    for name in progress(names, desc="benchmarks"):
        t0 = time.perf_counter()
        print(f"\n## {name}", flush=True)
        bench_argv = ["--device", args.device, "--out", str(out)] + (
            ["--quick"] if args.quick else []
        )
        try:
            importlib.import_module(f"benchmarks.bench_{name}").main(bench_argv)
        except SystemExit as exc:  # a benchmark's argparse error or sys.exit(n)
            if exc.code not in (0, None):
                failures.append(name)
                print(f"benchmark {name} exited with {exc.code}", file=sys.stderr)
        except Exception as exc:  # one failing benchmark must not hide the others' results
            failures.append(name)
            print(f"benchmark {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)")
    if args.plots:
        _plots(out)
    summary = summarize.write_summary(out)
    print(f"\nsummary: {summary}")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

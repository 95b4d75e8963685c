"""Shared benchmark machinery: timing (median of many runs), measured hardware ceilings, device
names, JSON results under benchmarks/results/<device>/, and table printing.

Every benchmark reports ratios to a baseline measured in the same run and fractions of a ceiling
measured in the same run (never a datasheet number)."""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Model-shaped presets shared by the benchmarks (KV heads / head_dim / hidden / vocab).
PRESETS = {
    "tiny": dict(hidden=256, q_heads=4, kv_heads=2, head_dim=64, vocab=259),
    "qwen3-4b": dict(hidden=2560, q_heads=32, kv_heads=8, head_dim=128, vocab=151936),
    "qwen3.5-4b": dict(hidden=2560, q_heads=16, kv_heads=4, head_dim=256, vocab=248320),
    "llama3-8b": dict(hidden=4096, q_heads=32, kv_heads=8, head_dim=128, vocab=128256),
}


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 5,
    min_runs: int = 10,
    max_runs: int = 200,
    budget_s: float = 0.5,
) -> Timing:
    """Median time of `fn` over repeated runs after warm-up. On a GPU each run is timed with CUDA
    events; on the CPU with perf_counter. Runs continue until `budget_s` is spent (at least
    `min_runs`, at most `max_runs`)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - start_all < budget_s
    ):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [min(times)] * 4
    return Timing(statistics.median(times), q[0], q[3], len(times))


def copy_bandwidth_gbs(device: torch.device, nbytes: int | None = None) -> float:
    """Measured copy bandwidth in GB/s, counting bytes read plus bytes written: a device-to-device
    copy on a GPU (1 GiB buffers), a memcpy-like tensor copy on the CPU (256 MiB buffers)."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (1 << 28)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=3, min_runs=10, max_runs=50, budget_s=1.0)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9


def device_name(device: torch.device) -> str:
    """A folder-safe name: the GPU's marketing name, or cpu-<processor model>."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-" + _cpu_model()
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=RESULTS_DIR.parent,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "git_commit": commit,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(
    name: str,
    device: torch.device,
    rows: list[dict],
    extra: dict | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Write {environment, extra, rows} as JSON to <out_dir or results/<device>>/<name>.json."""
    folder = Path(out_dir) if out_dir else RESULTS_DIR / device_name(device)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(device), **(extra or {}), "rows": rows}
    path.write_text(json.dumps(payload, indent=1))
    return path


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Markdown table of `rows`; columns are (key, header, format spec)."""

    def cell(row: dict, key: str, spec: str) -> str:
        v = row.get(key)
        if v is None:
            return "-"
        return format(v, spec) if spec else str(v)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, k, s) for k, _, s in columns) + " |" for r in rows]
    return "\n".join(lines)


def progress(iterable, total: int | None = None, desc: str = ""):
    """A tqdm progress bar on stderr (plain iteration when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


def bench_parser(
    doc: str | None, quick_help: str = "fewer shapes and shorter timing"
) -> argparse.ArgumentParser:
    """The options every benchmark shares: --device, --quick and --out (run_all passes all three)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--out", type=Path, help="results folder (default benchmarks/results/<device>/)"
    )
    return parser

"""The benchmark harness: model-shaped presets, the backend filter, timing (median of many runs),
measured hardware ceilings, the sweep that turns cases into rows, table printing, JSON results
(default benchmarks/results/local/<device>/, ignored by git: the committed folders under
benchmarks/results/ change only through an explicit --out) and the provenance of every result
(`git describe` and a hash of the working tree).

A bench_<op>.py declares what it measures and nothing else: its presets and sizes, the inputs,
the baselines (the eager PyTorch code the op replaces), and the bytes / flops model of one call,
as a list of `Case`s; `sweep` times every case on every backend `backends_for` admits, and
`report` prints the table and writes the JSON. Every benchmark reports ratios to baselines
measured in the same run and fractions of a ceiling measured in the same run (never a datasheet
number)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Where a run writes without --out: ignored by git (.gitignore) and by benchmarks.readme_summary.
LOCAL_RESULTS_DIR = RESULTS_DIR / "local"
CHECKOUT = RESULTS_DIR.parent.parent

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
    method: str = "host"  # "cuda_graph" | "cuda_stream" | "host" (see time_fn)


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
    cuda_graph: bool = True,
) -> Timing:
    """Median time of one call of `fn` over repeated runs after warm-up; runs continue until
    `budget_s` is spent (at least `min_runs`, at most `max_runs`).

    On the CPU each call is timed with perf_counter. On a GPU each run times a batch of calls with
    CUDA events, so the number is device time, not Python launch overhead: the batch is captured
    once as a CUDA graph and replayed (what a serving loop with CUDA graphs sees; every backend and
    baseline is timed the same way), or, when `fn` cannot be captured (host syncs, say), issued
    back to back on the stream (method "cuda_stream"). The inputs stay the same between calls, so
    working sets that fit in L2 are timed warm."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        return _time_cuda(fn, min_runs, max_runs, budget_s, cuda_graph)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - start_all < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _timing(times, "host")


def _timing(times: list[float], method: str) -> Timing:
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [min(times)] * 4
    return Timing(statistics.median(times), q[0], q[3], len(times), method)


def _capture(fn: Callable[[], object], calls: int) -> torch.cuda.CUDAGraph | None:
    """`calls` back-to-back calls of `fn` as one CUDA graph, or None if `fn` cannot be captured."""
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            fn()  # allocations made during a capture must not be the first of their size
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # any capture failure means "time it on the stream instead"
        torch.cuda.synchronize()
        return None
    return graph


def _time_cuda(fn, min_runs: int, max_runs: int, budget_s: float, cuda_graph: bool) -> Timing:
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    events[0].record()
    fn()
    events[1].record()
    events[1].synchronize()
    # Enough calls per timed run that each run takes about 0.5 ms of device time.
    calls = max(1, min(64, int(0.5 / max(events[0].elapsed_time(events[1]), 1e-3))))
    graph = _capture(fn, calls) if cuda_graph else None

    def run() -> None:
        if graph is not None:
            graph.replay()
        else:
            for _ in range(calls):
                fn()

    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - start_all < budget_s
    ):
        events[0].record()
        run()
        events[1].record()
        events[1].synchronize()
        times.append(events[0].elapsed_time(events[1]) / calls)
    return _timing(times, "cuda_graph" if graph is not None else "cuda_stream")


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    budget_s: float,
    min_runs: int = 5,
    max_runs: int = 200,
) -> dict[str, Timing]:
    """Median time of each function, timing them in turn (one run each per round) so that every
    one sees the same machine load: the ratios stay meaningful on a shared, busy CPU."""
    for fn in fns.values():
        fn()
        fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or time.perf_counter() - start < budget_s):
        for name, fn in fns.items():
            if device.type == "cuda":
                t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0.record()
                fn()
                t1.record()
                t1.synchronize()
                times[name].append(t0.elapsed_time(t1))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=5) if len(ts) >= 5 else [min(ts)] * 4
        out[name] = Timing(statistics.median(ts), q[0], q[3], len(ts))
    return out


def copy_bandwidth_gbs(device: torch.device, nbytes: int | None = None) -> float:
    """Measured copy bandwidth in GB/s, counting bytes read plus bytes written: a device-to-device
    copy on a GPU (1 GiB buffers), a memcpy-like tensor copy on the CPU (256 MiB buffers)."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (1 << 28)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=3, min_runs=10, max_runs=50, budget_s=1.0)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Measured matmul rate in TFLOP/s for `dtype`: n x n x n products of random matrices
    (n = 8192 on a GPU, 1024 on the CPU), through whatever BLAS torch uses."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = time_fn(lambda: a @ b, device, warmup=3, min_runs=5, max_runs=50, budget_s=1.0)
    return 2 * n**3 / (t.median_ms * 1e-3) / 1e12


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


def _git(*args: str, cwd: Path = CHECKOUT) -> str:
    """stdout of a git command in the checkout ('' when git or the repository is missing)."""
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, cwd=cwd, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.decode("utf-8", "surrogateescape")


def _tree_digest(files: dict[str, bytes | None]) -> str:
    """sha256 over {path: contents (None: listed but missing)} in path order, benchmarks/results/
    left out (results are what a run writes, not the code it ran)."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        if rel.startswith("benchmarks/results/"):
            continue
        data = files[rel]
        content = "-" if data is None else hashlib.sha256(data).hexdigest()
        digest.update(f"{rel}\0{content}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def tree_sha256(root: Path = CHECKOUT) -> str:
    """sha256 of the working tree's files that git tracks or would track (`git ls-files -co
    --exclude-standard`: tracked plus untracked-not-ignored), each as its path and the sha256 of
    its contents, in path order, benchmarks/results/ left out. Unlike the commit it describes the
    files as they are, so it holds where the checkout's .git is stale or the tree is dirty;
    commit_tree_sha256 gives the same number for a commit whose files these are. '' without git."""
    listing = _git("ls-files", "-co", "--exclude-standard", "-z", cwd=root)
    files = {}
    for rel in filter(None, listing.split("\0")):
        path = Path(root) / rel
        files[rel] = path.read_bytes() if path.is_file() else None  # None: deleted, still tracked
    return _tree_digest(files) if files else ""


def commit_tree_sha256(rev: str, root: Path = CHECKOUT) -> str:
    """tree_sha256 of commit `rev`'s files, read from git: equal to tree_sha256() of a checkout of
    `rev` with nothing else in it, so a result's tree_sha256 can be matched to a commit."""
    listing = _git("ls-tree", "-r", "-z", "--full-tree", rev, cwd=root)
    entries = []
    for line in filter(None, listing.split("\0")):
        meta, rel = line.split("\t", 1)
        _, kind, sha = meta.split()
        if kind == "blob":
            entries.append((rel, sha))
    if not entries:
        return ""
    out = subprocess.run(
        ["git", "cat-file", "--batch"],
        input="".join(f"{sha}\n" for _, sha in entries).encode(),
        capture_output=True,
        cwd=root,
        check=True,
    ).stdout
    files, at = {}, 0
    for rel, _ in entries:  # each answer: "<sha> blob <size>\n<contents>\n"
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        files[rel] = out[header_end + 1 : header_end + 1 + size]
        at = header_end + 1 + size + 1
    return _tree_digest(files)


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """What code produced a result, recorded mechanically: `git rev-parse HEAD`, `git describe
    --always --dirty` and tree_sha256() (computed once per process)."""
    return {
        "git_commit": _git("rev-parse", "HEAD").strip(),
        "git_describe": _git("describe", "--always", "--dirty").strip(),
        "tree_sha256": tree_sha256(),
    }


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        **provenance(),
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
    """Write {environment, extra, rows} as JSON to <out_dir or results/local/<device>>/<name>.json."""
    folder = Path(out_dir) if out_dir else LOCAL_RESULTS_DIR / device_name(device)
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
        "--out", type=Path, help="results folder (default benchmarks/results/local/<device>/)"
    )
    parser.add_argument(
        "--triton", action="store_true", help="also time Triton on CPU (interpreted: slow)"
    )
    return parser


def backends_for(
    op: str, device: torch.device, *, triton_on_cpu: bool = False, with_torch: bool = True
) -> list[str]:
    """The backends a benchmark times for `op` on `device`: every one that can run it
    (pipo_kernels.available_backends), less Triton on a CPU unless asked for (the interpreter is
    slow: `--triton`) and less the pure-PyTorch reference when `with_torch` is False (benchmarks
    whose baseline already is the reference)."""
    import pipo_kernels  # here, so that the results tools can import this module without it

    return [
        b
        for b in pipo_kernels.available_backends(op, device)
        if (with_torch or b != "torch")
        and not (b == "triton" and device.type == "cpu" and not triton_on_cpu)
    ]


@dataclass
class Case:
    """One point of a sweep: the op on every backend against its baselines, on the same inputs.

    `params` are the configuration columns of the case's rows (op, preset, sizes...); `call`
    runs the op once on a backend; `baselines` run the code the op replaces once each, by name
    (a row gets <name>_us and vs_<name> = baseline time / op time, > 1 = faster). The work model
    of one call gives the achieved rates: `bytes` read + written (gbs, and frac_copy_bw against
    the copy bandwidth measured in the same run), `flops` (tflops), or `limit` = (name, ms) of a
    measured lower bound (limit, limit_us, frac_limit). `extra` columns are copied into every
    row."""

    params: dict
    call: Callable[[str], object]
    baselines: dict[str, Callable[[], object]]
    op: str | None = None  # whose backends are timed; default params["op"]
    bytes: float | None = None
    flops: float | None = None
    limit: tuple[str, float] | None = None
    extra: dict = field(default_factory=dict)


def sweep(
    cases: Iterable[Case],
    device: torch.device,
    backends: Callable[[str], list[str]],
    *,
    copy_gbs: float,
    budget_s: float,
    desc: str,
    timing: dict | None = None,
    baseline_timing: dict | None = None,
    interleaved: bool = False,
) -> list[dict]:
    """Times every case (built one at a time when `cases` is a generator): its baselines, then the op on each of `backends(op)`; one row per
    (case, backend) with the median time (us), the ratios and the rates of `Case`. `timing` and
    `baseline_timing` are extra keyword arguments of time_fn for the op and the baselines;
    `interleaved` times a case's baselines and backends in turn instead (time_interleaved, whose
    arguments `timing` then holds)."""
    rows = []
    for case in progress(cases, desc=desc):  # lazily: one case's tensors alive at a time
        names = backends(case.op or case.params["op"])
        if interleaved:
            fns = {f"base:{k}": fn for k, fn in case.baselines.items()}
            fns.update({f"op:{b}": partial(case.call, b) for b in names})
            times = time_interleaved(fns, device, budget_s, **(timing or {}))
            base = {k: times[f"base:{k}"] for k in case.baselines}
            ops = {b: times[f"op:{b}"] for b in names}
        else:
            base = {
                name: time_fn(fn, device, budget_s=budget_s, **(baseline_timing or timing or {}))
                for name, fn in case.baselines.items()
            }
            ops = {
                b: time_fn(partial(case.call, b), device, budget_s=budget_s, **(timing or {}))
                for b in names
            }
        for backend, t in ops.items():
            ms = t.median_ms
            row = {**case.params, "backend": backend, "us": ms * 1e3}
            for name, b in base.items():
                row[f"{name}_us"] = b.median_ms * 1e3
                row[f"vs_{name}"] = b.median_ms / ms
            if case.bytes is not None:
                row["gbs"] = case.bytes / (ms * 1e-3) / 1e9
                row["frac_copy_bw"] = row["gbs"] / copy_gbs
            if case.flops is not None:
                row["tflops"] = case.flops / (ms * 1e-3) / 1e12
            if case.limit is not None:
                row["limit"], limit_ms = case.limit
                row["limit_us"] = limit_ms * 1e3
                row["frac_limit"] = limit_ms / ms
            rows.append({**row, **case.extra, "runs": t.runs})
    return rows


def result_columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """The table columns of what `sweep` measured, for the keys present in `rows`: backend,
    median time, the first baseline's time, every ratio (x <baseline>), then the rates."""
    present = list(dict.fromkeys(k for r in rows for k, v in r.items() if v is not None))
    baselines = [k[3:] for k in present if k.startswith("vs_")]
    cols = [("backend", "backend", ""), ("us", "median µs", ".1f")]
    if baselines:
        cols.append((f"{baselines[0]}_us", f"{baselines[0]} µs", ".1f"))
    cols += [(f"vs_{b}", f"x {b}", ".2f") for b in baselines]
    rates = [
        ("gbs", "GB/s", ".1f"),
        ("tflops", "TFLOP/s", ".3f"),
        ("limit", "limit", ""),
        ("frac_limit", "of limit", ".0%"),
        ("frac_copy_bw", "of copy BW", ".0%"),
    ]
    return cols + [c for c in rates if c[0] in present]


def report(
    name: str,
    device: torch.device,
    rows: list[dict],
    columns: Sequence[tuple[str, str, str]],
    extra: dict | None = None,
    out_dir: Path | None = None,
    more_columns: Sequence[tuple[str, str, str]] = (),
) -> Path:
    """Writes the results JSON (write_results) and prints the table: the configuration `columns`
    (key, header, format spec), result_columns(rows), then `more_columns`."""
    path = write_results(name, device, rows, extra, out_dir=out_dir)
    print(format_table(rows, [*columns, *result_columns(rows), *more_columns]))
    print(f"results: {path}")
    return path


def run_cases(
    name: str,
    args: argparse.Namespace,
    make_cases: Callable[[torch.device, float], Iterable[Case]],
    columns: Sequence[tuple[str, str, str]],
    *,
    extra: dict | None = None,
    with_torch: bool = True,
    budget_s: float | None = None,
    more_columns: Sequence[tuple[str, str, str]] = (),
    **sweep_kwargs,
) -> list[dict]:
    """A whole benchmark run from bench_parser's `args`: measures the copy bandwidth, builds the
    cases with make_cases(device, copy_gbs), sweeps them over the backends (backends_for with
    `--triton` and `with_torch`), prints the table of the configuration `columns`, the results
    and `more_columns`, and writes <out_dir or results/local/<device>>/<name>.json with `extra` in its header. Returns the
    rows. The budget per timing defaults to 0.2 s with --quick, 0.5 s otherwise."""
    device = torch.device(args.device)
    copy_gbs = copy_bandwidth_gbs(device)
    backends = partial(
        backends_for, device=device, triton_on_cpu=args.triton, with_torch=with_torch
    )
    settings = "".join(f" | {k} {v}" for k, v in (extra or {}).items())
    print(
        f"{name} | device {device_name(device)} | copy BW (read+write) {copy_gbs:.1f} GB/s{settings}"
    )
    rows = sweep(
        make_cases(device, copy_gbs),
        device,
        backends,
        copy_gbs=copy_gbs,
        budget_s=budget_s if budget_s is not None else (0.2 if args.quick else 0.5),
        desc=name,
        **sweep_kwargs,
    )
    report(
        name,
        device,
        rows,
        columns,
        {"copy_bandwidth_gbs": copy_gbs, **(extra or {})},
        args.out,
        more_columns,
    )
    return rows


if __name__ == "__main__":
    # python -m benchmarks.common: the provenance lines of gpu_check.sh's environment.txt;
    # python -m benchmarks.common REV...: tree_sha256 of those commits, to match a result to one.
    if len(sys.argv) > 1:
        for rev in sys.argv[1:]:
            print(f"{rev} {commit_tree_sha256(rev) or '?'}")
    else:
        for key, value in provenance().items():
            print(f"{key} {value or '?'}")

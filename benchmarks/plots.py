"""PNG plots of a results folder's JSON: one figure per benchmark, written to <folder>/plots/.

    python -m benchmarks.plots benchmarks/results/cpu-AMD-EPYC    # -> .../plots/<benchmark>.png

Op benchmarks (and the former bench_engine): one column per op (or kind / mode), x = size (tokens, n, kv_len,
batch ...; log scale). Top row: ratio to the benchmark's baseline measured in the same run (log
scale, >1 = faster, dashed line at 1), one line per backend / preset / shape. Bottom row, when the
rows carry it: the fraction of the measured hardware limit (frac_limit, frac_copy_bw or roofline;
dashed line at 1 = the limit).

End-to-end benchmarks (`e2e_*`): TPOT (top) and TTFT (bottom) in ms against the prompt length,
one line per mode (ar / pipo / spec), one column per batch size.

The layout of each benchmark is inferred from its rows (`layout()`), so new columns or a missing
benchmark only drop a plot, with a message, instead of failing. `layout()` is shared with the
headline tables of benchmarks.summarize. matplotlib (the `bench` extra) is imported only when
drawing.

    >>> from benchmarks.plots import layout
    >>> layout("kv_cache", [{"op": "append", "tokens": 1, "backend": "cpu", "vs_baseline": 2.0}])
    Layout(x='tokens', ratio='vs_baseline', frac=None, panel='op', variant='backend', labels=[])
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Candidate columns, in order of preference; the first one present in the rows is used.
X_KEYS = ("tokens", "n", "N", "kv_len", "prompt_len", "B", "batch", "nodes")
RATIO_KEYS = ("vs_baseline", "vs_sdpa", "vs_eager", "speedup_eager", "vs_reference", "vs_ar")
FRAC_KEYS = ("frac_limit", "frac_copy_bw", "roofline")
PANEL_KEYS = ("op", "kind", "mode")
VARIANT_KEYS = ("backend",)
# Per benchmark-name prefix: engine_* (the former bench_engine, e.g. GPU run1/) draws modes as
# lines, with no panels.
OVERRIDES = {"engine": dict(panel=None, variant="mode")}
# Columns never used to tell lines apart: measured values or labels of the measurement.
NOT_LABELS = {"runs", "limit", "device"}
LIMIT_NAMES = {
    "frac_copy_bw": "copy bandwidth",
    "frac_limit": "limit (copy BW or matmul)",
    "roofline": "roofline",
}
E2E_METRICS = (("tpot_ms", "TPOT (ms)"), ("ttft_ms", "TTFT (ms)"))


@dataclass
class Layout:
    """How a benchmark's rows are drawn: x column, ratio and limit-fraction columns, the column
    that splits panels (None: one panel), the column naming the thing measured (backend), and the
    other columns whose values tell the lines apart."""

    x: str
    ratio: str
    frac: str | None
    panel: str | None
    variant: str | None
    labels: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        """The baseline's name: vs_sdpa -> sdpa, speedup_eager -> eager, vs_baseline -> baseline."""
        return self.ratio.removeprefix("vs_").removeprefix("speedup_")


def _first(keys, present: set[str]) -> str | None:
    return next((k for k in keys if k in present), None)


def _is_config(values: list) -> bool:
    return all(isinstance(v, (str, int, bool)) for v in values if v is not None)


def layout(name: str, rows: list[dict]) -> Layout | None:
    """The Layout of an op benchmark's rows, or None when they have no size column or no ratio."""
    present = {k for r in rows for k, v in r.items() if v is not None}
    x = _first(X_KEYS, present)
    ratio = _first(RATIO_KEYS, present) or next(
        (k for r in rows for k in r if k.startswith(("vs_", "speedup_")) and k in present), None
    )
    if x is None or ratio is None:
        return None
    frac = _first(FRAC_KEYS, present) or next(
        (k for r in rows for k in r if k.startswith("frac_") and k in present), None
    )
    over = next((v for k, v in OVERRIDES.items() if name.startswith(k)), {})
    panel = over.get("panel", _first(PANEL_KEYS, present))
    variant = over.get("variant", _first(VARIANT_KEYS, present))
    if panel == variant:
        panel = None
    # Label columns: configuration values (str/int) that vary, most telling first; a column whose
    # value follows from the ones already kept (hidden from preset) is left out.
    order = [variant, "preset", "mode", "kind", "batch", "B", "q_len"]
    keys = list(dict.fromkeys([k for k in order if k] + [k for r in rows for k in r]))
    kept: list[str] = []
    for k in keys:
        values = [r.get(k) for r in rows]
        if k in (x, panel) or k in NOT_LABELS or k not in present or not _is_config(values):
            continue
        if len(set(map(str, values))) < 2:
            continue
        before = {tuple(str(r.get(j)) for j in kept) for r in rows}
        after = {tuple(str(r.get(j)) for j in [*kept, k]) for r in rows}
        if len(after) > len(before):
            kept.append(k)
    return Layout(x, ratio, frac, panel, variant, kept)


def is_e2e(name: str) -> bool:
    return name.startswith("e2e")


def load(folder: Path) -> dict[str, dict]:
    """{benchmark name: JSON payload} of every readable results JSON in `folder`, sorted by name."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"plots: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            out[data.get("benchmark", path.stem)] = data
    return out


def _label(row: dict, keys: list[str]) -> str:
    parts = [
        row[k] if isinstance(row.get(k), str) and row[k] not in ("", "-") else f"{k}={row.get(k)}"
        for k in keys
    ]
    return " · ".join(parts) or "ours"


def _styles(labels: list[str]) -> dict[str, dict]:
    """The same colour, line style and marker for a label in every panel of a figure."""
    colors = [f"C{i}" for i in range(10)]
    lines, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D", "v"]
    return {
        lab: dict(
            color=colors[i % 10], linestyle=lines[(i // 10) % 4], marker=markers[(i // 10) % 5]
        )
        for i, lab in enumerate(labels)
    }


def _log_x(ax, xs: list) -> None:
    ticks = sorted(set(xs))
    if len(ticks) > 1 and ticks[0] > 0:
        ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0)
    ax.minorticks_off()


def _log_y(ax, percent: bool) -> None:
    """Log y axis labelled at 1 (2, 3, 5) × 10^k, fewer for wider ranges; linear within a
    decade. Labels are ratios (2×) or percentages (20%). Call after plotting: the scale depends
    on the data range."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
    decades = math.log10(max(ys) / min(ys)) if ys else 0.0
    if decades > 1:
        ax.set_yscale("log")
        subs = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 1.5 else (1, 2, 3, 5)
        ax.yaxis.set_major_locator(LogLocator(subs=subs))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(
        FuncFormatter(lambda v, _: f"{100 * v:.3g}%" if percent else f"{v:.3g}×")
    )


def _figure(nrows: int, ncols: int, width: float = 4.6, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols + 2.5, height * nrows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    return plt, fig, axes


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" metadata: the PNG depends only on the data and the matplotlib drawing.
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_op(name: str, data: dict, out_dir: Path) -> Path | None:
    """<out_dir>/<name>.png for an op benchmark, or None (with a message) when it can't be drawn."""
    rows = data.get("rows") or []
    lay = layout(name, rows)
    if lay is None:
        print(f"plots: {name}: no size column or no ratio to a baseline; skipped", file=sys.stderr)
        return None
    rows = [r for r in rows if isinstance(r.get(lay.x), (int, float))]
    panels = list(dict.fromkeys(r.get(lay.panel) for r in rows)) if lay.panel else [None]
    metrics = [(lay.ratio, f"× {lay.baseline} (>1 = faster)")]
    if lay.frac:
        metrics.append((lay.frac, f"fraction of {LIMIT_NAMES.get(lay.frac, lay.frac)}"))
    labels = list(dict.fromkeys(_label(r, lay.labels) for r in rows))
    styles = _styles(labels)
    plt, fig, axes = _figure(len(metrics), len(panels))
    for col, panel in enumerate(panels):
        prow = [r for r in rows if lay.panel is None or r.get(lay.panel) == panel]
        for i, (key, ylabel) in enumerate(metrics):
            ax = axes[i][col]
            for lab in labels:
                pts = sorted(
                    (r[lay.x], r[key])
                    for r in prow
                    if _label(r, lay.labels) == lab and isinstance(r.get(key), (int, float))
                )
                pts = [(x, y) for x, y in pts if y > 0 and math.isfinite(y)]
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=lab, **styles[lab])
            if not ax.get_lines():
                ax.text(0.5, 0.5, f"no {key} in these rows", ha="center", transform=ax.transAxes)
            ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1)
            _log_y(ax, percent=key == lay.frac)
            _log_x(ax, [r[lay.x] for r in prow])
            ax.grid(True, which="major", alpha=0.3)
            ax.set_ylabel(ylabel)
            ax.set_xlabel(lay.x)
            if i == 0:
                ax.set_title(f"{name}: {panel}" if panel is not None else name)
    handles, labs = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labs:
                handles.append(h)
                labs.append(lab)
    if handles:
        fig.legend(handles, labs, loc="outside right upper", fontsize="small")
    env = data.get("environment", {})
    fig.suptitle(f"{name} on {env.get('device', '?')} ({env.get('torch', '?')})", fontsize="medium")
    return _save(plt, fig, out_dir / f"{name}.png")


def plot_e2e(name: str, data: dict, out_dir: Path) -> Path | None:
    """<out_dir>/<name>.png: TPOT and TTFT by mode against prompt length, a column per batch."""
    need = ("mode", "batch", "prompt_len")
    rows = [r for r in data.get("rows") or [] if all(r.get(k) is not None for k in need)]
    metrics = [(k, t) for k, t in E2E_METRICS if any(r.get(k) is not None for r in rows)]
    if not rows or not metrics:
        print(
            f"plots: {name}: rows lack mode/batch/prompt_len or TPOT/TTFT; skipped", file=sys.stderr
        )
        return None
    batches = sorted({r["batch"] for r in rows})
    multi = len({r.get("preset") for r in rows}) > 1
    lab = (lambda r: f"{r['mode']} · {r.get('preset')}") if multi else (lambda r: str(r["mode"]))
    labels = list(dict.fromkeys(lab(r) for r in rows))
    styles = _styles(labels)
    plt, fig, axes = _figure(len(metrics), len(batches), width=4.0)
    for col, batch in enumerate(batches):
        brows = [r for r in rows if r["batch"] == batch]
        for i, (key, ylabel) in enumerate(metrics):
            ax = axes[i][col]
            for label in labels:
                pts = sorted(
                    (r["prompt_len"], r[key])
                    for r in brows
                    if lab(r) == label and isinstance(r.get(key), (int, float))
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=label, **styles[label])
            _log_x(ax, [r["prompt_len"] for r in brows])
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("prompt length (tokens)")
            if i == 0:
                ax.set_title(f"batch {batch}")
    handles, labs = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labs, loc="outside right upper", fontsize="small")
    env = data.get("environment", {})
    fig.suptitle(f"{name} on {env.get('device', '?')} ({env.get('torch', '?')})", fontsize="medium")
    return _save(plt, fig, out_dir / f"{name}.png")


def write_plots(folder: Path) -> list[Path]:
    """Draw every benchmark in `folder` to `folder`/plots/<benchmark>.png; returns the files.

    >>> write_plots(Path("benchmarks/results/cpu-AMD-EPYC"))  # doctest: +SKIP
    [PosixPath('benchmarks/results/cpu-AMD-EPYC/plots/attention.png'), ...]
    """
    folder = Path(folder)
    out_dir = folder / "plots"
    written = []
    for name, data in load(folder).items():
        try:
            path = (plot_e2e if is_e2e(name) else plot_op)(name, data, out_dir)
        except Exception as exc:  # one odd JSON must not stop the other plots
            print(f"plots: {name}: {type(exc).__name__}: {exc}; skipped", file=sys.stderr)
            path = None
        if path:
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="results folder (benchmarks/results/<device>)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    for path in write_plots(args.folder):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Markdown summary of a results folder: a headline section, then one table per benchmark JSON,
with the environment it was measured in and its plot (from benchmarks.plots) when drawn.

    python -m benchmarks.summarize benchmarks/results/cpu-AMD-EPYC    # -> .../SUMMARY.md

Headline, per op: the best backend at the largest size, its ratio to the benchmark's baseline and
its fraction of the measured hardware limit (medians over the other settings at that size, range
in brackets); per end-to-end benchmark: PIPO's (and spec's) TPOT and TTFT against AR per prompt
length at batch 1, labelled with the PIPO gate it ran with (θ, and whether the weights were random
so that commit rates are synthetic). A fraction of the copy bandwidth above 100% is flagged
"cache-resident": the working set stayed in the caches, so it is no fraction of that limit. Used
by benchmarks.run_all and benchmarks.readme_summary.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from benchmarks.common import format_table
from benchmarks.plots import is_e2e, layout, load

# Columns shown first when present; other numeric columns follow.
PREFERRED = [
    "op",
    "preset",
    "mode",
    "backend",
    "tokens",
    "batch",
    "us",
    "baseline_us",
    "vs_baseline",
    "gbs",
    "frac_copy_bw",
]
SKIP = {"runs"}
LIMIT_SHORT = {"frac_copy_bw": "copy BW", "frac_limit": "limit", "roofline": "roofline"}
CACHE_RESIDENT = (
    "cache-resident: above 100% of the copy bandwidth (measured with buffers far larger than the "
    "caches), the working set stayed in the caches between timed calls (the inputs are the same "
    "every call), so the number is no fraction of the memory limit."
)


def _spec(values: list) -> str:
    if all(isinstance(v, int) for v in values if v is not None):
        return "d"
    if all(isinstance(v, (int, float)) for v in values if v is not None):
        return ".3g"
    return ""


def table(rows: list[dict]) -> str:
    keys = [k for k in PREFERRED if any(k in r for r in rows)]
    keys += [k for r in rows for k in r if k not in keys and k not in SKIP]
    keys = list(dict.fromkeys(keys))
    return format_table(rows, [(k, k, _spec([r.get(k) for r in rows])) for k in keys])


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _median_range(values: list[float], spec: str, unit: str = "") -> str:
    med = format(statistics.median(values), spec) + unit
    if len(values) < 2 or min(values) == max(values):
        return med
    return f"{med} ({format(min(values), spec)}–{format(max(values), spec)}{unit})"


def op_headline(name: str, rows: list[dict]) -> list[dict]:
    """One row per op (panel) of an op benchmark: the largest size, the best variant (backend)
    there by median ratio to the baseline, that ratio and the fraction of the limit."""
    lay = layout(name, rows)
    if lay is None:
        return []
    out = []
    panels = dict.fromkeys(r.get(lay.panel) for r in rows) if lay.panel else [None]
    for panel in panels:
        prow = [
            r
            for r in rows
            if (lay.panel is None or r.get(lay.panel) == panel)
            and _num(r.get(lay.x))
            and _num(r.get(lay.ratio))
            # engine_* rows (former bench_engine): the baseline mode (ar) has ratio 1 by definition.
            and not (lay.variant and r.get(lay.variant) == lay.baseline)
        ]
        if not prow:
            continue
        largest = max(r[lay.x] for r in prow)
        at = [r for r in prow if r[lay.x] == largest]
        groups: dict = {}
        for r in at:
            groups.setdefault(r.get(lay.variant) if lay.variant else "ours", []).append(r)
        best, best_rows = max(
            groups.items(), key=lambda kv: statistics.median(r[lay.ratio] for r in kv[1])
        )
        fracs = [r[lay.frac] for r in best_rows if lay.frac and _num(r.get(lay.frac))]
        resident = lay.frac == "frac_copy_bw" and any(f > 1 for f in fracs)
        out.append(
            {
                "benchmark": name,
                "op": panel if panel is not None else "-",
                "size": f"{lay.x}={largest:g}",
                "best": best,
                "ratio": f"{_median_range([r[lay.ratio] for r in best_rows], '.3g', '×')} vs {lay.baseline}",
                "limit": f"{_median_range([100 * f for f in fracs], '.3g', '%')} of "
                f"{LIMIT_SHORT.get(lay.frac, lay.frac)}" + (" (cache-resident)" if resident else "")
                if fracs
                else "-",
                "settings": len(best_rows),
            }
        )
    return out


def e2e_headline(name: str, rows: list[dict]) -> list[dict]:
    """Per (preset, prompt length) at batch 1 (else the smallest batch): AR/PIPO and AR/spec
    ratios of TPOT and TTFT (>1 = faster than AR)."""
    rows = [r for r in rows if r.get("mode") and _num(r.get("prompt_len")) and _num(r.get("batch"))]
    if not rows:
        return []
    batch = 1 if any(r["batch"] == 1 for r in rows) else min(r["batch"] for r in rows)
    by = {(r.get("preset"), r["prompt_len"], r["mode"]): r for r in rows if r["batch"] == batch}
    out = []
    keys = sorted(by, key=lambda k: (str(k[0]), k[1]))
    for preset, prompt_len in dict.fromkeys((p, n) for p, n, _ in keys):
        ar = by.get((preset, prompt_len, "ar"))
        if ar is None:
            continue
        row = {"benchmark": name, "preset": preset, "batch": batch, "prompt_len": prompt_len}
        for key in ("tpot_ms", "ttft_ms"):
            row[f"ar_{key}"] = ar.get(key)
            for mode in ("pipo", "spec"):
                other = by.get((preset, prompt_len, mode), {})
                ok = _num(ar.get(key)) and _num(other.get(key)) and other[key] > 0
                row[f"{mode}_{key}"] = ar[key] / other[key] if ok else None
        out.append(row)
    return out


def gate_label(payload: dict) -> str:
    """How an e2e run's PIPO rows decoded, e.g. "θ = -1, every token2 committed (synthetic)":
    the threshold, the commit rate its PIPO rows measured, and whether the weights were random
    (then every commit rate, and spec's acceptance, is synthetic)."""
    threshold = payload.get("threshold")
    rates = [
        r["token2_commit_rate"]
        for r in payload.get("rows", [])
        if r.get("mode") == "pipo" and _num(r.get("token2_commit_rate"))
    ]
    parts = [f"θ = {threshold:g}" if _num(threshold) else "θ = ?"]
    if rates and min(rates) == 1.0:
        parts.append("every token2 committed")
    elif rates:
        parts.append(f"token2 commit rate {_median_range(rates, '.2f')}")
    synthetic = "random" in str(payload.get("weights", ""))
    return ", ".join(parts) + (" (synthetic)" if synthetic else " (trained weights)")


def headline(data: dict[str, dict]) -> str:
    """Markdown headline tables for {benchmark name: JSON payload} (empty when nothing fits)."""
    ops = [h for n, d in data.items() if not is_e2e(n) for h in op_headline(n, d["rows"])]
    e2e = [
        {**h, "gate": gate_label(d)}
        for n, d in data.items()
        if is_e2e(n)
        for h in e2e_headline(n, d["rows"])
    ]
    parts = []
    if ops:
        parts += [
            "Per op, at the largest size measured: the best backend's ratio to the baseline and "
            "fraction of the measured limit (median over the other settings at that size, range "
            "in brackets).",
            "",
            format_table(
                ops,
                [
                    ("benchmark", "benchmark", ""),
                    ("op", "op", ""),
                    ("size", "largest size", ""),
                    ("best", "best", ""),
                    ("ratio", "× baseline", ""),
                    ("limit", "of limit", ""),
                    ("settings", "settings", "d"),
                ],
            ),
            "",
        ]
        if any("cache-resident" in h["limit"] for h in ops):
            parts += [CACHE_RESIDENT, ""]
    if e2e:
        cols = [
            ("benchmark", "benchmark", ""),
            ("preset", "preset", ""),
            ("batch", "batch", "d"),
            ("prompt_len", "prompt", "d"),
            ("ar_tpot_ms", "AR TPOT ms", ".3g"),
            ("pipo_tpot_ms", "PIPO TPOT ×", ".2f"),
            ("pipo_ttft_ms", "PIPO TTFT ×", ".2f"),
        ]
        if any(r.get("spec_tpot_ms") is not None for r in e2e):
            cols += [("spec_tpot_ms", "spec TPOT ×", ".2f"), ("spec_ttft_ms", "spec TTFT ×", ".2f")]
        cols += [("gate", "PIPO gate", "")]
        parts += [
            "End to end: AR's time over PIPO's (and spec's) per prompt length "
            "(>1 = faster than AR).",
            "",
            format_table(e2e, cols),
            "",
        ]
    return "\n".join(parts)


def code_version(env: dict) -> str:
    """The code a result came from, as its JSON recorded it: `git describe --dirty` (older results:
    the commit) and the hash of the working tree (benchmarks.common.provenance)."""
    describe = env.get("git_describe") or str(env.get("git_commit", ""))[:10] or "?"
    tree = env.get("tree_sha256")
    return describe + (f" (tree {tree[:12]})" if tree else "")


def write_summary(folder: Path) -> Path:
    """Write `folder`/SUMMARY.md from the JSON in `folder` (and link `folder`/plots/*.png)."""
    folder = Path(folder)
    data = load(folder)
    parts = [f"# Benchmark summary: {folder.name}", ""]
    head = headline(data)
    if head:
        parts += ["## Headline", "", head]
    for name, payload in data.items():
        env = payload.get("environment", {})
        parts += [
            f"## {name}",
            "",
            f"`{env.get('command', '')}` — torch {env.get('torch')}, triton {env.get('triton')}, "
            f"CUDA {env.get('cuda')}, commit {code_version(env)}, {env.get('time_utc', '')}",
            "",
        ]
        if env.get("git_commit_note"):
            parts += [f"Commit note: {env['git_commit_note']}.", ""]
        extras = {k: v for k, v in payload.items() if k not in ("benchmark", "environment", "rows")}
        if extras:
            parts += [
                "Measured ceilings and settings: "
                + ", ".join(
                    f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                    for k, v in extras.items()
                ),
                "",
            ]
        if (folder / "plots" / f"{name}.png").is_file():
            parts += [f"![{name}](plots/{name}.png)", ""]
        parts += [table(payload["rows"]) if payload.get("rows") else "(no rows)", ""]
    out = folder / "SUMMARY.md"
    out.write_text("\n".join(parts))
    return out


if __name__ == "__main__":
    print(write_summary(Path(sys.argv[1])))

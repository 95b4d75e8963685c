"""Markdown summary of a results folder: one table per benchmark JSON, with the environment it was
measured in. Used by benchmarks.run_all; run alone with `python -m benchmarks.summarize DIR`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import format_table

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


def write_summary(folder: Path) -> Path:
    folder = Path(folder)
    parts = [f"# Benchmark summary: {folder.name}", ""]
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        env = data.get("environment", {})
        parts += [
            f"## {data.get('benchmark', path.stem)}",
            "",
            f"`{env.get('command', '')}` — torch {env.get('torch')}, triton {env.get('triton')}, "
            f"CUDA {env.get('cuda')}, commit {str(env.get('git_commit', ''))[:10]}, {env.get('time_utc', '')}",
            "",
        ]
        extras = {k: v for k, v in data.items() if k not in ("benchmark", "environment", "rows")}
        if extras:
            parts += [
                "Measured ceilings and settings: "
                + ", ".join(
                    f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                    for k, v in extras.items()
                ),
                "",
            ]
        parts += [table(data["rows"]) if data.get("rows") else "(no rows)", ""]
    out = folder / "SUMMARY.md"
    out.write_text("\n".join(parts))
    return out


if __name__ == "__main__":
    print(write_summary(Path(sys.argv[1])))

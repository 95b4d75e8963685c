"""The benchmark tooling: plots and summaries from the committed results and from a synthetic
end-to-end JSON, the README performance block in sync with the committed results, and
`pipo bench` running one quick benchmark end to end on the CPU."""

import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest

from benchmarks import plots, readme_summary, summarize
from benchmarks.common import RESULTS_DIR

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)

CPU_RESULTS = RESULTS_DIR / "cpu-AMD-EPYC"
OP_BENCHMARKS = ["attention", "kv_cache", "latent", "linear", "sampling", "verify"]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def synthetic_e2e(batches=(1, 4), prompt_lens=(128, 1024)) -> dict:
    """An e2e_* results payload with every field bench_e2e writes, plus one incomplete row."""
    rows = []
    for batch in batches:
        for n in prompt_lens:
            for mode, speed in (("ar", 1.0), ("pipo", 1.6), ("spec", 1.25)):
                tpot = (10 + n / 1000) * (1 + batch / 16) / speed
                rows.append(
                    dict(
                        mode=mode,
                        preset="tiny",
                        batch=batch,
                        prompt_len=n,
                        ttft_ms=0.05 * n * (1.0 if mode == "ar" else 1.1),
                        tpot_ms=tpot,
                        tokens_per_s=1e3 * batch / tpot,
                        tokens_per_pass=speed,
                        token2_commit_rate=0.8 if mode == "pipo" else None,
                        mean_accept_len=2.5 if mode == "spec" else None,
                        peak_mem_mb=100.0,
                        kv_bytes_per_token=4096,
                    )
                )
    rows.append(dict(mode="pipo", preset="tiny", batch=1))  # a run that failed part-way
    env = {"device": "synthetic", "torch": "0", "command": "bench_e2e.py --quick"}
    return {"benchmark": "e2e_tiny", "environment": env, "new_tokens": 16, "rows": rows}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A copy of the committed CPU results plus a synthetic e2e JSON and an unusable one."""
    folder = tmp_path_factory.mktemp("results") / "cpu"
    shutil.copytree(CPU_RESULTS, folder, ignore=shutil.ignore_patterns("plots", "*.md"))
    (folder / "e2e_tiny.json").write_text(json.dumps(synthetic_e2e()))
    odd = {"benchmark": "odd", "environment": {}, "rows": [{"label": "x", "value": 1.0}]}
    (folder / "odd.json").write_text(json.dumps(odd))
    (folder / "broken.json").write_text("{")
    return folder


def test_layout_of_committed_results():
    data = plots.load(CPU_RESULTS)
    assert set(OP_BENCHMARKS) <= set(data)
    for name in OP_BENCHMARKS:
        lay = plots.layout(name, data[name]["rows"])
        assert lay is not None and lay.frac is not None, name
    kv = plots.layout("kv_cache", data["kv_cache"]["rows"])
    assert (kv.x, kv.ratio, kv.panel, kv.labels) == (
        "tokens",
        "vs_baseline",
        "op",
        ["backend", "preset"],
    )
    e2e = data["e2e_builtin"]["rows"]  # the built-in model end to end
    assert {r["mode"] for r in e2e} == {"ar", "pipo", "spec"}


@needs_matplotlib
def test_plots_png(results, capsys):
    written = plots.write_plots(results)
    names = {p.stem for p in written}
    assert names == {*OP_BENCHMARKS, "e2e_builtin", "e2e_tiny"}
    for path in written:
        width, height = _png_size(path)
        assert width > 300 and height > 200 and path.stat().st_size > 5000, path
    err = capsys.readouterr().err
    assert "odd" in err and "broken.json" in err  # skipped with a message, not an error


@needs_matplotlib
def test_e2e_plot_missing_fields(tmp_path, capsys):
    payload = synthetic_e2e()
    for r in payload["rows"]:
        r.pop("ttft_ms", None)
    assert plots.plot_e2e("e2e_x", payload, tmp_path) is not None  # TPOT only
    assert plots.plot_e2e("e2e_y", {"rows": [{"mode": "ar"}]}, tmp_path) is None
    assert "skipped" in capsys.readouterr().err


@needs_matplotlib
def test_summary_headline(results):
    plots.write_plots(results)
    text = summarize.write_summary(results).read_text()
    head = text.split("## Headline", 1)[1].split("\n## ", 1)[0]
    # One op row per op of each op benchmark, with the best backend's ratio and limit fraction.
    assert "| kv_cache | append | tokens=4096 | cpu |" in head
    assert "| attention | decode | kv_len=4096 |" in head and "of copy BW" in head
    # e2e at batch 1: AR time over PIPO time (1.6 by construction) for each prompt length.
    e2e = summarize.e2e_headline("e2e_tiny", synthetic_e2e()["rows"])
    assert [r["prompt_len"] for r in e2e] == [128, 1024]
    assert all(r["batch"] == 1 and r["pipo_tpot_ms"] == pytest.approx(1.6) for r in e2e)
    assert all(r["pipo_ttft_ms"] == pytest.approx(1 / 1.1) for r in e2e)
    assert "| e2e_tiny | tiny | 1 | 128 |" in head
    # The per-benchmark tables are still there, each with its plot.
    for name in OP_BENCHMARKS:
        assert f"## {name}\n" in text and f"![{name}](plots/{name}.png)" in text


def test_readme_in_sync():
    """README.md's perf block is what benchmarks.readme_summary makes from the committed results:
    after changing benchmarks/results/, run `python -m benchmarks.readme_summary`."""
    readme = readme_summary.README.read_text()
    block = readme_summary.render_block()
    assert readme_summary.update(readme, block) == readme, "run python -m benchmarks.readme_summary"
    assert readme_summary.update(readme_summary.update(readme, block), block) == readme
    assert "### cpu-AMD-EPYC" in block and "benchmarks/results/cpu-AMD-EPYC/SUMMARY.md" in block
    # The committed folders have the plots and the summary the block links to.
    for folder in RESULTS_DIR.iterdir():
        if any(folder.glob("*.json")):
            assert (folder / "SUMMARY.md").is_file() and any(folder.glob("plots/*.png")), folder


def test_readme_summary_rewrites_only_the_block(tmp_path, results):
    readme = tmp_path / "README.md"
    readme.write_text("# x\nbefore\n<!-- perf:begin -->\nstale\n<!-- perf:end -->\nafter\n")
    args = ["--readme", str(readme), "--results", str(results.parent)]
    assert readme_summary.main([*args, "--check"]) == 1
    assert readme_summary.main(args) == 0
    once = readme.read_text()
    assert readme_summary.main(args) == 0 and readme.read_text() == once
    assert readme_summary.main([*args, "--check"]) == 0
    assert once.startswith("# x\nbefore\n<!-- perf:begin -->\n") and once.endswith("after\n")
    assert "stale" not in once and "### cpu" in once and "/cpu/SUMMARY.md)" in once
    with pytest.raises(ValueError, match="markers"):
        readme_summary.update("no markers", "")


@needs_matplotlib
def test_pipo_bench_quick_kv_cache(tmp_path, capsys):
    from pipo import cli

    out = tmp_path / "bench"
    rc = cli.main(["bench", "--quick", "--device", "cpu", "--only", "kv_cache", "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "kv_cache.json").read_text())["rows"]
    assert {r["op"] for r in rows} == {"append", "compact"}
    assert _png_size(out / "plots" / "kv_cache.png")[0] > 300
    assert "## Headline" in (out / "SUMMARY.md").read_text()


def test_pipo_bench_needs_a_checkout(monkeypatch, capsys):
    from pipo import cli

    monkeypatch.setattr(cli, "__file__", "/nonexistent/site-packages/pipo/cli.py")
    assert cli.main(["bench", "--quick"]) == 1
    assert "source checkout" in capsys.readouterr().err


def test_results_default_to_the_ignored_local_folder():
    """A benchmark run without --out writes under benchmarks/results/local/ (ignored by git), and
    the README block never reads that folder: running a benchmark cannot break test_readme_in_sync."""
    import subprocess

    import torch

    from benchmarks.common import LOCAL_RESULTS_DIR, write_results

    path = write_results("test_default_folder", torch.device("cpu"), [{"x": 1}])
    try:
        assert path.parent.parent == LOCAL_RESULTS_DIR
        env = json.loads(path.read_text())["environment"]
        assert {"git_commit", "git_describe", "tree_sha256"} <= set(env)
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=RESULTS_DIR)
        assert ignored.returncode == 0, f"{path} is not ignored by git"
        assert "/local/" not in readme_summary.render_block()
    finally:
        path.unlink()


def test_readme_block_skips_local(tmp_path, results):
    shutil.copytree(results, tmp_path / "cpu")
    shutil.copytree(results, tmp_path / "local")
    block = readme_summary.render_block(tmp_path, tmp_path)
    assert "### cpu" in block and "### local" not in block


def test_tree_hash_follows_the_files(tmp_path):
    """benchmarks.common.tree_sha256: the same files give the same hash, an edited or an untracked
    (not ignored) file changes it, an ignored one and benchmarks/results/ do not."""
    import subprocess

    from benchmarks.common import commit_tree_sha256, tree_sha256

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("*.so\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", ".")
    first = tree_sha256(tmp_path)
    assert first and tree_sha256(tmp_path) == first
    (tmp_path / "ext.so").write_bytes(b"binary")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}")
    assert tree_sha256(tmp_path) == first
    (tmp_path / "new.py").write_text("y = 2\n")
    second = tree_sha256(tmp_path)
    assert second != first
    (tmp_path / "a.py").write_text("x = 2\n")
    third = tree_sha256(tmp_path)
    assert third not in (first, second)
    # The same number from the commit of these files, read from git alone.
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    assert commit_tree_sha256("HEAD", tmp_path) == third == tree_sha256(tmp_path)
    (tmp_path / "a.py").write_text("x = 3\n")
    assert commit_tree_sha256("HEAD", tmp_path) == third != tree_sha256(tmp_path)


def test_run_all_rejects_unknown_benchmark():
    from benchmarks import run_all

    with pytest.raises(SystemExit):
        run_all.main(["--only", "no_such_benchmark", "--device", "cpu"])


def test_e2e_benchmark_measures_every_mode(tmp_path):
    """bench_e2e on the CPU (tiny random model): one row per mode with the latency, memory and
    roofline fields, and PIPO holding fewer KV bytes per token than AR (one entry per pair)."""
    from benchmarks import bench_e2e

    argv = ["--device", "cpu", "--preset", "tiny", "--batch", "1", "--prompt-lens", "96"]
    argv += ["--new-tokens", "6", "--repeats", "1", "--modes", "ar", "pipo", "--out", str(tmp_path)]
    bench_e2e.main(argv)
    data = json.loads((tmp_path / "e2e_tiny.json").read_text())
    rows = {r["mode"]: r for r in data["rows"]}
    assert set(rows) == {"ar", "pipo"}
    for r in rows.values():
        assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0 and r["tokens_per_s"] > 0
        assert r["kv_bytes_per_token"] > 0 and r["roofline_step_ms"] > 0
    assert rows["pipo"]["tokens_per_pass"] == pytest.approx(2.0)  # threshold -1: all committed
    # 102 tokens: AR holds 7 pages of 16 slots on 4 layers, PIPO 4 pages on 4 + 1 (MTP) layers.
    assert rows["pipo"]["kv_bytes_per_token"] < 0.8 * rows["ar"]["kv_bytes_per_token"]
    assert data["copy_bandwidth_gbs"] > 0 and data["matmul_tflops"] > 0
    assert "synthetic" in data["weights"]


def test_sweep_rows_and_columns():
    """The harness: one row per (case, backend) with the ratios and rates of its work model, and
    the table columns of what was measured."""
    import torch

    from benchmarks.common import Case, result_columns, sweep

    x = torch.randn(64, 64)
    case = Case(
        dict(op="mm", n=64),
        lambda backend: x @ x,
        {"eager": lambda: x @ x, "twice": lambda: (x @ x, x @ x)},
        bytes=3 * x.numel() * 4,
        flops=2 * 64**3,
        limit=("copy", 1e-3),
    )
    timing = dict(warmup=1, min_runs=3, max_runs=5)
    rows = sweep(
        [case],
        torch.device("cpu"),
        lambda op: ["a", "b"],
        copy_gbs=10.0,
        budget_s=0.01,
        desc="t",
        timing=timing,
    )
    assert [r["backend"] for r in rows] == ["a", "b"]
    for r in rows:
        assert r["op"] == "mm" and r["n"] == 64 and r["runs"] >= 3
        assert r["vs_eager"] == pytest.approx(r["eager_us"] / r["us"])
        assert r["gbs"] == pytest.approx(3 * 64 * 64 * 4 / (r["us"] * 1e-6) / 1e9)
        assert r["frac_copy_bw"] == pytest.approx(r["gbs"] / 10.0)
        assert r["tflops"] == pytest.approx(2 * 64**3 / (r["us"] * 1e-6) / 1e12)
        assert r["frac_limit"] == pytest.approx(1.0 / r["us"]) and r["limit"] == "copy"
    keys = [k for k, _, _ in result_columns(rows)]
    assert keys == [
        "backend",
        "us",
        "eager_us",
        "vs_eager",
        "vs_twice",
        "gbs",
        "tflops",
        "limit",
        "frac_limit",
        "frac_copy_bw",
    ]

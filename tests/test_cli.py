"""The `pipo` command's contract for user errors: one line `pipo: <message>` on stderr, exit
status 2 for a wrong command line and 1 for a failed run, no traceback unless --debug; and its
help text (defaults, one line per mode). Everything runs the built-in tiny models."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipo import cli
from pipo.checkpoint import BUILTIN_DIR

ROOT = Path(__file__).resolve().parents[1]
GEN = ["generate", "--prompt", "def f(x):", "--max-new-tokens", "4"]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `pipo argv` run in this process."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse exits itself on usage errors and --help
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one error line: the last line of stderr, the only `pipo: ` line but log warnings."""
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("pipo: ") and not ln.startswith("pipo: WARNING")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    """Checkpoint folders that are broken in different ways."""
    root = tmp_path_factory.mktemp("broken")
    good = BUILTIN_DIR / "pipo"
    out = {}
    for name in ("truncated", "bad_json", "mismatch"):
        (root / name).mkdir()
        shutil.copy(good / "config.json", root / name / "config.json")
    data = (good / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 3])
    (root / "bad_json" / "config.json").write_text('{"pipo_checkpoint": 1,')
    shutil.copy(good / "model.safetensors", root / "bad_json" / "model.safetensors")
    # The AR model's weights under the PIPO model's config: tensors missing.
    shutil.copy(BUILTIN_DIR / "ar" / "model.safetensors", root / "mismatch" / "model.safetensors")
    for name in ("truncated", "bad_json", "mismatch"):
        out[name] = root / name
    return out


USAGE_ERRORS = {
    "max-new-tokens not a number": (["--max-new-tokens", "abc"], r"--max-new-tokens.*integer"),
    "max-new-tokens zero": (["--max-new-tokens", "0"], r"--max-new-tokens.*>= 1"),
    "negative threads": (["--threads", "-2"], r"--threads.*>= 1, got -2"),
    "zero threads": (["--threads", "0"], r"--threads"),
    "threads not a number": (["--threads", "two"], r"--threads.*integer"),
    "negative temperature": (["--temperature", "-1"], r"--temperature.*>= 0"),
    "nan threshold": (["--threshold", "nan"], r"--threshold.*finite"),
    "top-p above 1": (["--top-p", "1.5"], r"--top-p.*<= 1"),
    "top-p zero": (["--top-p", "0"], r"--top-p.*> 0"),
    "zero pages": (["--num-pages", "0"], r"--num-pages"),
    "negative top-k": (["--top-k", "-1"], r"--top-k"),
    "unknown device": (["--device", "tpu"], r"--device: unknown device 'tpu'"),
    "device typo": (["--device", "cdua"], r"--device"),
    "unknown mode": (["--mode", "fast"], r"--mode: invalid choice"),
    "missing model folder": (["--model", "/nonexistent/ckpt"], r"--model.*no such checkpoint"),
    "empty stop string": (["--stop", ""], r"--stop: an empty stop string"),
}
if not torch.cuda.is_available():
    USAGE_ERRORS["cuda graphs on cpu"] = (["--cuda-graphs"], r"--cuda-graphs: needs a CUDA")


@pytest.mark.parametrize("extra,match", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_exit_2(capsys, extra, match):
    rc, out, err = run(capsys, GEN + extra)
    assert rc == 2 and out == ""
    assert re.search(match, error_line(err)), err


@pytest.mark.parametrize(
    "ids,match",
    [
        ("1,a", r"--prompt-ids: expected comma-separated non-negative integers"),
        ("1.5", r"--prompt-ids"),
        ("", r"--prompt-ids"),
        ("-3", r"--prompt-ids"),
        ("1,,2", r"--prompt-ids"),
        ("72,259", r"--prompt-ids: token ids \[259\] outside the model's vocabulary \(0..258\)"),
    ],
)
def test_bad_prompt_ids_exit_2(capsys, ids, match):
    rc, out, err = run(capsys, ["generate", f"--prompt-ids={ids}", "--max-new-tokens", "2"])
    assert rc == 2 and out == ""
    assert re.search(match, error_line(err)), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_exits_2(capsys):
    rc, _, err = run(capsys, [*GEN, "--device", "cuda"])
    assert rc == 2 and "no CUDA GPU is visible" in error_line(err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_missing_cuda_index_exits_2(capsys):
    rc, _, err = run(capsys, [*GEN, "--device", f"cuda:{torch.cuda.device_count()}"])
    assert rc == 2 and "CUDA device(s) visible" in error_line(err)


def test_command_line_shape_errors_exit_2(capsys):
    for argv, match in [
        (["generate", "--max-new-tokens", "3"], r"one of the arguments --prompt --prompt-ids"),
        (["frobnicate"], r"invalid choice: 'frobnicate'"),
        (["bench", "--only", "no_such_benchmark"], r"--only: unknown benchmarks"),
        ([*GEN, "--mode", "ar", "--model", str(BUILTIN_DIR / "pipo")], r"--mode ar needs an AR"),
        ([*GEN, "--mode", "spec", "--verifier", "/nonexistent"], r"--verifier.*no such"),
    ]:
        rc, _, err = run(capsys, argv)
        assert rc == 2, argv
        assert re.search(match, error_line(err)), (argv, err)


@pytest.mark.parametrize(
    "name,match",
    [
        ("truncated", r"--model .*truncated: cannot load the checkpoint: .*not a readable"),
        ("bad_json", r"--model .*bad_json: cannot load the checkpoint: .*not valid JSON"),
        ("mismatch", r"--model .*mismatch: cannot load the checkpoint: .*do not match"),
    ],
)
def test_corrupt_checkpoints_exit_1(capsys, broken, name, match):
    rc, out, err = run(capsys, [*GEN, "--model", str(broken[name])])
    assert rc == 1 and out == ""
    assert re.search(match, error_line(err)), err


def test_full_cache_exits_1_after_printing_the_text(capsys):
    rc, out, err = run(capsys, [*GEN[:3], "--max-new-tokens", "40", "--num-pages", "1"])
    assert rc == 1
    assert out.strip()  # the text streamed before the cache ran out
    assert err.strip().splitlines()[-2].endswith("finish=cache_full")  # stats line, then error
    assert re.search(r"KV cache full.*raise --num-pages", error_line(err)), err


def test_bench_outside_a_checkout_exits_1(capsys, monkeypatch):
    monkeypatch.setattr(cli, "__file__", "/nonexistent/site-packages/pipo/cli.py")
    rc, _, err = run(capsys, ["bench", "--quick"])
    assert rc == 1 and "source checkout" in error_line(err)


def test_debug_keeps_the_traceback(capsys, broken):
    for argv in (
        [*GEN, "--model", str(broken["truncated"]), "--debug"],
        ["--debug", *GEN, "--model", str(broken["truncated"])],
    ):
        rc, _, err = run(capsys, argv)
        assert rc == 1
        assert "Traceback (most recent call last)" in err and "ValueError" in err
        assert err.strip().splitlines()[-1].startswith("pipo: --model ")


def test_internal_errors_are_one_line_too(capsys, monkeypatch):
    def boom(args):
        raise KeyError("oops")

    monkeypatch.setitem(cli.COMMANDS, "generate", boom)
    rc, _, err = run(capsys, GEN)
    assert rc == 1 and "internal error: KeyError" in error_line(err)


def test_success_leaves_threads_alone(capsys):
    before = torch.get_num_threads()
    rc, _, err = run(capsys, [*GEN, "--threads", "1", "--ignore-eos"])
    assert rc == 0 and "new_tokens=4" in err and "pipo: " not in err
    assert torch.get_num_threads() == before


def test_default_threads_never_use_every_core():
    threads = cli.default_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= threads <= cli.MAX_DEFAULT_THREADS and (cores == 1 or threads < cores)


def test_generate_help_shows_defaults_and_modes(capsys):
    rc, out, _ = run(capsys, ["generate", "--help"])
    assert rc == 0
    assert "``" not in out  # plain text, not reStructuredText
    for mode in ("ar", "pipo", "spec"):
        assert re.search(rf"^  {mode} +\S", out, re.M), mode
    text = " ".join(out.split())  # argparse wraps lines
    assert "--max-new-tokens MAX_NEW_TOKENS tokens to generate (default: 64)" in text
    assert "(default: 1024)" in text and "finish=cache_full" in text  # --num-pages caps output
    assert "(default: 0.5)" in text and f"(default here: {cli.default_threads()}" in text
    assert "0 = greedy (argmax) (default: 0.0)" in text and "(default: None)" not in text


def test_python_dash_m_pipo_errors_without_traceback():
    """The real process: exit status and stderr as a shell sees them (an out-of-vocabulary id is
    found after the model loads, so this crosses the whole command)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pipo", "generate", "--prompt-ids", "99999"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert "outside the model's vocabulary" in error_line(proc.stderr)


def test_missing_dependency_is_one_line(capsys, monkeypatch):
    """Building the parser imports pipo.train (tqdm): a broken install reads as one line too."""

    def missing(sub, common):
        raise ModuleNotFoundError("No module named 'tqdm'")

    monkeypatch.setattr(cli, "_add_train", missing)
    rc, _, err = run(capsys, GEN)
    assert rc == 1 and error_line(err) == "pipo: No module named 'tqdm'"

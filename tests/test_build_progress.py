"""scripts/build_progress.py, the ninja wrapper that makes the build's progress visible under pip:
one line per finished object, compiler messages passed through, ninja's exit status kept."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_progress.py"
_spec = importlib.util.spec_from_file_location("build_progress", SCRIPT)
bp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bp)

NINJA = shutil.which("ninja")


def test_describe_nvcc_and_cxx_commands():
    nvcc = (
        f"/usr/local/cuda/bin/nvcc -MD -MF x.o.d -I{ROOT}/csrc/include -c -c "
        f"{ROOT}/csrc/cuda/attention.cu -o /b/attention.o -O3 -gencode arch=compute_80,code=sm_80 "
        "-gencode arch=compute_90a,code=sm_90a"
    )
    assert bp.describe(nvcc) == ("nvcc", "csrc/cuda/attention.cu", ["sm_80", "sm_90a"])
    # torch's flags already hold a -c: the source is the word after the last one
    cxx = f"c++ -MMD -MF /b/k.o.d -O3 -c -c {ROOT}/csrc/cpu/kv_cache.cpp -o /b/k.o -g0"
    assert bp.describe(cxx) == ("c++", "csrc/cpu/kv_cache.cpp", [])


def test_estimate_scales_with_work_and_parallelism():
    one = bp.estimate_seconds(n_cuda=1, n_archs=1, n_cxx=0, jobs=1)
    assert bp.estimate_seconds(n_cuda=1, n_archs=2, n_cxx=0, jobs=1) == pytest.approx(2 * one)
    assert bp.estimate_seconds(n_cuda=0, n_archs=0, n_cxx=3, jobs=1) == pytest.approx(
        3 * bp.SEC_PER_CXX
    )


def _ninja_project(tmp: Path, fail: bool) -> None:
    src = tmp / "csrc" / "cpu"
    src.mkdir(parents=True)
    for name in ("a", "b"):
        (src / f"{name}.cpp").write_text("")
    # stands in for a compiler: prints a warning for a.cpp, fails on b.cpp when asked to
    compiler = tmp / "fakecc"
    compiler.write_text(
        "#!/bin/sh\n"
        'case "$3" in *a.cpp) echo "a.cpp:1: warning: unused";; esac\n'
        + ('case "$3" in *b.cpp) echo "b.cpp:2: error: boom"; exit 1;; esac\n' if fail else "")
        + 'touch "$5"\n'
    )
    compiler.chmod(0o755)
    (tmp / "build.ninja").write_text(
        f"rule cc\n  command = {compiler} -c -c $in -o $out\n"
        + "".join(f"build {n}.o: cc {src}/{n}.cpp\n" for n in ("a", "b"))
    )


def _wrap(tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "ninja-wrap", NINJA, "-v", "-j", "1"],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PIPO_BUILD_TTY": "0"},
    )


@pytest.mark.skipif(NINJA is None, reason="ninja is not installed")
def test_wrapper_prints_one_line_per_object_and_passes_messages(tmp_path):
    _ninja_project(tmp_path, fail=False)
    r = _wrap(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.startswith("[pipo-kernels build] compiling 2 files: 2 C++") for ln in lines)
    done = [ln for ln in lines if ln.startswith("[pipo-kernels build] [")]
    assert [ln.split()[2:4] for ln in done] == [
        ["[1/2]", "fakecc"],
        ["[2/2]", "fakecc"],
    ]
    assert {ln.split()[4] for ln in done} == {
        str(tmp_path / "csrc/cpu/a.cpp"),
        str(tmp_path / "csrc/cpu/b.cpp"),
    }
    assert "a.cpp:1: warning: unused" in lines  # compiler output reaches pip's log unchanged
    assert "fakecc -c -c" not in r.stdout  # the commands go to ninja.log only
    assert "fakecc -c -c" in (tmp_path / "ninja.log").read_text()
    # nothing changed: nothing compiled, and said so
    again = _wrap(tmp_path)
    assert again.returncode == 0
    assert "nothing to compile" in again.stdout and "[1/" not in again.stdout


@pytest.mark.skipif(NINJA is None, reason="ninja is not installed")
def test_wrapper_keeps_ninjas_failure(tmp_path):
    _ninja_project(tmp_path, fail=True)
    r = _wrap(tmp_path)
    assert r.returncode != 0
    assert "[pipo-kernels build] FAILED: b.o" in r.stdout
    assert "b.cpp:2: error: boom" in r.stdout

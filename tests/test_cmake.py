"""The CMake route for libtorch users (README, "What gets built"): CMakeLists.txt configures and
builds out of the box with the installed torch, and the library registers the same ops as the
setup.py extension.

Marked `cmake` and left out of the default run (a build takes minutes); CI runs them with
`python -m pytest -q -m cmake` (.ci/run). The build is CPU-only unless PIPO_CMAKE_TEST_CUDA=1
(then the CUDA kernels too, for TORCH_CUDA_ARCH_LIST or 8.0;9.0a: ~15 min on 2 cores).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CMAKE = shutil.which("cmake")
pytestmark = [
    pytest.mark.cmake,
    pytest.mark.skipif(CMAKE is None, reason="cmake is not installed"),
]
CUDA_TOOLKIT = torch.version.cuda is not None and shutil.which("nvcc") is not None


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-6000:]}"
    return r


def _configure(build: Path, *options: str) -> str:
    cmd = [CMAKE, "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    r = _run([*cmd, *options], timeout=600)
    return r.stdout + r.stderr


def _pipo_ops() -> dict[str, list[str]]:
    """{op: dispatch keys with a kernel} of every pipo op registered in this process."""
    keys = ("CPU", "CUDA")
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pipo::")]
    return {
        n: [k for k in keys if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)]
        for n in sorted(names)
        if not n.endswith("_triton")
    }


# Runs in a fresh interpreter: pipo_kernels._C registers the same names, so it must not be loaded.
_PROBE = """
import json, sys, torch
torch.ops.load_library(sys.argv[1])
names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pipo::")]
ops = {n: [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)]
       for n in sorted(names)}
# one op end to end: write 3 tokens' K/V into a paged cache (slot -1 = padding, skipped)
g = torch.Generator().manual_seed(0)
key, value = torch.randn(3, 2, 8, generator=g), torch.randn(3, 2, 8, generator=g)
k_cache, v_cache = torch.full((4, 4, 2, 8), float("nan")), torch.full((4, 4, 2, 8), float("nan"))
slots = torch.tensor([5, -1, 14])
torch.ops.pipo.kv_cache_append(key, value, k_cache, v_cache, slots)
flat_k, flat_v = k_cache.view(16, 2, 8), v_cache.view(16, 2, 8)
ok = bool(torch.equal(flat_k[5], key[0]) and torch.equal(flat_k[14], key[2])
          and torch.equal(flat_v[14], value[2]) and torch.isnan(flat_k[6]).all())
print(json.dumps({"ops": ops, "append_ok": ok}))
"""


@pytest.mark.skipif(not CUDA_TOOLKIT, reason="needs a CUDA build of torch and nvcc")
def test_configures_with_cuda_torch(tmp_path):
    """With a CUDA torch and a toolkit the default is the CUDA build, and it configures without
    any hand-set path (a minimal toolkit lacks libnvrtc; torch's wheel has it)."""
    out = _configure(tmp_path / "build")
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert "PIPO_BUILD_CUDA:BOOL=ON" in cache, out[-3000:]
    assert "NOTFOUND" not in "".join(
        ln for ln in cache.splitlines(True) if ln.startswith(("CUDA_nvrtc_LIBRARY", "CUDA_NVRTC"))
    )


def test_builds_and_registers_the_ops(tmp_path):
    cuda = os.environ.get("PIPO_CMAKE_TEST_CUDA") == "1"
    if cuda and not CUDA_TOOLKIT:
        pytest.skip("PIPO_CMAKE_TEST_CUDA=1 needs a CUDA build of torch and nvcc")
    build = tmp_path / "build"
    _configure(build, f"-DPIPO_BUILD_CUDA={'ON' if cuda else 'OFF'}")
    _run([CMAKE, "--build", str(build), "-j", str(os.cpu_count() or 1)], timeout=3600)
    lib = build / "libpipo_kernels_ops.so"
    assert lib.exists()
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(lib)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["append_ok"], "kv_cache_append of the CMake library wrote the wrong slots"
    expected = _pipo_ops()  # the setup.py extension, loaded by conftest's import of pipo_kernels
    assert expected, "pipo_kernels._C registered no op"
    assert sorted(got["ops"]) == sorted(expected)
    for name, keys in expected.items():
        want = [k for k in keys if cuda or k == "CPU"]
        assert got["ops"][name] == want, f"{name}: kernels for {got['ops'][name]}, want {want}"

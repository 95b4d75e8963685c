"""Builds pipo_kernels._C: the CPU kernels always, the CUDA kernels whenever torch is a CUDA build
and nvcc is found (a GPU need not be visible). See README.md, "What gets built"."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "8.0;9.0a"  # used when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset
# Objects live here between builds (pip's editable build would otherwise compile into a fresh
# temporary folder every time): the second README command, or any rebuild, compiles only what
# changed. PIPO_BUILD_DIR moves it.
BUILD_DIR = Path(os.environ.get("PIPO_BUILD_DIR") or ROOT / "build").resolve()


def _load_progress():
    spec = importlib.util.spec_from_file_location(
        "build_progress", ROOT / "scripts" / "build_progress.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


progress = _load_progress()


def log(msg: str) -> None:
    """Detail for pip's log (`pip install -v`); progress.say() also reaches the terminal."""
    print(f"{progress.PREFIX} {msg}", flush=True)


def find_ninja() -> str | None:
    """ninja on the PATH, else the one the `ninja` wheel installed (a venv's bin folder is not on
    the PATH when its pip is called by path)."""
    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja

        cand = Path(ninja.BIN_DIR) / "ninja"
        if cand.exists():
            os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
            return str(cand)
    except (ImportError, AttributeError):
        pass
    return None


def drop_static_libstdcxx() -> None:
    """Removes -static-libstdc++ from the link command the interpreter's sysconfig (or the
    environment) hands setuptools; some standalone Python builds carry it."""
    import sysconfig

    for var in ("LDSHARED", "LDCXXSHARED"):
        value = os.environ.get(var) or sysconfig.get_config_var(var) or ""
        if "-static-libstdc++" in value:
            os.environ[var] = value.replace("-static-libstdc++", " ").strip()
            log(f"{var}: dropped -static-libstdc++ (the extension must share torch's libstdc++)")


def read_sources() -> list[str]:
    text = (ROOT / "csrc" / "sources.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _has_runtime(home: Path) -> bool:
    return any((home / d / "libcudart.so").exists() for d in ("lib64", "lib"))


def find_cuda_home() -> str | None:
    """The toolkit folder that holds both bin/nvcc and the runtime library.

    Order: $CUDA_HOME / $CUDA_PATH, the TOP folder that nvcc itself reports (nvcc on the PATH may
    be a wrapper script outside the toolkit), the folder above the resolved nvcc, /usr/local/cuda.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:  # a dry run prints the real toolkit folder as TOP=...; it needs an input file
            with tempfile.TemporaryDirectory() as tmp:
                probe = Path(tmp) / "probe.cu"
                probe.write_text("")
                out = subprocess.run(
                    [nvcc, "--dryrun", "-c", str(probe), "-o", str(Path(tmp) / "probe.o")],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            m = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
            if m:
                candidates.append(m.group(1))
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for cand in candidates:
        if not cand:
            continue
        home = Path(cand).resolve()
        if (home / "bin" / "nvcc").exists() and _has_runtime(home):
            return str(home)
    return None


def extra_cuda_include_dirs(cuda_home: str) -> list[str]:
    """Headers that ATen's CUDA headers include but a minimal toolkit may lack (cusparse.h,
    cublas_v2.h): take them from torch's nvidia wheels, searched after the toolkit."""
    if (Path(cuda_home) / "include" / "cusparse.h").exists():
        return []
    try:
        import nvidia  # the namespace package of torch's CUDA wheels
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += [str(p.parent) for p in Path(base).glob("*/include/cusparse.h")]
    return found[:1]


def make_build_ext(base, variant: str, summary: str, ninja: str | None):
    """torch's BuildExtension with a persistent object folder and visible progress."""

    class BuildExt(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, use_ninja=ninja is not None, **kwargs)

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = str(BUILD_DIR / f"temp-{variant}")

        def build_extensions(self):
            if ninja is not None:
                # torch runs `ninja -v` by name: a shim first on the PATH condenses its output
                shim_dir = BUILD_DIR / "bin"
                shim_dir.mkdir(parents=True, exist_ok=True)
                shim = shim_dir / "ninja"
                script = ROOT / "scripts" / "build_progress.py"
                shim.write_text(
                    f'#!/bin/sh\nexec "{sys.executable}" "{script}" ninja-wrap "{ninja}" "$@"\n'
                )
                shim.chmod(0o755)
                os.environ["PATH"] = f"{shim_dir}{os.pathsep}{os.environ['PATH']}"
            else:
                progress.say(
                    "ninja not found: compiling one file at a time, from scratch every time "
                    "(pip install ninja)"
                )
            progress.say(f"{summary}; objects in {self.build_temp}")
            start = time.monotonic()
            super().build_extensions()
            progress.say(
                f"linked {self.get_ext_filename('pipo_kernels._C')} "
                f"({time.monotonic() - start:.0f} s in all)"
            )

    return BuildExt


def main() -> None:
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    forced = os.environ.get("PIPO_BUILD_CUDA")
    if forced not in (None, "", "0", "1"):
        raise SystemExit(f"PIPO_BUILD_CUDA: expected 0 or 1, got {forced!r}")
    possible = torch.version.cuda is not None and cuda_home is not None
    build_cuda = possible if forced in (None, "") else forced == "1"
    if build_cuda and not possible:
        raise SystemExit(
            "PIPO_BUILD_CUDA=1, but "
            + ("torch is not a CUDA build" if torch.version.cuda is None else "nvcc was not found")
            + ": set CUDA_HOME to the toolkit folder holding bin/nvcc and lib64/libcudart.so"
        )

    sources = read_sources()
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-DPIPO_PYTHON_EXTENSION"]
    # Python's own CFLAGS carry -g: host debug info doubled the C++ compile time (latent.cpp: 43 s
    # -> 20 s of CPU) and made objects 30x larger. PIPO_BUILD_DEBUG=1 keeps it (gdb backtraces).
    if os.environ.get("PIPO_BUILD_DEBUG") != "1":
        cxx_flags.append("-g0")
    # libstdc++ must be the process's shared one: torch already loaded libstdc++.so.6, and a
    # second, static copy inside _C crashed every integer formatted into an error message on the
    # GPU machine (benchmarks/NOTES.md, run 2). The explicit -lstdc++ resolves every C++ runtime
    # symbol from the shared library before any -static-libstdc++ archive could be searched.
    ext_kwargs: dict = {"extra_link_args": ["-fopenmp", "-lstdc++"]}
    drop_static_libstdcxx()
    if build_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            if torch.cuda.is_available():
                caps = {
                    torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())
                }
                archs = ";".join(
                    f"{a}.{b}" + ("a" if (a, b) == (9, 0) else "") for a, b in sorted(caps)
                )
            else:
                archs = DEFAULT_ARCHS
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        nvcc_flags = [
            "-O3",
            "-std=c++20",
            "-lineinfo",
            "--expt-relaxed-constexpr",
            "-DPIPO_WITH_CUDA",
        ]
        nvcc_flags += [f"-Xcompiler=-idirafter,{d}" for d in extra_cuda_include_dirs(cuda_home)]
        cxx_flags.append("-DPIPO_WITH_CUDA")
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        summary = f"CUDA kernels: on (CUDA_HOME={cuda_home}, archs {archs})"
        variant = "cuda-" + re.sub(r"[^0-9a-z]+", "-", archs.lower().replace(".", "")).strip("-")
        ext = CUDAExtension(
            "pipo_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            include_dirs=[str(ROOT / "csrc" / "include")],
            **ext_kwargs,
        )
    else:
        why = (
            "PIPO_BUILD_CUDA=0" if forced == "0" else "torch is not a CUDA build or nvcc not found"
        )
        summary = f"CUDA kernels: off ({why}); building the CPU kernels only"
        variant = "cpu"
        ext = CppExtension(
            "pipo_kernels._C",
            [s for s in sources if not s.startswith("csrc/cuda/")],
            extra_compile_args={"cxx": cxx_flags},
            include_dirs=[str(ROOT / "csrc" / "include")],
            **ext_kwargs,
        )

    variant += f"-py{sys.version_info.major}{sys.version_info.minor}"
    build_ext = make_build_ext(BuildExtension, variant, summary, find_ninja())
    setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})


main()

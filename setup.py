"""Builds pipo_kernels._C: the CPU kernels always, the CUDA kernels whenever torch is a CUDA build
and nvcc is found (a GPU need not be visible). See README.md, "What gets built"."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "8.0;9.0a"  # used when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset


def log(msg: str) -> None:
    print(f"[pipo-kernels build] {msg}", flush=True)


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
        log(f"CUDA kernels: on (CUDA_HOME={cuda_home}, archs {os.environ['TORCH_CUDA_ARCH_LIST']})")
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
        log(f"CUDA kernels: off ({why}); building the CPU kernels only")
        ext = CppExtension(
            "pipo_kernels._C",
            [s for s in sources if not s.startswith("csrc/cuda/")],
            extra_compile_args={"cxx": cxx_flags},
            include_dirs=[str(ROOT / "csrc" / "include")],
            **ext_kwargs,
        )

    setup(
        ext_modules=[ext],
        cmdclass={
            "build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
        },
    )


main()

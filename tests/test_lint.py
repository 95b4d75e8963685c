"""The tree stays clean: ruff (lint + format), clang-format and mypy, when the tools are installed
(`pip install -e ".[test]"` installs them, at the versions .pre-commit-config.yaml also pins)."""

import importlib.util
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_clean():
    for cmd in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        r = _run(cmd)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("clang-format") is None, reason="clang-format is not installed")
def test_clang_format_clean():
    files = [
        str(p.relative_to(ROOT))
        for ext in ("*.cpp", "*.cu", "*.cuh", "*.h")
        for p in (ROOT / "csrc").rglob(ext)
    ]
    r = _run(["clang-format", "--dry-run", "--Werror", *files])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_clean():
    """mypy over the public API modules listed in pyproject.toml ([tool.mypy] files)."""
    r = _run([sys.executable, "-m", "mypy"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_public_api_has_type_hints():
    """Every public function (pipo_kernels.<op>, the reference ops, pipo.Engine) annotates every
    argument and its return value, so mypy checks its callers."""
    import pipo_kernels
    from pipo.engine import Engine
    from pipo_kernels import reference

    funcs = [getattr(pipo_kernels, n) for n in pipo_kernels.__all__]
    funcs += [getattr(reference, n) for n in dir(reference) if not n.startswith("_")]
    funcs = [f for f in funcs if inspect.isfunction(f) and f.__module__.startswith("pipo_kernels")]
    funcs += [Engine.__init__, Engine.generate]
    assert len(funcs) > 20
    missing = []
    for f in funcs:
        sig = inspect.signature(f)
        missing += [
            f"{f.__module__}.{f.__qualname__}({p.name})"
            for p in sig.parameters.values()
            if p.name != "self" and p.annotation is inspect.Parameter.empty
        ]
        if sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{f.__module__}.{f.__qualname__} -> ?")
    assert not missing, "missing type hints: " + ", ".join(missing)

"""The tree stays clean: ruff (lint + format) and clang-format, when the tools are installed
(`pip install -e ".[test]"` installs both)."""

import shutil
import subprocess
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

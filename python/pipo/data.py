"""The training corpus of the built-in model: the Python standard library of the running
interpreter, byte-tokenised, split by file into train and held-out sets.

Every machine that runs pipo has this corpus offline. The split is a pure function of each file's
path relative to the stdlib root (a SHA-1 bucket), so it is the same on every machine with the same
Python version and does not depend on directory-listing order.

Example::

    train, heldout = load_corpus()                 # uint8-free int16 token streams
    batch = sample_batch(train, 8, 256, torch.Generator().manual_seed(0))   # int64 [8, 256]
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

from .tokenizer import ByteTokenizer

__all__ = [
    "EXCLUDED_DIRS",
    "corpus_files",
    "encode_files",
    "line_starts",
    "load_corpus",
    "pad_split",
    "sample_batch",
    "split_files",
    "stdlib_root",
]

# Third-party packages and the (huge, repetitive) test suites are left out.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3"}
)


def stdlib_root() -> Path:
    """The running interpreter's standard library folder (``sysconfig``'s "stdlib" path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: str | Path | None = None) -> list[Path]:
    """Every ``*.py`` file under ``root`` (default: the stdlib), sorted, excluded dirs skipped."""
    root = Path(root) if root is not None else stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(files)


def split_files(
    files: list[Path], root: str | Path | None = None, heldout_fraction: float = 0.05
) -> tuple[list[Path], list[Path]]:
    """(train, heldout): a file is held out when the SHA-1 of its root-relative path falls in the
    first ``heldout_fraction`` of the hash range. Deterministic and order-independent."""
    root = Path(root) if root is not None else stdlib_root()
    train, heldout = [], []
    for f in files:
        digest = hashlib.sha1(f.relative_to(root).as_posix().encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") / 2**64
        (heldout if bucket < heldout_fraction else train).append(f)
    return train, heldout


def encode_files(files: list[Path]) -> np.ndarray:
    """int16 [total]: the files' bytes laid end to end, each followed by EOS."""
    eos = ByteTokenizer.eos_id
    parts = []
    for f in files:
        parts.append(np.frombuffer(f.read_bytes(), dtype=np.uint8).astype(np.int16))
        parts.append(np.array([eos], dtype=np.int16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def load_corpus(
    root: str | Path | None = None, heldout_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) int16 token streams of the stdlib corpus (see ``encode_files``)."""
    train, heldout = split_files(corpus_files(root), root, heldout_fraction)
    return encode_files(train), encode_files(heldout)


_LINE_STARTS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def line_starts(stream: np.ndarray) -> np.ndarray:
    """int64 [n]: the offsets in ``stream`` where a line starts (0, or the token after a newline
    byte or an EOS), except those holding EOS itself. Computed once per stream object and cached
    (the cache keeps a reference to the stream, so the key cannot be reused)."""
    cached = _LINE_STARTS.get(id(stream))
    if cached is not None and cached[0] is stream:
        return cached[1]
    prev = stream[:-1]
    after = (prev == ord("\n")) | (prev == ByteTokenizer.eos_id)
    starts = np.concatenate([[0], np.flatnonzero(after) + 1]).astype(np.int64)
    starts = starts[stream[starts] != ByteTokenizer.eos_id] if len(stream) else starts[:0]
    _LINE_STARTS[id(stream)] = (stream, starts)
    return starts


def sample_batch(
    stream: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
) -> torch.Tensor:
    """int64 [batch_size, seq_len]: BOS then a crop of seq_len - 1 tokens of ``stream`` that begins
    at a line start (see ``line_starts``), drawn uniformly among the line starts with a full crop
    after them, with ``generator`` (deterministic for a seeded generator).

    Every window starts with BOS followed by the start of a line, as every prompt the engine
    encodes does, so generation from a prompt is in distribution. (Crops at arbitrary byte
    offsets taught the model that BOS is followed by the middle of a line, mostly indentation,
    and greedy decoding after a newline collapsed into runs of spaces.)
    """
    starts = line_starts(stream)
    starts = starts[: np.searchsorted(starts, len(stream) - (seq_len - 1), side="right")]
    if len(starts) == 0:
        raise ValueError(f"stream: no line start with {seq_len - 1} tokens after it")
    pick = torch.randint(0, len(starts), (batch_size,), generator=generator).numpy()
    idx = starts[pick][:, None] + np.arange(seq_len - 1)
    body = torch.from_numpy(stream[idx].astype(np.int64))
    bos = torch.full((batch_size, 1), ByteTokenizer.bos_id, dtype=torch.int64)
    return torch.cat([bos, body], 1)


def pad_split(
    tokens: torch.Tensor,
    max_fraction: float,
    generator: torch.Generator,
    pad_id: int = ByteTokenizer.pad_id,
    protect: int = 0,
    fold: int = 2,
) -> torch.Tensor:
    """PIPO's PAD-split augmentation of a batch of token rows, for groups of ``fold`` = k tokens.

    tokens int64 [B, T] (T a multiple of k) -> int64 [B, T]: per row a fraction f ~ U[0,
    max_fraction] of the groups (t_1 … t_k) with index >= ``protect`` is split at a cut point
    c ~ U{1 … k-1} into (t_1 … t_c, PAD …) and (t_c+1 … t_k, PAD …), both padded to k tokens: a
    group whose gate kept a prefix, as inference produces. The row is then cut back to T tokens
    (the tail that no longer fits is dropped), so every group starts with a real token. For k = 2
    the cut is always 1 (pairs (t, PAD), (t', PAD)) and the random draws are those of the pairs'
    original augmentation, so PIPO-2 training sees the same batches as before.
    """
    _b, t = tokens.shape
    k = fold
    if k < 2 or t % k:
        raise ValueError(f"tokens: expected a length that is a multiple of fold {k}, got {t}")
    rows = []
    num_groups = t // k
    for row in tokens:
        frac = float(torch.rand((), generator=generator)) * max_fraction
        split = torch.rand(num_groups, generator=generator) < frac
        split[:protect] = False
        if k > 2:
            cuts = torch.randint(1, k, (num_groups,), generator=generator).tolist()
        else:
            cuts = [1] * num_groups
        groups = row.view(num_groups, k).tolist()
        out: list[int] = []
        for i in range(num_groups):
            g = groups[i]
            if split[i]:
                c = cuts[i]
                out += g[:c] + [pad_id] * (k - c) + g[c:] + [pad_id] * c
            else:
                out += g
            if len(out) >= t:
                break
        rows.append(torch.tensor(out[:t], dtype=torch.int64))
    return torch.stack(rows)

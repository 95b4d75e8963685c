"""The op registry: the one list of pipo-kernels' ops, which every other list is checked against.

Adding an op
------------
Add one ``Op`` entry to ``OPS`` below, then run ``pytest tests/test_registry.py``: it fails,
naming the place, until the op is in every one of them — its schema and its CPU / CUDA ``m.impl``
lines in csrc/torch_bindings.cpp (C++, one ``TORCH_LIBRARY(pipo, m)``), the ``<op>_cpu`` and
``<op>_cuda`` declarations in csrc/ops.h, the wrapper ``<op>`` in pipo_kernels/<family>.py with
its fake kernel (``register_fake("pipo::<op>")``), the pure-PyTorch ``reference.<op>``, the Triton
twin pipo_kernels/triton/<op>.py registering ``pipo::<op>_triton``, a ``### `<op>(...)``` section
in docs/ops.md, the benchmark benchmarks/bench_<family>.py and the tests tests/test_<family>.py.
``pipo_kernels.<op>``, ``pipo_kernels.triton`` and ``pipo.ops`` take their lists from here.

Each entry says what the op is, not how it is called: its name, its family (the file stem shared
by its wrapper module, benchmark and tests), the arguments it writes in place (a mutating op marks
them ``Tensor(a!)`` in its schema and returns nothing) and whether it has a Triton twin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    name: str
    family: str  # pipo_kernels/<family>.py, benchmarks/bench_<family>.py, tests/test_<family>.py
    mutates: tuple[str, ...] = ()  # arguments written in place; the op then returns nothing
    triton: bool = True  # a Triton twin pipo_kernels/triton/<name>.py (pipo::<name>_triton)

    @property
    def wrapper_module(self) -> str:
        return f"pipo_kernels.{self.family}"

    @property
    def triton_module(self) -> str | None:
        return f"pipo_kernels.triton.{self.name}" if self.triton else None

    def wrapper(self):
        """The public Python function ``pipo_kernels.<name>``."""
        return getattr(importlib.import_module(self.wrapper_module), self.name)


OPS: tuple[Op, ...] = (
    Op("kv_cache_append", "kv_cache", mutates=("k_cache", "v_cache")),
    Op("kv_cache_compact", "kv_cache", mutates=("k_cache", "v_cache")),
    Op("fold_pairs", "latent"),
    Op("unfold_input", "latent"),
    Op("sample_tokens", "sampling"),
    Op("pair_out", "pair_out"),
    Op("group_out", "pair_out"),  # pair_out's gate for groups of k = 1 + J tokens
    Op("paged_attention", "attention"),
    Op("verify_tree", "verify"),
    Op("verify_tree_stochastic", "verify"),
    Op("fused_add_rmsnorm", "fused", mutates=("x", "residual")),
    Op("qk_norm_rope_append", "fused", mutates=("q", "k_cache", "v_cache")),
)

NAMES: tuple[str, ...] = tuple(op.name for op in OPS)
# Second public names of an op's wrapper (the same function object, no schema of their own):
# exported by pipo_kernels and pipo.ops beside the op's own name.
ALIASES: dict[str, str] = {"fold_groups": "fold_pairs"}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(op.family for op in OPS))
TRITON_NAMES: tuple[str, ...] = tuple(op.name for op in OPS if op.triton)

_BY_NAME = {op.name: op for op in OPS}


def get(name: str) -> Op:
    """The registry entry of op ``name``; a ValueError names the known ops otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"name: expected one of {', '.join(NAMES)}, got {name!r}") from None


__all__ = ["ALIASES", "FAMILIES", "NAMES", "OPS", "TRITON_NAMES", "Op", "get"]

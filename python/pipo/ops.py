"""The one door from the model to the kernels: ``pipo.ops.<op>`` is ``pipo_kernels.<op>``.

Every call passes its arguments by keyword, as docs/ops.md names them; each op picks its backend
(``backend=None``: the fastest for the tensors' device, see pipo_kernels' README section). The
ops are those of pipo_kernels._registry (the imports below are checked against it).
"""

from __future__ import annotations

from pipo_kernels import (
    fold_groups,
    fold_pairs,
    fused_add_rmsnorm,
    group_out,
    kv_cache_append,
    kv_cache_compact,
    paged_attention,
    pair_out,
    qk_norm_rope_append,
    sample_tokens,
    unfold_input,
    verify_tree,
    verify_tree_stochastic,
)
from pipo_kernels._registry import NAMES as OPS
from pipo_kernels._registry import get as _get

# The ops' names are pipo_kernels._registry.NAMES, plus its ALIASES (tests/test_registry.py
# checks this list).
__all__ = [
    "OPS",
    "fold_groups",
    "fold_pairs",
    "fused_add_rmsnorm",
    "group_out",
    "kv_cache_append",
    "kv_cache_compact",
    "paged_attention",
    "pair_out",
    "qk_norm_rope_append",
    "resolve",
    "sample_tokens",
    "unfold_input",
    "verify_tree",
    "verify_tree_stochastic",
]


def resolve(name: str):
    """The callable that runs op ``name``; a ValueError names the known ops otherwise."""
    return globals()[_get(name).name]

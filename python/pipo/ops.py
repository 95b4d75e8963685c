"""The one door from the model to the kernels: ``pipo.ops.<op>`` is ``pipo_kernels.<op>``.

Every call passes its arguments by keyword, as OPS.md names them; each op picks its backend
(``backend=None``: the fastest for the tensors' device, see pipo_kernels' README section).
"""

from __future__ import annotations

from pipo_kernels import (
    fold_pairs,
    fused_add_rmsnorm,
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

__all__ = [
    "OPS",
    "fold_pairs",
    "fused_add_rmsnorm",
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

OPS = (
    "kv_cache_append",
    "kv_cache_compact",
    "fold_pairs",
    "unfold_input",
    "sample_tokens",
    "pair_out",
    "paged_attention",
    "verify_tree",
    "verify_tree_stochastic",
    "fused_add_rmsnorm",
    "qk_norm_rope_append",
)


def resolve(name: str):
    """The callable that runs op ``name``."""
    if name not in OPS:
        raise ValueError(f"name: expected one of {', '.join(OPS)}, got {name!r}")
    return globals()[name]

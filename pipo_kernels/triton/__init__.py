"""Triton kernels, one file per op. Importing this package registers each as a custom op
(`torch.ops.pipo.<op>_triton`) through torch.library.triton_op, so torch.compile sees the kernels.

On a machine without a GPU the kernels run under Triton's interpreter when TRITON_INTERPRET=1 is
set before `import triton` (slow; meant for tests)."""

from . import (
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
    "fold_pairs",
    "fused_add_rmsnorm",
    "kv_cache_append",
    "kv_cache_compact",
    "paged_attention",
    "pair_out",
    "qk_norm_rope_append",
    "sample_tokens",
    "unfold_input",
    "verify_tree",
    "verify_tree_stochastic",
]

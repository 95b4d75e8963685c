"""pipo-kernels: fused kernels and PyTorch custom ops for PIPO (Pair-In, Pair-Out) decoding.

Importing this package registers every op under ``torch.ops.pipo`` (C++ CPU and CUDA kernels from
``pipo_kernels._C``; Triton kernels as ``torch.ops.pipo.<op>_triton``) and exposes the Python
wrappers ``pipo_kernels.<op>(..., backend=None)``. docs/ops.md lists the ops with their shapes;
pipo_kernels._registry is the one list of them (tests/test_registry.py checks every other place,
this file's imports included, against it).
"""

from __future__ import annotations

import logging

import torch  # noqa: F401  (loads libtorch before the extension needs it)

__version__ = "0.1.0"

try:
    from . import _C  # type: ignore[attr-defined]  # registers the C++ ops (compiled, no stub)
except ImportError as exc:  # pragma: no cover - only when the extension was not built
    logging.getLogger("pipo_kernels").warning(
        "pipo_kernels._C could not be loaded (%s): only the 'torch' and 'triton' backends are "
        "available. Reinstall with `pip install --no-build-isolation -e .`",
        exc,
    )
    _C = None

HAS_C = _C is not None

from . import reference  # noqa: E402
from ._backend import (  # noqa: E402
    available_backends,
    resolve,
    triton_importable,
    triton_interpreting,
)
from .attention import paged_attention  # noqa: E402
from .fused import fused_add_rmsnorm, qk_norm_rope_append  # noqa: E402
from .kv_cache import kv_cache_append, kv_cache_compact  # noqa: E402
from .latent import fold_groups, fold_pairs, unfold_input  # noqa: E402
from .pair_out import group_out, pair_out  # noqa: E402
from .sampling import sample_tokens  # noqa: E402
from .verify import verify_tree, verify_tree_stochastic  # noqa: E402

if triton_importable():
    from . import triton  # noqa: F401  (registers torch.ops.pipo.*_triton)

# The ops' names are pipo_kernels._registry.NAMES, plus its ALIASES (tests/test_registry.py
# checks this list).
__all__ = [
    "HAS_C",
    "__version__",
    "available_backends",
    "fold_groups",
    "fold_pairs",
    "fused_add_rmsnorm",
    "group_out",
    "kv_cache_append",
    "kv_cache_compact",
    "paged_attention",
    "pair_out",
    "qk_norm_rope_append",
    "reference",
    "resolve",
    "sample_tokens",
    "triton_interpreting",
    "unfold_input",
    "verify_tree",
    "verify_tree_stochastic",
]

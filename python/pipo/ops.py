"""The one door from the model to the kernels: ``pipo.ops.<op>`` is ``pipo_kernels.<op>``.

While an op has not landed in pipo_kernels yet, the plain-PyTorch stand-in of the same OPS.md
signature in ``pipo._standin_ops`` runs instead, and the "pipo" logger says so once per op.
Every call passes its arguments by keyword, as OPS.md names them.
"""

from __future__ import annotations

import logging

import pipo_kernels

from . import _standin_ops

__all__ = [
    "OPS",
    "fold_pairs",
    "kv_cache_append",
    "kv_cache_compact",
    "paged_attention",
    "pair_out",
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
)

_log = logging.getLogger("pipo")
_resolved: dict[str, object] = {}


def resolve(name: str):
    """The callable that runs op ``name``: pipo_kernels' when it exists, else the stand-in."""
    fn = _resolved.get(name)
    if fn is None:
        fn = getattr(pipo_kernels, name, None)
        if fn is None:
            _log.warning("pipo_kernels has no %s yet; using the PyTorch stand-in", name)
            fn = getattr(_standin_ops, name)
        _resolved[name] = fn
    return fn


def kv_cache_append(**kwargs) -> None:
    resolve("kv_cache_append")(**kwargs)


def kv_cache_compact(**kwargs) -> None:
    resolve("kv_cache_compact")(**kwargs)


def fold_pairs(**kwargs):
    return resolve("fold_pairs")(**kwargs)


def unfold_input(**kwargs):
    return resolve("unfold_input")(**kwargs)


def sample_tokens(**kwargs):
    return resolve("sample_tokens")(**kwargs)


def pair_out(**kwargs):
    return resolve("pair_out")(**kwargs)


def paged_attention(**kwargs):
    return resolve("paged_attention")(**kwargs)


def verify_tree(**kwargs):
    return resolve("verify_tree")(**kwargs)


def verify_tree_stochastic(**kwargs):
    return resolve("verify_tree_stochastic")(**kwargs)

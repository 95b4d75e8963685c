"""Drafters of spec mode: each proposes token trees that the AR model verifies (``base.Drafter``).

- ``ngram``: prompt lookup over the request's own tokens plus a Lookahead-style n-gram pool; no
  weights (``ngram.NGramDrafter``).
- ``pipo``: the PIPO model drafts (``pipo.PIPODrafter``).
- ``mtp``: one decoder layer + fc on [embedding; verifier hidden state] (EAGLE / DeepSeek-MTP;
  ``heads.MTPDrafter``).
- ``medusa``: residual heads on the verifier's last hidden state (``heads.MedusaDrafter``).

``make(name, verifier, opts, draft_model=None)`` builds one by name; ``DRAFTERS`` maps each name
to its factory ``(verifier, opts, draft_model) -> Drafter``.
"""

from __future__ import annotations

from .base import TREES, Accepted, Drafter, DraftOptions, DraftTree, PrefillFeatures
from .tree import Level, TreeShape, ancestor_mask, grow, sample_children

__all__ = [
    "DRAFTERS",
    "TREES",
    "Accepted",
    "DraftOptions",
    "DraftTree",
    "Drafter",
    "Level",
    "PrefillFeatures",
    "TreeShape",
    "ancestor_mask",
    "grow",
    "make",
    "sample_children",
]


def _ngram(verifier, opts: DraftOptions, draft_model):
    from .ngram import NGramDrafter

    return NGramDrafter(opts)


def _pipo(verifier, opts: DraftOptions, draft_model):
    from .pipo import PIPODrafter

    return PIPODrafter(draft_model, opts)


def _mtp(verifier, opts: DraftOptions, draft_model):
    from .heads import MTPDrafter, load_drafter_head

    return MTPDrafter(load_drafter_head("mtp", verifier, opts.checkpoint), opts)


def _medusa(verifier, opts: DraftOptions, draft_model):
    from .heads import MedusaDrafter, load_drafter_head

    return MedusaDrafter(load_drafter_head("medusa", verifier, opts.checkpoint), opts)


DRAFTERS = {
    "ngram": _ngram,
    "pipo": _pipo,
    "mtp": _mtp,
    "medusa": _medusa,
}


def make(name: str, verifier, opts: DraftOptions, draft_model=None) -> Drafter:
    """The drafter ``name`` (one of DRAFTERS) for ``verifier`` (an ARModel); draft_model: the
    PIPOModel of drafter "pipo"."""
    if name not in DRAFTERS:
        raise ValueError(f"drafter: expected one of {tuple(DRAFTERS)}, got {name!r}")
    return DRAFTERS[name](verifier, opts, draft_model)

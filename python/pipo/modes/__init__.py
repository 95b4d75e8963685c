"""Decoding modes: each owns its prefill and a pure decode step over static tensors.

- ``ar`` (``ARMode``): one token per backbone pass.
- ``pipo`` (``PIPOMode``): one pair per backbone pass (fold → backbone → token1 → MTP → token2 →
  confidence gate).
- ``spec`` (``SpecMode``): PIPO drafts, the AR model verifies a tree per round.

The engine (``pipo.engine``) admits, reserves pages, steps, emits and retires; it calls a mode's
``prefill`` and ``step`` and never the model's ops itself.
"""

from .ar import ARMode
from .base import Mode, Piece
from .pipo import PIPOMode
from .spec import SpecMode

__all__ = ["ARMode", "Mode", "PIPOMode", "Piece", "SpecMode"]

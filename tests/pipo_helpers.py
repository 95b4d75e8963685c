"""Small models and helpers shared by tests/test_model.py and tests/test_engine.py."""

from __future__ import annotations

import pytest
import torch

from pipo.config import preset
from pipo.model import ARModel, PIPOModel

try:
    import safetensors  # noqa: F401

    HAS_SAFETENSORS = True
except ImportError:  # e.g. a GPU machine installed with --no-deps
    HAS_SAFETENSORS = False
requires_safetensors = pytest.mark.skipif(not HAS_SAFETENSORS, reason="needs safetensors")

# The tiny preset made smaller still, so that whole generations run in well under a second.
SMALL = dict(
    hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64, intermediate_size=256
)


def small_config(**overrides):
    return preset("tiny", **{**SMALL, **overrides})


def small_models(compressor: str = "linear", seed: int = 0):
    """(ARModel, PIPOModel) with random weights large enough to give varied greedy text."""
    ar = ARModel(small_config()).eval()
    ar.init_random(seed + 1, std=0.08)
    pipo = PIPOModel(small_config(compressor=compressor)).eval()
    pipo.init_random(seed + 2, std=0.08)
    with torch.no_grad():  # a confidence head that is not constant, so the gate has work to do
        pipo.confidence.fc2.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return ar, pipo

"""Model configuration: one dataclass and the named presets.

The presets give the shapes of the models the project benchmarks on. Only ``tiny`` ever gets
trained weights (the byte-level default model); ``qwen3-4b`` and ``qwen3.5-4b-dense`` are
random-weight stand-ins with "-like" shapes for speed work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["PRESETS", "ModelConfig", "from_hf_config", "preset"]


@dataclass
class ModelConfig:
    """Shapes and hyper-parameters of a Qwen3-style decoder and its PIPO heads.

    ``fold`` is the number of tokens folded into one backbone position. Only 2 is implemented
    by the ops (fold_pairs / pair_out); the model code keeps it as a parameter so that a fold
    factor k can be added without renaming things.
    """

    vocab_size: int = 259
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    qk_norm: bool = True  # Qwen3's per-head q/k RMSNorm; False for Llama-family checkpoints
    fold: int = 2
    compressor: str = "linear"  # "linear" | "mlp"
    pad_id: int = 256
    bos_id: int = 257
    eos_id: int = 258

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads: expected a multiple of num_kv_heads ({self.num_kv_heads}), "
                f"got {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim: expected an even number (RoPE), got {self.head_dim}")
        if self.compressor not in ("linear", "mlp"):
            raise ValueError(f"compressor: expected 'linear' or 'mlp', got {self.compressor!r}")
        if self.fold != 2:
            raise ValueError(f"fold: only 2 is implemented, got {self.fold}")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}: expected a token id below vocab_size, got {value}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # Byte-level default model: 256 bytes + PAD, BOS, EOS. Small enough for 2 CPU cores.
    "tiny": ModelConfig(),
    # Qwen3-4B shapes (hidden 2560, 36 layers, GQA 32/8, head_dim 128).
    "qwen3-4b": ModelConfig(
        vocab_size=151936,
        hidden_size=2560,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=9728,
        rope_theta=1_000_000.0,
        pad_id=151643,
        bos_id=151643,
        eos_id=151645,
    ),
    # Qwen3.5-4B-like *dense* shapes: Qwen3.5 mixes linear-attention layers in; this preset keeps
    # only full-attention layers with its head layout (16/4 heads of 256) and vocabulary, so its
    # per-layer attention cost matches while the layer count is a plausible dense equivalent.
    "qwen3.5-4b-dense": ModelConfig(
        vocab_size=248320,
        hidden_size=2560,
        num_layers=32,
        num_heads=16,
        num_kv_heads=4,
        head_dim=256,
        intermediate_size=9216,
        rope_theta=10_000_000.0,
        pad_id=248044,
        bos_id=248044,
        eos_id=248046,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The named preset, with fields replaced by ``overrides`` (e.g. ``num_layers=2``)."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name].replace(**overrides)


def from_hf_config(hf: dict) -> ModelConfig:
    """ModelConfig of a Hugging Face Qwen3 / Llama-family ``config.json`` (as a dict).

    Qwen3 (``model_type`` "qwen3…") has per-head q/k norms; Llama-family models do not
    (``qk_norm=False``). RoPE scaling variants (e.g. Llama 3's) are not modelled: such models load
    for speed work, Qwen3 is the exact target.
    """
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers") if k not in hf]
    if missing:
        raise ValueError(f"config.json: missing fields {missing} of a Qwen3-style model")
    heads = hf.get("num_attention_heads", 1)
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    vocab = hf["vocab_size"]

    def token_id(key: str, fallback: int) -> int:
        value = hf.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        return int(value) if value is not None and 0 <= int(value) < vocab else fallback

    eos = token_id("eos_token_id", vocab - 1)
    bos = token_id("bos_token_id", eos)
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=head_dim,
        intermediate_size=hf.get("intermediate_size", 4 * hf["hidden_size"]),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qk_norm=str(hf.get("model_type", "qwen3")).startswith("qwen3"),
        pad_id=token_id("pad_token_id", eos),
        bos_id=bos,
        eos_id=eos,
    )

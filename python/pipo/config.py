"""Model configuration: one dataclass and the named presets.

The presets give the shapes of the models the project benchmarks on. Only ``tiny`` ever gets
trained weights (the byte-level default model); ``qwen3-4b`` and ``qwen3.5-4b-dense`` are
random-weight stand-ins with "-like" shapes for speed work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["MAX_FOLD", "PRESETS", "ModelConfig", "from_hf_config", "preset"]

MAX_FOLD = 8  # tokens per group; the MTP chain runs up to MAX_FOLD - 1 steps per backbone pass


@dataclass
class ModelConfig:
    """Shapes and hyper-parameters of a Qwen3-style decoder and its PIPO heads.

    ``fold`` is the fold factor k: the number of tokens folded into one backbone position (one
    group); the MTP chain then proposes up to k - 1 tokens after each group's token1
    (docs/method.md). 2 is PIPO's pairs.
    """

    vocab_size: int = 259
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    rope_theta: float = 10000.0
    # None: plain RoPE. Llama 3.1's frequency-dependent scaling: {"rope_type": "llama3", "factor",
    # "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}.
    rope_scaling: dict | None = None
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
        if not 2 <= self.fold <= MAX_FOLD:
            raise ValueError(f"fold: expected 2 … {MAX_FOLD} tokens per group, got {self.fold}")
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling)
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


LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)
HF_MODEL_TYPES = ("qwen3", "llama")


def check_rope_scaling(scaling: dict) -> None:
    """Raise ValueError unless ``scaling`` is a complete Llama 3 RoPE scaling table."""
    kind = scaling.get("rope_type")
    if kind != "llama3":
        raise ValueError(
            f"rope_scaling: rope_type {kind!r} is not implemented (supported: default, llama3)"
        )
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"rope_scaling: llama3 scaling needs {missing}")
    unknown = sorted(set(scaling) - {"rope_type", *LLAMA3_ROPE_KEYS})
    if unknown:
        raise ValueError(f"rope_scaling: unknown fields {unknown}")
    if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError("rope_scaling: expected high_freq_factor > low_freq_factor")


def _hf_rope(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) of a config.json in either layout: transformers 5's
    ``rope_parameters`` table, or the older top-level ``rope_theta`` + ``rope_scaling``."""
    params = hf.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict) or "rope_theta" not in params:
            raise ValueError(
                "config.json: rope_parameters must be one table with a rope_theta (per-layer-type "
                f"RoPE is not supported), got {params!r}"
            )
        theta, table = params["rope_theta"], params
    else:  # neither given: transformers' default for both Llama and Qwen3
        theta, table = hf.get("rope_theta", 10000.0), hf.get("rope_scaling") or {}
    kind = table.get("rope_type", table.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(
            f"config.json: RoPE type {kind!r} is not implemented (supported: default, llama3)"
        )
    scaling = {"rope_type": "llama3"}
    for key in LLAMA3_ROPE_KEYS:
        value = table.get(key)
        if value is None and key == "original_max_position_embeddings":
            value = hf.get("max_position_embeddings")
        if value is None:
            raise ValueError(f"config.json: llama3 RoPE scaling needs {key!r}")
        scaling[key] = float(value) if key != "original_max_position_embeddings" else int(value)
    return float(theta), scaling


def _check_hf_supported(hf: dict) -> None:
    """Refuse, naming the field, what the reference model does not implement."""
    model_type = hf.get("model_type", "qwen3")
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(
            f"config.json: model_type {model_type!r} is not supported (supported: "
            f"{', '.join(HF_MODEL_TYPES)})"
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r} is not supported (only silu)")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(key):
            raise ValueError(f"config.json: {key}=true is not supported")
    partial = (hf.get("rope_parameters") or {}).get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)
    )
    if partial != 1.0:
        raise ValueError(f"config.json: partial_rotary_factor {partial} is not supported (only 1)")
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ValueError(f"config.json: layer_types {sorted(layer_types)} are not supported")


def from_hf_config(hf: dict) -> ModelConfig:
    """ModelConfig of a Hugging Face Qwen3 / Llama ``config.json`` (as a dict).

    Qwen3 (``model_type`` "qwen3") has per-head q/k norms; Llama does not (``qk_norm=False``).
    Both RoPE layouts are read (transformers 5's ``rope_parameters``, the older ``rope_theta`` +
    ``rope_scaling``); RoPE types other than default and llama3, biases, sliding windows and
    other activations raise ValueError naming the field.
    """
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers") if k not in hf]
    if missing:
        raise ValueError(f"config.json: missing fields {missing} of a Qwen3-style model")
    _check_hf_supported(hf)
    rope_theta, rope_scaling = _hf_rope(hf)
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
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=hf.get("intermediate_size", 4 * hf["hidden_size"]),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qk_norm=hf.get("model_type", "qwen3") == "qwen3",
        pad_id=token_id("pad_token_id", eos),
        bos_id=bos,
        eos_id=eos,
    )

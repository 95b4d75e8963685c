"""Checkpoints: a folder with ``config.json`` and ``model.safetensors``.

``save``/``load`` handle pipo's own checkpoints (an ARModel or a PIPOModel). ``load`` also reads a
Hugging Face Qwen3 / Llama-family folder (``config.json`` + ``model.safetensors``, or shards listed
in ``model.safetensors.index.json``) into an ARModel. Missing, truncated or mismatched files raise
FileNotFoundError / ValueError naming the file and what is wrong.

Example::

    save(model, "ckpt/pipo")
    model = load("ckpt/pipo")                 # PIPOModel
    ar = load("/models/Qwen3-0.6B", dtype=torch.bfloat16)   # Hugging Face folder -> ARModel
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .config import PRESETS, ModelConfig, from_hf_config
from .model import ARModel, PIPOModel

__all__ = ["BUILTIN_DIR", "load", "load_builtin", "model_from_hf", "random_model", "save"]

BUILTIN_DIR = Path(__file__).parent / "checkpoints"
FORMAT_VERSION = 1
_log = logging.getLogger("pipo")


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as exc:  # pragma: no cover - safetensors is a dependency
        raise ImportError(
            "checkpoints need the 'safetensors' package: pip install safetensors"
        ) from exc
    return safetensors.torch


def save(model: ARModel | PIPOModel, path: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of ``model`` into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    kind = "pipo" if isinstance(model, PIPOModel) else "ar"
    meta = {"pipo_checkpoint": FORMAT_VERSION, "kind": kind, "config": model.config.to_dict()}
    (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    # clone(): the kernel path's fused projections make q/k/v (gate/up) views of one tensor,
    # and safetensors refuses tensors that share memory.
    tensors = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }
    _safetensors().save_file(tensors, str(path / "model.safetensors"), metadata={"kind": kind})
    return path


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (a checkpoint folder needs a config.json)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from exc


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing weights file")
    try:
        return _safetensors().load_file(str(file))
    except Exception as exc:  # safetensors raises its own error type for bad headers / sizes
        raise ValueError(
            f"{file}: not a readable safetensors file (truncated or corrupted?): {exc}"
        ) from exc


def _fill(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Copy tensors into model's parameters; every parameter must be given with its shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(tensors[k].shape)}"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:8]}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:8]))
    if problems:
        raise ValueError(f"{source}: weights do not match the config: " + "; ".join(problems))
    model.load_state_dict(tensors)


def load(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> ARModel | PIPOModel:
    """Load a pipo checkpoint (ARModel or PIPOModel), a Hugging Face folder or a GGUF file
    (ARModel; pipo.convert)."""
    path = Path(path)
    if path.suffix == ".gguf" and path.is_file():
        from .convert import load_gguf

        model = load_gguf(path)[0]
        return model.to(device=device, dtype=dtype) if dtype else model.to(device=device)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    meta = _read_json(path / "config.json")
    if "pipo_checkpoint" in meta:
        if meta.get("kind") not in ("ar", "pipo") or not isinstance(meta.get("config"), dict):
            raise ValueError(
                f"{path / 'config.json'}: expected 'kind' ar|pipo and a 'config' table"
            )
        config = ModelConfig.from_dict(meta["config"])
        model = (PIPOModel if meta["kind"] == "pipo" else ARModel)(config)
        _fill(model, _read_tensors(path / "model.safetensors"), path / "model.safetensors")
    else:
        model = _load_hf(path, meta)
    return model.to(device=device, dtype=dtype) if dtype else model.to(device=device)


def _load_hf(path: Path, hf_config: dict) -> ARModel:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a 'weight_map' table")
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors "
            "checkpoints are supported)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors |= _read_tensors(path / name)
    return model_from_hf(hf_config, tensors, path)


def model_from_hf(hf_config: dict, tensors: dict[str, torch.Tensor], source: Path) -> ARModel:
    """ARModel of a Hugging Face config dict and its tensors under Hugging Face names, in the
    tensors' dtype."""
    config = from_hf_config(hf_config)
    ours: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config's RoPE parameters
        key = key.removeprefix("model.")
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # some tied checkpoints store the shared matrix twice
        ours[key] = value
    with torch.device("meta"):  # _fill writes every parameter: skip the random init
        model = ARModel(config)
    dtype = next(iter(ours.values())).dtype if ours else torch.float32
    model = model.to(dtype=dtype).to_empty(device="cpu")
    _fill(model, ours, source)
    return model


def load_builtin(
    kind: str,
    preset_config: ModelConfig,
    seed: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    fold: int = 2,
) -> ARModel | PIPOModel:
    """The built-in checkpoint ``checkpoints/<kind>`` (kind "ar" | "pipo"; PIPO with ``fold`` k
    != 2 tokens per group: ``checkpoints/pipo<k>``, e.g. pipo4) of the package when
    ``preset_config`` is the ``tiny`` preset (the byte-level default model it stands for) or the
    checkpoint's own config; otherwise, or where none is shipped, random weights of
    ``preset_config`` (with ``fold``) with a warning.

    The shipped checkpoints are stored in float16 (to stay under 8 MB) and load as float32 unless
    ``dtype`` says otherwise; their config.json gives their shapes (docs/training.md)."""
    folder = BUILTIN_DIR / (f"pipo{fold}" if kind == "pipo" and fold != 2 else kind)
    if kind == "pipo":
        preset_config = preset_config.replace(fold=fold)
    if (folder / "config.json").is_file():
        shipped = ModelConfig.from_dict(_read_json(folder / "config.json")["config"])
        if preset_config in (PRESETS["tiny"].replace(fold=shipped.fold), shipped):
            return load(folder, device=device, dtype=dtype or torch.float32)
    _log.warning(
        "no built-in %s checkpoint for these shapes under %s: using RANDOM weights of the preset "
        "(the output is meaningless; pass --model PATH for real weights)",
        kind,
        folder,
    )
    return random_model(kind, preset_config, seed, device, dtype)


def random_model(
    kind: str,
    config: ModelConfig,
    seed: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> ARModel | PIPOModel:
    """Random weights of ``config`` (kind "ar" | "pipo"), for benchmarks: speed does not depend
    on the weights. Built on the meta device and then materialised, so a 4B preset never exists
    in float32 on the host; init_random fills every parameter."""
    if kind not in ("ar", "pipo"):
        raise ValueError(f"kind: expected 'ar' or 'pipo', got {kind!r}")
    with torch.device("meta"):
        model = (PIPOModel if kind == "pipo" else ARModel)(config)
    model = model.to(dtype=dtype or torch.float32).to_empty(device=device)
    model.init_random(seed)
    return model

"""GGUF files (llama.cpp's format) to Hugging Face-style folders, through the ``gguf`` package.

``read_gguf`` dequantizes every tensor to float32 (any type ``gguf.quants`` can dequantize: F32,
F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, …), undoes the q/k row permutation
llama.cpp's converter applies to Llama models (Qwen3 files are stored unpermuted), and rebuilds
the embedded tokenizer (``tokenizer.ggml.model`` "gpt2": byte-level BPE from the stored vocabulary
and merges, split the way its ``tokenizer.ggml.pre`` type says) and chat template.
``convert_gguf`` writes that as a folder ``checkpoint.load`` and transformers both read:
config.json, model.safetensors (float32), tokenizer.json, tokenizer_config.json.

Supported: architectures ``llama`` and ``qwen3`` without RoPE scaling. Anything else (another
architecture, a SentencePiece tokenizer, an unknown pre-tokenizer, a tensor type gguf cannot
dequantize, an unexpected tensor) raises ValueError naming it.

Example::

    folder = convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2")
    model = checkpoint.load(folder)          # ARModel, float32
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .tokenizer import HFTokenizer, require

__all__ = [
    "ARCHITECTURES",
    "convert_gguf",
    "gguf_file_tokenizer",
    "gguf_tokenizer",
    "load_gguf",
    "read_gguf",
]

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# Pre-tokenizer splits of the byte-level BPE vocabularies these architectures ship with, as
# llama.cpp names them (tokenizer.ggml.pre). Each entry: (split regexes applied in order, whether
# ByteLevel's own GPT-2 regex runs last).
_GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "default": ([], True),
    "gpt-2": ([], True),
    "smollm": ([r"\p{N}"], True),  # single digits, then GPT-2's words
    "llama-bpe": ([_LLAMA3], False),
    "llama3": ([_LLAMA3], False),
    "qwen2": ([_QWEN2], False),
}
_TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types (gguf.TokenType)


def _reader(path: Path):
    gguf = require("gguf", "reading GGUF files")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError / struct errors on bad files
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc


def _field_value(field):
    """A metadata value of gguf's reader: str, int, float, bool or a list of them (decoded from
    the field's parts by hand: Field.contents() only exists in recent gguf versions)."""
    gguf = require("gguf", "reading GGUF files")
    kinds = gguf.GGUFValueType

    def one(kind, part):
        if kind == kinds.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        value = part[0].item()
        return bool(value) if kind == kinds.BOOL else value

    if field.types[0] == kinds.ARRAY:
        if len(field.types) > 1 and field.types[1] == kinds.ARRAY:
            return None  # nested arrays: no field we read has them
        return [one(field.types[-1], field.parts[i]) for i in field.data]
    return one(field.types[0], field.parts[field.data[0]])


def _fields(reader) -> dict:
    return {key: _field_value(f) for key, f in reader.fields.items() if f.types}


def _hf_config(meta: dict, tensor_names: set[str], path: Path) -> dict:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path}: architecture {arch!r} is not supported (supported: {sorted(ARCHITECTURES)})"
        )

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{path}: missing metadata {arch}.{key}")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise ValueError(
            f"{path}: RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs tensor'}) "
            "in GGUF files is not supported"
        )
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ValueError(f"{path}: partial RoPE ({rope_dim} of {head_dim} dims) is not supported")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    vocab = int(meta.get(f"{arch}.vocab_size", len(tokens)))
    if not vocab:
        raise ValueError(f"{path}: no vocab_size and no tokenizer.ggml.tokens")
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "intermediate_size": int(get("feed_forward_length")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(get("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
        "attention_bias": False,
        "torch_dtype": "float32",
    }
    for ours, theirs in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        value = meta.get(f"tokenizer.ggml.{theirs}_token_id")
        if value is not None:
            config[f"{ours}_token_id"] = int(value)
    return config


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k permutation: within each head it stores the rotary pairs
    interleaved (rows 0, D/2, 1, D/2+1, …); transformers' rotate-half layout wants the halves."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _tensors(reader, config: dict, path: Path) -> dict[str, torch.Tensor]:
    quants = require("gguf", "reading GGUF files").quants
    out = {}
    for t in reader.tensors:
        name = _TOP_NAMES.get(t.name)
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
        if m and m.group(2) in _TENSOR_NAMES:
            name = f"model.layers.{m.group(1)}.{_TENSOR_NAMES[m.group(2)]}.weight"
        if name is None:
            raise ValueError(f"{path}: tensor {t.name!r} has no place in a {config['model_type']}")
        try:
            array = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise ValueError(
                f"{path}: tensor {t.name} has type {t.tensor_type.name}, which gguf cannot "
                "dequantize"
            ) from exc
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists dimensions innermost first
        w = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(
            shape
        )  # a copy: the file is mapped read-only
        if config["model_type"] == "llama" and m and m.group(2) in ("attn_q", "attn_k"):
            key = "num_attention_heads" if m.group(2) == "attn_q" else "num_key_value_heads"
            w = _unpermute(w, config[key])
        out[name] = w.contiguous()
    return out


def gguf_tokenizer(meta: dict, path: Path) -> tuple:
    """(tokenizers.Tokenizer, tokenizer_config dict) of a GGUF file's embedded tokenizer."""
    tokenizers = require("tokenizers", "a GGUF file's tokenizer")
    if "tokenizer.huggingface.json" in meta:  # some converters embed the original file
        tok = tokenizers.Tokenizer.from_str(meta["tokenizer.huggingface.json"])
    else:
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"{path}: tokenizer model {kind!r} is not supported (only 'gpt2' byte-level BPE)"
            )
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(
                f"{path}: pre-tokenizer {pre!r} is not supported (supported: "
                f"{sorted(PRE_TOKENIZERS)})"
            )
        tokens = list(meta["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, fuse_unk=False))
        splits, gpt2_regex = PRE_TOKENIZERS[pre]
        pre_tok = tokenizers.pre_tokenizers
        steps = [pre_tok.Split(tokenizers.Regex(r), behavior="isolated") for r in splits]
        steps.append(pre_tok.ByteLevel(add_prefix_space=False, use_regex=gpt2_regex))
        tok.pre_tokenizer = pre_tok.Sequence(steps)
        tok.decoder = tokenizers.decoders.ByteLevel()
        types = list(meta.get("tokenizer.ggml.token_type", []))
        added = [
            tokenizers.AddedToken(tokens[i], special=ty == CONTROL, normalized=False)
            for i, ty in enumerate(types)
            if ty in (CONTROL, USER_DEFINED)
        ]
        tok.add_special_tokens([a for a in added if a.special])
        tok.add_tokens([a for a in added if not a.special])
        bos = meta.get("tokenizer.ggml.bos_token_id")
        if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
            tok.post_processor = tokenizers.processors.TemplateProcessing(
                single=f"{tokens[bos]} $A", special_tokens=[(tokens[bos], int(bos))]
            )
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for key in ("bos", "eos", "pad", "unknown"):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            name = "unk_token" if key == "unknown" else f"{key}_token"
            config[name] = tok.id_to_token(int(value))
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return tok, config


def read_gguf(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], object, dict]:
    """(HF config dict, float32 tensors under Hugging Face names, tokenizers.Tokenizer,
    tokenizer_config dict) of a GGUF file."""
    path = Path(path)
    reader = _reader(path)
    meta = _fields(reader)
    config = _hf_config(meta, {t.name for t in reader.tensors}, path)
    tensors = _tensors(reader, config, path)
    tok, tok_config = gguf_tokenizer(meta, path)
    return config, tensors, tok, tok_config


def _write_folder(folder: Path, config, tensors, tok, tok_config) -> None:
    import safetensors.torch

    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    safetensors.torch.save_file(tensors, str(folder / "model.safetensors"))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


def convert_gguf(path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the GGUF file ``path`` as a Hugging Face-style folder ``out`` (see the module
    docstring) and return it. The folder is built next to ``out`` and renamed into place, so an
    error leaves nothing half-written; an existing non-empty ``out`` is kept unless overwrite."""
    out = Path(out).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: already exists (choose another --out or remove it)")
    config, tensors, tok, tok_config = read_gguf(path)
    config["pipo_source"] = Path(path).name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_folder(tmp, config, tensors, tok, tok_config)
        umask = os.umask(0)
        os.umask(umask)
        for f in (tmp, *tmp.iterdir()):  # mkdtemp made the folder private: normal modes
            f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def gguf_file_tokenizer(path: str | Path) -> HFTokenizer:
    """The HFTokenizer embedded in a GGUF file (reads only its metadata)."""
    path = Path(path)
    tok, tok_config = gguf_tokenizer(_fields(_reader(path)), path)
    return _hf_tokenizer(tok, tok_config)


def _hf_tokenizer(tok, tok_config: dict) -> HFTokenizer:
    return HFTokenizer(
        tok,
        tok_config.get("chat_template"),
        tok_config.get("bos_token"),
        tok_config.get("eos_token"),
    )


def load_gguf(path: str | Path):
    """(ARModel float32, HFTokenizer) straight from a GGUF file, without writing a folder."""
    from .checkpoint import model_from_hf

    config, tensors, tok, tok_config = read_gguf(path)
    return model_from_hf(config, tensors, Path(path)), _hf_tokenizer(tok, tok_config)

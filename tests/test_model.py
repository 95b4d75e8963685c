"""The reference model (python/pipo): kernel path vs plain-PyTorch path, PIPO heads, KV-cache
manager, sampling helpers, the ops adapter and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from pipo_helpers import requires_safetensors, small_config, small_models

import pipo_kernels
from pipo import checkpoint, ops
from pipo.config import PRESETS, ModelConfig, from_hf_config, preset
from pipo.kv_cache import CacheFullError, PagedKVCache
from pipo.model import ARModel, AttnMeta, PIPOModel, SamplingTensors
from pipo.sampling import filtered_probs, pack_bitmask, unpack_bitmask


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices: extra threads only add contention on a 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def packed_meta(cache: PagedKVCache, lens: list[int], starts: list[int] | None = None):
    """AttnMeta of sequences 0..B-1 writing lens[b] entries from starts[b] (reserving pages)."""
    starts = starts or [0] * len(lens)
    slots, positions, indptr = [], [], [0]
    for b, (st, n) in enumerate(zip(starts, lens, strict=True)):
        cache.reserve(b, st + n)
        slots += cache.slots(b, st, st + n)
        positions += list(range(st, st + n))
        indptr.append(indptr[-1] + n)
    return AttnMeta(
        positions=torch.tensor(positions),
        slot_mapping=torch.tensor(slots),
        block_table=cache.block_table(list(range(len(lens)))),
        kv_lens=torch.tensor(
            [st + n for st, n in zip(starts, lens, strict=True)], dtype=torch.int32
        ),
        q_indptr=torch.tensor(indptr, dtype=torch.int32),
    )


def greedy_tensors(b: int) -> SamplingTensors:
    return SamplingTensors(
        temperature=torch.zeros(b),
        top_k=torch.zeros(b, dtype=torch.int32),
        top_p=torch.ones(b),
        presence_penalty=torch.zeros(b),
        seen=None,
        seeds=torch.zeros(b, dtype=torch.int64),
        offsets=torch.zeros(b, dtype=torch.int64),
    )


# ---------------------------------------------------------------- ops adapter


def test_ops_adapter_is_pipo_kernels():
    for name in ops.OPS:
        assert ops.resolve(name) is getattr(pipo_kernels, name), name
    with pytest.raises(ValueError, match="name"):
        ops.resolve("no_such_op")


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "name,billions",
    [("tiny", (0.002, 0.006)), ("qwen3-4b", (3.9, 4.1)), ("qwen3.5-4b-dense", (3.5, 5.0))],
)
def test_preset_sizes(name, billions):
    with torch.device("meta"):
        model = ARModel(preset(name))
    n = sum(p.numel() for p in model.parameters()) / 1e9
    assert billions[0] < n < billions[1], n


def test_presets_and_config_errors():
    assert PRESETS["tiny"].vocab_size == 259 and PRESETS["tiny"].head_dim == 64
    assert preset("qwen3-4b").num_layers == 36
    assert preset("qwen3.5-4b-dense").head_dim == 256
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="compressor"):
        ModelConfig(compressor="conv")
    with pytest.raises(ValueError, match="preset"):
        preset("nope")
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"hidden": 3})


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_compressor_initialised_to_sum(kind):
    model = PIPOModel(small_config(compressor=kind))
    model.init_random(0, std=0.08)
    pairs = torch.tensor([[1, 2], [200, 256], [5, 5]])
    emb = model.embed_tokens.weight
    want = emb[pairs[:, 0]] + emb[pairs[:, 1]]
    for use_kernels in (False, True):
        got = model.compressor(pairs, emb, use_kernels)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_kernel_path_matches_reference_ar():
    ar, _ = small_models()
    lens = [5, 1, 9]
    ids = torch.randint(0, 256, (sum(lens),), generator=torch.Generator().manual_seed(0))
    outs = []
    for use_kernels in (False, True):
        cache = ar.new_cache(num_pages=8, page_size=4)
        hidden = ar(ids, packed_meta(cache, lens), cache, use_kernels)
        # one decode token per sequence on top of the prefill
        step = ar(ids[:3], packed_meta(cache, [1, 1, 1], starts=lens), cache, use_kernels)
        outs.append((hidden, step, cache.k_caches[1].clone()))
    for ref, ker in zip(*outs, strict=True):
        torch.testing.assert_close(ker, ref, atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_kernel_path_matches_reference_pipo(kind):
    _, pipo = small_models(kind)
    lens = [3, 1, 4]
    pairs = torch.randint(0, 257, (sum(lens), 2), generator=torch.Generator().manual_seed(1))
    outs = []
    for use_kernels in (False, True):
        cache = pipo.new_cache(num_pages=8, page_size=2)
        meta = packed_meta(cache, lens)
        hidden = pipo(pairs, meta, cache, use_kernels)
        token1, cand = pipo.sample(hidden, greedy_tensors(len(hidden)), use_kernels, 3)
        mtp = pipo.mtp_forward(token1, hidden, meta, cache, use_kernels)
        token2, _ = pipo.sample(mtp, greedy_tensors(len(hidden)), use_kernels)
        gated, conf = pipo.gate(hidden, mtp, token1, token2, 0.5, use_kernels)
        outs.append((hidden, mtp, conf, token1, cand, gated))
    for ref, ker in zip(*outs, strict=True):
        torch.testing.assert_close(ker, ref, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_fused_projections_follow_the_weights(tmp_path):
    """The kernel path's stacked q/k/v and gate/up weights: the nn.Linear weights become views
    of them (same Parameter objects), in-place updates reach the fused product, a replaced
    parameter makes the next call rebuild it, and checkpoints still save separate tensors."""
    ar, _ = small_models(seed=3)
    attn, mlp = ar.layers[0].self_attn, ar.layers[0].mlp
    q_param = attn.q_proj.weight
    ids = torch.randint(0, 256, (6,), generator=torch.Generator().manual_seed(2))

    def both():
        out = []
        for use_kernels in (False, True):
            cache = ar.new_cache(num_pages=4, page_size=4)
            out.append(ar(ids, packed_meta(cache, [6]), cache, use_kernels))
        torch.testing.assert_close(out[1], out[0], atol=1e-4, rtol=1e-4)

    both()
    fused = attn.__dict__["_qkv"][0]
    assert attn.q_proj.weight is q_param
    assert attn.v_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == (
        mlp.__dict__["_gate_up"][0].untyped_storage().data_ptr()
    )
    attn.q_proj.weight.mul_(1.5)  # in place: the fused product sees it
    mlp.gate_proj.weight.mul_(0.5)
    both()
    attn.k_proj.weight = torch.nn.Parameter(torch.randn_like(attn.k_proj.weight) * 0.08)
    both()  # rebuilt from the new parameter
    assert attn.__dict__["_qkv"][0] is not fused
    if checkpoint_savable():
        checkpoint.save(ar, tmp_path / "fused")
        loaded = checkpoint.load(tmp_path / "fused")
        for name, value in ar.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name


def checkpoint_savable() -> bool:
    try:
        import safetensors  # noqa: F401
    except ImportError:
        return False
    return True


def test_from_backbone_keeps_weights_and_inits_heads():
    ar, _ = small_models()
    pipo = PIPOModel.from_backbone(ar)
    torch.testing.assert_close(pipo.layers[1].mlp.up_proj.weight, ar.layers[1].mlp.up_proj.weight)
    torch.testing.assert_close(
        pipo.mtp.layer.self_attn.q_proj.weight, ar.layers[-1].self_attn.q_proj.weight
    )
    assert torch.count_nonzero(pipo.confidence.fc2.weight) == 0


# ---------------------------------------------------------------- paged KV cache


def test_page_allocator_reuse_and_cache_full():
    cache = PagedKVCache(1, num_pages=4, page_size=4, num_kv_heads=1, head_dim=8)
    cache.reserve(0, 9)  # 3 pages
    assert cache.pages(0) == [0, 1, 2] and cache.num_free_pages == 1
    assert cache.slots(0, 3, 6) == [3, 4, 5]
    cache.reserve(1, 4)
    before = (list(cache.pages(0)), list(cache.pages(1)))
    with pytest.raises(CacheFullError, match="request 1 needs 1 more page"):
        cache.reserve(1, 5)
    assert (cache.pages(0), cache.pages(1)) == before and cache.num_free_pages == 0
    cache.release(0)
    assert cache.num_free_pages == 3
    cache.reserve(2, 12)
    assert sorted(cache.pages(2)) == [0, 1, 2]  # freed pages are handed out again
    table = cache.block_table([1, 2])
    assert table.dtype == torch.int32 and table.tolist() == [[3, 0, 0], cache.pages(2)]
    with pytest.raises(ValueError, match="page_size"):
        PagedKVCache(1, num_pages=4, page_size=3, num_kv_heads=1, head_dim=8)


# ---------------------------------------------------------------- sampling helpers


def test_bitmask_round_trip():
    mask = torch.rand(3, 259, generator=torch.Generator().manual_seed(0)) < 0.3
    mask[0, 31] = mask[1, 63] = True  # sign bits of int32 words
    bits = pack_bitmask(mask)
    assert bits.dtype == torch.int32 and bits.shape == (3, 9)
    assert torch.equal(unpack_bitmask(bits, 259), mask)


def test_filtered_probs():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 5.0, 1.0]])
    probs = filtered_probs(
        logits,
        torch.tensor([1.0, 1.0, 0.0]),
        torch.tensor([2, 0, 0]),
        torch.tensor([1.0, 0.5, 1.0]),
    )
    assert (
        probs[0, 1] == 0 and probs[0, 3] == 0 and torch.isclose(probs[0].sum(), torch.tensor(1.0))
    )
    assert probs[1].tolist() == [0.5, 0.5, 0.0, 0.0]  # top-p 0.5 of a uniform: two lowest ids
    assert probs[2].tolist() == [0.0, 0.0, 1.0, 0.0]  # temperature 0: one-hot argmax


# ---------------------------------------------------------------- checkpoints


@requires_safetensors
@pytest.mark.parametrize("kind", ["ar", "pipo"])
def test_checkpoint_round_trip(tmp_path, kind):
    ar, pipo = small_models()
    model = ar if kind == "ar" else pipo
    checkpoint.save(model, tmp_path / kind)
    loaded = checkpoint.load(tmp_path / kind)
    assert type(loaded) is type(model) and loaded.config == model.config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@requires_safetensors
def test_checkpoint_errors(tmp_path):
    ar, _ = small_models()
    folder = checkpoint.save(ar, tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        checkpoint.load(tmp_path / "absent")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        checkpoint.load(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="missing weights file"):
        checkpoint.load(folder)
    # A config that does not match the stored tensors.
    other = checkpoint.save(ar, tmp_path / "other")
    meta = json.loads((other / "config.json").read_text())
    meta["config"]["num_layers"] = 3
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"missing tensors \['layers.2"):
        checkpoint.load(other)
    meta["config"]["num_layers"], meta["config"]["intermediate_size"] = 2, 300
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"shape mismatch: layers\.0\.mlp\.down_proj\.weight"):
        checkpoint.load(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        checkpoint.load(other)


def _write_hf_folder(folder, ar: ARModel, shards: int) -> None:
    """A Hugging Face Qwen3-style folder of ar's weights (model.* names, optional shards)."""
    from safetensors.torch import save_file

    c = ar.config
    folder.mkdir()
    hf = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": True,
        "bos_token_id": c.bos_id,
        "eos_token_id": c.eos_id,
    }
    (folder / "config.json").write_text(json.dumps(hf))
    tensors = {f"model.{k}": v.contiguous() for k, v in ar.state_dict().items()}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, str(folder / file))
        weight_map |= dict.fromkeys(part, file)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@requires_safetensors
@pytest.mark.parametrize("shards", [1, 3])
def test_load_hugging_face_folder(tmp_path, shards):
    ar, _ = small_models()
    folder = tmp_path / "hf"
    _write_hf_folder(folder, ar, shards)
    loaded = checkpoint.load(folder)
    assert isinstance(loaded, ARModel)
    assert loaded.config == ar.config.replace(pad_id=ar.config.eos_id)
    for (name, a), (_, b) in zip(ar.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert (
        from_hf_config(
            {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "model_type": "llama"}
        ).qk_norm
        is False
    )

"""PIPO on a real backbone (pipo.train_real) on a tiny random transformers Llama: the PAD id, the
initialisation from the backbone, a few training steps, resume, delta and checkpoint round trips,
and generation from the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from test_real_models import MERGES, tiny_hf, tiny_vocab

from pipo import checkpoint, cli
from pipo import train_real as tr
from pipo.model import PIPOModel, dense_hidden
from pipo.train import TrainConfig

tokenizers = pytest.importorskip("tokenizers")

CFG = dict(
    stage="pipo",
    steps=6,
    batch_size=4,
    seq_len=32,
    lr=1e-2,
    min_lr=1e-3,
    warmup=1,
    eval_every=3,
    eval_batches=1,
    save_every=3,
    pad_split_max=0.25,
)
REAL = dict(lora_rank=2, lora_alpha=4.0, distill_rows=4, distill_prompt=8, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tokenizer(folder) -> None:
    """A byte-level BPE tokenizer.json over tiny_vocab (ids match the tiny models' 300)."""
    m, pre, dec = tokenizers.models, tokenizers.pre_tokenizers, tokenizers.decoders
    vocab = {t: i for i, t in enumerate(tiny_vocab())}
    merges = [tuple(x.split(" ")) for x in MERGES]
    tok = tokenizers.Tokenizer(m.BPE(vocab, merges))
    tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    tok.decoder = dec.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """(folder, transformers model): a tiny Llama saved with a tokenizer, pad = eos = 2."""
    folder = tmp_path_factory.mktemp("llama")
    theirs = tiny_hf("llama")
    theirs.config.pad_token_id = 2
    theirs.save_pretrained(folder)
    write_tokenizer(folder)
    return folder, theirs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small stand-in for the stdlib: 40 short Python files (the file split holds some out)."""
    root = tmp_path_factory.mktemp("stdlib")
    for i in range(40):
        body = "".join(f"def the_{i}_{j}(a):\n    return a + {j} * the\n" for j in range(6))
        (root / f"mod{i}.py").write_text(body)
    train, held = tr.split_files(tr.corpus_files(root), root)
    assert train and held
    return root


def test_pad_id_is_a_new_token_and_init_matches_the_backbone(backbone):
    folder, theirs = backbone
    model = tr.build_model(folder, lora_rank=2, lora_alpha=4.0)
    c = model.config
    assert checkpoint.load(folder).config.pad_id == 2  # the backbone's pad = eos
    assert (c.vocab_size, c.pad_id, c.eos_id) == (301, 300, 2)
    emb = model.embed_tokens.weight
    assert torch.equal(emb[300], torch.zeros(64))
    assert torch.equal(emb[:300], theirs.model.embed_tokens.weight)
    # LoRA starts at zero: the backbone is the transformers model on ordinary token inputs
    ids = torch.randint(3, 300, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.logits(dense_hidden(model, model.embed_tokens(ids)))[..., :300]
        want = theirs(ids).logits
    assert torch.allclose(ours, want, rtol=1e-4, atol=1e-4)
    # the MTP layer is the last layer, the compressor the sum of the two embeddings
    last = model.layers[-1].self_attn.q_proj.base.weight
    assert torch.equal(model.mtp.layer.self_attn.q_proj.weight, last)
    pair = torch.tensor([[5, 300]])
    assert torch.allclose(model.compressor(pair, emb, use_kernels=False), emb[5], atol=1e-6)
    trained = {n.split(".")[0] for n in tr.trainable_state(model)}
    assert trained == {"layers", "compressor", "mtp", "confidence"}
    assert all("lora_" in n for n in tr.trainable_state(model) if n.startswith("layers."))


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(backbone, corpus, tmp_path_factory):
    """The run folder of an uninterrupted 6-step training."""
    whole = tmp_path_factory.mktemp("whole")
    tr.train_real(TrainConfig(**CFG), whole, backbone[0], corpus_root=corpus, **REAL)
    return whole


def test_train_decreases_loss_resumes_and_round_trips(backbone, corpus, trained, tmp_path, capsys):
    folder, _ = backbone
    cfg = TrainConfig(**CFG)
    whole, parts = trained, tmp_path / "parts"
    log = _log(whole)
    assert log[0]["step"] == 0 and log[0]["ar_bpt"] > 0
    assert log[-1]["step"] == 6 and log[-1]["bpt"] < log[0]["bpt"]
    pool = torch.load(whole / "distill.pt", weights_only=True)
    assert pool.shape == (4, 32)
    # resumed after an interruption: the same trained tensors
    tr.train_real(cfg, parts, folder, corpus_root=corpus, stop_after=4, **REAL)
    assert not (parts / "final").exists()
    tr.train_real(cfg, parts, folder, corpus_root=corpus, **REAL)
    a = checkpoint.load(whole / "final").state_dict()
    b = checkpoint.load(parts / "final").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the final checkpoint: a plain PIPO model with the PAD in its config, and the tokenizer
    final = checkpoint.load(whole / "final")
    assert isinstance(final, PIPOModel) and final.config.pad_id == 300
    assert (whole / "final" / "tokenizer.json").is_file()
    # the delta rebuilds it on the backbone (float16 delta: rounding only)
    rebuilt = checkpoint.load(tr.apply_delta(whole / "delta", folder, tmp_path / "rebuilt"))
    r = rebuilt.state_dict()
    assert r.keys() == a.keys()
    assert all(torch.allclose(r[k], a[k], rtol=1e-2, atol=1e-3) for k in a)
    meta = json.loads((whole / "delta" / "delta.json").read_text())
    assert meta["steps_done"] == 6 and meta["tokens_seen"] == 6 * 4 * 32
    # the CLI generates with it
    argv = ["generate", "--model", str(whole / "final"), "--mode", "pipo", "--device", "cpu"]
    assert cli.main([*argv, "--prompt", "the", "--max-new-tokens", "4", "--threshold", "0"]) == 0
    assert "new_tokens=" in capsys.readouterr().err


def test_bad_options_are_refused(backbone, corpus, tmp_path):
    folder, _ = backbone
    with pytest.raises(ValueError, match="lora_rank"):
        tr.build_model(folder, lora_rank=0, lora_alpha=1.0)
    with pytest.raises(ValueError, match="distill_fraction"):
        tr.train_real(TrainConfig(**CFG), tmp_path, folder, distill_fraction=2.0)
    with pytest.raises(ValueError, match="seq_len"):
        tr.train_real(TrainConfig(**{**CFG, "seq_len": 33}), tmp_path, folder)
    assert tr.is_real_backbone(folder) and not tr.is_real_backbone(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="convert it to a folder first"):
        tr.train_real(TrainConfig(**CFG), tmp_path / "o", tmp_path / "m.gguf")


def test_report_runs_on_a_trained_run(backbone, trained, tmp_path, capsys):
    from benchmarks import report_smollm2

    argv = ["--ar", str(backbone[0]), "--pipo", str(trained / "final"), "--run", str(trained)]
    assert report_smollm2.main([*argv, "--quick", "--out-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "smollm2_report.json").read_text())
    assert [r["threshold"] for r in report["quality"]] == [
        float(x) for x in report_smollm2.THRESHOLDS
    ]
    assert {r["mode"] for r in report["speed"]} == {"ar", "pipo", "spec"}
    assert len(report["samples"]) == 2 * len(report_smollm2.PROMPTS)
    assert report["training"]["steps"] == 6 and report["training"]["tokens_seen"] == 768

"""Training of the built-in models (pipo.data, pipo.train) and the shipped checkpoints."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pipo_helpers import requires_safetensors, small_config

from pipo.checkpoint import BUILTIN_DIR, load_builtin
from pipo.config import preset
from pipo.data import (
    corpus_files,
    line_starts,
    pad_split,
    sample_batch,
    split_files,
    stdlib_root,
)
from pipo.engine import Engine, Request, SamplingParams
from pipo.model import ARModel, AttnMeta, PIPOModel
from pipo.tokenizer import ByteTokenizer
from pipo.train import (
    TrainConfig,
    dense_hidden,
    dense_pipo,
    opd_loss,
    pipo_loss,
    pipo_targets,
    train,
)

PAD = ByteTokenizer.pad_id


def test_corpus_split_is_deterministic_and_disjoint():
    files = corpus_files()
    assert len(files) > 100
    train_a, held_a = split_files(files)
    shuffled = files[:]
    random.Random(0).shuffle(shuffled)
    train_b, held_b = split_files(shuffled)
    assert sorted(train_a) == sorted(train_b) and sorted(held_a) == sorted(held_b)
    assert not set(train_a) & set(held_a)
    assert len(train_a) + len(held_a) == len(files)
    assert 0.01 < len(held_a) / len(files) < 0.15
    root = stdlib_root()
    assert all("test" not in f.relative_to(root).parts for f in files)


def test_sample_batch_starts_with_bos():
    stream = np.arange(1000, dtype=np.int16) % 256
    batch = sample_batch(stream, 4, 32, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 32) and batch.dtype == torch.int64
    assert (batch[:, 0] == ByteTokenizer.bos_id).all()
    assert ((batch[:, 2:] - batch[:, 1:-1]) % 256 == 1).all()  # contiguous crops


def test_sample_batch_crops_start_at_line_starts():
    # Lines "A<digits>\n" of varying length, files separated by EOS: every line starts with "A".
    rng = random.Random(0)
    parts = []
    for _file in range(20):
        for _line in range(rng.randint(1, 30)):
            parts += [ord("A")] + [ord("0") + rng.randrange(10)] * rng.randint(0, 40) + [10]
        parts.append(ByteTokenizer.eos_id)
    stream = np.array(parts, dtype=np.int16)
    starts = line_starts(stream)
    assert starts[0] == 0 and (stream[starts] == ord("A")).all()
    assert len(starts) == (stream == ord("A")).sum()
    g = torch.Generator().manual_seed(0)
    batch = sample_batch(stream, 256, 48, g)
    assert (batch[:, 0] == ByteTokenizer.bos_id).all()
    assert (batch[:, 1] == ord("A")).all()
    # deterministic for a seeded generator, and more than one start is drawn
    again = sample_batch(stream, 256, 48, torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)
    assert len({tuple(r.tolist()) for r in batch}) > 10
    # the crop never runs past the stream
    with pytest.raises(ValueError):
        sample_batch(stream[:20], 1, 64, g)


def test_pad_split_keeps_shape_and_inserts_pad():
    tokens = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
    same = pad_split(tokens, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(same, tokens)
    out = pad_split(tokens, 1.0, torch.Generator().manual_seed(1))
    assert out.shape == tokens.shape
    assert (out == PAD).any()
    assert not (out[:, 0::2] == PAD).any()  # PAD only as a pair's second token
    for row, orig in zip(out, tokens, strict=True):
        real = row[row != PAD]
        assert torch.equal(real, orig[: len(real)])  # the text itself is unchanged


def test_pipo_targets_skip_split_pad():
    # pairs: (1,2) (3,PAD) (4,5) (6,7); token2 of pair 1 is PAD -> the MTP target is 4
    tokens = torch.tensor([[1, 2, 3, PAD, 4, 5, 6, 7]])
    mtp_in, target1, target2 = pipo_targets(tokens, PAD)
    assert target1.tolist() == [[3, 4, 6, -100]]
    assert mtp_in.tolist() == [[3, 4, 6, 0]]
    assert target2.tolist() == [[4, 5, 7, -100]]


def _small_pipo(seed=0):
    torch.manual_seed(seed)
    model = PIPOModel(small_config())
    model.init_random(seed, std=0.05)
    with torch.no_grad():
        model.confidence.fc2.weight.normal_(0, 0.5)
    return model


def test_confidence_target_is_detached_mtp_probability():
    model = _small_pipo()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    total, parts = pipo_loss(model, tokens, mtp_weight=0.0, conf_weight=1.0)
    mtp_in, target1, target2 = pipo_targets(tokens, PAD)
    h, m, conf = dense_pipo(model, tokens, mtp_in)
    ce1 = F.cross_entropy(model.logits(h).flatten(0, 1), target1.flatten())
    valid = target2 >= 0
    p_gold = F.softmax(model.logits(m), -1).gather(-1, target2.clamp(min=0)[..., None])[..., 0]
    expected = ce1 + F.binary_cross_entropy(conf[valid], p_gold[valid].detach())
    torch.testing.assert_close(total, expected)
    # the BCE target carries no gradient: the MTP head's lm-side grads equal those of the
    # explicit constant-target loss
    w = model.mtp.fc.weight
    (g_total,) = torch.autograd.grad(total, w)
    (g_expected,) = torch.autograd.grad(expected, w)
    torch.testing.assert_close(g_total, g_expected)
    assert parts["bce"] >= 0 and parts["ce2"] > 0


def test_dense_forward_matches_paged_forward():
    model = _small_pipo().eval()
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(4))
    mtp_in, _, _ = pipo_targets(tokens, PAD)
    with torch.no_grad():
        h, m, conf = dense_pipo(model, tokens, mtp_in)
        cache = model.new_cache(num_pages=4, page_size=4)
        cache.reserve(0, 6)
        meta = AttnMeta(
            positions=torch.arange(6),
            slot_mapping=torch.tensor(cache.slots(0, 0, 6)),
            block_table=cache.block_table([0]),
            kv_lens=torch.tensor([6], dtype=torch.int32),
            q_indptr=torch.tensor([0, 6], dtype=torch.int32),
        )
        h_ref = model(tokens.view(-1, 2), meta, cache)
        m_ref = model.mtp_forward(mtp_in[0], h_ref, meta, cache)
    torch.testing.assert_close(h[0], h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m[0], m_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conf[0], model.confidence(h_ref, m_ref), atol=1e-5, rtol=1e-5)
    ar = ARModel(small_config())
    ar.init_random(1, std=0.05)
    ids = tokens[0]
    with torch.no_grad():
        dense = dense_hidden(ar, ar.embed_tokens(tokens))[0]
        cache = ar.new_cache(num_pages=4, page_size=4)
        cache.reserve(0, 12)
        meta = AttnMeta(
            positions=torch.arange(12),
            slot_mapping=torch.tensor(cache.slots(0, 0, 12)),
            block_table=cache.block_table([0]),
            kv_lens=torch.tensor([12], dtype=torch.int32),
            q_indptr=torch.tensor([0, 12], dtype=torch.int32),
        )
        torch.testing.assert_close(dense, ar(ids, meta, cache), atol=1e-5, rtol=1e-5)


def test_opd_loss_runs_and_alpha_is_a_probability():
    student = _small_pipo()
    teacher = ARModel(small_config())
    teacher.init_random(5, std=0.05)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(6))
    total, parts = opd_loss(student, teacher, tokens, gen_from=6)
    total.backward()
    assert parts["kl1"] >= 0 and parts["kl2"] >= 0 and parts["bce"] >= 0
    assert student.confidence.fc1.weight.grad is not None


_TINY_TRAIN = dict(batch_size=2, seq_len=16, eval_every=100, eval_batches=1, save_every=1)


@requires_safetensors
@pytest.mark.parametrize("stage", ["ar", "pipo"])
def test_train_resume_equals_uninterrupted(tmp_path, stage):
    stream = (np.arange(4000) * 7 % 251).astype(np.int16)
    corpus = (stream, stream)
    cfg = TrainConfig(stage=stage, steps=2, **_TINY_TRAIN)
    kw = dict(config=small_config(), corpus=corpus, progress=False)
    whole = train(cfg, tmp_path / "whole", **kw)
    train(cfg, tmp_path / "split", stop_after=1, **kw)
    assert not (tmp_path / "split" / "final").exists()
    resumed = train(cfg, tmp_path / "split", **kw)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert (tmp_path / "whole" / "final" / "model.safetensors").is_file()


shipped = pytest.mark.skipif(
    not (BUILTIN_DIR / "pipo" / "config.json").is_file(), reason="no shipped checkpoints"
)


@requires_safetensors
@shipped
def test_shipped_checkpoints_fit_and_generate_code():
    for kind in ("ar", "pipo"):
        assert (BUILTIN_DIR / kind / "model.safetensors").stat().st_size <= 8_000_000
    ar = load_builtin("ar", preset("tiny"), 1).eval()
    pipo = load_builtin("pipo", preset("tiny"), 2).eval()
    assert isinstance(ar, ARModel) and isinstance(pipo, PIPOModel)
    assert ar.embed_tokens.weight.dtype == torch.float32
    params = SamplingParams(max_new_tokens=48, ignore_eos=True)
    for mode, model, verifier in (("ar", ar, None), ("pipo", pipo, None), ("spec", pipo, ar)):
        engine = Engine(model, mode=mode, verifier=verifier, threshold=0.5, max_batch_size=1)
        (result,) = engine.generate([Request("def ", params)])
        text = result.text
        printable = sum(c.isprintable() or c in "\n\t" for c in text)
        assert len(text) >= 20 and printable / len(text) > 0.95, (mode, text)
        assert sum(c.isalpha() for c in text) > 5, (mode, text)
    # Greedy decoding after a line start must not collapse into whitespace (the first shipped
    # models, trained on crops at random byte offsets, printed only spaces here).
    for mode, model in (("ar", ar), ("pipo", pipo)):
        engine = Engine(model, mode=mode, threshold=0.5, max_batch_size=1)
        (result,) = engine.generate([Request("import os\n", params)])
        assert sum(not c.isspace() for c in result.text) > len(result.text) / 2, (mode, result.text)

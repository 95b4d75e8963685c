"""Draft heads of mode spec (pipo.heads) and their training stages (pipo.train_heads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipo_helpers import requires_safetensors, small_config

from pipo.checkpoint import BUILTIN_DIR, save
from pipo.heads import (
    MedusaHeads,
    builtin_head,
    chain_mask,
    dense_mtp,
    load_head,
    medusa_loss,
    mtp_loss,
    new_head,
    new_head_cache,
    save_head,
)
from pipo.model import ARModel, AttnMeta, MTPHead, dense_hidden
from pipo.train import TrainConfig
from pipo.train_heads import train_head


def _backbone(dtype=torch.float32, seed=1) -> ARModel:
    ar = ARModel(small_config()).eval()
    ar.init_random(seed, std=0.08)
    return ar.to(dtype).requires_grad_(False)


def _perturb(module, seed=0, std=0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def test_chain_mask_small_case():
    m = chain_mask(4, 1)  # step 1: keys [step-0 entries | step-1 entries]
    # query 2 (root 1): step-0 entries 0..1 and its own step-1 entry 2
    assert m[2].tolist() == [True, True, False, False, False, False, True, False]
    assert m.shape == (4, 8) and m.sum(1).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("use_kernels", [False, True])
def test_dense_chain_equals_paged_chain(use_kernels):
    """The dense training forward of every chain step equals the paged drafter's forward (the
    catch-up entries, then chained steps feeding their own output), in float64 on the plain path
    and float32 with the kernels."""
    dtype = torch.float32 if use_kernels else torch.float64
    ar = _backbone(dtype)
    head = new_head("mtp", ar)
    _perturb(head)
    t, root = 15, 8  # odd length; the chain starts after root + 1 catch-up entries
    tokens = torch.randint(0, 256, (1, t), generator=torch.Generator().manual_seed(3))
    hidden = dense_hidden(ar, ar.embed_tokens(tokens))
    outs = dense_mtp(head, ar, tokens, hidden, depth=3)
    cache = new_head_cache(head, ar, num_pages=8, page_size=4)
    cache.reserve(0, t)

    def meta(start, n):
        return AttnMeta(
            positions=torch.arange(start, start + n),
            slot_mapping=torch.tensor(cache.slots(0, start, start + n)),
            block_table=cache.block_table([0]),
            kv_lens=torch.tensor([start + n], dtype=torch.int32),
            q_indptr=torch.tensor([0, n], dtype=torch.int32),
        )

    def run(ids, feats, m):
        args = (ar.embed_tokens.weight, m, ar.rope(m, cache, use_kernels))
        return head(ids, feats, *args, cache.k_caches[0], cache.v_caches[0], use_kernels)

    tol = dict(atol=1e-4, rtol=1e-4) if use_kernels else dict(atol=1e-10, rtol=1e-10)
    y = run(tokens[0, 1 : root + 2], hidden[0, : root + 1], meta(0, root + 1))
    torch.testing.assert_close(y, outs[0][0, : root + 1], **tol)
    prev = y[-1:]
    for s in (1, 2):
        q = root + s
        prev = run(tokens[0, q + 1 : q + 2], prev, meta(q, 1))
        torch.testing.assert_close(prev[0], outs[s][0, q], **tol)


def test_fresh_heads_reproduce_the_backbone_where_they_should():
    """Medusa's zero-initialised ResBlocks are the identity: every head starts as the LM head."""
    ar = _backbone()
    heads = new_head("medusa", ar, num_heads=3)
    h = torch.randn(5, ar.config.hidden_size)
    logits = heads.logits(h, ar.lm_head_weight)
    assert logits.shape == (5, 3, ar.config.vocab_size) and logits.dtype == torch.float32
    for k in range(3):
        torch.testing.assert_close(logits[:, k], ar.logits(h))


def test_losses_train_only_the_head_and_fall():
    ar = _backbone()
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    for kind, fn in (("mtp", mtp_loss), ("medusa", medusa_loss)):
        head = new_head(kind, ar, **({"num_heads": 2} if kind == "medusa" else {}))
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        first = None
        for _ in range(15):
            loss, parts = fn(head, ar, tokens)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = first if first is not None else loss.item()
        assert loss.item() < first - 0.1, (kind, first, loss.item())
        assert all(p.grad is None for p in ar.parameters())
        assert all(0.0 <= v <= 1.0 for k, v in parts.items() if k.startswith("agree"))


@requires_safetensors
def test_head_checkpoint_round_trip_and_errors(tmp_path):
    ar = _backbone()
    for kind in ("mtp", "medusa"):
        head = new_head(kind, ar, **({"num_heads": 3, "num_layers": 2} if kind == "medusa" else {}))
        _perturb(head)
        save_head(head, ar.config, tmp_path / kind)
        back = load_head(tmp_path / kind, ar, kind)
        assert type(back) is type(head)
        for (name, a), b in zip(head.state_dict().items(), back.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, msg=name)
    assert isinstance(load_head(tmp_path / "medusa", ar), MedusaHeads)
    with pytest.raises(ValueError, match="a mtp head, expected medusa"):
        load_head(tmp_path / "mtp", ar, "medusa")
    other = ARModel(small_config(hidden_size=64, head_dim=32)).eval()
    with pytest.raises(ValueError, match=r"another backbone.*hidden_size"):
        load_head(tmp_path / "mtp", other)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_head(tmp_path / "nothing", ar)
    save(ar, tmp_path / "ar")
    with pytest.raises(ValueError, match="not a draft-head checkpoint"):
        load_head(tmp_path / "ar", ar)
    with pytest.raises(ValueError, match="kind"):
        new_head("eagle", ar)


@requires_safetensors
@pytest.mark.parametrize("stage", ["mtp", "medusa"])
def test_train_head_stage_resumes_and_exports(tmp_path, stage):
    ar = _backbone()
    save(ar, tmp_path / "ar")
    stream = (np.arange(4000) * 7 % 251).astype(np.int16)
    cfg = TrainConfig(
        stage=stage, steps=2, batch_size=2, seq_len=16, eval_every=100, eval_batches=1,
        save_every=1,
    )  # fmt: skip
    kw = dict(init_from=str(tmp_path / "ar"), corpus=(stream, stream), progress=False)
    whole = train_head(cfg, tmp_path / "whole", **kw)
    train_head(cfg, tmp_path / "split", stop_after=1, **kw)
    assert not (tmp_path / "split" / "final").exists()
    resumed = train_head(cfg, tmp_path / "split", **kw)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    final = load_head(tmp_path / "whole" / "final", ar, stage)
    assert next(final.parameters()).dtype == torch.float32  # loads in the backbone's dtype
    with pytest.raises(ValueError, match="AR backbone"):
        pipo_dir = tmp_path / "pipo"
        from pipo.model import PIPOModel

        save(PIPOModel.from_backbone(ar), pipo_dir)
        train_head(cfg, tmp_path / "bad", init_from=str(pipo_dir), corpus=(stream, stream))


shipped = pytest.mark.skipif(
    not (BUILTIN_DIR / "mtp" / "config.json").is_file(), reason="no shipped heads"
)


@requires_safetensors
@shipped
def test_shipped_heads_fit_and_load():
    from pipo.checkpoint import load_builtin
    from pipo.config import preset

    ar = load_builtin("ar", preset("tiny"), 1)
    for kind, cls in (("mtp", MTPHead), ("medusa", MedusaHeads)):
        assert (BUILTIN_DIR / kind / "model.safetensors").stat().st_size <= 2_000_000
        assert isinstance(builtin_head(kind, ar), cls)
    assert builtin_head("mtp", _backbone()) is None  # another backbone: nothing shipped for it

"""The fold factor k (PIPO-k): the model, the gate, mode pipo's step for k = 4, training's
targets, and the shipped PIPO-2's tokens unchanged."""

from __future__ import annotations

import pytest
import torch
from pipo_helpers import requires_safetensors, small_config

import pipo_kernels
from pipo.checkpoint import BUILTIN_DIR, load, load_builtin, save
from pipo.config import ModelConfig, preset
from pipo.data import pad_split
from pipo.engine import Engine, Request, SamplingParams
from pipo.model import AttnMeta, PIPOModel, dense_pipo
from pipo.tokenizer import ByteTokenizer
from pipo.train import TrainConfig, group_targets, pipo_loss, pipo_targets, train

PAD = ByteTokenizer.pad_id
HAS_GROUP_OUT = hasattr(pipo_kernels, "group_out")
requires_group_out = pytest.mark.skipif(not HAS_GROUP_OUT, reason="needs the group_out op")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_pipo(fold: int = 4, seed: int = 0, compressor: str = "linear") -> PIPOModel:
    """A random PIPO-k model whose confidences straddle 0.5 (tests/pipo_helpers.small_models)."""
    model = PIPOModel(small_config(fold=fold, compressor=compressor)).eval()
    model.init_random(seed + 2, std=0.08)
    with torch.no_grad():
        model.confidence.fc2.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.fixture(scope="module")
def pipo4():
    return small_pipo(4)


# ---------------------------------------------------------------------------- PIPO-2 unchanged

# Tokens of the shipped PIPO-2 (python/pipo/checkpoints/pipo) recorded once at commit e030bad
# (before the fold factor k), prompts below, batch of 4, 20 new tokens, ignore_eos; "sampled" is
# temperature 0.8, top-p 0.9, presence penalty 0.5, seed 7 + request index. The kernels row was
# recorded with the pure-PyTorch backends (no compiled extension).
PIPO2_PROMPTS = ["def f", "import os\n", "class A:\n    x = 1", "#"]
PIPO2_TOKENS = {
    (False, -1.0, "greedy"): [
        b"ile(filename, filena",
        b"import sys\nimport sy",
        b"00000000000000000000",
        b"                    ",
    ],
    (False, 0.5, "sampled"): [
        b"rom_call(message, me",
        b"\n# EXCEPTION_END = c",
        b"001040886800359387de",
        b" util.add_mains prop",
    ],
    (False, 1.0, "sampled"): [
        b"rames importlib._py_",
        b"\ndef copy_config(err",
        b"0\n    def __exit__(s",
        b" Mustil Possible arg",
    ],
    (True, 0.5, "greedy"): [
        b'ile(file):\n    """Re',
        b"import sys\nimport sy",
        b"00000000000000000000",
        b"                    ",
    ],
}


@requires_safetensors
@pytest.mark.parametrize("key", list(PIPO2_TOKENS), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_shipped_pipo2_tokens_unchanged(key):
    kernels, threshold, kind = key
    model = load_builtin("pipo", preset("tiny"), 2).eval()
    assert model.config.fold == 2

    def params(i):
        if kind == "greedy":
            return SamplingParams(max_new_tokens=20, ignore_eos=True)
        return SamplingParams(
            max_new_tokens=20,
            ignore_eos=True,
            temperature=0.8,
            top_p=0.9,
            presence_penalty=0.5,
            seed=7 + i,
        )

    engine = Engine(
        model,
        mode="pipo",
        threshold=threshold,
        use_kernels=kernels,
        max_batch_size=4,
        num_pages=64,
    )
    results = engine.generate([Request(p, params(i)) for i, p in enumerate(PIPO2_PROMPTS)])
    assert [bytes(r.token_ids) for r in results] == PIPO2_TOKENS[key]


# ---------------------------------------------------------------------------- the model


@pytest.mark.parametrize("fold", [1, 9])
def test_config_rejects_fold_out_of_range(fold):
    with pytest.raises(ValueError, match="fold"):
        ModelConfig(fold=fold)


@pytest.mark.parametrize("compressor", ["linear", "mlp"])
@pytest.mark.parametrize("fold", [2, 3, 4])
def test_compressor_starts_as_the_sum(compressor, fold):
    model = small_pipo(fold, compressor=compressor)
    model.compressor.init_sum()
    ids = torch.randint(0, 256, (5, fold), generator=torch.Generator().manual_seed(fold))
    emb = model.embed_tokens.weight
    with torch.no_grad():
        got = model.compressor(ids, emb, use_kernels=False)
    torch.testing.assert_close(got, emb[ids].sum(1), atol=1e-5, rtol=1e-5)
    assert model.num_cache_layers == model.config.num_layers + fold - 1


def _meta(cache, n):
    cache.reserve(0, n)
    return AttnMeta(
        positions=torch.arange(n),
        slot_mapping=torch.tensor(cache.slots(0, 0, n)),
        block_table=cache.block_table([0]),
        kv_lens=torch.tensor([n], dtype=torch.int32),
        q_indptr=torch.tensor([0, n], dtype=torch.int32),
    )


def test_dense_chain_equals_paged_chain(pipo4):
    """Training's dense forward and the engine's paged one (one cache layer per MTP step)."""
    tokens = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(4))
    tokens = pad_split(tokens, 1.0, torch.Generator().manual_seed(5), PAD, fold=4)
    mtp_in, _, _ = group_targets(tokens, PAD, 4)
    with torch.no_grad():
        h, m, conf = dense_pipo(pipo4, tokens, mtp_in)
        cache = pipo4.new_cache(num_pages=4, page_size=4)
        meta = _meta(cache, 6)
        state = h_ref = pipo4(tokens.view(-1, 4), meta, cache)
        torch.testing.assert_close(h[0], h_ref, atol=1e-5, rtol=1e-5)
        for j in range(1, 4):
            state = pipo4.mtp_forward(mtp_in[0, :, j - 1], state, meta, cache, step=j)
            torch.testing.assert_close(m[0, :, j - 1], state, atol=1e-5, rtol=1e-5)
            ref_conf = pipo4.confidence(h_ref, state)
            torch.testing.assert_close(conf[0, :, j - 1], ref_conf, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="step"):
        pipo4.mtp_forward(mtp_in[0, :, 0], h_ref, meta, cache, step=4)


class _FixedConfidence(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def forward(self, hidden, mtp_hidden):
        return self.values


def test_gate_commits_the_longest_passing_prefix(pipo4):
    b, j, h = 4, 3, pipo4.config.hidden_size
    hidden, mtp_hidden = torch.randn(b, h), torch.randn(b, j, h)
    tokens = torch.arange(b * (j + 1)).view(b, j + 1) + 10
    conf = torch.tensor(
        [[0.9, 0.8, 0.7], [0.9, 0.1, 0.9], [0.2, 0.9, 0.9], [0.6, 0.6, 0.4]], dtype=torch.float32
    )
    model = small_pipo(4)
    model.confidence = _FixedConfidence(conf)
    cases = {
        -1.0: [4, 4, 4, 4],  # θ < 0: every proposal
        1.0: [1, 1, 1, 1],  # θ >= 1: token1 only
        0.5: [4, 2, 1, 3],  # a failed step rejects every later one (row 1: 0.9 after 0.1)
        0.0: [4, 4, 4, 4],
        0.85: [2, 2, 1, 1],
    }
    for threshold, lengths in cases.items():
        groups, c = model.commit(hidden, mtp_hidden, tokens, threshold, use_kernels=False)
        assert torch.equal(c, conf)
        for i, n in enumerate(lengths):
            expected = tokens[i, :n].tolist() + [PAD] * (4 - n)
            assert groups[i].tolist() == expected, (threshold, i)


@requires_group_out
@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.3, 0.5, 0.7, 1.0])
def test_gate_kernel_equals_reference(pipo4, threshold):
    g = torch.Generator().manual_seed(1)
    b, h = 9, pipo4.config.hidden_size
    hidden, mtp_hidden = torch.randn(b, h, generator=g), torch.randn(b, 3, h, generator=g)
    tokens = torch.randint(0, 256, (b, 4), generator=g)
    ref = pipo4.commit(hidden, mtp_hidden, tokens, threshold, use_kernels=False)
    ker = pipo4.commit(hidden, mtp_hidden, tokens, threshold, use_kernels=True)
    torch.testing.assert_close(ker[1], ref[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(ker[0], ref[0])


# ---------------------------------------------------------------------------- the engine, k = 4


@torch.no_grad()
def naive_decode(model, prompt, max_new, threshold, penalty=0.0):
    """PIPO-k greedy decoding recomputed from scratch with the dense forward at every draw: the
    engine's output (Result.token_ids) for one request, built without its cache or its step."""
    c = model.config
    k, pad = c.fold, c.pad_id
    units = prompt + [pad] * (-len(prompt) % k)
    groups = [units[i : i + k] for i in range(0, len(units), k)]
    # chain inputs of each group position: the next group's first k - 1 tokens in the prompt,
    # the chain's own proposals (committed or not) after that
    mtp_rows = [groups[i + 1][: k - 1] for i in range(len(groups) - 1)]
    out, seen = [], set()
    while True:
        tokens = torch.tensor([[t for g in groups for t in g]])
        proposals = []
        for j in range(k if threshold < 1 else 1):  # θ >= 1: the engine skips the chain
            last = proposals + [0] * (k - 1 - len(proposals))
            h, m, conf = dense_pipo(model, tokens, torch.tensor([[*mtp_rows, last[: k - 1]]]))
            state = h[0, -1] if j == 0 else m[0, -1, j - 1]
            logits = model.logits(state[None])[0]
            banned = sorted(seen | {t for t in proposals if t != pad})
            if penalty and banned:
                logits[banned] -= penalty
            proposals.append(int(logits.argmax()))
        keep = [threshold < 0 or (threshold < 1 and float(x) >= threshold) for x in conf[0, -1]]
        group = [proposals[0]]
        for j in range(1, k):
            group.append(proposals[j] if threshold < 1 and all(keep[:j]) else pad)
        for i, t in enumerate(group):
            if i and t == pad:
                continue
            out.append(t)
            if t != pad:
                seen.add(t)
            if len(out) >= max_new:
                return [t for t in out if t != pad]
        groups.append(group)
        mtp_rows.append((proposals + [0] * k)[: k - 1])


PROMPTS8 = [[257, *b"abcdefgh"[:n]] for n in range(8)]  # 1 … 8 tokens: every length mod 4


@pytest.mark.parametrize(
    "threshold,penalty",
    [(-1.0, 0.0), pytest.param(0.5, 0.0, marks=pytest.mark.slow), (0.5, 0.8), (1.0, 0.8)],
)
def test_engine_equals_naive_decoding(pipo4, threshold, penalty):
    """Prompts of every length mod 4 in one batch (chunked prefill included) against the dense
    recomputation of each alone: prefill's chain inputs, the per-step MTP cache, the gate, the
    penalty (each token seen before the next of its group is drawn; only committed ones after)."""
    # 16 new tokens: at θ < 0 four whole groups (a group cut by the length would count less)
    params = SamplingParams(max_new_tokens=16, ignore_eos=True, presence_penalty=penalty)
    engine = Engine(
        pipo4,
        mode="pipo",
        threshold=threshold,
        use_kernels=False,
        max_batch_size=8,
        num_pages=64,
        page_size=4,
        prefill_chunk=5,
    )
    results = engine.generate([Request(p, params) for p in PROMPTS8])
    for prompt, r in zip(PROMPTS8, results, strict=True):
        assert r.token_ids == naive_decode(pipo4, prompt, 16, threshold, penalty), prompt
    s = engine.stats
    if threshold < 0:
        assert s.commit_rate_by_position == [1.0, 1.0, 1.0]
    elif threshold >= 1:
        assert s.token2_proposed == 0 and s.tokens_per_pass == 1.0
    else:
        rates = s.commit_rate_by_position
        assert 0 < rates[-1] <= rates[1] <= rates[0] < 1, rates  # a prefix: rates fall


SAMPLED = [
    Request(
        p,
        SamplingParams(
            max_new_tokens=18 - 2 * i,
            ignore_eos=True,
            temperature=0.9,
            top_p=0.9,
            presence_penalty=0.5 * (i % 2),
            seed=5 + i,
        ),
    )
    for i, p in enumerate(["Hello, world", "x", "odd", "The quick brown fox", "PIPO!"])
]


def test_batch_equals_alone_sampled(pipo4):
    def engine():
        return Engine(pipo4, mode="pipo", threshold=0.5, use_kernels=False, num_pages=64)

    batch = engine().generate(SAMPLED)
    for req, together in zip(SAMPLED, batch, strict=True):
        (alone,) = engine().generate([req])
        assert together.token_ids == alone.token_ids, req.prompt
        assert len(alone.token_ids) == req.params.max_new_tokens


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_static_step_equals_eager_k4(pipo4, threshold):
    """The CUDA-graph step's static buffers and bucket padding (run eagerly on a CPU)."""
    kw = dict(mode="pipo", threshold=threshold, use_kernels=False, num_pages=64)
    eager = Engine(pipo4, **kw).generate(SAMPLED[:3])
    engine = Engine(pipo4, cuda_graphs=True, **kw)
    static = engine.generate(SAMPLED[:3])
    assert [r.token_ids for r in static] == [r.token_ids for r in eager]


@requires_group_out
@pytest.mark.parametrize("threshold", [-1.0, 0.5])
def test_kernel_path_equals_reference_path_k4(pipo4, threshold):
    greedy = [Request(p, SamplingParams(max_new_tokens=30, ignore_eos=True)) for p in PROMPTS8]
    for requests in (greedy, SAMPLED):
        runs = [
            Engine(
                pipo4, mode="pipo", threshold=threshold, use_kernels=kernels, num_pages=64
            ).generate(requests)
            for kernels in (False, True)
        ]
        assert [r.token_ids for r in runs[1]] == [r.token_ids for r in runs[0]]


def test_spec_mode_refuses_groups(pipo4):
    from pipo.model import ARModel

    ar = ARModel(small_config())
    with pytest.raises(ValueError, match="pairs"):
        Engine(pipo4, mode="spec", verifier=ar)


# ---------------------------------------------------------------------------- training


def test_pad_split_groups():
    tokens = torch.randint(0, 256, (6, 64), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pad_split(tokens, 0.0, torch.Generator().manual_seed(1), fold=4), tokens)
    out = pad_split(tokens, 1.0, torch.Generator().manual_seed(1), PAD, fold=4)
    assert out.shape == tokens.shape and (out == PAD).any()
    lengths = set()
    for row, orig in zip(out, tokens, strict=True):
        real = row[row != PAD]
        assert torch.equal(real, orig[: len(real)])  # the text itself is unchanged
        for g in row.view(-1, 4).tolist():
            n = sum(t != PAD for t in g)
            assert n >= 1 and g[n:] == [PAD] * (4 - n)  # a real prefix, then PAD
            lengths.add(n)
    assert lengths == {1, 2, 3, 4}  # random cut points
    with pytest.raises(ValueError, match="multiple of fold"):
        pad_split(tokens[:, :62], 0.5, torch.Generator(), fold=4)


def test_group_targets_follow_the_real_tokens():
    # groups: (1,2,3,4) (5,6,P,P) (7,P,P,P) (8,9,10,11)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, PAD, PAD, 7, PAD, PAD, PAD, 8, 9, 10, 11]])
    mtp_in, target1, targets = group_targets(tokens, PAD, 4)
    assert target1.tolist() == [[5, 7, 8, -100]]
    assert mtp_in.tolist() == [[[5, 6, 7], [7, 8, 9], [8, 9, 10], [0, 0, 0]]]
    assert targets.tolist() == [[[6, 7, 8], [8, 9, 10], [9, 10, 11], [-100] * 3]]
    # k = 2 is the pairs' layout
    pairs = torch.tensor([[1, 2, 3, PAD, 4, 5, 6, 7]])
    assert [t.tolist() for t in pipo_targets(pairs, PAD)] == [
        [[3, 4, 6, 0]],
        [[3, 4, 6, -100]],
        [[4, 5, 7, -100]],
    ]


def test_loss_parts_per_step(pipo4):
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    total, parts = pipo_loss(pipo4, tokens)
    total.backward()
    assert {"ce1", "ce2", "bce", "ce_step1", "ce_step2", "ce_step3"} <= set(parts)
    mean = sum(parts[f"ce_step{j}"] for j in (1, 2, 3)) / 3
    assert parts["ce2"] == pytest.approx(mean, rel=0.05)  # equal counts but at the row end
    assert pipo4.compressor.proj.weight.grad.shape == (128, 4 * 128)
    pipo4.zero_grad(set_to_none=True)


@requires_safetensors
def test_train_fold4_from_an_ar_backbone(tmp_path):
    import numpy as np

    from pipo.model import ARModel

    ar = ARModel(small_config())
    ar.init_random(1, std=0.05)
    save(ar, tmp_path / "ar")
    stream = (np.arange(4000) * 7 % 251).astype(np.int16)
    cfg = TrainConfig(
        stage="pipo", fold=4, steps=2, batch_size=2, seq_len=16, eval_every=1, eval_batches=1
    )
    train(
        cfg,
        tmp_path / "p4",
        init_from=str(tmp_path / "ar"),
        corpus=(stream, stream),
        progress=False,
    )
    model = load(tmp_path / "p4" / "final")
    assert isinstance(model, PIPOModel) and model.config.fold == 4
    assert model.num_cache_layers == model.config.num_layers + 3
    (r,) = Engine(model, mode="pipo", threshold=-1.0, use_kernels=False).generate(
        [Request([257, 1, 2], SamplingParams(max_new_tokens=8, ignore_eos=True))]
    )
    assert len(r.token_ids) == 8
    with pytest.raises(ValueError, match="fold"):
        bad = TrainConfig(stage="pipo", fold=2, steps=1, batch_size=2, seq_len=16)
        train(
            bad,
            tmp_path / "p2",
            init_from=str(tmp_path / "p4" / "final"),
            corpus=(stream, stream),
            progress=False,
        )


# ---------------------------------------------------------------------------- CLI and report


def test_cli_fold_picks_the_builtin_pipo4(capsys):
    from pipo import cli

    gen = ["generate", "--prompt", "def ", "--max-new-tokens", "8", "--threads", "1"]
    assert cli.main([*gen, "--fold", "4", "--no-kernels", "--ignore-eos"]) == 0
    assert "tokens/pass" in capsys.readouterr().err
    assert cli.main([*gen, "--fold", "4", "--model", str(BUILTIN_DIR / "pipo")]) == 2
    assert "folds 2 tokens" in capsys.readouterr().err
    assert cli.main([*gen, "--fold", "4", "--mode", "ar"]) == 2


def test_gated_decode_k4_bounds(pipo4):
    from benchmarks.report_model import gated_decode

    windows = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(2))
    always = gated_decode(pipo4, windows, -1.0)
    never = gated_decode(pipo4, windows, 1.0)
    mid = gated_decode(pipo4, windows, 0.5)
    assert always["commit_by_position"] == [1.0, 1.0, 1.0] and never["commit_rate"] == 0.0
    assert never["tokens_per_pass"] == 1.0 and 3.5 < always["tokens_per_pass"] <= 4.0
    rates = mid["commit_by_position"]
    assert 0 < mid["commit_rate"] < 1 and rates[0] >= rates[1] >= rates[2]


@requires_safetensors
@pytest.mark.skipif(not (BUILTIN_DIR / "pipo4" / "config.json").is_file(), reason="no pipo4")
def test_shipped_pipo4_fits_and_generates_code():
    assert (BUILTIN_DIR / "pipo4" / "model.safetensors").stat().st_size <= 8_000_000
    model = load_builtin("pipo", preset("tiny"), 2, fold=4).eval()
    assert isinstance(model, PIPOModel) and model.config.fold == 4
    assert model.embed_tokens.weight.dtype == torch.float32
    params = SamplingParams(max_new_tokens=48, ignore_eos=True)
    engine = Engine(model, mode="pipo", threshold=0.0, max_batch_size=1)
    (result,) = engine.generate([Request("def ", params)])
    text = result.text
    printable = sum(c.isprintable() or c in "\n\t" for c in text)
    assert len(text) >= 20 and printable / len(text) > 0.95, text
    assert sum(c.isalpha() for c in text) > 5, text
    assert engine.stats.tokens_per_pass == 4.0  # θ = 0 commits every proposal

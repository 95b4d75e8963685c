"""Spec mode and its drafters (python/pipo/modes/spec.py, python/pipo/drafters/) on tiny random
models: lossless greedy output, the AR distribution under sampling, drafter state after partial
acceptance, pages, transfers per round."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pipo_helpers import small_models

from pipo.drafters import Drafter, DraftOptions, DraftTree, TreeShape, ancestor_mask, grow
from pipo.engine import Engine, Request, SamplingParams
from pipo.model import SamplingTensors, dense_hidden, dense_pipo
from pipo.sampling import filtered_probs

ROOT = Path(__file__).resolve().parents[1]
MIXED = ["Hello, world", "x", "odd", "The quick brown fox jumps over"]  # mixed, odd lengths
CODE = "def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 2\n\ndef h(x):\n    return"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    return small_models()


def requests_of(prompts, n=24, **kw):
    return [
        Request(p, SamplingParams(max_new_tokens=n - 3 * i, ignore_eos=True, **kw))
        for i, p in enumerate(prompts)
    ]


def ar_out(models, requests, **kw):
    return [r.token_ids for r in Engine(models[0], mode="ar", **kw).generate(requests)]


def spec(models, drafter, **kw):
    ar, pipo = models
    if drafter == "pipo":
        return Engine(pipo, mode="spec", verifier=ar, **kw)
    return Engine(ar, mode="spec", drafter=drafter, **kw)


# ---------------------------------------------------------------------------- test drafters


class NoisyOracle(Drafter):
    """Random trees over the known AR continuation: each node's token is the AR greedy token at
    its depth with probability ``hit`` (so acceptance lengths vary), else a random one. One
    shared cache layer records the committed token of every position (as an EAGLE drafter keeps
    KV per position); tentative junk goes into the round's scratch entries. ``check`` asserts on
    every propose that positions 0 … pos-1 hold the committed tokens, and every accept records
    the verifier hidden states it was given, to compare with a dense pass."""

    name = "noisy"
    kv_layers = 1

    def __init__(self, futures: dict[tuple, list[int]], nodes=7, hit=0.7, seed=0):
        self.futures, self.hit = futures, hit
        self.num_nodes, self.max_depth = nodes, nodes - 1
        self.g = torch.Generator().manual_seed(seed)
        self.hidden: dict[int, dict[int, torch.Tensor]] = {}  # rid -> position -> state

    def admit(self, rows, seqs):
        for s in seqs:
            self.hidden[s.rid] = {}

    def _layer(self):
        return self.cache.k_caches[self.shared_layers[0]].flatten(0, 1)  # [slots, Hkv, D]

    def prefill(self, feats):
        keep = feats.meta.slot_mapping >= 0
        self._layer()[feats.meta.slot_mapping[keep]] = feats.tokens[keep].float()[:, None, None]

    def prepare(self, seqs, live):
        self.rows = seqs
        self.live = live
        n, v = self.num_nodes, self.verifier.config.vocab_size
        tok = torch.randint(0, v, (len(seqs), n), generator=self.g)
        par = torch.full((len(seqs), n), -1, dtype=torch.int64)
        for b, s in enumerate(seqs):
            for i in range(1, n):
                par[b, i] = int(torch.randint(0, i, (1,), generator=self.g))
            if not live[b]:
                continue
            done = len(s.out)
            future = self.futures[tuple(s.prompt)][done:]
            depth = [0] * n
            for i in range(1, n):
                depth[i] = depth[par[b, i]] + 1
                if depth[i] <= len(future) and float(torch.rand(1, generator=self.g)) < self.hit:
                    tok[b, i] = future[depth[i] - 1]
        self.tree = DraftTree(tok, par, torch.zeros_like(tok), n - 1)

    def propose(self, view, need_probs):
        t = self.tree
        tokens = t.tokens.clone()
        tokens[:, 0] = view.tokens[:, 0]
        mask = ancestor_mask(t.parents, self.max_depth)
        depths = mask.sum(2) - 1
        for b, s in enumerate(self.rows):  # the invariant, then junk in the scratch entries
            if not self.live[b]:
                continue
            pos = int(view.pos[b])
            committed = s.prompt + s.out
            assert pos == len(committed) - 1
            slots = torch.tensor(self.cache.slots(s.rid, 0, pos + self.num_nodes))
            got = self._layer()[slots[:pos], 0, 0].long().tolist()
            assert got == committed[:pos], (s.rid, pos)
            self._layer()[slots[pos:]] = -7.0
        return DraftTree(tokens, t.parents, depths, t.max_depth, None, mask)

    def accept(self, view, acc):
        for b, s in enumerate(self.rows):
            if not self.live[b]:
                continue
            pos, n_new = int(view.pos[b]), int(acc.length[b]) + 1
            committed = [int(view.tokens[b, 0]), *acc.tokens[b, : n_new - 1].tolist()]
            slots = torch.tensor(self.cache.slots(s.rid, pos, pos + n_new))
            self._layer()[slots] = torch.tensor(committed).float()[:, None, None]
            for j in range(n_new):
                self.hidden[s.rid][pos + j] = acc.hidden[b, j].clone()


class FixedQ(Drafter):
    """Draft trees whose tokens are drawn (host generator) from one fixed distribution q, the
    draft_probs of every node: a chain of ``depth``, or ``width`` iid children of the root then a
    chain under the first."""

    name = "fixed-q"

    def __init__(self, q: torch.Tensor, depth=3, width=1, seed=0):
        self.q, self.width, self.depth = q, width, depth
        self.num_nodes = width + depth
        self.max_depth = depth
        self.g = torch.Generator().manual_seed(seed)
        chain = [1, *range(width + 1, width + depth - 1)][: depth - 1]
        self.parents = torch.tensor([-1, *([0] * width), *chain])

    def prepare(self, seqs, live):
        n = self.num_nodes
        self.tok = torch.multinomial(self.q, len(seqs) * n, replacement=True, generator=self.g)

    def propose(self, view, need_probs):
        b, n = view.tokens.shape[0], self.num_nodes
        tokens = self.tok[: b * n].view(b, n).clone()
        tokens[:, 0] = view.tokens[:, 0]
        parents = self.parents.expand(b, n)
        depths = ancestor_mask(parents, self.max_depth).sum(2) - 1
        probs = self.q.expand(b, n, -1).contiguous() if need_probs else None
        return DraftTree(tokens, parents, depths, self.max_depth, probs)

    def accept(self, view, acc):
        self.lengths = getattr(self, "lengths", []) + acc.length[acc.active].tolist()


class EmbedTree(Drafter):
    """A capturable drafter on ``grow``: the verifier's own embedding of a node's token is its
    hidden state (no weights; pure device work of static shape, as MTP / Medusa are)."""

    name = "embed"
    capturable = True

    def __init__(self, opts: DraftOptions):
        self.shape = TreeShape.of(opts)
        self.num_nodes, self.max_depth = self.shape.num_nodes, self.shape.max_depth
        self.draws = self.shape.draws

    def propose(self, view, need_probs):
        emb = self.verifier.embed_tokens
        st = SamplingTensors(
            temperature=view.temperature,
            top_k=view.top_k,
            top_p=view.top_p,
            presence_penalty=view.presence_penalty,
            seen=None,
            seeds=view.seeds,
            offsets=view.offsets + 1,
        )
        root = view.tokens[:, 0]
        return grow(
            self.shape,
            root,
            emb(root),
            lambda level: emb(level.tokens),
            self.verifier,
            st,
            self.use_kernels,
            need_probs,
        )


# ---------------------------------------------------------------------------- greedy: lossless


@pytest.mark.parametrize(
    "drafter,kw",
    [
        ("ngram", dict(draft_tokens=5)),
        ("ngram", dict(draft_tokens=6, tree="topk", draft_topk=3)),
        ("pipo", dict()),
        ("pipo", dict(draft_tokens=3, tree="chain")),
        ("pipo", dict(draft_topk=2, draft_steps=2)),
    ],
)
@pytest.mark.parametrize("penalty", [0.0, 1.5])
def test_greedy_equals_ar(models, drafter, kw, penalty):
    requests = requests_of([*MIXED, CODE], presence_penalty=penalty)
    engine = spec(models, drafter, page_size=4, max_batch_size=3, **kw)
    got = [r.token_ids for r in engine.generate(requests)]
    assert got == ar_out(models, requests)
    assert engine.stats.verify_rounds > 0
    for cache in engine._caches():
        assert cache.num_free_pages == cache.num_pages


@pytest.mark.parametrize(
    "opts", [DraftOptions(3, "chain"), DraftOptions(5, "topk", 2), DraftOptions(6, "dynamic", 2)]
)
def test_capturable_drafter_through_step_graphs(models, opts):
    """A capturable drafter runs through StepGraphs (on a CPU: the same step, eagerly, over the
    padded batch bucket, spare rows inactive): greedy equals ar; sampled equals graphs off."""
    ar = models[0]
    greedy = requests_of(MIXED[:3], n=16, presence_penalty=1.5)
    sampled = requests_of(MIXED[:3], n=16, temperature=0.9, top_k=20)
    mixed = [greedy[0], sampled[1], sampled[2]]

    def make(graphs):
        return Engine(
            ar, mode="spec", drafter=EmbedTree(opts), max_batch_size=4, cuda_graphs=graphs
        )

    engine = make(True)
    assert engine.graphs is not None
    assert [r.token_ids for r in engine.generate(greedy)] == ar_out(models, greedy)
    assert 4 in engine.graphs.buckets  # 3 rows in the bucket of 4
    for requests in (sampled, mixed):
        want = [r.token_ids for r in make(False).generate(requests)]
        assert [r.token_ids for r in make(True).generate(requests)] == want


def test_ngram_accepts_on_repetitive_text(models):
    requests = [Request(CODE * 2, SamplingParams(max_new_tokens=40, ignore_eos=True))]
    engine = spec(models, "ngram", draft_tokens=8)
    assert [r.token_ids for r in engine.generate(requests)] == ar_out(models, requests)
    assert engine.stats.mean_accept_len > 0.5


@pytest.mark.parametrize("hit", [0.3, 0.8])
def test_drafter_state_after_partial_acceptance(models, hit):
    """Random trees and random acceptance lengths: the drafter's shared layer holds the committed
    tokens below pos at every round, and the hidden states handed to accept are the verifier's
    (a dense pass over the whole committed text)."""
    ar = models[0]
    requests = requests_of(MIXED, n=20)
    want = ar_out(models, requests)
    futures = {tuple(r.prompt_ids): r.token_ids for r in Engine(ar, mode="ar").generate(requests)}
    drafter = NoisyOracle(futures, hit=hit)
    engine = Engine(ar, mode="spec", drafter=drafter, page_size=4, max_batch_size=3)
    results = engine.generate(requests)
    assert [r.token_ids for r in results] == want
    lens = engine.stats.accepted_draft_tokens / engine.stats.verify_rounds
    assert 0.2 < lens < 5
    for r, rid in zip(results, range(len(results)), strict=True):
        seq = r.prompt_ids + r.token_ids
        dense = dense_hidden(ar, ar.embed_tokens(torch.tensor([seq])))[0]
        seen = drafter.hidden[rid]
        assert seen and max(seen) < len(seq)
        for pos, h in seen.items():
            torch.testing.assert_close(h, dense[pos], atol=1e-4, rtol=1e-4)


def test_eos_and_length_inside_an_accepted_path(models):
    """An oracle drafter proposes the AR continuation, so EOS (and the length limit) fall inside
    accepted paths; output and finish reasons match mode ar's."""
    ar = models[0]
    plain = SamplingParams(max_new_tokens=30, ignore_eos=True)
    runs = Engine(ar, mode="ar").generate([Request(p, plain) for p in MIXED])
    futures = {tuple(r.prompt_ids): r.token_ids for r in runs}
    eos = runs[0].token_ids[9]
    ar_eos = type(ar)(replace(ar.config, eos_id=eos)).eval()
    ar_eos.load_state_dict(ar.state_dict())
    futures = {k: [*v, eos] for k, v in futures.items()}  # keep drafting past the end
    requests = [Request(p, SamplingParams(max_new_tokens=13 + 2 * i)) for i, p in enumerate(MIXED)]
    want = Engine(ar_eos, mode="ar").generate(requests)
    engine = Engine(ar_eos, mode="spec", drafter=NoisyOracle(futures, hit=1.0), page_size=4)
    got = engine.generate(requests)
    assert [(r.token_ids, r.finish_reason) for r in got] == [
        (r.token_ids, r.finish_reason) for r in want
    ]
    assert "eos" in {r.finish_reason for r in got} and "length" in {r.finish_reason for r in got}
    assert engine.stats.mean_accept_len > 1.5


# ---------------------------------------------------------------------------- sampling


def _target_probs(ar, seqs: list[list[int]]) -> torch.Tensor:
    """float32 [S, V]: the AR model's next-token distribution (T = 1) after each sequence."""
    with torch.no_grad():
        h = dense_hidden(ar, ar.embed_tokens(torch.tensor(seqs)))[:, -1]
        one = torch.ones(len(seqs))
        return filtered_probs(ar.logits(h), one, torch.zeros(len(seqs), dtype=torch.int32), one)


def _probs_each(ar, seqs: list[list[int]]) -> list[torch.Tensor]:
    """_target_probs of sequences of different lengths (grouped by length)."""
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for n in {len(x) for x in seqs}:
        idx = [i for i, x in enumerate(seqs) if len(x) == n]
        for i, p in zip(idx, _target_probs(ar, [seqs[i] for i in idx]), strict=True):
            out[i] = p
    return out


def _z(f: torch.Tensor, expect: torch.Tensor) -> float:
    """The standardised mean of indicator f [S] against its per-sample expectations [S]."""
    var = (expect * (1 - expect)).sum().clamp(min=1e-9)
    return float((f.float() - expect).sum() / var.sqrt())


def _sampled(engine, prompt, count, n):
    params = SamplingParams(temperature=1.0, max_new_tokens=n, ignore_eos=True)
    out = engine.generate([Request(prompt, replace(params, seed=s)) for s in range(count)])
    return [r.token_ids for r in out]


@torch.no_grad()
@pytest.mark.parametrize("width", [1, 2])
def test_stochastic_keeps_the_ar_distribution(models, width):
    """Drafts from a fixed q far from the AR model's p. For the round's first token x1 and its
    second x2 (a depth-2 node when both are accepted), with A = {v : p(v | context) > q(v)}:
    the share of tokens in A must match p(A) per sample (a drafter-biased sampler drifts towards
    q(A) = p(A) - TV). Standardised over 300 seeds; |z| < 4 (a false alarm ~1e-4)."""
    ar = models[0]
    prompt = [257, *b"Hello"]
    p0 = _target_probs(ar, [prompt])[0]
    q = torch.softmax(torch.log(p0 + 1e-9) / 3, 0)  # flatter than p: TV large, hits frequent
    engine = Engine(
        ar,
        mode="spec",
        drafter=FixedQ(q, depth=3, width=width),
        max_batch_size=300,
        num_pages=1000,
        page_size=4,
    )
    outs = _sampled(engine, prompt, 300, 3)
    lengths = engine.drafter.lengths
    assert sum(n >= 2 for n in lengths) > 30  # depth-2 nodes are accepted, often
    for j in (1, 2):
        ctx = [prompt + o[:j] for o in outs]
        p = _target_probs(ar, ctx)
        in_a = p > q
        f = torch.tensor([bool(in_a[i, o[j]]) for i, o in enumerate(outs)])
        expect = (p * in_a).sum(1)
        tv = float((expect - (q * in_a).sum(1)).mean())
        assert tv > 0.2  # the test can tell p from q
        assert abs(_z(f, expect)) < 4, (j, _z(f, expect))


@torch.no_grad()
def test_stochastic_ngram_keeps_the_ar_distribution(models):
    """A deterministic draft d is one-hot: the token emitted where d was proposed equals d with
    probability p(d | context). Per request, the first round with a proposal (a choice that
    depends on the past only)."""
    ar = models[0]
    prompt = [257, *b"the cat sat on the mat; the dog sat on the log"]
    engine = Engine(
        ar, mode="spec", drafter="ngram", draft_tokens=3, max_batch_size=200, num_pages=1000
    )
    first: dict[int, tuple[list[int], int]] = {}  # request (= document) -> (context, draft)
    orig = engine.drafter.propose_host

    def recording(doc, tokens, sampled):
        conts = orig(doc, tokens, sampled)
        if conts:
            first.setdefault(doc, (list(tokens), conts[0][0]))
        return conts

    engine.drafter.propose_host = recording
    outs = _sampled(engine, prompt, 200, 5)
    have = [i for i in sorted(first) if len(first[i][0]) < len(prompt) + 5]
    ctx = [first[i][0] for i in have]
    f = torch.tensor(
        [outs[i][len(c) - len(prompt)] == first[i][1] for i, c in zip(have, ctx, strict=True)]
    )
    expect = torch.stack([p[first[i][1]] for i, p in zip(have, _probs_each(ar, ctx), strict=True)])
    assert len(have) > 100 and engine.stats.accepted_draft_tokens > 0
    assert abs(_z(f, expect)) < 4


@torch.no_grad()
def test_stochastic_pipo_keeps_the_ar_distribution(models):
    """The PIPO drafter's first-token draws come from its token1 distribution q (over the
    committed text folded into pairs); the emitted token follows p, not q."""
    ar, pipo = models
    prompt = [257, *b"Hello"]
    engine = Engine(pipo, mode="spec", verifier=ar, max_batch_size=300, num_pages=1000)
    outs = _sampled(engine, prompt, 300, 2)
    ctx = [prompt + o[:1] for o in outs]
    pad = pipo.config.pad_id
    rows = torch.tensor([c + [pad] * (len(c) % 2) for c in ctx])
    h, _, _ = dense_pipo(pipo, rows, torch.zeros(len(ctx), rows.shape[1] // 2, dtype=torch.int64))
    one = torch.ones(len(ctx))
    q = filtered_probs(pipo.logits(h[:, -1]), one, torch.zeros(len(ctx), dtype=torch.int32), one)
    p = _target_probs(ar, ctx)
    in_a = p > q
    f = torch.tensor([bool(in_a[i, o[1]]) for i, o in enumerate(outs)])
    expect = (p * in_a).sum(1)
    assert float((expect - (q * in_a).sum(1)).mean()) > 0.2
    assert engine.stats.accepted_draft_tokens > 30
    assert abs(_z(f, expect)) < 4


@pytest.mark.parametrize("drafter", ["ngram", "pipo"])
def test_kernels_equal_reference_sampled(models, drafter):
    requests = requests_of([*MIXED, CODE], temperature=0.8, top_p=0.9, presence_penalty=1.5)
    for i, r in enumerate(requests):
        r.params.seed = 3 + i
    ker = spec(models, drafter, page_size=4).generate(requests)
    ref = spec(models, drafter, page_size=4, use_kernels=False).generate(requests)
    assert [r.token_ids for r in ker] == [r.token_ids for r in ref]


# ---------------------------------------------------------------------------- tree shapes


@pytest.mark.parametrize(
    "opts",
    [
        DraftOptions(5, "chain"),
        DraftOptions(7, "topk", 3),
        DraftOptions(9, "dynamic", 3, 3),
        DraftOptions(4, "dynamic", 2),
    ],
)
@pytest.mark.parametrize("need", [False, True])
def test_grow_builds_valid_trees(models, opts, need):
    ar = models[0]
    shape = TreeShape.of(opts)
    b, h = 3, ar.config.hidden_size
    g = torch.Generator().manual_seed(1)
    levels = []

    def expand(level):
        levels.append(level)
        assert level.mask.shape == (b, level.tokens.shape[1], level.first + level.tokens.shape[1])
        return torch.randn(b, level.tokens.shape[1], h, generator=g)

    temps = torch.tensor([0.0, 1.0, 0.7]) if need else torch.zeros(3)
    st = SamplingTensors(
        temperature=temps,
        top_k=torch.zeros(3, dtype=torch.int32),
        top_p=torch.ones(3),
        presence_penalty=torch.zeros(3),
        seen=None,
        seeds=torch.arange(3),
        offsets=torch.full((3,), 5),
    )
    root_hidden = torch.randn(b, h, generator=g)
    with torch.no_grad():
        tree = grow(shape, torch.tensor([1, 2, 3]), root_hidden, expand, ar, st, False, need)
    assert tree.tokens.shape == (b, shape.num_nodes) and tree.max_depth == shape.max_depth
    assert sum(lv.tokens.shape[1] for lv in levels) == shape.expansions
    par, dep = tree.parents, tree.depths
    assert (par[:, 0] == -1).all() and (dep[:, 0] == 0).all()
    i = torch.arange(1, shape.num_nodes)
    assert ((par[:, 1:] >= 0) & (par[:, 1:] < i)).all()
    assert (dep[:, 1:] == dep.gather(1, par[:, 1:]) + 1).all() and dep.max() <= shape.max_depth
    for row in range(b):  # greedy rows: distinct siblings
        if temps[row] > 0:
            continue
        pairs = list(zip(par[row, 1:].tolist(), tree.tokens[row, 1:].tolist(), strict=True))
        assert len(set(pairs)) == len(pairs)
    if need:
        torch.testing.assert_close(tree.draft_probs.sum(-1), torch.ones(b, shape.num_nodes))


def test_cli_drafters(capsys):
    from pipo import cli

    args = ["generate", "--prompt", "ab ab ab ab", "--mode", "spec", "--max-new-tokens", "9"]
    for extra in (["--drafter", "ngram", "--tree", "topk"], ["--draft-tokens", "3"]):
        assert cli.main([*args, "--ignore-eos", "--threads", "1", *extra]) == 0
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("mode=spec ") and "new_tokens=9" in err
    for kind in ("mtp", "medusa"):  # the shipped heads of the built-in AR model
        assert cli.main([*args, "--ignore-eos", "--threads", "1", "--drafter", kind]) == 0
        assert "new_tokens=9" in capsys.readouterr().err


def test_bad_options_and_drafters(models):
    ar, pipo = models
    with pytest.raises(ValueError, match="tree"):
        DraftOptions(4, "wide")
    with pytest.raises(ValueError, match="draft_tokens"):
        DraftOptions(0)
    with pytest.raises(ValueError, match="drafter: 'mtp'"):
        Engine(ar, mode="spec", drafter="mtp")
    with pytest.raises(ValueError, match="drafter: expected one of"):
        Engine(ar, mode="spec", drafter="nope")
    with pytest.raises(ValueError, match="model: drafter 'pipo'"):
        Engine(ar, mode="spec", drafter="pipo")
    with pytest.raises(ValueError, match="overlap"):
        Engine(ar, mode="spec", drafter="ngram", overlap=True)
    with pytest.raises(ValueError, match="cuda_graphs"):
        Engine(ar, mode="spec", drafter="ngram", cuda_graphs=True)
    with pytest.raises(ValueError, match="tree"):
        Engine(ar, mode="spec", drafter="ngram", tree="dynamic")
    with pytest.raises(ValueError, match="verifier"):
        Engine(pipo, mode="spec")

    class TooBig(EmbedTree):  # a tree larger than the drafter declared: pages would overflow
        def propose(self, view, need_probs):
            self.num_nodes, self.max_depth = 2, 1
            return super().propose(view, need_probs)

    engine = Engine(ar, mode="spec", drafter=TooBig(DraftOptions(3)))
    with pytest.raises(RuntimeError, match="drafter 'embed': a tree of 4 nodes"):
        engine.generate(requests_of(MIXED[:1]))
    assert all(c.num_free_pages == c.num_pages for c in engine._caches())


# ---------------------------------------------------------------------------- engine contract


@pytest.mark.parametrize("drafter", ["ngram", "pipo"])
def test_one_device_to_host_transfer_per_round(models, drafter, monkeypatch):
    """Every host read made from python/pipo is counted (the ops' own CPU argument checks are
    not engine work): one per round or prefill, in engine.py."""
    reads = []
    pipo_dir = str(ROOT / "python" / "pipo")
    for name in ("tolist", "item", "cpu", "__bool__", "__int__", "__float__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **kw):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(pipo_dir):
                reads.append((_name, caller))
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    engine = spec(models, drafter, page_size=4)
    requests = requests_of([*MIXED, CODE], temperature=0.8, presence_penalty=1.5)
    engine.generate(requests + requests_of(MIXED[:2]))
    monkeypatch.undo()
    stats = engine.stats
    assert stats.verify_rounds > 10 and stats.d2h_transfers == stats.steps
    assert len(reads) == stats.steps, reads[:5]
    assert {r[1] for r in reads} == {str(ROOT / "python" / "pipo" / "engine.py")}


@pytest.mark.parametrize("drafter", ["ngram", "pipo"])
def test_pages_released_when_the_cache_fills(models, drafter):
    requests = requests_of(MIXED, n=60)
    engine = spec(models, drafter, num_pages=12, page_size=4, max_batch_size=4)
    results = engine.generate(requests)
    assert "cache_full" in {r.finish_reason for r in results}
    want = ar_out(models, requests)
    for r, w in zip(results, want, strict=True):
        assert r.token_ids == w[: len(r.token_ids)]
    for cache in engine._caches():
        assert cache.num_free_pages == cache.num_pages


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("opts", [DraftOptions(4, "chain"), DraftOptions(6, "dynamic", 2)])
def test_cuda_spec_round_graphs_equal_eager(models, opts):
    """On a GPU the capturable drafter's round is captured (per bucket and greedy / sampled mix);
    the graphs' output equals the eager round's, and greedy equals mode ar on the CPU."""
    import copy

    gpu = tuple(copy.deepcopy(m).cuda() for m in models)
    greedy = requests_of(MIXED[:3], n=16, presence_penalty=1.5)
    sampled = requests_of(MIXED[:3], n=16, temperature=0.9, top_p=0.9)
    for requests in (greedy, sampled, [greedy[0], *sampled[1:]]):
        eager = Engine(gpu[0], mode="spec", drafter=EmbedTree(opts), cuda_graphs=False)
        graphed = Engine(gpu[0], mode="spec", drafter=EmbedTree(opts), cuda_graphs=True)
        assert graphed.graphs is not None and graphed.graphs.capture
        want = [r.token_ids for r in eager.generate(requests)]
        assert [r.token_ids for r in graphed.generate(requests)] == want
    got = Engine(gpu[0], mode="spec", drafter=EmbedTree(opts)).generate(greedy)
    assert [r.token_ids for r in got] == ar_out(models, greedy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("drafter", ["ngram", "pipo"])
def test_cuda_spec_equals_cpu_reference(models, drafter):
    import copy

    gpu = tuple(copy.deepcopy(m).cuda() for m in models)
    requests = requests_of([*MIXED, CODE], presence_penalty=1.5)
    want = [r.token_ids for r in spec(models, drafter, use_kernels=False).generate(requests)]
    assert [r.token_ids for r in spec(gpu, drafter).generate(requests)] == want

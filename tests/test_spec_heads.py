"""Drafters "mtp" and "medusa" in mode spec (pipo.drafters.heads): lossless output, the AR
distribution under sampling, the drafters' state after partial acceptance, pages released."""

from __future__ import annotations

import pytest
import torch
from pipo_helpers import requires_safetensors, small_config

from pipo.checkpoint import BUILTIN_DIR
from pipo.drafters import DraftOptions
from pipo.drafters.heads import MedusaDrafter, MTPDrafter
from pipo.engine import Engine, Request, SamplingParams
from pipo.heads import dense_mtp, new_head
from pipo.model import ARModel, dense_hidden
from pipo.sampling import filtered_probs

PROMPTS = [[257, 5, 9, 33], [257, *range(40, 57)], [257, 7], [257, 100, 101, 102, 103, 104, 105]]
TREES = [
    DraftOptions(draft_tokens=4, tree="chain"),
    DraftOptions(draft_tokens=5, tree="topk", topk=2),
    DraftOptions(draft_tokens=6, tree="dynamic", topk=2, depth=3),
]


def _verifier(**overrides) -> ARModel:
    ar = ARModel(small_config(**overrides)).eval()
    ar.init_random(1, std=0.08)
    return ar


def _head(kind: str, ar: ARModel, seed: int = 0):
    """A fresh head moved off its initialisation (so drafts differ from the verifier's own
    choices and some are rejected)."""
    head = new_head(kind, ar, **({"num_heads": 6} if kind == "medusa" else {})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    return head


def _drafter(kind: str, head, opts: DraftOptions):
    return (MTPDrafter if kind == "mtp" else MedusaDrafter)(head, opts)


def _engine(ar, drafter=None, use_kernels=False, **kw):
    mode = "ar" if drafter is None else "spec"
    kw = {"max_batch_size": 3, "num_pages": 48, "page_size": 8, **kw}
    return Engine(ar, mode=mode, drafter=drafter, use_kernels=use_kernels, **kw)


def _requests(lengths, **params):
    return [
        Request(p, SamplingParams(max_new_tokens=n, **params))
        for p, n in zip(PROMPTS, lengths, strict=True)
    ]


@pytest.mark.parametrize("use_kernels", [False, True])
@pytest.mark.parametrize("kind", ["mtp", "medusa"])
@pytest.mark.parametrize("opts", TREES, ids=[o.tree for o in TREES])
def test_greedy_spec_equals_ar(kind, opts, use_kernels):
    """Mixed batch (4 requests on 3 rows, so a row is reused and rows move when one retires),
    prompts of odd and even lengths, different output lengths; every page comes back."""
    ar = _verifier()
    lengths = [23, 9, 17, 14]
    ref = [
        r.token_ids
        for r in _engine(ar, use_kernels=use_kernels).generate(_requests(lengths, ignore_eos=True))
    ]
    engine = _engine(ar, _drafter(kind, _head(kind, ar), opts), use_kernels)
    out = engine.generate(_requests(lengths, ignore_eos=True))
    assert [r.token_ids for r in out] == ref
    s = engine.stats
    assert 0 < s.accepted_draft_tokens < s.verify_rounds * opts.draft_tokens  # some rejected
    assert engine.cache.num_free_pages == engine.cache.num_pages


class _Recorder:
    """Wraps a drafter's hooks: after each round, (request id, new pos, root feature) of every
    active row, and the accepted draft tokens of each round."""

    def __init__(self, drafter):
        self.snaps, self.accepted, self.rid_of = [], [], {}
        admit, move, accept = drafter.admit, drafter.move, drafter.accept

        def on_admit(rows, seqs):
            admit(rows, seqs)
            self.rid_of.update({r: s.rid for r, s in zip(rows, seqs, strict=True)})

        def on_move(src, dst):
            move(src, dst)
            self.rid_of[dst] = self.rid_of[src]

        def on_accept(view, acc):
            accept(view, acc)
            new_pos = view.pos + acc.length + 1
            for r in torch.nonzero(acc.active).flatten().tolist():
                feat = drafter.feat[r].clone()
                self.snaps.append((self.rid_of[r], int(new_pos[r]), feat))
                self.accepted.append(acc.tokens[r, : int(acc.length[r])].tolist())

        drafter.admit, drafter.move, drafter.accept = on_admit, on_move, on_accept


@pytest.mark.parametrize("kind", ["mtp", "medusa"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("tree", ["chain", "dynamic"])
def test_drafter_state_after_partial_acceptance(kind, temperature, tree):
    """After every round the root feature is what a fresh prefill of the committed text gives
    (mtp: the dense chain's step 0 at the last position but one, which attends over every
    cache entry the drafter wrote, so a stale or misplaced entry changes it; medusa: the
    verifier's state there). Sampling gives random acceptance lengths."""
    ar = _verifier()
    head = _head(kind, ar)
    drafter = _drafter(kind, head, DraftOptions(draft_tokens=5, tree=tree, topk=2))
    rec = _Recorder(drafter)
    engine = _engine(ar, drafter, max_batch_size=2)
    params = dict(ignore_eos=True, temperature=temperature, seed=3)
    results = engine.generate(_requests([19, 11, 15, 8], **params))
    texts = [torch.tensor(r.prompt_ids + r.token_ids) for r in results]
    checked = 0
    for rid, pos, feat in rec.snaps:
        t = texts[rid]
        if pos >= len(t):  # the request's last round: its text was cut at max_new_tokens
            continue
        seq = t[: pos + 1].unsqueeze(0)
        h = dense_hidden(ar, ar.embed_tokens(seq))
        want = h[0, pos - 1] if kind == "medusa" else dense_mtp(head, ar, seq, h, 1)[0][0, -1]
        torch.testing.assert_close(feat, want, atol=1e-5, rtol=1e-4, msg=f"{rid} at {pos}")
        checked += 1
    assert checked >= len(rec.snaps) - 4 and checked > 10
    assert len({len(a) for a in rec.accepted}) >= 3  # several acceptance lengths


def test_eos_inside_an_accepted_path():
    """EOS taken as a draft token (not the bonus) ends the request exactly where mode ar ends."""
    ar = _verifier()
    head = _head("mtp", ar)
    drafter = _drafter("mtp", head, DraftOptions(draft_tokens=4, tree="chain"))
    rec = _Recorder(drafter)
    engine = _engine(ar, drafter, max_batch_size=1)
    (res,) = engine.generate(
        [Request(PROMPTS[1], SamplingParams(max_new_tokens=30, ignore_eos=True))]
    )
    # an accepted draft token that first occurs there, not at the very start
    eos = next(t for acc in rec.accepted for t in acc if res.token_ids.index(t) > 2)
    stop = res.token_ids.index(eos)
    ar2 = _verifier(eos_id=eos)
    head2 = new_head("mtp", ar2)
    head2.load_state_dict(head.state_dict())
    req = [Request(PROMPTS[1], SamplingParams(max_new_tokens=30))]
    (ref,) = _engine(ar2).generate(req)
    (got,) = _engine(ar2, _drafter("mtp", head2, DraftOptions(draft_tokens=4))).generate(req)
    assert ref.finish_reason == got.finish_reason == "eos"
    assert got.token_ids == ref.token_ids == res.token_ids[:stop]


def _exact_joint(ar: ARModel, prompt: list[int], top_k: int):
    """{(t1, t2, t3): probability} of the first three tokens under sampling at T = 1, top-k."""
    joint = {}

    def rec(prefix, p):
        if len(prefix) == len(prompt) + 3:
            joint[tuple(prefix[len(prompt) :])] = p
            return
        ids = torch.tensor([prefix])
        logits = ar.logits(dense_hidden(ar, ar.embed_tokens(ids)))[0, -1:]
        q = filtered_probs(
            logits, torch.ones(1), torch.tensor([top_k], dtype=torch.int32), torch.ones(1)
        )[0]
        for t in torch.nonzero(q).flatten().tolist():
            rec([*prefix, t], p * q[t].item())

    with torch.no_grad():
        rec(list(prompt), 1.0)
    return joint


@pytest.mark.parametrize("kind", ["mtp", "medusa"])
def test_sampled_spec_keeps_the_ar_distribution(kind):
    """The first three sampled tokens (a depth-2 accepted path after the prefill's token) of
    many seeds follow the AR model's exact joint distribution (chi-square), while the drafter's
    own proposals differ from it enough that a broken acceptance rule would show."""
    ar = _verifier()
    prompt, top_k, n = PROMPTS[0], 3, 600
    joint = _exact_joint(ar, prompt, top_k)
    engine = _engine(
        ar,
        _drafter(kind, _head(kind, ar, seed=5), DraftOptions(draft_tokens=3, tree="topk", topk=2)),
        max_batch_size=64,
        num_pages=400,
    )
    reqs = [
        Request(
            prompt,
            SamplingParams(max_new_tokens=3, temperature=1.0, top_k=top_k, seed=s, ignore_eos=True),
        )
        for s in range(n)
    ]
    counts: dict[tuple, int] = {}
    for r in engine.generate(reqs):
        key = tuple(r.token_ids[:3])
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(joint)
    assert engine.stats.accepted_draft_tokens > n // 4  # drafts were accepted, not just bonuses
    # chi-square over cells with expected count >= 5, the rest pooled
    big = [k for k, p in joint.items() if p * n >= 5]
    obs = [counts.get(k, 0) for k in big] + [n - sum(counts.get(k, 0) for k in big)]
    exp = [joint[k] * n for k in big] + [n * (1 - sum(joint[k] for k in big))]
    cells = [(o, e) for o, e in zip(obs, exp, strict=True) if e > 0]
    chi2 = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    # chi-square 99.9% quantile ~ dof + 3.1 sqrt(2 dof) + 5 for these dof
    assert chi2 < dof + 3.1 * (2 * dof) ** 0.5 + 5, (chi2, dof)


@requires_safetensors
@pytest.mark.skipif(not (BUILTIN_DIR / "mtp" / "config.json").is_file(), reason="no shipped heads")
@pytest.mark.parametrize("kind", ["mtp", "medusa"])
def test_shipped_heads_draft_well_on_code(kind):
    """The shipped heads on the built-in AR model: greedy output equals mode ar's, and on Python
    source more than one draft token per verification is accepted."""
    from pipo.checkpoint import load_builtin
    from pipo.config import preset

    ar = load_builtin("ar", preset("tiny"), 1).eval()
    req = [
        Request("def forward(self, x):\n    ", SamplingParams(max_new_tokens=48, ignore_eos=True))
    ]
    (ref,) = _engine(ar, use_kernels=True, num_pages=32).generate(req)
    engine = Engine(
        ar, mode="spec", drafter=kind, draft_tokens=4, tree="chain", max_batch_size=1, num_pages=32
    )
    (got,) = engine.generate(req)
    assert got.token_ids == ref.token_ids
    assert engine.stats.accepted_draft_tokens / engine.stats.verify_rounds > 1.0


@requires_safetensors
@pytest.mark.skipif(not (BUILTIN_DIR / "mtp" / "config.json").is_file(), reason="no shipped heads")
def test_bench_spec_smallest_run(tmp_path, capsys):
    """benchmarks/bench_spec.py end to end at its smallest: every row of the table has the
    fields the README block reads, ar's ratio is 1 and PIPO's quality comes from the report."""
    import json

    from benchmarks import bench_spec

    argv = ["--device", "cpu", "--out", str(tmp_path), "--prompts", "1", "--new-tokens", "8"]
    argv += ["--repeats", "1", "--drafters", "mtp", "medusa", "--trees", "chain"]
    argv += ["--temperatures", "0", "--quality-windows", "1", "--prompt-len", "16"]
    assert bench_spec.main(argv) == 0
    rows = json.loads((tmp_path / "spec.json").read_text())["rows"]
    assert [r["config"] for r in rows][:3] == ["ar", "spec mtp chain", "spec medusa chain"]
    assert rows[0]["vs_ar"] == 1.0 and rows[-1]["mode"] == "pipo" and not rows[-1]["lossless"]
    assert all(r["tokens_per_s"] > 0 and 0 < r["passes_per_token"] <= 1 for r in rows)
    assert (tmp_path / "spec.png").is_file() and "| spec mtp chain |" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["mtp", "medusa"])
@pytest.mark.parametrize("opts", TREES[::2], ids=["chain", "dynamic"])
def test_cuda_graphs_equal_eager_and_ar(kind, opts):
    """Both drafters are capturable: on a GPU the captured round gives the eager round's output
    (greedy and sampled), and greedy output equals mode ar's on the CPU."""
    ar = _verifier()
    head = _head(kind, ar)
    ref = [r.token_ids for r in _engine(ar).generate(_requests([12, 9, 14, 7], ignore_eos=True))]
    gpu, gpu_head = ar.cuda(), head.cuda()
    for params in (dict(ignore_eos=True), dict(ignore_eos=True, temperature=0.9, seed=4)):
        outs = []
        for graphs in (False, True):
            e = _engine(gpu, _drafter(kind, gpu_head, opts), True, cuda_graphs=graphs)
            assert (e.graphs is not None) == graphs
            outs.append([r.token_ids for r in e.generate(_requests([12, 9, 14, 7], **params))])
        assert outs[0] == outs[1]
        if "temperature" not in params:
            assert outs[0] == ref

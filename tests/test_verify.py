"""Tests of pipo::verify_tree (greedy) and pipo::verify_tree_stochastic (speculative sampling):
hand-built trees, every backend against the reference on random trees, statistical checks that
the emitted tokens follow the target distribution, determinism, opcheck, torch.compile, CUDA
graphs and argument errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import HAS_CUDA, opcheck_utils, requires_cuda

import pipo_kernels as pk
from pipo_kernels import reference

needs_cuda = requires_cuda
OPS = ("verify_tree", "verify_tree_stochastic")


def cpu_backends(op: str) -> list[str]:
    return [b for b in pk.available_backends(op, torch.device("cpu")) if b != "torch"]


# ---------------------------------------------------------------------------------------------
# Inputs


def random_parents(n: int, max_depth: int, gen: torch.Generator, chain: float = 0.3) -> list[int]:
    """A random tree of n nodes in topological order, no node deeper than max_depth."""
    if n == 0:
        return []
    parents, depth = [-1], [0]
    for i in range(1, n):
        if torch.rand((), generator=gen) < chain and depth[i - 1] < max_depth:
            p = i - 1
        else:
            ok = [j for j in range(i) if depth[j] < max_depth]
            p = ok[int(torch.randint(len(ok), (), generator=gen))]
        parents.append(p)
        depth.append(depth[p] + 1)
    return parents


def random_probs(rows: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Peaked distributions with some exact zeros (support mismatches between draft and target)."""
    p = torch.rand(rows, vocab, generator=gen, dtype=torch.float64) ** 4
    p[torch.rand(rows, vocab, generator=gen) < 0.2] = 0.0
    p[:, 0] += 1e-3
    return (p / p.sum(1, keepdim=True)).float()


@dataclass
class Sample:
    name: str
    sizes: tuple[int, ...]
    max_depth: int
    vocab: int
    seed: int = 0

    def tensors(self, device: str = "cpu") -> dict[str, object]:
        gen = torch.Generator().manual_seed(self.seed)
        parents = []
        for n in self.sizes:
            parents += random_parents(n, self.max_depth, gen)
        nodes = len(parents)
        indptr = torch.tensor([0, *torch.tensor(self.sizes, dtype=torch.long).cumsum(0).tolist()])
        # few distinct tokens, so greedy trees accept deep paths often
        draft = torch.randint(0, min(self.vocab, 3), (nodes,), generator=gen)
        target = torch.randint(0, min(self.vocab, 3), (nodes,), generator=gen)
        batch = len(self.sizes)
        t = {
            "draft_tokens": draft,
            "parents": torch.tensor(parents, dtype=torch.int32),
            "q_indptr": indptr.to(torch.int32),
            "target_tokens": target,
            "draft_probs": random_probs(nodes, self.vocab, gen),
            "target_probs": random_probs(nodes, self.vocab, gen),
            "seeds": torch.randint(-(2**62), 2**62, (batch,), generator=gen),
            "offsets": torch.randint(0, 2**40, (batch,), generator=gen),
        }
        t = {k: v.to(device) for k, v in t.items()}
        t["max_depth"] = self.max_depth
        return t


SAMPLES = [
    Sample("one_tree", (7,), 3, 8),
    Sample("mixed_sizes", (1, 5, 0, 9, 3), 3, 6, seed=1),
    Sample("deep_chainy", (12, 2), 11, 5, seed=2),
    Sample("wide", (10,), 1, 4, seed=3),
    Sample("max_depth_unused", (4, 4), 6, 7, seed=4),
    Sample("odd_vocab", (6, 1, 8), 4, 37, seed=5),
    Sample("empty_batch", (), 2, 5, seed=6),
    Sample("all_empty", (0, 0), 0, 3, seed=7),
]


def greedy_args(t: dict) -> tuple:
    return (t["draft_tokens"], t["parents"], t["q_indptr"], t["target_tokens"], t["max_depth"])


def stochastic_args(t: dict) -> tuple:
    keys = ("draft_tokens", "parents", "q_indptr", "draft_probs", "target_probs", "seeds")
    return (*(t[k] for k in keys), t["offsets"], t["max_depth"])


def run(op: str, args: tuple, backend: str):
    return getattr(pk, op)(*args, backend=backend)


def ref(op: str, args: tuple):
    return getattr(reference, op)(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))


def assert_same(got, want) -> None:
    names = ("accept_len", "accept_index", "bonus_token")
    for g, w, name in zip(got, want, names, strict=True):
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert torch.equal(g.cpu(), w.cpu()), f"{name}: got {g.tolist()}, want {w.tolist()}"


def args_of(op: str, t: dict) -> tuple:
    return greedy_args(t) if op == "verify_tree" else stochastic_args(t)


# ---------------------------------------------------------------------------------------------
# Greedy verification on hand-built trees


def tree(parents, draft, target, max_depth):
    n = len(parents)
    return (
        torch.tensor(draft, dtype=torch.long),
        torch.tensor(parents, dtype=torch.int32),
        torch.tensor([0, n], dtype=torch.int32),
        torch.tensor(target, dtype=torch.long),
        max_depth,
    )


# (name, parents, draft, target, max_depth, accept_len, path, bonus)
HAND_TREES = [
    # root -> 1 (11), root -> 2 (12), 1 -> 3 (13): target after root is 12 -> branch 2 wins
    ("branching", [-1, 0, 0, 1], [7, 11, 12, 13], [12, 13, 20, 21], 2, 1, [0, 2], 20),
    # root -> 1 -> 2 dies at 2; root -> 3 -> 4 survives: the deeper live branch wins
    ("dead_branch", [-1, 0, 1, 0, 3], [0, 5, 9, 5, 6], [5, 8, 1, 6, 4], 2, 2, [0, 3, 4], 4),
    # a chain whose every token matches: all accepted, bonus after the last node
    ("full_chain", [-1, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], 3, 3, [0, 1, 2, 3], 4),
    ("single_node", [-1], [42], [17], 3, 0, [0], 17),
    # two accepted paths of depth 2 (ending at 3 and 4): lowest index wins
    ("tie_lowest_index", [-1, 0, 0, 2, 1], [0, 1, 1, 2, 2], [1, 2, 2, 9, 9], 2, 2, [0, 2, 3], 9),
    # node 3 matches its parent's target but its parent (2) was rejected
    ("orphan_match", [-1, 0, 0, 2], [0, 1, 5, 8], [1, 3, 8, 9], 2, 1, [0, 1], 3),
    # nothing accepted: bonus is the target after the root
    ("root_only", [-1, 0, 0], [0, 4, 5], [6, 1, 1], 1, 0, [0], 6),
]


@pytest.mark.parametrize("backend", [*cpu_backends("verify_tree"), "torch"])
@pytest.mark.parametrize("case", HAND_TREES, ids=[c[0] for c in HAND_TREES])
def test_greedy_hand_built(case, backend):
    _, parents, draft, target, max_depth, n, path, bonus = case
    got = pk.verify_tree(*tree(parents, draft, target, max_depth), backend=backend)
    row = path + [-1] * (max_depth + 1 - len(path))
    assert got[0].tolist() == [n]
    assert got[1].tolist() == [row]
    assert got[2].tolist() == [bonus]


@pytest.mark.parametrize("backend", [*cpu_backends("verify_tree"), "torch"])
def test_greedy_batch_of_hand_built_trees(backend):
    """Every hand-built tree in one batch (with empty trees between) gives the same answers, and
    indices stay local to each sequence."""
    parents, draft, target, indptr, want = [], [], [], [0], []
    max_depth = max(c[4] for c in HAND_TREES)
    for _, p, d, t, _, n, path, bonus in HAND_TREES:
        parents += p
        draft += d
        target += t
        indptr += [indptr[-1] + len(p), indptr[-1] + len(p)]
        want += [
            (n, path + [-1] * (max_depth + 1 - len(path)), bonus),
            (0, [-1] * (max_depth + 1), -1),
        ]
    got = pk.verify_tree(
        torch.tensor(draft),
        torch.tensor(parents, dtype=torch.int32),
        torch.tensor(indptr, dtype=torch.int32),
        torch.tensor(target),
        max_depth,
        backend=backend,
    )
    assert got[0].tolist() == [w[0] for w in want]
    assert got[1].tolist() == [w[1] for w in want]
    assert got[2].tolist() == [w[2] for w in want]


# ---------------------------------------------------------------------------------------------
# Every backend against the reference


@pytest.mark.parametrize("backend", [*cpu_backends("verify_tree"), "torch"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_matches_reference(sample, op, backend):
    args = args_of(op, sample.tensors())
    assert_same(run(op, args, backend), ref(op, args))


@pytest.mark.parametrize("op", OPS)
def test_matches_reference_many_trees(op):
    """The C++ kernels on many larger random trees (fast enough for the full check)."""
    if "cpu" not in cpu_backends(op):
        pytest.skip("pipo_kernels._C not built")
    for seed in range(6):
        gen = torch.Generator().manual_seed(100 + seed)
        sizes = tuple(int(x) for x in torch.randint(0, 24, (9,), generator=gen))
        args = args_of(op, Sample("big", sizes, 6, 50, seed=seed).tensors())
        assert_same(run(op, args, "cpu"), ref(op, args))


def poison_cuda_allocator() -> None:
    """Fill freed cached blocks with a marker, so outputs the kernels fail to write (they come from
    torch.empty) hold garbage rather than zeros left by earlier tests."""
    for numel in (1 << 10, 1 << 16, 1 << 20):
        torch.full((numel,), 0x5A5A5A5A5A5A5A5A, dtype=torch.int64, device="cuda")


@needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_matches_reference_cuda(sample, op, backend):
    args = args_of(op, sample.tensors("cuda"))
    poison_cuda_allocator()
    got = run(op, args, backend)
    assert got[0].is_cuda
    assert_same(got, ref(op, args))


@needs_cuda
@pytest.mark.parametrize("op", OPS)
def test_large_vocab_cuda(op):
    """A real vocabulary size (many vocabulary tiles per pass) on the GPU kernels."""
    args = args_of(op, Sample("vocab", (17, 1, 30, 9), 5, 151_936, seed=9).tensors("cuda"))
    want = ref(op, args)
    for backend in ("cuda", "triton"):
        assert_same(run(op, args, backend), want)


# ---------------------------------------------------------------------------------------------
# Stochastic verification keeps the target distribution (checked statistically)

V_STAT = 8


def stat_tables(seed: int):
    """Target / draft distributions over V_STAT tokens: P1, Q1 after the root, P2[x], Q2[x] after
    token x. Draft and target differ a lot (TV > 0.3) and have mismatched supports."""
    gen = torch.Generator().manual_seed(seed)
    p1, q1 = random_probs(1, V_STAT, gen)[0], random_probs(1, V_STAT, gen)[0]
    p2, q2 = random_probs(V_STAT, V_STAT, gen), random_probs(V_STAT, V_STAT, gen)
    assert 0.5 * (p1 - q1).abs().sum() > 0.3
    return p1, q1, p2, q2


def draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One sample from each row of probs [N, V]."""
    return torch.multinomial(probs.double(), 1, generator=gen)[:, 0]


def run_trials(shape: list[int], trials: int, seed: int, backend: str):
    """`trials` copies of one tree shape (parents list) whose children are drawn i.i.d. from the
    draft tables; returns the first two emitted tokens of every trial. When the op emits a single
    token, the second one is drawn exactly from the target (what the next step would produce)."""
    p1, q1, p2, q2 = stat_tables(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    n = len(shape)
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[shape[i]] + 1
    tokens = torch.zeros(trials, n, dtype=torch.long)
    for i in range(1, n):  # children of the root ~ q1; grandchildren ~ q2[parent's token]
        rows = q1.expand(trials, -1) if shape[i] == 0 else q2[tokens[:, shape[i]]]
        tokens[:, i] = draw(rows, gen)
    dprobs = torch.where(
        torch.tensor(depth).view(1, n, 1) == 0, q1.view(1, 1, -1), q2[tokens]
    ).reshape(trials * n, V_STAT)
    tprobs = torch.where(
        torch.tensor(depth).view(1, n, 1) == 0, p1.view(1, 1, -1), p2[tokens]
    ).reshape(trials * n, V_STAT)
    max_depth = max(depth)
    args = (
        tokens.reshape(-1),
        torch.tensor(shape * trials, dtype=torch.int32),
        torch.arange(0, trials * n + 1, n, dtype=torch.int32),
        dprobs.contiguous(),
        tprobs.contiguous(),
        torch.full((trials,), 1234 + seed),
        torch.arange(trials, dtype=torch.int64) * 7,
        max_depth,
    )
    if backend == "cuda":
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    n_acc, index, bonus = (x.cpu() for x in pk.verify_tree_stochastic(*args, backend=backend))
    emitted = torch.cat(
        [torch.gather(tokens, 1, index.clamp(min=0).long())[:, 1:], bonus[:, None]], 1
    )
    # emitted[:, :n_acc] are the accepted draft tokens, then the bonus token
    first = torch.where(n_acc >= 1, emitted[:, 0], bonus)
    second = torch.where(n_acc >= 2, emitted[:, 1], torch.where(n_acc == 1, bonus, -1))
    fresh = draw(p2[first], gen)
    second = torch.where(second < 0, fresh, second)
    return first, second, (p1, p2), n_acc


def tv(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((counts.double() / counts.sum() - probs.double().flatten()).abs().sum())


STAT_TREES = {
    "chain": [-1, 0, 1],
    "three_children": [-1, 0, 0, 0],
    "two_by_two": [-1, 0, 0, 1, 1, 2, 2],
    "mixed": [-1, 0, 1, 0, 2, 3, 0],
}


def stat_backends() -> list[str]:
    out = ["cpu"] if "cpu" in cpu_backends("verify_tree_stochastic") else []
    return out + (["cuda"] if HAS_CUDA else [])


@pytest.mark.parametrize("backend", stat_backends())
@pytest.mark.parametrize("shape", STAT_TREES.values(), ids=STAT_TREES.keys())
def test_stochastic_preserves_target_distribution(shape, backend):
    trials = 40_000
    first, second, (p1, p2), n_acc = run_trials(shape, trials, seed=len(shape), backend=backend)
    # ~0.01 expected from sampling noise with 8 cells, ~0.03 with 64; a wrong rule gives > 0.1
    assert tv(torch.bincount(first, minlength=V_STAT), p1) < 0.02
    joint = torch.bincount(first * V_STAT + second, minlength=V_STAT * V_STAT)
    assert tv(joint, p1[:, None] * p2) < 0.045
    # speculation did something: some trials accepted a draft token, some rejected all
    assert 0 < int((n_acc > 0).sum()) < trials


@pytest.mark.parametrize("backend", stat_backends())
def test_stochastic_statistics_are_sensitive(backend):
    """Control: the draft distribution itself fails the bound the test uses, so the test would
    catch a rule that simply accepted the draft."""
    p1, q1, _, _ = stat_tables(3)
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(draw(q1.expand(40_000, -1), gen), minlength=V_STAT)
    assert tv(counts, p1) > 0.2


def test_stochastic_same_draft_and_target_accepts_everything():
    """q == p: every child is accepted with probability 1, so a chain is taken to its end."""
    if "cpu" not in cpu_backends("verify_tree_stochastic"):
        pytest.skip("pipo_kernels._C not built")
    gen = torch.Generator().manual_seed(0)
    probs = random_probs(5, 6, gen)
    draft = torch.tensor([0, *[int(draw(probs[i : i + 1], gen)) for i in range(4)]])
    args = (
        draft,
        torch.tensor([-1, 0, 1, 2, 3], dtype=torch.int32),
        torch.tensor([0, 5], dtype=torch.int32),
        probs,
        probs,
        torch.tensor([5]),
        torch.tensor([0]),
        4,
    )
    for backend in ("cpu", "torch"):
        n_acc, index, _ = pk.verify_tree_stochastic(*args, backend=backend)
        assert n_acc.tolist() == [4] and index.tolist() == [[0, 1, 2, 3, 4]]


# ---------------------------------------------------------------------------------------------
# Randomness: counter-based and reproducible


def test_uniforms_reference_values():
    """The generator is pinned (docs/ops.md §4b): every backend must draw exactly these."""
    key = reference.verify_stream(1234, 7)
    assert key == 0xF2ED6652493B9F9D
    got = [reference.verify_uniform(key, k) * 2**24 for k in range(3)]
    assert got == [1742342.0, 1520647.0, 7869458.0]
    key = reference.verify_stream(-1, 0)  # negative seeds are taken modulo 2**64
    assert [reference.verify_uniform(key, k) * 2**24 for k in range(2)] == [673653.0, 6604518.0]
    assert reference.verify_stream(1234, 8) != reference.verify_stream(1234, 7)


@pytest.mark.parametrize("backend", [*cpu_backends("verify_tree_stochastic"), "torch"])
def test_stochastic_deterministic(backend):
    args = list(stochastic_args(Sample("det", (6, 4, 5), 3, 6, seed=11).tensors()))
    a = run("verify_tree_stochastic", tuple(args), backend)
    b = run("verify_tree_stochastic", tuple(args), backend)
    assert_same(a, b)
    outs = set()
    for off in range(6):
        args[6] = torch.full((3,), off)
        outs.add(
            tuple(
                tuple(x.flatten().tolist())
                for x in run("verify_tree_stochastic", tuple(args), backend)
            )
        )
    assert len(outs) > 1, "changing offsets never changed the outcome"


# ---------------------------------------------------------------------------------------------
# torch.library: opcheck, torch.compile, CUDA graphs

OPCHECK_SAMPLES = [s for s in SAMPLES if s.name in ("mixed_sizes", "empty_batch", "wide")]


DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=needs_cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("suffix", ["", "_triton"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("sample", OPCHECK_SAMPLES, ids=[s.name for s in OPCHECK_SAMPLES])
def test_opcheck(sample, op, suffix, device):
    name = op + suffix
    if not hasattr(torch.ops.pipo, name):
        pytest.skip(f"torch.ops.pipo.{name} is not registered")
    if suffix == "_triton" and device == "cpu" and HAS_CUDA:
        pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1")
    torch.library.opcheck(
        getattr(torch.ops.pipo, name),
        args_of(op, sample.tensors(device)),
        test_utils=opcheck_utils(device, is_triton=suffix == "_triton"),
    )


COMPILE_PARAMS = [
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=needs_cuda),
    pytest.param("cuda", "triton", id="cuda-triton", marks=needs_cuda),
]


@pytest.mark.parametrize(("device", "backend"), COMPILE_PARAMS)
@pytest.mark.parametrize("op", OPS)
def test_torch_compile_fullgraph(op, device, backend):
    if backend not in pk.available_backends(op, torch.device(device)):
        pytest.skip(f"no {backend} kernel")
    torch._dynamo.reset()

    def step(*args):
        n, index, bonus = getattr(pk, op)(*args, backend=backend)
        return n + 1, index * 2, bonus - 1

    compiled = torch.compile(step, fullgraph=True)
    for sample in (SAMPLES[0], SAMPLES[1]):
        args = args_of(op, sample.tensors(device))
        want = ref(op, args)
        got = compiled(*args)
        assert_same(got, (want[0] + 1, want[1] * 2, want[2] - 1))


@needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("op", OPS)
def test_cuda_graph_capture(op, backend):
    t = SAMPLES[1].tensors("cuda")
    args = args_of(op, t)
    run(op, args, backend)  # warm-up (Triton compiles here)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(op, args, backend)
    # new inputs, same buffers: replay must give the new answer
    fresh = args_of(op, Sample("again", SAMPLES[1].sizes, 3, 6, seed=99).tensors("cuda"))
    for dst, src in zip(args, fresh, strict=True):
        if isinstance(dst, torch.Tensor):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert_same(out, ref(op, fresh))


@needs_cuda
@pytest.mark.parametrize("op", OPS)
def test_invalid_trees_ignored_cuda(op):
    """Without PIPO_VALIDATE the GPU kernels never follow bad indices (no crash, no hang)."""
    t = SAMPLES[1].tensors("cuda")
    t["parents"] = torch.full_like(t["parents"], 10**6)
    t["q_indptr"] = t["q_indptr"].flip(0)
    for backend in ("cuda", "triton"):
        run(op, args_of(op, t), backend)
    torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Argument errors name the argument


def _set(key, fn):
    def apply(t):
        t[key] = fn(t[key])
        return t

    return apply


# (id, mutation of Sample "mixed_sizes" tensors, argument named in the error, ops it applies to)
BAD = [
    (
        "parent_not_earlier",
        _set("parents", lambda p: p.index_fill(0, torch.tensor([3]), 3)),
        "parents",
        OPS,
    ),
    (
        "parent_out_of_range",
        _set("parents", lambda p: p.index_fill(0, torch.tensor([3]), 99)),
        "parents",
        OPS,
    ),
    (
        "root_has_parent",
        _set("parents", lambda p: p.index_fill(0, torch.tensor([0]), 0)),
        "parents",
        OPS,
    ),
    ("parents_int64", _set("parents", lambda p: p.long()), "parents", OPS),
    ("parents_short", _set("parents", lambda p: p[:-1]), "parents", OPS),
    ("draft_2d", _set("draft_tokens", lambda d: d[:, None]), "draft_tokens", OPS),
    ("target_short", _set("target_tokens", lambda d: d[:-1]), "target_tokens", ("verify_tree",)),
    ("indptr_start", _set("q_indptr", lambda q: q + 1), "q_indptr", OPS),
    (
        "indptr_decreasing",
        _set("q_indptr", lambda q: q.index_fill(0, torch.tensor([2]), 7)),
        "q_indptr",
        OPS,
    ),
    (
        "indptr_end",
        _set("q_indptr", lambda q: q.index_fill(0, torch.tensor([5]), 17)),
        "q_indptr",
        OPS,
    ),
    ("indptr_int64", _set("q_indptr", lambda q: q.long()), "q_indptr", OPS),
    ("too_deep", _set("max_depth", lambda d: 1), "max_depth|parents", OPS),
    ("negative_max_depth", _set("max_depth", lambda d: -1), "max_depth", OPS),
    (
        "probs_shape_mismatch",
        _set("target_probs", lambda p: torch.rand(p.shape[0], p.shape[1] + 1)),
        "target_probs",
        ("verify_tree_stochastic",),
    ),
    (
        "probs_rows",
        _set("draft_probs", lambda p: p[:-1]),
        "draft_probs",
        ("verify_tree_stochastic",),
    ),
    (
        "probs_half",
        _set("draft_probs", lambda p: p.half()),
        "draft_probs",
        ("verify_tree_stochastic",),
    ),
    ("seeds_short", _set("seeds", lambda s: s[:-1]), "seeds", ("verify_tree_stochastic",)),
    ("offsets_int32", _set("offsets", lambda s: s.int()), "offsets", ("verify_tree_stochastic",)),
    (
        "token_out_of_vocab",
        _set("draft_tokens", lambda d: d.index_fill(0, torch.tensor([2]), 6)),
        "draft_tokens",
        ("verify_tree_stochastic",),
    ),
]


BAD_PARAMS = [pytest.param(c, op, id=f"{c[0]}-{op}") for c in BAD for op in c[3]]


@pytest.mark.parametrize("backend", [*cpu_backends("verify_tree"), "torch"])
@pytest.mark.parametrize(("case", "op"), BAD_PARAMS)
def test_bad_inputs_raise(case, op, backend):
    _, mutate, name, _ = case
    t = mutate(SAMPLES[1].tensors())
    with pytest.raises((RuntimeError, ValueError), match=name):
        run(op, args_of(op, t), backend)


@needs_cuda
@pytest.mark.parametrize("op", OPS)
def test_bad_values_raise_with_validate_cuda(op, monkeypatch):
    monkeypatch.setenv("PIPO_VALIDATE", "1")
    t = SAMPLES[1].tensors("cuda")
    t["parents"] = t["parents"].index_fill(0, torch.tensor([3], device="cuda"), 99)
    for backend in ("cuda", "triton"):
        with pytest.raises((RuntimeError, ValueError), match="parents"):
            run(op, args_of(op, t), backend)

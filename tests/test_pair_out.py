"""pair_out and group_out (docs/ops.md §3), PIPO's confidence head and gate for pairs and for
groups of k = 1 + J tokens, on every backend available here, against the pure-PyTorch reference
in float64; gate semantics per position, group_out with J = 1 == pair_out, bad inputs, opcheck,
torch.compile, CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_compiles_fullgraph,
    backends,
    capture_graph,
    device_backend_params,
    pipo_op,
    requires_cuda,
)

import pipo_kernels
from pipo_kernels import reference

PAIR_CASES = {
    # name: (B, H, dtype, threshold)
    "f32": (7, 48, torch.float32, 0.5),
    "bf16": (5, 64, torch.bfloat16, 0.5),
    "f16_odd": (3, 37, torch.float16, 0.3),
    "always": (4, 32, torch.float32, -1.0),
    "never": (4, 32, torch.float32, 1.0),
    "zero": (4, 32, torch.float32, 0.0),
    "empty": (0, 32, torch.float32, 0.5),
}


def make_pair_inputs(name: str, device="cpu", seed: int = 0) -> dict:
    b, h, dtype, thr = PAIR_CASES[name]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc).to(dtype).to(device)  # noqa: E731
    return dict(
        hidden=r(b, h),
        mtp_hidden=r(b, h),
        token1=torch.randint(0, 1000, (b,), generator=g).to(device),
        token2=torch.randint(0, 1000, (b,), generator=g).to(device),
        norm_weight=(1 + 0.1 * torch.randn(2 * h, generator=g)).to(dtype).to(device),
        fc1_weight=r(h, 2 * h, sc=(2 * h) ** -0.5),
        fc2_weight=r(1, h, sc=3 * h**-0.5),
        threshold=thr,
        pad_id=-7,
        eps=1e-6,
    )


def _pair_ref64(inp: dict):
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    for k in ("hidden", "mtp_hidden", "norm_weight", "fc1_weight", "fc2_weight"):
        cpu[k] = cpu[k].double()
    return reference.pair_out(**cpu)


@pytest.mark.parametrize("case", list(PAIR_CASES))
@pytest.mark.parametrize(("device", "backend"), device_backend_params("pair_out"))
def test_pair_out_matches_reference(case, device, backend):
    inp = make_pair_inputs(case, device)
    pairs, conf = pipo_kernels.pair_out(**inp, backend=backend)
    _, r_conf = _pair_ref64(inp)
    b = PAIR_CASES[case][0]
    assert pairs.shape == (b, 2) and pairs.dtype == torch.int64
    assert conf.shape == (b,) and conf.dtype == torch.float32
    atol = 1e-5 if inp["hidden"].dtype == torch.float32 else 1e-2
    torch.testing.assert_close(conf.cpu(), r_conf, atol=atol, rtol=0)
    thr = inp["threshold"]
    commit = (
        torch.full_like(conf, thr < 0, dtype=torch.bool) if thr < 0 or thr >= 1 else conf >= thr
    )
    expect = torch.where(
        commit.cpu(), inp["token2"].cpu(), torch.full_like(inp["token2"].cpu(), -7)
    )
    torch.testing.assert_close(pairs[:, 0].cpu(), inp["token1"].cpu())
    torch.testing.assert_close(pairs[:, 1].cpu(), expect)


@pytest.mark.parametrize(("device", "backend"), device_backend_params("pair_out"))
def test_pair_out_gate_thresholds(device, backend):
    inp = make_pair_inputs("f32", device)
    inp["hidden"] = torch.randn(64, 48, generator=torch.Generator().manual_seed(3)).to(device)
    inp["mtp_hidden"] = torch.randn(64, 48, generator=torch.Generator().manual_seed(4)).to(device)
    inp["token1"] = torch.arange(64, device=device)
    inp["token2"] = torch.arange(64, device=device) + 100
    results = {}
    for thr in (-1.0, 0.0, 0.5, 1.0):
        results[thr] = pipo_kernels.pair_out(**{**inp, "threshold": thr}, backend=backend)
    conf = results[0.5][1]
    assert 0 < (conf >= 0.5).sum() < 64, "the test needs confidences on both sides of 0.5"
    assert (results[-1.0][0][:, 1] == inp["token2"]).all()  # < 0: always commit
    assert (results[0.0][0][:, 1] == inp["token2"]).all()  # 0: confidence >= 0 always holds
    assert (results[1.0][0][:, 1] == -7).all()  # >= 1: always PAD
    second = results[0.5][0][:, 1]
    assert torch.equal(second == inp["token2"], conf >= 0.5)
    assert torch.equal(second == -7, conf < 0.5)


# ------------------------------------------------------------------------------------------------
# Bad inputs, opcheck, torch.compile, CUDA graphs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_pair_out_bad_inputs(backend):
    if backend not in backends("pair_out", "cpu"):
        pytest.skip(f"{backend} backend not available")
    inp = make_pair_inputs("f32")
    for name, value in (
        ("fc1_weight", inp["fc1_weight"][:, :-1].contiguous()),
        ("norm_weight", inp["norm_weight"][:-1]),
        ("mtp_hidden", inp["mtp_hidden"][:-1]),
        ("fc2_weight", inp["fc2_weight"].double()),
    ):
        with pytest.raises((RuntimeError, ValueError), match=name):
            pipo_kernels.pair_out(**{**inp, name: value}, backend=backend)


def _pair_args(inp: dict) -> tuple:
    return tuple(inp.values())


@pytest.mark.parametrize(
    ("case", "op"),
    [*((c, "pair_out") for c in ("f32", "bf16", "empty")), ("f16_odd", "pair_out_triton")],
)
def test_pair_out_opcheck(case, op):
    torch.library.opcheck(pipo_op(op), _pair_args(make_pair_inputs(case)))


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_torch_compile_fullgraph(suffix):
    pair = pipo_op("pair_out" + suffix)

    def step(pargs):
        pairs, conf = pair(*pargs)
        return pairs + 1, conf * 2

    assert_compiles_fullgraph(step, _pair_args(make_pair_inputs("f32")))


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture(backend):
    pinp = make_pair_inputs("bf16", "cuda")
    eager = pipo_kernels.pair_out(**pinp, backend=backend)
    graph, pair = capture_graph(lambda: pipo_kernels.pair_out(**pinp, backend=backend))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(pair, eager, strict=True):
        torch.testing.assert_close(got, want)
    pinp["hidden"].neg_()  # new confidences without re-capturing
    graph.replay()
    torch.testing.assert_close(pair[1], pipo_kernels.pair_out(**pinp, backend=backend)[1])


# ------------------------------------------------------------------------------------------------
# group_out: pair_out's head per MTP step, the longest passing prefix committed
# ------------------------------------------------------------------------------------------------

GROUP_CASES = {
    # name: (B, H, J, dtype, threshold)
    "k4_f32": (7, 48, 3, torch.float32, 0.5),
    "k3_bf16": (5, 64, 2, torch.bfloat16, 0.5),
    "k4_f16_odd": (3, 37, 3, torch.float16, 0.3),
    "k2_f32": (6, 32, 1, torch.float32, 0.5),
    "always": (4, 32, 3, torch.float32, -1.0),
    "never": (4, 32, 3, torch.float32, 1.0),
    "zero": (4, 32, 3, torch.float32, 0.0),
    "empty": (0, 32, 3, torch.float32, 0.5),
    "k1": (3, 16, 0, torch.float32, 0.5),
}


def make_group_inputs(name: str, device="cpu", seed: int = 0) -> dict:
    b, h, j, dtype, thr = GROUP_CASES[name]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc).to(dtype).to(device)  # noqa: E731
    return dict(
        hidden=r(b, h),
        mtp_hidden=r(b, j, h),
        tokens=torch.randint(0, 1000, (b, 1 + j), generator=g).to(device),
        norm_weight=(1 + 0.1 * torch.randn(2 * h, generator=g)).to(dtype).to(device),
        fc1_weight=r(h, 2 * h, sc=(2 * h) ** -0.5),
        fc2_weight=r(1, h, sc=3 * h**-0.5),
        threshold=thr,
        pad_id=-7,
        eps=1e-6,
    )


def _group_ref64(inp: dict):
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    for k in ("hidden", "mtp_hidden", "norm_weight", "fc1_weight", "fc2_weight"):
        cpu[k] = cpu[k].double()
    return reference.group_out(**cpu)


def expected_groups(tokens: torch.Tensor, conf: torch.Tensor, thr: float, pad_id: int):
    """The gate written out per position: token j + 2 is kept iff every step up to j passes."""
    out = tokens.clone()
    for b in range(tokens.shape[0]):
        for j in range(conf.shape[1]):
            passes = thr < 0 or (thr < 1 and bool(conf[b, j] >= thr))
            if not passes:
                out[b, 1 + j :] = pad_id
                break
    return out


@pytest.mark.parametrize("case", list(GROUP_CASES))
@pytest.mark.parametrize(("device", "backend"), device_backend_params("group_out"))
def test_group_out_matches_reference(case, device, backend):
    inp = make_group_inputs(case, device)
    torch.full((64,), -3, dtype=torch.int64, device=device)  # leave poison in the allocator
    groups, conf = pipo_kernels.group_out(**inp, backend=backend)
    _, r_conf = _group_ref64(inp)
    b, _, j, dtype, thr = GROUP_CASES[case]
    assert groups.shape == (b, 1 + j) and groups.dtype == torch.int64
    assert conf.shape == (b, j) and conf.dtype == torch.float32
    atol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(conf.cpu(), r_conf, atol=atol, rtol=0)
    # The gate is judged on the op's own confidences (rounding may move one across θ).
    want = expected_groups(inp["tokens"].cpu(), conf.cpu(), thr, -7)
    assert torch.equal(groups.cpu(), want)


def _spread_inputs(device, batch=96, h=40, steps=3):
    """Confidences spread over (0, 1) so that a mid threshold cuts groups at every position."""
    inp = make_group_inputs("k4_f32", device)
    g = torch.Generator().manual_seed(11)
    inp["hidden"] = torch.randn(batch, h, generator=g).to(device)
    inp["mtp_hidden"] = torch.randn(batch, steps, h, generator=g).to(device)
    inp["tokens"] = (torch.arange(batch * (1 + steps)).view(batch, 1 + steps) + 100).to(device)
    inp["norm_weight"] = torch.ones(2 * h, device=device)
    inp["fc1_weight"] = (torch.randn(h, 2 * h, generator=g) / (2 * h) ** 0.5).to(device)
    inp["fc2_weight"] = (torch.randn(1, h, generator=g) * 6 / h**0.5).to(device)
    return inp


@pytest.mark.parametrize(("device", "backend"), device_backend_params("group_out"))
def test_group_out_gate_per_position(device, backend):
    """θ < 0 commits all k tokens, θ >= 1 only token 1; a mid θ commits the longest passing
    prefix of each group (mixed lengths 1..k in one batch), every later position PAD."""
    inp = _spread_inputs(device)
    tokens = inp["tokens"]
    run = lambda thr: pipo_kernels.group_out(**{**inp, "threshold": thr}, backend=backend)  # noqa: E731
    all_k, conf = run(-1.0)
    assert torch.equal(all_k, tokens)
    assert torch.equal(run(0.0)[0], tokens)  # confidence >= 0 always holds
    for thr in (1.0, 2.0):
        only_first = run(thr)[0]
        assert torch.equal(only_first[:, 0], tokens[:, 0]) and (only_first[:, 1:] == -7).all()
    thr = float(conf.flatten().median())
    groups, conf_mid = run(thr)
    assert torch.equal(conf_mid, conf)  # the confidences do not depend on θ
    committed = (groups != -7).sum(1)
    assert set(committed.tolist()) == {1, 2, 3, 4}, "the test needs every prefix length"
    for b in range(tokens.shape[0]):
        n = int(committed[b])
        assert torch.equal(groups[b, :n], tokens[b, :n]) and (groups[b, n:] == -7).all()
        passes = (conf[b] >= thr).tolist()
        assert all(passes[: n - 1]) and (n == 4 or not passes[n - 1]), (b, n, passes)
    # A passing step after a failing one stays PAD (a prefix, not a per-position mask).
    late = (conf[:, 0] < thr) & (conf[:, 1:] >= thr).any(1)
    assert late.any() and (groups[late, 1:] == -7).all()


@pytest.mark.parametrize("case", ["f32", "bf16", "f16_odd", "always", "never", "empty"])
@pytest.mark.parametrize(("device", "backend"), device_backend_params("group_out"))
def test_group_out_j1_is_pair_out(case, device, backend):
    inp = make_pair_inputs(case, device)
    pairs, conf = pipo_kernels.pair_out(**inp, backend=backend)
    gin = {k: v for k, v in inp.items() if k not in ("mtp_hidden", "token1", "token2")}
    groups, gconf = pipo_kernels.group_out(
        **gin,
        mtp_hidden=inp["mtp_hidden"][:, None],
        tokens=torch.stack([inp["token1"], inp["token2"]], 1),
        backend=backend,
    )
    assert torch.equal(groups, pairs)
    torch.testing.assert_close(gconf[:, 0], conf, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("device", "backend"), device_backend_params("group_out"))
def test_group_out_batch_is_rows_alone(device, backend):
    inp = _spread_inputs(device, batch=5)
    inp["threshold"] = 0.5
    groups, conf = pipo_kernels.group_out(**inp, backend=backend)
    for b in range(5):
        one = {**inp, "hidden": inp["hidden"][b : b + 1]}
        one.update(mtp_hidden=inp["mtp_hidden"][b : b + 1], tokens=inp["tokens"][b : b + 1])
        g1, c1 = pipo_kernels.group_out(**one, backend=backend)
        assert torch.equal(g1[0], groups[b])
        torch.testing.assert_close(c1[0], conf[b], atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_group_out_bad_inputs(backend):
    if backend not in backends("group_out", "cpu"):
        pytest.skip(f"{backend} backend not available")
    inp = make_group_inputs("k4_f32")
    for name, value in (
        ("mtp_hidden", inp["mtp_hidden"][:, 0].contiguous()),  # [B, H]: a 2-D tensor
        ("mtp_hidden", inp["mtp_hidden"][:-1]),
        ("mtp_hidden", inp["mtp_hidden"][:, :, :-1].contiguous()),
        ("mtp_hidden", inp["mtp_hidden"].transpose(0, 1).contiguous().transpose(0, 1)),
        ("mtp_hidden", inp["mtp_hidden"].double()),
        ("tokens", inp["tokens"][:, :-1].contiguous()),
        ("tokens", inp["tokens"][:-1]),
        ("tokens", inp["tokens"].to(torch.int32)),
        ("tokens", inp["tokens"][:, 0]),
        ("tokens", torch.cat([inp["tokens"], inp["tokens"]], 1)[:, ::2]),
        ("hidden", inp["hidden"].to(torch.int64)),
        ("hidden", inp["hidden"][:, None]),
        ("fc1_weight", inp["fc1_weight"][:, :-1].contiguous()),
        ("norm_weight", inp["norm_weight"][:-1]),
        ("fc2_weight", inp["fc2_weight"].double()),
    ):
        with pytest.raises((RuntimeError, ValueError), match=f"^{name}: expected"):
            pipo_kernels.group_out(**{**inp, name: value}, backend=backend)


@pytest.mark.parametrize(
    ("case", "op"),
    [
        *((c, "group_out") for c in ("k4_f32", "k3_bf16", "empty", "k1")),
        ("k4_f16_odd", "group_out_triton"),
    ],
)
def test_group_out_opcheck(case, op):
    torch.library.opcheck(pipo_op(op), tuple(make_group_inputs(case).values()))


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_group_out_torch_compile_fullgraph(suffix):
    group = pipo_op("group_out" + suffix)

    def step(gargs):
        groups, conf = group(*gargs)
        return groups + 1, conf * 2

    assert_compiles_fullgraph(step, tuple(make_group_inputs("k4_f32").values()))


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_group_out_cuda_graph_capture(backend):
    ginp = make_group_inputs("k3_bf16", "cuda")
    eager = pipo_kernels.group_out(**ginp, backend=backend)
    graph, out = capture_graph(lambda: pipo_kernels.group_out(**ginp, backend=backend))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(out, eager, strict=True):
        torch.testing.assert_close(got, want)
    ginp["mtp_hidden"].neg_()  # new confidences without re-capturing
    graph.replay()
    torch.testing.assert_close(out[1], pipo_kernels.group_out(**ginp, backend=backend)[1])

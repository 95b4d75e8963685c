"""pair_out (docs/ops.md §3), PIPO's confidence head and gate, on every backend available here,
against the pure-PyTorch reference in float64; bad inputs, opcheck, torch.compile, CUDA graphs."""

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

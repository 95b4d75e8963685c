"""Benchmark of pipo_kernels.sample_tokens against the eager sampling chain.

Baselines, timed in the same run on the same tensors:
  eager     linear -> presence penalty -> temperature -> top-k / top-p masks -> softmax ->
            multinomial (argmax for greedy), in float32 logits as serving stacks do;
  compiled  the same function under torch.compile;
  flashinfer  linear + flashinfer.sampling.top_k_top_p_sampling_from_logits (when importable,
            GPU only).
Shapes: the (vocabulary, hidden size) of the model presets, batch 1 / 8 / 64, four sampling
modes. Reported per row: median time on every backend, the ratio to each baseline (>1 = faster),
the LM-head bytes per second and their fraction of the copy bandwidth measured in this run
(1.0 = the kernel reads the weight at the copy bandwidth).

    python -m benchmarks.bench_sampling --quick          # CPU: ~2 minutes
    python -m benchmarks.bench_sampling --device cuda    # the full grid on a GPU
"""

from __future__ import annotations

import itertools
from functools import partial

import torch

import pipo_kernels
from benchmarks.common import PRESETS, Case, bench_parser, run_cases

MODES = {
    # name: (temperature, top_k, top_p, presence_penalty)
    "greedy": (0.0, 0, 1.0, 1.5),
    "temperature": (1.0, 0, 1.0, 1.5),
    "top_k": (1.0, 20, 1.0, 1.5),
    "pipo": (1.0, 20, 0.95, 1.5),  # PIPO's evaluation setting
}
BATCHES = (1, 8, 64)
QUICK = [("tiny", 1), ("tiny", 64), ("qwen3-4b", 1), ("qwen3-4b", 8)]  # (preset, batch)


def eager_chain(hidden, lm_head, temperature, k: int, top_p, penalty, seen_mask, greedy: bool):
    """The usual unfused chain: per-row temperature / top_p / penalty tensors, one top_k for the
    batch (a Python int, as serving stacks bucket it), [B, V] float32 logits materialised."""
    logits = torch.nn.functional.linear(hidden, lm_head).float()
    logits = logits - penalty[:, None] * seen_mask
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits / temperature[:, None]
    if k > 0:
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(before >= top_p[:, None], float("-inf"))
    logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1)[:, 0]


def make_inputs(b, h, v, dtype, device, mode):
    t, k, p, pen = MODES[mode]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, h, generator=g).to(dtype).to(device)
    lm_head = torch.empty(v, h, dtype=dtype, device=device).normal_(std=h**-0.5 * 4)
    seen = torch.randint(-(2**31), 2**31 - 1, (b, (v + 31) // 32), generator=g, dtype=torch.int32)
    seen = (seen & (seen >> 3) & (seen >> 7)).to(device)  # ~1/8 of the tokens seen
    bits = (
        seen[:, torch.arange(v, device=device) // 32] >> (torch.arange(v, device=device) % 32)
    ) & 1
    full = lambda x, dt=torch.float32: torch.full((b,), x, dtype=dt, device=device)  # noqa: E731
    return dict(
        hidden=hidden,
        lm_head=lm_head,
        temperature=full(t),
        top_k=full(k, torch.int32),
        top_p=full(p),
        presence_penalty=full(pen),
        seen=seen,
        seeds=full(1234, torch.int64),
        offsets=torch.arange(b, device=device),
    ), bits.float()


def cases(shapes, modes, compile_presets, dtype, device, flashinfer):
    compiled = torch.compile(eager_chain, dynamic=False)
    for (preset, b), mode in itertools.product(shapes, modes):
        v, h = PRESETS[preset]["vocab"], PRESETS[preset]["hidden"]
        inp, seen_mask = make_inputs(b, h, v, dtype, device, mode)
        t, k, p, pen = MODES[mode]
        greedy = mode == "greedy"
        chain_args = (
            inp["hidden"],
            inp["lm_head"],
            inp["temperature"],
            k,
            inp["top_p"],
            inp["presence_penalty"],
            seen_mask,
            greedy,
        )
        baselines = {"eager": partial(eager_chain, *chain_args)}
        if preset in compile_presets:
            baselines["compiled"] = partial(compiled, *chain_args)
        if flashinfer is not None and device.type == "cuda" and not greedy:
            baselines["flashinfer"] = partial(
                flashinfer_chain, flashinfer, inp, seen_mask, t, k or v, p, pen
            )
        yield Case(
            dict(preset=preset, V=v, H=h, B=b, mode=mode),
            partial(_sample, inp),
            baselines,
            op="sample_tokens",
            bytes=inp["lm_head"].numel() * inp["lm_head"].element_size(),  # the weight, once
        )


def _sample(inp, backend):
    return pipo_kernels.sample_tokens(**inp, backend=backend)


def flashinfer_chain(fi, inp, seen_mask, t, k, p, pen):
    logits = torch.nn.functional.linear(inp["hidden"], inp["lm_head"]).float()
    logits = (logits - pen * seen_mask) / t
    return fi.top_k_top_p_sampling_from_logits(logits, k, p)


def run(args) -> list[dict]:
    try:
        import flashinfer.sampling as fi
    except ImportError:
        fi = None
    presets = args.presets or list(PRESETS)
    if args.quick:
        shapes = [s for s in QUICK if s[0] in presets]
        modes = ["greedy", "pipo"]
        compile_presets = {"tiny"}
    else:
        shapes = list(itertools.product(presets, BATCHES))
        modes = list(MODES)
        compile_presets = set(presets)
    if args.no_compile:
        compile_presets = set()
    dtype = getattr(torch, args.dtype)
    return run_cases(
        "sampling",
        args,
        lambda device, _: cases(shapes, modes, compile_presets, dtype, device, fi),
        [("preset", "preset", ""), ("B", "B", "d"), ("mode", "mode", "")],
        extra={"dtype": args.dtype},
        with_torch=False,
        budget_s=1.0,
        timing=dict(warmup=1, min_runs=5, max_runs=100),
    )


def main(argv=None) -> None:
    ap = bench_parser(__doc__, quick_help="a few shapes (~2 minutes on a CPU)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--presets", nargs="*", choices=list(PRESETS))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()

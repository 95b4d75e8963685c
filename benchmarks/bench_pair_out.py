"""Benchmark pipo_kernels.pair_out (PIPO's confidence head and gate) on every available backend.

Baselines, measured in the same run on the same tensors: the eager PyTorch a model would write
(torch.cat -> RMSNorm -> linear -> SiLU -> linear -> sigmoid, then the threshold gate with
torch.where, in the model's dtype) and torch.compile of the same function. Shapes: the hidden
sizes of the model presets at decode batch sizes. Reported per row: median time, the ratio to
each baseline (>1 = faster), and the bytes one call must move (fc1 [H, 2H] dominates: read once)
per second, with their fraction of the copy bandwidth measured in this run (the copy is timed on
buffers far larger than the caches, so the small presets, whose weights stay in cache between
calls, can exceed 100%).

    python -m benchmarks.bench_pair_out            # full sweep
    python -m benchmarks.bench_pair_out --quick    # under a minute on a CPU
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
import torch.nn.functional as F

import pipo_kernels
from benchmarks.common import PRESETS, Case, bench_parser, run_cases

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BATCHES = (1, 8, 64, 256)
THRESHOLD = 0.5
EPS = 1e-6


def make_inputs(preset: str, batch: int, dtype: torch.dtype, device, seed: int = 0) -> dict:
    """Random inputs of the preset's hidden size; weights scaled so confidences spread over
    (0, 1) and the gate keeps some token2s and drops others."""
    h, vocab = PRESETS[preset]["hidden"], PRESETS[preset]["vocab"]
    g = torch.Generator().manual_seed(seed)
    shapes = {  # name: (shape, standard deviation)
        "hidden": ((batch, h), 1.0),
        "mtp_hidden": ((batch, h), 1.0),
        "fc1_weight": ((h, 2 * h), (2 * h) ** -0.5),
        "fc2_weight": ((1, h), 3 * h**-0.5),
    }
    a = {k: (torch.randn(*s, generator=g) * sd).to(device, dtype) for k, (s, sd) in shapes.items()}
    a["norm_weight"] = (1 + 0.1 * torch.randn(2 * h, generator=g)).to(device, dtype)
    tokens = torch.randint(0, vocab, (2, batch), generator=g).to(device)
    return dict(a, token1=tokens[0], token2=tokens[1], threshold=THRESHOLD, pad_id=0, eps=EPS)


def eager_pair_out(
    hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight, fc2_weight, threshold, pad_id, eps
):
    """The confidence head and gate as a model writes them (python/pipo/model.py's
    ConfidenceHead, then the gate: < 0 always commits, >= 1 never, else confidence >= threshold)."""
    x = F.rms_norm(
        torch.cat([hidden, mtp_hidden], dim=-1), (2 * hidden.shape[-1],), norm_weight, eps
    )
    logit = F.linear(F.silu(F.linear(x, fc1_weight)), fc2_weight)
    confidence = torch.sigmoid(logit.float()).squeeze(-1)
    if threshold < 0 or threshold >= 1:
        commit = torch.full_like(confidence, threshold < 0, dtype=torch.bool)
    else:
        commit = confidence >= threshold
    second = torch.where(commit, token2, torch.full_like(token2, pad_id))
    return torch.stack([token1, second], dim=-1), confidence


def bytes_moved(a: dict) -> int:
    """Bytes one call must read and write: the weights once, the two hidden rows, the tokens,
    the pairs and the confidences."""
    weights = sum(a[k].numel() * a[k].element_size() for k in ("norm_weight", "fc1_weight"))
    weights += a["fc2_weight"].numel() * a["fc2_weight"].element_size()
    batch = a["hidden"].shape[0]
    rows = 2 * a["hidden"].numel() * a["hidden"].element_size()
    return weights + rows + batch * (2 * 8 + 2 * 8 + 4)


def cases(presets, batches, dtype, device, compile_baseline: bool):
    compiled = torch.compile(eager_pair_out) if compile_baseline else None
    for preset, batch in itertools.product(presets, batches):
        a = make_inputs(preset, batch, dtype, device)
        baselines = {"eager": partial(eager_pair_out, **a)}
        if compiled is not None:
            baselines["compile"] = partial(compiled, **a)
        yield Case(
            dict(op="pair_out", preset=preset, hidden=PRESETS[preset]["hidden"], batch=batch),
            partial(_pair_out, a),
            baselines,
            bytes=bytes_moved(a),
        )


def _pair_out(a: dict, backend: str):
    return pipo_kernels.pair_out(**a, backend=backend)


def run(args) -> list[dict]:
    presets = args.presets or (["tiny", "qwen3-4b"] if args.quick else list(PRESETS))
    batches = args.batch or ([1, 8] if args.quick else list(BATCHES))
    return run_cases(
        "pair_out",
        args,
        lambda device, _: cases(presets, batches, DTYPES[args.dtype], device, not args.no_compile),
        [("preset", "preset", ""), ("batch", "B", "d")],
        extra={"dtype": args.dtype, "threshold": THRESHOLD},
    )


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument("--batch", nargs="*", type=int)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

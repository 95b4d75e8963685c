"""Benchmark pipo_kernels.pair_out (PIPO's confidence head and gate) and group_out (the same head
per MTP step for groups of k = 1 + J tokens, J = 3 for PIPO-4) on every available backend.

Baselines, measured in the same run on the same tensors: the eager PyTorch a model would write
(torch.cat -> RMSNorm -> linear -> SiLU -> linear -> sigmoid, then the threshold gate with
torch.where, in the model's dtype; for group_out over the [B, J] rows at once, the prefix by
cumprod) and torch.compile of the same function. Shapes: the hidden
sizes of the model presets at decode batch sizes. Reported per row: median time, the ratio to
each baseline (>1 = faster), and the bytes one call must move (fc1 [H, 2H] dominates: read once)
per second, with their fraction of the copy bandwidth measured in this run (the copy is timed on
buffers far larger than the caches, so the small presets, whose weights stay in cache between
calls, can exceed 100%). `--steps 1 3` picks group_out's J (default both; J = 1 is pair_out's
work through the general op).

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
STEPS = (1, 3)  # group_out's MTP steps J: k = 2 (the pair case) and k = 4 (PIPO-4)
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


def group_inputs(preset: str, batch: int, steps: int, dtype, device, seed: int = 0) -> dict:
    """group_out's inputs: make_inputs' weights and hidden rows, J MTP states, [B, 1 + J] tokens."""
    a = make_inputs(preset, batch, dtype, device, seed)
    h, vocab = PRESETS[preset]["hidden"], PRESETS[preset]["vocab"]
    g = torch.Generator().manual_seed(seed + 1)
    mtp = torch.randn(batch, steps, h, generator=g).to(device, dtype)
    tokens = torch.randint(0, vocab, (batch, 1 + steps), generator=g).to(device)
    del a["mtp_hidden"], a["token1"], a["token2"]
    return dict(a, mtp_hidden=mtp, tokens=tokens)


def eager_group_out(
    hidden, mtp_hidden, tokens, norm_weight, fc1_weight, fc2_weight, threshold, pad_id, eps
):
    """The head over every (b, j) row at once, then the prefix gate as a model writes it."""
    x = torch.cat([hidden[:, None].expand_as(mtp_hidden), mtp_hidden], dim=-1)
    x = F.rms_norm(x, (2 * hidden.shape[-1],), norm_weight, eps)
    logit = F.linear(F.silu(F.linear(x, fc1_weight)), fc2_weight)
    confidence = torch.sigmoid(logit.float()).squeeze(-1)  # [B, J]
    if threshold < 0 or threshold >= 1:
        passed = torch.full_like(confidence, threshold < 0, dtype=torch.bool)
    else:
        passed = confidence >= threshold
    keep = passed.long().cumprod(-1).bool()
    rest = torch.where(keep, tokens[:, 1:], torch.full_like(tokens[:, 1:], pad_id))
    return torch.cat([tokens[:, :1], rest], dim=-1), confidence


def bytes_moved(a: dict) -> int:
    """Bytes one call must read and write: the weights once, the hidden and MTP rows, the tokens,
    the groups (pairs) and the confidences."""
    weights = sum(a[k].numel() * a[k].element_size() for k in ("norm_weight", "fc1_weight"))
    weights += a["fc2_weight"].numel() * a["fc2_weight"].element_size()
    rows = (a["hidden"].numel() + a["mtp_hidden"].numel()) * a["hidden"].element_size()
    tokens = a["tokens"].numel() if "tokens" in a else 2 * a["token1"].numel()
    confidences = a["mtp_hidden"].numel() // a["hidden"].shape[1]
    return weights + rows + tokens * 2 * 8 + confidences * 4


def cases(presets, batches, steps, dtype, device, compile_baseline: bool):
    ops = {"pair_out": eager_pair_out, "group_out": eager_group_out}
    compiled = {k: torch.compile(f) for k, f in ops.items()} if compile_baseline else {}
    variants = [("pair_out", 1)] + [("group_out", j) for j in steps]
    for (op, j), preset, batch in itertools.product(variants, presets, batches):
        if op == "pair_out":
            a = make_inputs(preset, batch, dtype, device)
        else:
            a = group_inputs(preset, batch, j, dtype, device)
        baselines = {"eager": partial(ops[op], **a)}
        if op in compiled:
            baselines["compile"] = partial(compiled[op], **a)
        hidden = PRESETS[preset]["hidden"]
        yield Case(
            dict(op=op, J=j, preset=preset, hidden=hidden, batch=batch),
            partial(_on_backend, getattr(pipo_kernels, op), a),
            baselines,
            bytes=bytes_moved(a),
        )


def _on_backend(fn, a: dict, backend: str):
    return fn(**a, backend=backend)


def run(args) -> list[dict]:
    presets = args.presets or (["tiny", "qwen3-4b"] if args.quick else list(PRESETS))
    batches = args.batch or ([1, 8] if args.quick else list(BATCHES))
    steps = args.steps or list(STEPS)
    dtype = DTYPES[args.dtype]
    return run_cases(
        "pair_out",
        args,
        lambda device, _: cases(presets, batches, steps, dtype, device, not args.no_compile),
        [("op", "op", ""), ("J", "J", "d"), ("preset", "preset", ""), ("batch", "B", "d")],
        extra={"dtype": args.dtype, "threshold": THRESHOLD},
    )


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument("--batch", nargs="*", type=int)
    parser.add_argument("--steps", nargs="*", type=int, help="group_out's J (default: 1 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

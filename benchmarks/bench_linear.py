"""Benchmark pipo_kernels.linear (the decoder's projections) on every available backend.

Baselines, measured in the same run on the same tensors: what the eager model runs for the same
product, ``F.linear`` per projection (q, k and v as three calls, gate and up as two plus SiLU and
the product), and one ``F.linear`` on the fused weight. Shapes: each preset's layer projections
(qkv, o, gate_up with its SwiGLU, down) plus SmolLM2-135M's, at decode batch sizes. Reported per
row: median time, ratio to each baseline (>1 = faster), and the weight bytes read per second with
their fraction of the copy bandwidth measured in this run (small presets' weights stay in cache
between calls, so they can exceed 100%).

    python -m benchmarks.bench_linear            # full sweep
    python -m benchmarks.bench_linear --quick    # under a minute on a CPU
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
import torch.nn.functional as F

import pipo_kernels
from benchmarks.common import PRESETS, Case, bench_parser, run_cases

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Intermediate sizes (not in the shared presets); SmolLM2-135M: hidden 576, 9 / 3 heads of 64.
INTERMEDIATE = {"tiny": 768, "qwen3-4b": 9728, "qwen3.5-4b": 9216, "llama3-8b": 14336}
SHAPES = {**PRESETS, "smollm2-135m": dict(hidden=576, q_heads=9, kv_heads=3, head_dim=64)}
INTERMEDIATE["smollm2-135m"] = 1536


def projections(preset: str) -> dict[str, list[tuple[int, int]]]:
    """name: the [out, in] weights the eager layer multiplies by, fused in that order."""
    p = SHAPES[preset]
    h, d, i = p["hidden"], p["head_dim"], INTERMEDIATE[preset]
    q, kv = p["q_heads"] * d, p["kv_heads"] * d
    return {"qkv": [(q, h), (kv, h), (kv, h)], "o": [(h, q)], "gate_up": [(i, h), (i, h)]} | {
        "down": [(h, i)]
    }


def eager(x, parts, swiglu):
    ys = [F.linear(x, w) for w in parts]
    return F.silu(ys[0]) * ys[1] if swiglu else ys


def eager_fused(x, w, swiglu):
    y = F.linear(x, w)
    if not swiglu:
        return y
    gate, up = y.chunk(2, dim=1)
    return F.silu(gate) * up


def call(x, w, activation, backend):
    return pipo_kernels.linear(x, w, activation, backend=backend)


def cases(presets, batches, dtype, device):
    elem = torch.empty((), dtype=dtype).element_size()
    for preset, batch in itertools.product(presets, batches):
        g = torch.Generator().manual_seed(batch)
        for name, shapes in projections(preset).items():
            k = shapes[0][1]
            parts = [
                (torch.randn(o, k, generator=g) * k**-0.5).to(device, dtype) for o, _ in shapes
            ]
            w = torch.cat(parts)
            x = torch.randn(batch, k, generator=g).to(device, dtype)
            swiglu = name == "gate_up"
            yield Case(
                dict(op="linear", preset=preset, proj=name, batch=batch),
                partial(call, x, w, "swiglu" if swiglu else "none"),
                {
                    "eager": partial(eager, x, parts, swiglu),
                    "fused_F": partial(eager_fused, x, w, swiglu),
                },
                bytes=w.numel() * elem,
            )


def run(args) -> list[dict]:
    presets = args.presets or (["tiny", "smollm2-135m"] if args.quick else list(SHAPES))
    batches = args.batch or ([1, 8] if args.quick else [1, 2, 8, 16])
    with torch.no_grad():
        return run_cases(
            "linear",
            args,
            lambda device, _: cases(presets, batches, DTYPES[args.dtype], device),
            [("preset", "preset", ""), ("proj", "proj", ""), ("batch", "batch", "d")],
            extra={"dtype": args.dtype},
        )


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--presets", nargs="*", choices=list(SHAPES))
    parser.add_argument("--batch", nargs="*", type=int)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

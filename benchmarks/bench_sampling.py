"""Benchmark of pipo_kernels.sample_tokens against the eager sampling chain.

Baselines, timed in the same run on the same tensors:
  eager     linear -> presence penalty -> temperature -> top-k / top-p masks -> softmax ->
            multinomial (argmax for greedy), in float32 logits as serving stacks do;
  compiled  the same function under torch.compile;
  flashinfer  linear + flashinfer.sampling.top_k_top_p_sampling_from_logits (when importable,
            GPU only).
"roofline" is the time to read the LM-head weight once at the copy bandwidth measured in this
run, divided by the kernel's time (1.0 = the kernel runs at the copy bandwidth).

    python -m benchmarks.bench_sampling --quick          # CPU: ~2 minutes
    python -m benchmarks.bench_sampling --device cuda    # the full grid on a GPU
"""

from __future__ import annotations

import itertools

import torch

import pipo_kernels
from benchmarks.common import bench_parser, copy_bandwidth_gbs, device_name, time_fn, write_results

MODES = {
    # name: (temperature, top_k, top_p, presence_penalty)
    "greedy": (0.0, 0, 1.0, 1.5),
    "temperature": (1.0, 0, 1.0, 1.5),
    "top_k": (1.0, 20, 1.0, 1.5),
    "pipo": (1.0, 20, 0.95, 1.5),  # PIPO's evaluation setting
}
VOCABS = (259, 151936, 248320)
HIDDENS = (256, 2560, 4096)
BATCHES = (1, 8, 64)


def time_ms(fn, device: torch.device) -> float:
    return time_fn(fn, device, warmup=1, min_runs=5, max_runs=100, budget_s=1.0).median_ms


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


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    bw = copy_bandwidth_gbs(device) * 1e9
    name = device_name(device)
    print(f"device: {name}; copy bandwidth {bw / 1e9:.1f} GB/s; dtype {args.dtype}")
    try:
        import flashinfer.sampling as fi
    except ImportError:
        fi = None
    if args.quick:
        shapes = [(259, 256, 1), (259, 256, 64), (151936, 2560, 1), (151936, 2560, 8)]
        modes = ["greedy", "pipo"]
        compile_shapes = {(259, 256, 1), (259, 256, 64)}
    else:
        shapes = list(itertools.product(VOCABS, HIDDENS, BATCHES))
        modes = list(MODES)
        compile_shapes = set(shapes)
    rows = []
    header = (
        f"{'V':>7} {'H':>5} {'B':>3} {'mode':>11} {'ours ms':>9} {'eager ms':>9} {'compiled':>9} "
        f"{'flashinf':>9} {'x eager':>8} {'x compiled':>10} {'roofline':>8}"
    )
    print(header)
    print("-" * len(header))
    compiled = torch.compile(eager_chain, dynamic=False)
    for (v, h, b), mode in itertools.product(shapes, modes):
        inp, seen_mask = make_inputs(b, h, v, dtype, device, mode)
        greedy = mode == "greedy"
        chain_args = (
            inp["hidden"],
            inp["lm_head"],
            inp["temperature"],
            MODES[mode][1],
            inp["top_p"],
            inp["presence_penalty"],
            seen_mask,
            greedy,
        )
        ours = time_ms(lambda: pipo_kernels.sample_tokens(**inp), device)  # noqa: B023
        eager = time_ms(lambda: eager_chain(*chain_args), device)  # noqa: B023
        comp = None
        if (v, h, b) in compile_shapes and not args.no_compile:
            comp = time_ms(lambda: compiled(*chain_args), device)  # noqa: B023
        flash = None
        if fi is not None and device.type == "cuda" and not greedy:
            t, k, p, pen = MODES[mode]

            def flashinfer_chain():
                logits = torch.nn.functional.linear(inp["hidden"], inp["lm_head"]).float()  # noqa: B023
                logits = (logits - pen * seen_mask) / t  # noqa: B023
                return fi.top_k_top_p_sampling_from_logits(logits, k or v, p)  # noqa: B023

            flash = time_ms(flashinfer_chain, device)
        weight_ms = inp["lm_head"].numel() * inp["lm_head"].element_size() / bw * 1e3
        row = dict(
            device=name,
            dtype=args.dtype,
            V=v,
            H=h,
            B=b,
            mode=mode,
            ours_ms=ours,
            eager_ms=eager,
            compiled_ms=comp,
            flashinfer_ms=flash,
            speedup_eager=eager / ours,
            speedup_compiled=comp / ours if comp else None,
            roofline=weight_ms / ours,
        )
        rows.append(row)
        fmt = lambda x, w=9, d=3: f"{x:{w}.{d}f}" if x is not None else "-".rjust(w)  # noqa: E731
        print(
            f"{v:>7} {h:>5} {b:>3} {mode:>11} {fmt(ours)} {fmt(eager)} {fmt(comp)} {fmt(flash)} "
            f"{fmt(eager / ours, 8, 2)} {fmt(comp / ours if comp else None, 10, 2)} "
            f"{fmt(weight_ms / ours, 8, 2)}",
            flush=True,
        )
    path = write_results(
        "sampling", device, rows, {"copy_bandwidth_gbs": bw / 1e9}, out_dir=args.out
    )
    print(f"results: {path}")
    return rows


def main(argv=None) -> None:
    ap = bench_parser(__doc__, quick_help="a few shapes (~2 minutes on a CPU)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()

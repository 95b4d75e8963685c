"""Benchmark verify_tree (greedy) and verify_tree_stochastic on every available backend.

Inputs are draft trees of a fixed size and depth, as EAGLE-style drafting builds them, for a
batch of sequences: greedy trees whose draft tokens match the target's with probability 0.6;
stochastic trees whose children are sampled from draft distributions close to the target's (so
acceptance is realistic). Baseline: the pure-PyTorch reference (pipo_kernels.reference, the
"torch" backend), measured in the same run. For the stochastic op, GB/s counts the least traffic
any implementation needs (the target and draft rows of every node on the accepted path, plus the
bonus pass) against the copy bandwidth measured in the same run.

    python -m benchmarks.bench_verify            # full sweep
    python -m benchmarks.bench_verify --quick    # a couple of minutes on a CPU
"""

from __future__ import annotations

from functools import partial

import torch

import pipo_kernels
from benchmarks.common import PRESETS, Case, bench_parser, run_cases
from pipo_kernels import reference


def random_tree(nodes: int, max_depth: int, gen: torch.Generator) -> list[int]:
    """Parents of a random tree in topological order, no node deeper than max_depth."""
    parents, depth = [-1], [0]
    for i in range(1, nodes):
        ok = [j for j in range(i) if depth[j] < max_depth]
        p = ok[int(torch.randint(len(ok), (), generator=gen))]
        parents.append(p)
        depth.append(depth[p] + 1)
    return parents


def make_inputs(batch: int, nodes: int, max_depth: int, vocab: int, device, stochastic: bool):
    gen = torch.Generator().manual_seed(batch * 1000 + nodes)
    parents = []
    for _ in range(batch):
        parents += random_tree(nodes, max_depth, gen)
    par = torch.tensor(parents, dtype=torch.int32)
    glob = torch.arange(batch * nodes) // nodes * nodes + par.long().clamp(min=0)
    indptr = torch.arange(0, batch * nodes + 1, nodes, dtype=torch.int32)
    if not stochastic:
        target = torch.randint(vocab, (batch * nodes,), generator=gen)
        match = torch.rand(batch * nodes, generator=gen) < 0.6
        draft = torch.where(
            match, target[glob], torch.randint(vocab, (batch * nodes,), generator=gen)
        )
        args = (draft, par, indptr, target)
        return (*(a.to(device) for a in args), max_depth)
    # Target and draft distributions from correlated logits, built on the device (large V).
    g = torch.Generator(device=device).manual_seed(batch * 1000 + nodes)
    logits = torch.randn(batch * nodes, vocab, generator=g, device=device) * 3
    tprobs = torch.softmax(logits, -1)
    noise = torch.randn(logits.shape, generator=g, device=device)
    dprobs = torch.softmax(logits + noise, -1)
    # Children sampled from their parent's draft distribution, as the drafter would have.
    draft = torch.multinomial(dprobs, 1, generator=g)[:, 0][glob.to(device)]
    seeds = torch.arange(batch, device=device) + 17
    offsets = torch.zeros(batch, dtype=torch.int64, device=device)
    args = (draft, par.to(device), indptr.to(device), dprobs, tprobs, seeds, offsets, max_depth)
    return args


def cases(presets, batches, nodes, max_depth, device):
    # greedy trees only compare token ids: a 32k id range stands for any vocabulary
    grid = [("verify_tree", "-", 32_000, b) for b in batches]
    for preset in presets:
        vocab = PRESETS[preset]["vocab"]
        # [B * nodes, V] float32 twice (and twice more while building): cap real vocabularies
        limit = max(batches) if vocab <= 10_000 else (8 if device.type == "cpu" else 64)
        grid += [("verify_tree_stochastic", preset, vocab, b) for b in batches if b <= limit]
    for op, preset, vocab, batch in grid:
        stochastic = op == "verify_tree_stochastic"
        inputs = make_inputs(batch, nodes, max_depth, vocab, device, stochastic)
        ref_fn = partial(getattr(reference, op), *inputs)
        accept_len = ref_fn()[0]
        min_bytes = None
        if stochastic:  # t and q rows of the path nodes (mass pass) and of the bonus pass
            min_bytes = int((accept_len.long() + 2).sum()) * 2 * vocab * 4
        yield Case(
            dict(op=op, preset=preset, batch=batch, nodes=nodes),
            partial(_on_backend, getattr(pipo_kernels, op), inputs),
            {"reference": ref_fn},
            bytes=min_bytes,
            extra=dict(mean_accept=float(accept_len.float().mean())),
        )


def _on_backend(fn, args, backend):
    return fn(*args, backend=backend)


def run(args) -> list[dict]:
    batches = args.batch or ([1, 64] if args.quick else [1, 8, 64, 256])
    presets = args.presets or ["tiny", "qwen3-4b"]
    return run_cases(
        "verify",
        args,
        lambda device, _: cases(presets, batches, args.nodes, args.max_depth, device),
        [("op", "op", ""), ("preset", "vocab preset", ""), ("batch", "B", "d")],
        extra={"nodes": args.nodes, "max_depth": args.max_depth},
        with_torch=False,
        baseline_timing=dict(min_runs=3, warmup=1),
        more_columns=[("mean_accept", "mean accept_len", ".2f")],
    )


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--presets", nargs="*", choices=list(PRESETS))
    parser.add_argument("--batch", nargs="*", type=int)
    parser.add_argument("--nodes", type=int, default=64, help="nodes per draft tree")
    parser.add_argument("--max-depth", type=int, default=6)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

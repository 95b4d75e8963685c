"""Operator launches and time of one decode step of the built-in model, kernel path.

Counts every ATen and pipo operator one decode step dispatches (a TorchDispatchMode sees each
call that reaches a kernel: composite ops appear as the ops they decompose into, nested calls
inside a C++ kernel are not counted), and separately those that are not views (a view launches
no kernel). On a GPU each non-view op is one kernel launch or more. One AR step = backbone
forward of one token + sample_tokens; one PIPO step = backbone forward of one pair + sample +
MTP forward + sample + pair_out gate (the calls the engine makes per step).

``--before DIR`` loads another copy of the ``pipo`` package (e.g. ``/path/to/old/python/pipo``)
under another name, gives it the same weights, and reports its counts and times side by side,
timing the two interleaved (the same inputs, alternating steps) so machine load hits both alike.

    python -m benchmarks.count_ops [--before OLD/python/pipo] [--threads 1] [--steps 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PROMPT = 24  # tokens in the cache before the measured step (12 pairs for PIPO)


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        if func.is_view:
            self.views += 1
        return func(*args, **(kwargs or {}))


def load_package(folder: Path, name: str):
    """Import the package in `folder` as `name` (its relative imports resolve inside it)."""
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_step(pkg: str, kind: str, weights: dict | None):
    """(step function, model) for package `pkg` ("pipo" or the --before copy)."""
    model_mod = importlib.import_module(f"{pkg}.model")
    ckpt = importlib.import_module(f"{pkg}.checkpoint")
    config = importlib.import_module(f"{pkg}.config")
    model = ckpt.load_builtin(kind, config.preset("tiny"), seed=0).eval()
    if weights is not None:
        model.load_state_dict(weights)
    cache = model.new_cache(num_pages=8, page_size=16)
    n = PROMPT if kind == "ar" else PROMPT // 2
    cache.reserve(0, n + 1)

    def meta(start, count):
        return model_mod.AttnMeta(
            positions=torch.arange(start, start + count),
            slot_mapping=torch.tensor(cache.slots(0, start, start + count)),
            block_table=cache.block_table([0]),
            kv_lens=torch.tensor([start + count], dtype=torch.int32),
            q_indptr=torch.tensor([0, count], dtype=torch.int32),
        )

    st = model_mod.SamplingTensors(
        temperature=torch.zeros(1),
        top_k=torch.zeros(1, dtype=torch.int32),
        top_p=torch.ones(1),
        presence_penalty=torch.zeros(1),
        seen=None,
        seeds=torch.zeros(1, dtype=torch.int64),
        offsets=torch.zeros(1, dtype=torch.int64),
    )
    g = torch.Generator().manual_seed(0)
    step_meta = meta(n, 1)
    with torch.no_grad():
        if kind == "ar":
            model(torch.randint(0, 256, (n,), generator=g), meta(0, n), cache, True)
            ids = torch.randint(0, 256, (1,), generator=g)

            def step():
                hidden = model(ids, step_meta, cache, True)
                return model.sample(hidden, st, True)[0]
        else:
            model(torch.randint(0, 256, (n, 2), generator=g), meta(0, n), cache, True)
            pairs = torch.randint(0, 256, (1, 2), generator=g)

            def step():
                hidden = model(pairs, step_meta, cache, True)
                token1, _ = model.sample(hidden, st, True)
                mtp = model.mtp_forward(token1, hidden, step_meta, cache, True)
                token2, _ = model.sample(mtp, st, True)
                return model.gate(hidden, mtp, token1, token2, 0.5, True)[0]

    return step, model


def count(step) -> OpCounter:
    with torch.no_grad():
        step()  # warm-up: one-off work (e.g. building the RoPE table) is not a per-step cost
        with OpCounter() as c:
            out = step()
    c.result = out
    return c


def time_interleaved(steps: dict, n: int) -> dict[str, float]:
    times = {k: [] for k in steps}
    with torch.no_grad():
        for _ in range(n):
            for k, f in steps.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, help="folder of another pipo package to compare")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent ops")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.before:
        load_package(args.before.resolve(), "pipo_before")
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | float32 CPU")
    print("| model | code | ops per step | non-view ops | pipo ops | median µs/step |")
    print("|---|---|---|---|---|---|")
    for kind in ("ar", "pipo"):
        step, model = make_step("pipo", kind, None)
        steps = {"this tree": step}
        if args.before:
            steps["before"] = make_step("pipo_before", kind, model.state_dict())[0]
        counts = {k: count(f) for k, f in steps.items()}
        if args.before:  # same weights, same inputs: the same greedy token
            same = torch.equal(counts["this tree"].result, counts["before"].result)
            print(f"<!-- {kind}: same step output before/after: {same} -->")
        us = time_interleaved(steps, args.steps)
        for k in reversed(steps):
            c = counts[k]
            total = sum(c.ops.values())
            pipo = sum(v for op, v in c.ops.items() if op.startswith("pipo."))
            print(f"| {kind} | {k} | {total} | {total - c.views} | {pipo} | {us[k]:.0f} |")
            if args.top:
                print("<!-- " + ", ".join(f"{o}:{v}" for o, v in c.ops.most_common(args.top)))


if __name__ == "__main__":
    main()

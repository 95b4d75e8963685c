"""Spec mode's drafters against plain AR decoding, interleaved in one process (medians).

    OMP_NUM_THREADS=1 python scripts/spec_vs_ar.py --rounds 5 --new-tokens 128

Built-in models, batch 1, greedy, 1 thread. Each round runs AR and then every configuration
once on the same prompt; the table gives median tokens/s, the ratio to AR's median of the same
rounds, accepted draft tokens per verification and new tokens per verifier pass, and checks
that every configuration's output equals AR's. The load average is printed beside the table:
timings on a shared machine are noisy, so compare ratios of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from pipo.checkpoint import load_builtin
from pipo.config import preset
from pipo.engine import Engine, Request, SamplingParams

PROMPTS = {
    # repetitive code: the n-gram drafter's home ground (prompt lookup)
    "code": "".join(
        f"def get_{n}(self):\n    return self._{n}\n\n"
        f"def set_{n}(self, value):\n    self._{n} = value\n\n"
        for n in ("name", "size", "path", "mode", "kind")
    )
    + "def get_",
    # ordinary prose-like text
    "text": "The engine admits requests, reserves their pages, and steps every running request",
}

CONFIGS = {
    "ngram-chain8": dict(drafter="ngram", draft_tokens=8),
    "ngram-chain4": dict(drafter="ngram", draft_tokens=4),
    "ngram-topk8": dict(drafter="ngram", draft_tokens=8, tree="topk", draft_topk=2),
    "pipo-k4": dict(drafter="pipo"),
    "pipo-chain4": dict(drafter="pipo", draft_tokens=4, tree="chain"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = preset("tiny")
    ar = load_builtin("ar", cfg, 1, "cpu", None)
    pipo = load_builtin("pipo", cfg, 2, "cpu", None)
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    engines = {"ar": Engine(ar, mode="ar", max_batch_size=1)}
    for name in args.configs:
        kw = CONFIGS[name]
        model = pipo if kw["drafter"] == "pipo" else ar
        engines[name] = Engine(model, mode="spec", verifier=ar, max_batch_size=1, **kw)
    out = {"load_before": os.getloadavg(), "new_tokens": args.new_tokens, "rows": []}
    for pname in args.prompts:
        req = [Request(PROMPTS[pname], params)]
        speed: dict[str, list[float]] = {k: [] for k in engines}
        stats = {}
        want = None
        for e in engines.values():  # warm-up
            e.generate(req)
        for _ in range(args.rounds):
            for name, e in engines.items():
                t = time.perf_counter()
                (res,) = e.generate(req)
                speed[name].append(len(res.token_ids) / (time.perf_counter() - t))
                if name == "ar":
                    want = res.token_ids
                elif res.token_ids != want:
                    print(f"{pname} {name}: output differs from ar", file=sys.stderr)
                    return 1
                stats[name] = e.stats
        base = statistics.median(speed["ar"])
        for name in engines:
            med = statistics.median(speed[name])
            s = stats[name]
            row = dict(
                prompt=pname,
                config=name,
                tokens_per_s=round(med, 1),
                ratio=round(med / base, 3),
                accepted_per_verify=round(s.mean_accept_len, 2) if name != "ar" else None,
                tokens_per_pass=round(s.tokens_per_pass, 2),
            )
            out["rows"].append(row)
            print(json.dumps(row))
    out["load_after"] = os.getloadavg()
    print("load average before / after:", out["load_before"], out["load_after"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

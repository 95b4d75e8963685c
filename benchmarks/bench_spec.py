"""Verified speculative decoding per drafter and tree shape, against AR and PIPO in the same run.

    python -m benchmarks.bench_spec --device cpu --out benchmarks/results/cpu-AMD-EPYC

For every configuration — mode ar; mode spec with drafter ngram / pipo / mtp / medusa and tree
chain / topk / dynamic (the shapes each drafter supports); mode pipo (verifier-free, lossy) at
its recommended confidence threshold θ — and for greedy decoding and sampling at T = 1, it
decodes ``--new-tokens`` tokens from each of ``--prompts`` held-out prompts (BOS + crops of
the stdlib files pipo.data holds out, which no built-in model trained on), batch 1, with the
engine's kernels. Runs are interleaved (repeat -> configuration -> prompt), so every
configuration sees the same machine load; tokens/s is the median over its runs and ``vs_ar``
its ratio to mode ar's median at the same temperature in the same run.

Columns: accepted = mean accepted draft tokens per verification (bonus token excluded; tokens
per verification = accepted + 1); passes_per_token = verifier (backbone) passes per emitted
token; quality = held-out bits per byte relative to AR (1.0 for every lossless mode by
construction; for PIPO the gated decoding's code length of benchmarks.report_model.gated_bpb on
``--quality-windows`` held-out windows, the number the recommended θ is chosen by).

Writes spec.json and spec.png into --out (default results/local/<device>/) and prints a markdown
table. The built-in checkpoints are used (pipo/checkpoints/{ar,pipo,mtp,medusa}).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from benchmarks.common import bench_parser, device_name, format_table, write_results
from pipo.checkpoint import BUILTIN_DIR, load
from pipo.data import load_corpus, sample_batch
from pipo.engine import Engine, Request, SamplingParams

# (drafter, trees it builds); the dynamic tree needs probabilities, so not the n-gram drafter,
# and the pipo drafter builds its own pair trees (chain = one branch, topk = k branches)
DRAFTERS = {
    "ngram": ("chain", "topk"),
    "pipo": ("chain", "topk"),
    "mtp": ("chain", "topk", "dynamic"),
    "medusa": ("chain", "topk", "dynamic"),
}


def recommended_threshold() -> float:
    """PIPO's recommended θ from the committed model report (the smallest θ within 10% of AR's
    bits per byte), 0.5 when no report is there."""
    report = Path(__file__).parent / "results" / "cpu-AMD-EPYC" / "model_report.json"
    if report.is_file():
        return float(json.loads(report.read_text())["recommended_threshold"])
    return 0.5


def pipo_quality(heldout, threshold: float, windows: int) -> float:
    """PIPO's gated-decoding bits per byte / AR's on held-out windows (benchmarks.report_model;
    on the CPU, where its host-built tensors live, whatever device the timing uses)."""
    from benchmarks.report_model import ar_scores, gated_bpb, heldout_windows

    ar = load(BUILTIN_DIR / "ar", dtype=torch.float32).eval()
    pipo = load(BUILTIN_DIR / "pipo", dtype=torch.float32).eval()
    w = heldout_windows(heldout, windows, 256)
    ar_bpb, _ = ar_scores(ar, w)
    bpb, _ = gated_bpb(pipo, w, threshold)
    return bpb / ar_bpb


def configurations(args, theta: float) -> list[dict]:
    configs = [{"mode": "ar", "drafter": None, "tree": None}]
    for name in args.drafters:
        for tree in DRAFTERS[name]:
            if tree in args.trees:
                configs.append({"mode": "spec", "drafter": name, "tree": tree})
    configs.append({"mode": "pipo", "drafter": None, "tree": None, "threshold": theta})
    return configs


def make_engine(cfg: dict, ar, pipo, args) -> Engine:
    common = dict(max_batch_size=1, num_pages=64, use_kernels=True)
    if cfg["mode"] == "ar":
        return Engine(ar, mode="ar", **common)
    if cfg["mode"] == "pipo":
        return Engine(pipo, mode="pipo", threshold=cfg["threshold"], **common)
    kw = dict(drafter=cfg["drafter"], tree=cfg["tree"], draft_topk=args.topk)
    if cfg["drafter"] == "pipo":
        # its tree is pairs: chain = 1 branch, topk = topk branches, each continued in pairs
        model, kw["draft_tokens"] = pipo, args.draft_tokens
    else:
        model, kw["draft_tokens"] = ar, args.draft_tokens
        if cfg["tree"] == "dynamic":
            kw["draft_tokens"], kw["draft_depth"] = args.dynamic_tokens, args.dynamic_depth
    return Engine(model, mode="spec", verifier=ar, **common, **kw)


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__.split("\n\n")[0], "2 prompts, 48 tokens, 1 repeat")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--draft-tokens", type=int, default=4, help="chain / topk draft nodes")
    p.add_argument("--topk", type=int, default=2, help="branching of topk / dynamic trees")
    p.add_argument("--dynamic-tokens", type=int, default=8, help="dynamic tree's kept nodes")
    p.add_argument("--dynamic-depth", type=int, default=4)
    p.add_argument("--drafters", nargs="*", default=list(DRAFTERS), choices=list(DRAFTERS))
    p.add_argument("--trees", nargs="*", default=["chain", "topk", "dynamic"])
    p.add_argument("--temperatures", nargs="*", type=float, default=[0.0, 1.0])
    p.add_argument("--quality-windows", type=int, default=16)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.repeats, args.quality_windows = 2, 48, 1, 4
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ar = load(BUILTIN_DIR / "ar", device=dev, dtype=torch.float32).eval()
    pipo = load(BUILTIN_DIR / "pipo", device=dev, dtype=torch.float32).eval()
    _, heldout = load_corpus()
    prompts = sample_batch(
        heldout, args.prompts, args.prompt_len, torch.Generator().manual_seed(11)
    )
    prompts = prompts.tolist()
    theta = recommended_threshold()
    quality = pipo_quality(heldout, theta, args.quality_windows)
    configs = configurations(args, theta)
    engines = [make_engine(c, ar, pipo, args) for c in configs]
    runs = {(i, t): [] for i in range(len(configs)) for t in args.temperatures}

    def params(t: float, seed: int) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=args.new_tokens, temperature=t, seed=seed, ignore_eos=True
        )

    for e in engines:  # warm-up
        e.generate([Request(prompts[0], params(0.0, 0))])
    for rep in range(args.repeats):
        for i, e in enumerate(engines):
            for t in args.temperatures:
                for j, prompt in enumerate(prompts):
                    e.generate([Request(prompt, params(t, 1000 * rep + j))])
                    s = e.stats
                    runs[(i, t)].append(
                        (s.tokens_per_s, s.accepted_draft_tokens, s.verify_rounds,
                         s.backbone_passes, s.new_tokens)
                    )  # fmt: skip
    rows = []
    for (i, t), vals in runs.items():
        cfg = configs[i]
        rounds = sum(v[2] for v in vals)
        rows.append(
            {
                "mode": cfg["mode"],
                "drafter": cfg["drafter"],
                "tree": cfg["tree"],
                "threshold": cfg.get("threshold"),
                "temperature": t,
                "tokens_per_s": statistics.median(v[0] for v in vals),
                "accepted": sum(v[1] for v in vals) / rounds if rounds else None,
                "passes_per_token": sum(v[3] for v in vals) / sum(v[4] for v in vals),
                "quality": quality if cfg["mode"] == "pipo" else 1.0,
                "lossless": cfg["mode"] != "pipo",
                "runs": len(vals),
            }
        )
    for t in args.temperatures:
        base = next(r for r in rows if r["mode"] == "ar" and r["temperature"] == t)
        for r in rows:
            if r["temperature"] == t:
                r["vs_ar"] = r["tokens_per_s"] / base["tokens_per_s"]
    rows.sort(key=lambda r: (r["temperature"], r["mode"] != "ar", r["mode"] == "pipo"))
    for r in rows:
        r["config"] = (
            "ar"
            if r["mode"] == "ar"
            else f"pipo θ={r['threshold']:g}"
            if r["mode"] == "pipo"
            else f"spec {r['drafter']} {r['tree']}"
        )
    try:
        load_avg = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load_avg = None
    extra = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "recommended_threshold": theta,
        "load_average": load_avg,
    }
    path = write_results("spec", dev, rows, extra=extra, out_dir=args.out)
    plot(rows, path.with_suffix(".png"), f"spec decoding ({device_name(dev)}, batch 1)")
    print(
        format_table(
            rows,
            [
                ("config", "configuration", ""),
                ("temperature", "T", "g"),
                ("tokens_per_s", "tokens/s", ".1f"),
                ("vs_ar", "vs ar", ".2f"),
                ("accepted", "accepted / verification", ".2f"),
                ("passes_per_token", "verifier passes / token", ".3f"),
                ("quality", "bpb / AR", ".3f"),
            ],
        )
    )
    print(f"load average {load_avg}; {path}")
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = sorted({r["temperature"] for r in rows})
    labels = list(dict.fromkeys(r["config"] for r in rows))
    fig, ax = plt.subplots(1, 2, figsize=(12, 0.32 * len(labels) + 2))
    height = 0.8 / len(temps)
    for k, t in enumerate(temps):
        by = {r["config"]: r for r in rows if r["temperature"] == t}
        ys = [i + k * height for i in range(len(labels))]
        ax[0].barh(ys, [by[c]["vs_ar"] for c in labels], height, label=f"T={t:g}")
        acc = [by[c]["accepted"] or 0.0 for c in labels]
        ax[1].barh(ys, acc, height, label=f"T={t:g}")
    for a in ax:
        a.set_yticks([i + height * (len(temps) - 1) / 2 for i in range(len(labels))], labels)
        a.invert_yaxis()
        a.legend()
    ax[0].axvline(1.0, color="k", ls="--")
    ax[0].set(xlabel="tokens/s vs ar (same run, medians)", title="speed")
    ax[1].set(xlabel="accepted draft tokens per verification", title="acceptance")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality-versus-speed report of PIPO heads trained on SmolLM2-135M-Instruct (pipo.train_real)
against the plain backbone, on held-out stdlib files tokenized with SmolLM2's tokenizer.

Measures, in the style of benchmarks/report_model.py (whose functions it reuses):

1. Held-out bits per *token*: AR teacher forced, and PIPO as it decodes at each θ (token1 by the
   backbone, token2 by the MTP head when the gate commits it, else (token1, PAD) and the next
   pass scores it); both over the same tokens (every window's tokens 2…T-1).
2. Teacher forced on the plain pairing: token2 commit rate, agreement of the committed greedy
   token2 with AR greedy, ROC AUC of the confidence for "token2 == AR greedy".
3. tokens/s of modes ar / pipo (per θ) / spec, greedy, batch 1, interleaved, medians, one
   thread (the AR model gets the PIPO vocabulary's extra PAD row, a zero row, so the same
   verifier serves spec mode).
4. Three greedy sample completions per mode, and the training budget from the run folder
   (log.jsonl, train_config.json) with a log-linear extrapolation of the held-out loss curve
   (an estimate).

    python -m benchmarks.report_smollm2 --ar ~/.cache/pipo/smollm2-135m-instruct \\
        --pipo ~/.cache/pipo/runs/smollm2-pipo/final --run ~/.cache/pipo/runs/smollm2-pipo \\
        --out-dir benchmarks/results/cpu-AMD-EPYC
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import device_name, format_table, write_results
from benchmarks.report_model import gated_bpb, roc_auc, speed, token2_stats
from pipo.checkpoint import load
from pipo.engine import Engine, Request, SamplingParams
from pipo.model import ARModel, PIPOModel, dense_hidden
from pipo.tokenizer import HFTokenizer
from pipo.train_real import (
    extend_vocab_with_pad,
    newline_ids,
    token_line_starts,
    tokenize_corpus,
    window_batch,
)

LN2 = math.log(2.0)
THRESHOLDS = [round(0.1 * i, 1) for i in range(11)]
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "import os\n\n\ndef list_python_files(root):\n",
]
TARGET_RATIO, TARGET_COMMIT = 1.15, 0.5


@torch.no_grad()
def ar_bits(ar: ARModel, windows: torch.Tensor, first: int = 2):
    """(bits per token over tokens first…T-1, greedy int64 [B, T-1]; column j predicts j+1)."""
    logits = ar.logits(dense_hidden(ar, ar.embed_tokens(windows[:, :-1])))
    ce = F.cross_entropy(logits[:, first - 1 :].flatten(0, 1), windows[:, first:].flatten())
    return ce.item() / LN2, logits.argmax(-1)


def heldout(tokenizer: HFTokenizer, eos_id: int, corpus: Path | None):
    """(held-out stream int32, its line starts): from a run's corpus.npz, else tokenized here."""
    if corpus is not None and corpus.is_file():
        with np.load(corpus) as z:
            return z["heldout"], z["heldout_starts"]
    _, stream = tokenize_corpus(tokenizer, None, eos_id)
    return stream, token_line_starts(stream, newline_ids(tokenizer), eos_id)


def samples(models: dict, tokenizer: HFTokenizer, new_tokens: int) -> list[dict]:
    """Greedy completions of PROMPTS for each (name -> (model, mode, θ))."""
    out = []
    params = SamplingParams(max_new_tokens=new_tokens)
    for name, (model, mode, th) in models.items():
        engine = Engine(model, mode=mode, threshold=th, tokenizer=tokenizer, max_batch_size=1)
        for prompt in PROMPTS:
            (r,) = engine.generate([Request(tokenizer.encode(prompt), params)])
            out.append({"model": name, "prompt": prompt, "completion": r.text})
    return out


def budget(run: Path | None) -> dict | None:
    """Training budget of a run folder and a log-linear fit of its held-out curve (estimate)."""
    if run is None or not (run / "log.jsonl").is_file():
        return None
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    recipe = json.loads((run / "train_config.json").read_text())
    ar = log[0]["ar_bpt"]
    curve = [r for r in log if r["step"] > 0]
    info = {
        "recipe": recipe,
        "steps": curve[-1]["step"] if curve else 0,
        "tokens_seen": curve[-1]["tokens"] if curve else 0,
        "train_wall_s": curve[-1]["elapsed_s"] if curve else 0.0,
        "load_average": [r["load"] for r in curve],
        "curve": [
            {k: r.get(k) for k in ("step", "tokens", "elapsed_s", "bpt1", "bpt2", "bpt")}
            for r in log
        ],
        "ar_bpt_eval_windows": ar,
    }
    fit = [r for r in curve if r["tokens"] > 0][-4:]  # the tail, past the warm-up transient
    if len(fit) >= 2:
        x = np.log([r["tokens"] for r in fit])
        y = np.array([r["bpt"] for r in fit])
        slope, icept = np.polyfit(x, y, 1)
        target = TARGET_RATIO * ar
        est = None
        if slope < 0:
            est = float(math.exp((target - icept) / slope))
        rate = fit[-1]["tokens"] / max(1e-9, fit[-1]["elapsed_s"])
        info["extrapolation"] = {
            "kind": "estimate: log-linear fit bpt = a + b ln(tokens) to the last "
            f"{len(fit)} evaluations (teacher forced, every token2 committed)",
            "a": float(icept),
            "b": float(slope),
            "target_bpt": target,
            "tokens_to_target": est,
            "cpu_hours_at_measured_rate": None if est is None else est / rate / 3600,
            "measured_tokens_per_s": rate,
        }
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ar", type=Path, required=True, help="the SmolLM2 folder (pipo fetch)")
    p.add_argument("--pipo", type=Path, required=True, help="the trained PIPO checkpoint")
    p.add_argument("--run", type=Path, default=None, help="the training run folder")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--window-len", type=int, default=128)
    p.add_argument("--gated-windows", type=int, default=16)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)), help="gated θs")
    p.add_argument("--speed-thresholds", default="0,0.5,0.8,1")
    p.add_argument("--sample-tokens", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="few windows / prompts (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.windows, args.gated_windows, args.prompts, args.repeats = 4, 2, 1, 1
        args.new_tokens, args.speed_thresholds, args.sample_tokens = 8, "0.5", 8
        args.window_len = 32
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ar = load(args.ar.expanduser(), dtype=torch.float32).eval()
    pipo = load(args.pipo.expanduser(), dtype=torch.float32).eval()
    if not isinstance(ar, ARModel) or not isinstance(pipo, PIPOModel):
        raise SystemExit("--ar must be an AR folder and --pipo a PIPO checkpoint")
    tokenizer = HFTokenizer.from_folder(args.ar.expanduser())
    corpus = args.run / "corpus.npz" if args.run else None
    stream, starts = heldout(tokenizer, ar.config.eos_id, corpus)
    g = torch.Generator().manual_seed(7)
    windows = window_batch(stream, starts, args.windows, args.window_len, g)

    t0 = time.perf_counter()
    ar_all, greedy = ar_bits(ar, windows)
    st = token2_stats(pipo, windows, greedy)
    conf, agree, correct = st["confidence"], st["agree"], st["correct"]
    gated = windows[: args.gated_windows]
    ar_bpt, _ = ar_bits(ar, gated)
    quality = []
    for th in [float(x) for x in args.thresholds.split(",")]:
        bpt, commit = gated_bpb(pipo, gated, th)
        print(f"θ={th}: gated bits/token {bpt:.3f}, commit {commit:.3f}", flush=True)
        keep = conf >= th if th < 1 else torch.zeros_like(agree)
        n = int(keep.sum())
        quality.append(
            {
                "threshold": th,
                "pipo_bpt": bpt,
                "bpt_ratio": bpt / ar_bpt,
                "commit_rate_gated": commit,
                "commit_rate_tf": n / len(keep),
                "agreement": agree[keep].float().mean().item() if n else None,
                "gold_accuracy": correct[keep].float().mean().item() if n else None,
            }
        )
    met = [
        r["threshold"]
        for r in quality
        if r["bpt_ratio"] <= TARGET_RATIO and r["commit_rate_gated"] >= TARGET_COMMIT
    ]
    quality_s = time.perf_counter() - t0

    ar_pad = extend_vocab_with_pad(ar).eval()  # same logits + one zero row: spec's verifier
    prompts = window_batch(stream, starts, args.prompts, args.prompt_len, g).tolist()
    ths = sorted({float(x) for x in args.speed_thresholds.split(",")})
    speed_rows = speed(ar_pad, pipo, prompts, ths, args.new_tokens, args.repeats)
    committing = [r for r in quality if r["commit_rate_gated"] >= TARGET_COMMIT]
    best = min(committing, key=lambda r: r["bpt_ratio"], default=None)
    sample_th = best["threshold"] if best else 0.5
    texts = samples(
        {"ar": (ar, "ar", 0.5), f"pipo θ={sample_th}": (pipo, "pipo", sample_th)},
        tokenizer,
        args.sample_tokens,
    )
    dev = torch.device("cpu")
    report = {
        "title": f"PIPO-SmolLM2-135M report ({device_name(dev)}, {args.threads} thread(s))",
        "ar_checkpoint": str(args.ar),
        "pipo_checkpoint": str(args.pipo),
        "ar_bpt": ar_bpt,
        "ar_bpt_all_windows": ar_all,
        "auc_agree": roc_auc(conf, agree),
        "auc_gold": roc_auc(conf, correct),
        "target": f"bpt <= {TARGET_RATIO} x AR with commit rate >= {TARGET_COMMIT}",
        "target_met_at": met,
        "quality": quality,
        "speed": speed_rows,
        "kernels_backend": _backend(),
        "samples": texts,
        "training": budget(args.run),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "quality_seconds": quality_s,
        "load_average_end": os.getloadavg()[0],
    }
    folder = args.out_dir or Path("benchmarks/results/local") / device_name(dev)
    path = write_results("smollm2_report", dev, [], extra=report, out_dir=folder)
    print(f"wrote {path}")
    print(
        f"AR held-out bits/token {ar_bpt:.3f} (all {args.windows} windows {ar_all:.3f}); AUC "
        f"(token2 == AR greedy) {report['auc_agree']:.3f}; target met at θ in {met}"
    )
    print(
        format_table(
            quality,
            [
                ("threshold", "θ", ".1f"),
                ("pipo_bpt", "PIPO bits/token", ".3f"),
                ("bpt_ratio", "/ AR", ".3f"),
                ("commit_rate_gated", "commit (gated)", ".3f"),
                ("commit_rate_tf", "commit (teacher forced)", ".3f"),
                ("agreement", "agree w/ AR greedy", ".3f"),
                ("gold_accuracy", "== gold", ".3f"),
            ],
        )
    )
    print()
    print(
        format_table(
            speed_rows,
            [
                ("mode", "mode", ""),
                ("threshold", "θ", ""),
                ("tokens_per_s", "tokens/s", ".1f"),
                ("tokens_per_pass", "tokens/pass", ".2f"),
                ("commit_rate", "commit", ".3f"),
                ("speedup", "vs ar", ".2f"),
            ],
        )
    )
    for s in texts:
        print(f"\n[{s['model']}] {s['prompt']!r} -> {s['completion']!r}")
    return 0


def _backend() -> str:
    try:
        import pipo_kernels

        return "compiled (_C)" if getattr(pipo_kernels, "_C", None) is not None else "torch"
    except ImportError:
        return "none"


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality-versus-speed report of the built-in (or any byte-level) AR / PIPO model pair.

Measures on the held-out stdlib files (pipo.data) and on this machine's CPU:

1. Held-out bits per byte of AR (teacher forced) and of PIPO *as it decodes* at each confidence
   threshold θ: token1 is scored by the backbone; token2 by the MTP head when the gate commits it
   (c ≥ θ), otherwise the pair becomes (token1, PAD) and the next backbone pass scores it. The
   gate sees only the context, so this is the exact code length of the text under PIPO's
   gated decoding (θ = 1: token2 never committed; θ = 0: always).
2. Teacher forced on the plain pairing: token2 commit rate and agreement of the committed (greedy)
   token2 with the AR model's greedy token at the same position, for θ in 0…1, and the ROC AUC
   of the confidence for the label "MTP token2 == AR greedy token".
3. tokens/s and tokens per backbone pass of modes ar / pipo (at each θ) / spec, greedy, batch 1,
   with the engine's kernels (Engine(..., use_kernels=True)); runs are interleaved across modes
   and the median is reported.

Writes results/local/<device>/ (or --out-dir) model_report.json and model_report.png and prints
a markdown table.

``--folds`` compares AR, PIPO-2 (--pipo) and PIPO-4 (--pipo4) in one run instead: for each PIPO
model and θ the gated bits per byte (item 1 for groups of k: token1 by the backbone, tokens
2 … k by the MTP chain while the gate commits the longest passing prefix), the commit rate per
group position and tokens per backbone pass of that gated run; then tokens/s, tokens per pass,
KV-cache bytes per token and the ratio to AR of the engine (greedy, batch 1, kernels, runs
interleaved across every configuration, medians). Writes model_report_folds.json and
model_report_folds.png (speed against quality per θ, commit rate per position, tokens per pass).

    python -m benchmarks.report_model                     # the shipped checkpoints
    python -m benchmarks.report_model --ar runs/builtin/ar/final --pipo runs/builtin/pipo/final
    python -m benchmarks.report_model --folds --out-dir benchmarks/results/cpu-AMD-EPYC
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import LOCAL_RESULTS_DIR, device_name, format_table, write_results
from pipo.checkpoint import BUILTIN_DIR, load
from pipo.data import load_corpus, sample_batch
from pipo.engine import Engine, Request, SamplingParams
from pipo.model import ARModel, AttnMeta, PIPOModel, dense_hidden, dense_pipo

LN2 = math.log(2.0)  # nats -> bits

THRESHOLDS = [round(0.1 * i, 1) for i in range(11)]
REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository root when it lies inside it (so the report does not
    record the checkout's location), else as given."""
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def heldout_windows(stream: np.ndarray, count: int, length: int, seed: int = 7) -> torch.Tensor:
    """int64 [count, length]: BOS + held-out crops (the same ones on every run)."""
    return sample_batch(stream, count, length, torch.Generator().manual_seed(seed))


@torch.no_grad()
def ar_scores(ar: ARModel, windows: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(bits per byte of the AR model, greedy tokens int64 [B, T-1]; column j predicts j+1)."""
    logits = ar.logits(dense_hidden(ar, ar.embed_tokens(windows[:, :-1])))
    ce = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
    return ce.item() / LN2, logits.argmax(-1)


@torch.no_grad()
def token2_stats(pipo: PIPOModel, windows: torch.Tensor, ar_greedy: torch.Tensor) -> dict:
    """Teacher-forced token2 statistics on the plain pairing (no PAD).

    For pair i the MTP head gets token1 = t_{2i+2} and proposes token2 for position 2i+3; its
    greedy choice is compared with the AR model's greedy choice at that position.
    Returns confidence [N], agree bool [N] (== AR greedy), correct bool [N] (== gold).
    """
    t = windows.shape[1] - windows.shape[1] % 2
    tokens = windows[:, :t]
    num = t // 2 - 2  # pairs whose token2 position 2i+3 lies inside the window
    mtp_in = tokens[:, 2::2]
    mtp_in = torch.cat([mtp_in, mtp_in[:, -1:]], 1)
    _, m, conf = dense_pipo(pipo, tokens, mtp_in)
    token2 = pipo.logits(m).argmax(-1)[:, :num]
    idx = 2 * torch.arange(num) + 3
    agree = token2 == ar_greedy[:, idx - 1]
    correct = token2 == tokens[:, idx]
    return {
        "confidence": conf[:, :num].flatten(),
        "agree": agree.flatten(),
        "correct": correct.flatten(),
    }


def roc_auc(score: torch.Tensor, label: torch.Tensor) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties)."""
    s = score.double().numpy()
    y = label.numpy().astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@torch.no_grad()
def gated_decode(pipo: PIPOModel, windows: torch.Tensor, threshold: float) -> dict:
    """PIPO-k decoding the windows teacher-forced with the confidence gate at ``threshold``
    (module docstring, item 1), k = ``pipo.config.fold``. Windows int64 [B, T] start with BOS;
    the first group (BOS, t_1, …) is given; every later token is scored once: token1 by the
    backbone, tokens 2 … k by the MTP chain while the gate commits them. The chain reads the gold
    tokens (at inference it reads its own proposals; they differ only where a proposal is wrong,
    and then the gate mostly rejects it).

    Returns bpb, tokens_per_pass (scored tokens per backbone pass), commit_by_position (group
    position 2 … k: the fraction of passes that committed it, as the engine's
    Stats.commit_rate_by_position) and commit_rate (committed / proposed over all positions)."""
    cfg = pipo.config
    k = cfg.fold
    b, t = windows.shape
    page = 16
    steps = t  # at most one step per token
    pages = (steps + page - 1) // page
    cache = pipo.new_cache(b * pages, page)
    for r in range(b):
        cache.reserve(r, steps)
    block_table = cache.block_table(list(range(b)))
    rows = windows.tolist()
    groups = [r[:k] for r in rows]
    j = [k] * b  # next token to score
    nll, scored, passes = 0.0, 0, 0
    proposed, committed = [0] * (k - 1), [0] * (k - 1)
    for pos in range(steps):
        if all(x >= t for x in j):
            break
        slots = [cache.slots(r, pos, pos + 1)[0] for r in range(b)]
        meta = AttnMeta(
            positions=torch.full((b,), pos, dtype=torch.int64),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            block_table=block_table,
            kv_lens=torch.full((b,), pos + 1, dtype=torch.int32),
            q_indptr=torch.arange(b + 1, dtype=torch.int32),
        )
        h = pipo(torch.tensor(groups), meta, cache)
        logps = [F.log_softmax(pipo.logits(h), -1)]
        confs = []
        state = h
        for step in range(1, k):  # the chain on the gold tokens
            tok = torch.tensor([rows[r][min(j[r] + step - 1, t - 1)] for r in range(b)])
            state = pipo.mtp_forward(tok, state, meta, cache, step=step)
            logps.append(F.log_softmax(pipo.logits(state), -1))
            confs.append(pipo.confidence(h, state).tolist())
        for r in range(b):
            if j[r] >= t:
                groups[r] = [cfg.pad_id] * k  # finished: keep the batch shape
                continue
            passes += 1
            n = 1
            nll -= logps[0][r, rows[r][j[r]]].item()
            reach = min(k, t - j[r])  # group positions still inside the window
            for step in range(1, reach):
                proposed[step - 1] += 1
            for step in range(1, reach):
                c = confs[step - 1][r]
                if not (threshold < 0 or (threshold < 1 and c >= threshold)):
                    break
                nll -= logps[step][r, rows[r][j[r] + step]].item()
                committed[step - 1] += 1
                n += 1
            scored += n
            groups[r] = rows[r][j[r] : j[r] + n] + [cfg.pad_id] * (k - n)
            j[r] += n
    return {
        "bpb": nll / scored / LN2,
        "tokens_per_pass": scored / max(1, passes),
        "commit_by_position": [c / max(1, p) for c, p in zip(committed, proposed, strict=True)],
        "commit_rate": sum(committed) / max(1, sum(proposed)),
    }


def gated_bpb(pipo: PIPOModel, windows: torch.Tensor, threshold: float) -> tuple[float, float]:
    """(bits per byte, commit rate of the MTP proposals) of ``gated_decode``."""
    r = gated_decode(pipo, windows, threshold)
    return r["bpb"], r["commit_rate"]


def speed(
    ar: ARModel,
    pipo: PIPOModel,
    prompts: list[list[int]],
    thresholds: list[float],
    new_tokens: int,
    repeats: int,
) -> list[dict]:
    """Median tokens/s and tokens per pass of every mode over the prompts (interleaved runs)."""
    configs = [("ar", None), *(("pipo", th) for th in thresholds), ("spec", None)]
    engines = {}
    for mode, th in configs:
        model = ar if mode == "ar" else pipo
        engines[(mode, th)] = Engine(
            model,
            mode=mode,
            verifier=ar if mode == "spec" else None,
            threshold=0.5 if th is None else th,
            use_kernels=True,
            max_batch_size=1,
            num_pages=64,
        )
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    runs: dict = {key: [] for key in engines}
    for e in engines.values():  # warm-up
        e.generate([Request(prompts[0], params)])
    for _ in range(repeats):
        for key, e in engines.items():
            for p in prompts:
                e.generate([Request(p, params)])
                s = e.stats
                runs[key].append((s.tokens_per_s, s.tokens_per_pass, s.token2_commit_rate))
    rows = []
    for (mode, th), vals in runs.items():
        rows.append(
            {
                "mode": mode,
                "threshold": th,
                "tokens_per_s": statistics.median(v[0] for v in vals),
                "tokens_per_pass": statistics.mean(v[1] for v in vals),
                "commit_rate": statistics.mean(v[2] for v in vals) if mode == "pipo" else None,
            }
        )
    base = next(r["tokens_per_s"] for r in rows if r["mode"] == "ar")
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base
        r["ms_per_pass"] = 1e3 * r["tokens_per_pass"] / r["tokens_per_s"]
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = report["quality"]
    th = [r["threshold"] for r in q]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    a = ax[0, 0]
    a.plot(th, [r["pipo_bpb"] for r in q], "o-", label="PIPO (gated decoding)")
    a.axhline(report["ar_bpb"], color="k", ls="--", label="AR")
    a.axhline(1.1 * report["ar_bpb"], color="gray", ls=":", label="AR + 10%")
    a.set(xlabel="confidence threshold θ", ylabel="held-out bits per byte", title="Quality")
    a.legend()
    a = ax[0, 1]
    a.plot(th, [r["commit_rate_tf"] for r in q], "o-", label="token2 commit rate")
    a.plot(th, [r["agreement"] for r in q], "s-", label="agreement with AR greedy (committed)")
    a.plot(th, [r["gold_accuracy"] for r in q], "^-", label="equal to gold (committed)")
    a.set(xlabel="confidence threshold θ", ylim=(0, 1.02), title="Token2 (teacher forced)")
    a.legend()
    a = ax[1, 0]
    sp = [r for r in report["speed"] if r["mode"] == "pipo"]
    a.plot([r["threshold"] for r in sp], [r["tokens_per_s"] for r in sp], "o-", label="pipo")
    for r in report["speed"]:
        if r["mode"] != "pipo":
            a.axhline(
                r["tokens_per_s"],
                ls="--",
                color="k" if r["mode"] == "ar" else "C2",
                label=r["mode"],
            )
    a.set(xlabel="confidence threshold θ", ylabel="tokens/s (CPU, batch 1)", title="Speed")
    a.legend()
    a = ax[1, 1]
    fpr, tpr = report["roc"]["fpr"], report["roc"]["tpr"]
    a.plot(fpr, tpr, label=f"AUC = {report['auc_agree']:.3f}")
    a.plot([0, 1], [0, 1], color="gray", ls=":")
    a.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="Confidence vs 'token2 == AR greedy'",
    )
    a.legend()
    fig.suptitle(report["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def roc_points(score: torch.Tensor, label: torch.Tensor, n: int = 101) -> dict:
    """ROC curve at n cut points spread over the score's quantiles (so ties do not hide it)."""
    cuts = [*torch.quantile(score.float(), torch.linspace(1, 0, n)).tolist(), -1.0]
    pos, neg = label.sum().item(), (~label).sum().item()
    tpr = [((score >= c) & label).sum().item() / max(1, pos) for c in cuts]
    fpr = [((score >= c) & ~label).sum().item() / max(1, neg) for c in cuts]
    return {"fpr": fpr, "tpr": tpr}


# ---------------------------------------------------------------------------- PIPO-2 vs PIPO-4


def kv_bytes_per_token(engine: Engine, tokens_per_pass: float) -> float:
    """KV-cache bytes one decoded token holds: one cache entry (every layer of the cache: the
    backbone's, plus one per MTP step for PIPO-k) over the tokens a pass emits."""
    cache = engine.cache
    return cache.bytes_per_page / cache.page_size / tokens_per_pass


def fold_speed(
    ar: ARModel,
    pipos: dict[str, PIPOModel],
    prompts: list[list[int]],
    thresholds: list[float],
    new_tokens: int,
    repeats: int,
) -> list[dict]:
    """Median tokens/s, tokens per pass, commit rate per group position and KV bytes per token of
    AR and of each PIPO model at each θ (greedy, batch 1, kernels), runs interleaved across all
    configurations so that load changes hit them alike."""
    engines = {
        ("ar", None): Engine(ar, mode="ar", use_kernels=True, max_batch_size=1, num_pages=64)
    }
    for name, model in pipos.items():
        for th in thresholds:
            engines[(name, th)] = Engine(
                model, mode="pipo", threshold=th, use_kernels=True, max_batch_size=1, num_pages=64
            )
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    runs: dict = {key: [] for key in engines}
    for e in engines.values():  # warm-up
        e.generate([Request(prompts[0], params)])
    for _ in range(repeats):
        for key, e in engines.items():
            for p in prompts:
                e.generate([Request(p, params)])
                s = e.stats
                runs[key].append((s.tokens_per_s, s.tokens_per_pass, s.commit_rate_by_position))
    rows = []
    for (name, th), vals in runs.items():
        per_pass = statistics.mean(v[1] for v in vals)
        positions = max(len(v[2]) for v in vals)
        by_pos = [
            statistics.mean(v[2][i] if i < len(v[2]) else 0.0 for v in vals)
            for i in range(positions)
        ]
        rows.append(
            {
                "model": name,
                "threshold": th,
                "tokens_per_s": statistics.median(v[0] for v in vals),
                "tokens_per_pass": per_pass,
                "commit_by_position": by_pos if name != "ar" else None,
                "kv_bytes_per_token": kv_bytes_per_token(engines[(name, th)], per_pass),
                "runs": len(vals),
            }
        )
    base = next(r["tokens_per_s"] for r in rows if r["model"] == "ar")
    for r in rows:
        r["vs_ar"] = r["tokens_per_s"] / base
    return rows


def fold_plot(report: dict, path: Path) -> None:
    """Speed against quality per θ (left), commit rate per group position (middle), tokens per
    pass (right), for every PIPO model of the fold report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 5))
    a = ax[0]
    ar_bpb = report["ar_bpb"]
    a.plot([ar_bpb], [1.0], "ks", label="AR")
    a.axvline(1.1 * ar_bpb, color="gray", ls=":", label="AR bpb + 10%")
    a.axhline(2.2, color="C3", ls=":", lw=0.8, label="2.2x AR (target)")
    for i, name in enumerate(report["models"]):
        pts = [(q["bpb"], q["vs_ar"], q["threshold"]) for q in report["quality"][name]]
        pts = [p for p in pts if p[1] is not None]
        a.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=name)
        for x, y, th in pts:
            a.annotate(f"{th:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    a.set(
        xlabel="held-out bits per byte (gated decoding)",
        ylabel="tokens/s / AR tokens/s (CPU, batch 1)",
        title="Speed vs quality (labels: θ)",
    )
    a.legend(fontsize=8)
    a = ax[1]
    for i, name in enumerate(report["models"]):
        q = report["quality"][name]
        th = [r["threshold"] for r in q]
        for p in range(len(q[0]["commit_by_position"])):
            a.plot(
                th,
                [r["commit_by_position"][p] for r in q],
                ["o-", "s--", "^:"][p % 3],
                color=f"C{i}",
                label=f"{name} token {p + 2}",
            )
    a.set(
        xlabel="confidence threshold θ",
        ylabel="fraction of passes that commit it",
        ylim=(0, 1.02),
        title="Commit rate per group position (gated, teacher forced)",
    )
    a.legend(fontsize=8)
    a = ax[2]
    for i, name in enumerate(report["models"]):
        q = report["quality"][name]
        a.plot(
            [r["threshold"] for r in q],
            [r["tokens_per_pass"] for r in q],
            "o-",
            color=f"C{i}",
            label=name,
        )
    a.set(
        xlabel="confidence threshold θ",
        ylabel="tokens per backbone pass",
        title="Tokens per pass (gated, teacher forced)",
    )
    a.legend(fontsize=8)
    fig.suptitle(report["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fold_report(args) -> int:
    """AR, PIPO-2 and PIPO-4 in one run: gated bpb, commit rate per position and tokens per pass
    per θ (teacher forced on held-out windows), then speed per θ (engine, interleaved)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ar = load(args.ar, dtype=torch.float32).eval()
    pipos = {}
    for path in (args.pipo, args.pipo4):
        model = load(path, dtype=torch.float32).eval()
        assert isinstance(model, PIPOModel), path
        pipos[f"PIPO-{model.config.fold}"] = model
    _, heldout = load_corpus()
    gated = heldout_windows(heldout, args.gated_windows, args.window_len)
    t0 = time.perf_counter()
    ar_bpb, _ = ar_scores(ar, gated)
    q_ths = sorted({float(x) for x in args.quality_thresholds.split(",")})
    quality = {
        name: [{"threshold": th, **gated_decode(m, gated, th)} for th in q_ths]
        for name, m in pipos.items()
    }
    quality_s = time.perf_counter() - t0
    prompts = heldout_windows(heldout, args.prompts, args.prompt_len, seed=11).tolist()
    ths = sorted({float(x) for x in args.speed_thresholds.split(",")})
    t0 = time.perf_counter()
    rows = fold_speed(ar, pipos, prompts, ths, args.new_tokens, args.repeats)
    speed_s = time.perf_counter() - t0
    by_key = {(r["model"], r["threshold"]): r for r in rows}
    for name, q in quality.items():
        for r in q:
            sp = by_key.get((name, r["threshold"]))
            r["bpb_ratio"] = r["bpb"] / ar_bpb
            r["tokens_per_s"] = sp["tokens_per_s"] if sp else None
            r["vs_ar"] = sp["vs_ar"] if sp else None
            r["engine_tokens_per_pass"] = sp["tokens_per_pass"] if sp else None
    best = {}
    for name, q in quality.items():
        ok = [r for r in q if r["bpb_ratio"] <= 1.10 and r["vs_ar"] is not None]
        best[name] = max(ok, key=lambda r: r["vs_ar"]) if ok else None
    dev = torch.device("cpu")
    report = {
        "title": f"AR vs PIPO-2 vs PIPO-4 ({device_name(dev)}, {args.threads} thread(s), batch 1)",
        "models": list(pipos),
        "checkpoints": {
            "ar": repo_relative(args.ar),
            **{n: repo_relative(p) for n, p in zip(pipos, (args.pipo, args.pipo4), strict=True)},
        },
        "ar_bpb": ar_bpb,
        "quality": quality,
        "best_within_10pct": best,
        "settings": {
            k: repo_relative(v) if k in ("ar", "pipo", "pipo4", "out_dir") and v else str(v)
            for k, v in vars(args).items()
        },
        "quality_seconds": quality_s,
        "speed_seconds": speed_s,
        "load_average": list(os.getloadavg()),
    }
    folder = args.out_dir or LOCAL_RESULTS_DIR / device_name(dev)
    write_results("model_report_folds", dev, rows, extra=report, out_dir=folder)
    fold_plot(report, folder / "model_report_folds.png")
    print(f"AR held-out bpb {ar_bpb:.3f} ({args.gated_windows} windows of {args.window_len})")
    for name, q in quality.items():
        print(f"\n{name}")
        print(
            format_table(
                [{**r, "by_pos": " ".join(f"{c:.2f}" for c in r["commit_by_position"])} for r in q],
                [
                    ("threshold", "θ", ".1f"),
                    ("bpb", "bpb", ".3f"),
                    ("bpb_ratio", "/ AR", ".3f"),
                    ("by_pos", "commit by position", ""),
                    ("tokens_per_pass", "tokens/pass (gated run)", ".2f"),
                    ("tokens_per_s", "engine tokens/s", ".1f"),
                    ("vs_ar", "vs AR", ".2f"),
                ],
            )
        )
    print()
    print(
        format_table(
            rows,
            [
                ("model", "model", ""),
                ("threshold", "θ", ""),
                ("tokens_per_s", "tokens/s", ".1f"),
                ("tokens_per_pass", "tokens/pass", ".2f"),
                ("kv_bytes_per_token", "KV bytes/token", ".0f"),
                ("vs_ar", "vs AR", ".2f"),
            ],
        )
    )
    for name, r in best.items():
        if r is None:
            print(f"{name}: no θ with bpb within 10% of AR's")
        else:
            print(
                f"{name}: fastest θ with bpb <= 1.10 x AR: θ = {r['threshold']}, bpb "
                f"{r['bpb']:.3f} ({r['bpb_ratio']:.3f} x AR), {r['vs_ar']:.2f}x AR tokens/s"
            )
    print(f"wrote {folder / 'model_report_folds.json'} and {folder / 'model_report_folds.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ar", default=str(BUILTIN_DIR / "ar"), help="AR checkpoint folder")
    p.add_argument("--pipo", default=str(BUILTIN_DIR / "pipo"), help="PIPO checkpoint folder")
    p.add_argument(
        "--folds",
        action="store_true",
        help="compare AR, --pipo and --pipo4 (model_report_folds.json / .png) instead",
    )
    p.add_argument("--pipo4", default=str(BUILTIN_DIR / "pipo4"), help="--folds: the PIPO-4")
    p.add_argument(
        "--quality-thresholds",
        default=",".join(f"{t:g}" for t in THRESHOLDS),
        help="--folds: the θ of the gated bpb runs",
    )
    p.add_argument("--windows", type=int, default=64, help="held-out windows for quality")
    p.add_argument("--window-len", type=int, default=256)
    p.add_argument("--gated-windows", type=int, default=32, help="windows for the gated bpb")
    p.add_argument("--prompts", type=int, default=4, help="held-out prompts for speed")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (speed and quality)")
    p.add_argument("--speed-thresholds", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="few windows / prompts (smoke test)")
    p.add_argument("--no-speed", action="store_true", help="quality only")
    args = p.parse_args(argv)
    if args.quick:
        args.windows, args.gated_windows, args.prompts, args.repeats = 8, 4, 1, 1
        args.new_tokens, args.speed_thresholds = 32, "0,0.5,1"
        args.quality_thresholds = "0,0.5,1"
    if args.folds:
        return fold_report(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ar = load(args.ar, dtype=torch.float32).eval()
    pipo = load(args.pipo, dtype=torch.float32).eval()
    assert isinstance(ar, ARModel) and isinstance(pipo, PIPOModel)
    _, heldout = load_corpus()
    windows = heldout_windows(heldout, args.windows, args.window_len)

    t0 = time.perf_counter()
    ar_bpb, ar_greedy = ar_scores(ar, windows)
    st = token2_stats(pipo, windows, ar_greedy)
    conf, agree, correct = st["confidence"], st["agree"], st["correct"]
    auc_agree, auc_gold = roc_auc(conf, agree), roc_auc(conf, correct)
    gated = windows[: args.gated_windows]
    ar_bpb_gated, _ = ar_scores(ar, gated)
    quality = []
    for th in THRESHOLDS:
        bpb, commit = gated_bpb(pipo, gated, th)
        keep = conf >= th if th < 1 else torch.zeros_like(agree)
        n = int(keep.sum())
        quality.append(
            {
                "threshold": th,
                "pipo_bpb": bpb,
                "bpb_ratio": bpb / ar_bpb_gated,
                "commit_rate_gated": commit,
                "commit_rate_tf": n / len(keep),
                "agreement": agree[keep].float().mean().item() if n else None,
                "gold_accuracy": correct[keep].float().mean().item() if n else None,
            }
        )
    ok = [r["threshold"] for r in quality if r["bpb_ratio"] <= 1.10]
    recommended = min(ok) if ok else 1.0
    quality_s = time.perf_counter() - t0

    prompts = heldout_windows(heldout, args.prompts, args.prompt_len, seed=11).tolist()
    ths = sorted({float(x) for x in args.speed_thresholds.split(",")} | {recommended})
    if args.no_speed:
        ths, args.new_tokens, args.repeats, prompts = [recommended], 8, 1, prompts[:1]
    speed_rows = speed(ar, pipo, prompts, ths, args.new_tokens, args.repeats)
    at = next(r for r in speed_rows if r["mode"] == "pipo" and r["threshold"] == recommended)

    dev = torch.device("cpu")
    report = {
        "title": f"built-in model report ({device_name(dev)}, {args.threads} thread(s))",
        "ar_checkpoint": repo_relative(args.ar),
        "pipo_checkpoint": repo_relative(args.pipo),
        "ar_bpb": ar_bpb_gated,
        "ar_bpb_all_windows": ar_bpb,
        "auc_agree": auc_agree,
        "auc_gold": auc_gold,
        "recommended_threshold": recommended,
        "speedup_at_recommended": at["speedup"],
        "quality": quality,
        "speed": speed_rows,
        "roc": roc_points(conf, agree),
        "settings": {
            k: repo_relative(v) if k in ("ar", "pipo") else str(v) for k, v in vars(args).items()
        },
        "quality_seconds": quality_s,
    }
    folder = args.out_dir or LOCAL_RESULTS_DIR / device_name(dev)
    write_results("model_report", dev, [], extra=report, out_dir=folder)
    plot(report, folder / "model_report.png")

    print(
        f"AR held-out bpb {ar_bpb_gated:.3f} (on {args.windows} windows: {ar_bpb:.3f}); "
        f"confidence AUC (token2 == AR greedy) {auc_agree:.3f}, (== gold) {auc_gold:.3f}"
    )
    print(
        format_table(
            quality,
            [
                ("threshold", "θ", ".1f"),
                ("pipo_bpb", "PIPO bpb", ".3f"),
                ("bpb_ratio", "/ AR", ".3f"),
                ("commit_rate_gated", "commit (gated run)", ".3f"),
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
                ("ms_per_pass", "ms/pass", ".2f"),
                ("commit_rate", "commit", ".3f"),
                ("speedup", "vs ar", ".2f"),
            ],
        )
    )
    print(
        f"\nrecommended θ = {recommended} (smallest with PIPO bpb <= 1.10 x AR): "
        f"pipo {at['tokens_per_s']:.1f} tokens/s = {at['speedup']:.2f}x ar"
    )
    print(f"wrote {folder / 'model_report.json'} and {folder / 'model_report.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

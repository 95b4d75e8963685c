"""Training of the draft heads of mode "spec": ``pipo train --stage mtp`` / ``--stage medusa``.

The backbone (``--init-from``, default: the built-in AR checkpoint) is frozen: its hidden states
are computed on the fly under no_grad for each batch of the stdlib corpus, and only the head
(pipo.heads) trains, with the AR stage's schedule (warm-up, cosine decay, AdamW, clipping). The
run resumes from ``<out>/state.pt``; ``<out>/final`` is the float16 head checkpoint that
``pipo.heads.load_head`` reads (the shipped ones are ``pipo/checkpoints/{mtp,medusa}``).

Losses (pipo.heads), soft cross-entropies against the backbone's own distribution of the same
token (KL(p_AR || p_head) + const): mtp — each chain step's prediction of t_{q+2}, for
``MTP_DEPTH`` steps in which step s >= 1 reads step s-1's own output, weighted 0.8^s; medusa —
head k's prediction of t_{j+1+k}, weighted 0.8^(k-1), over ``MEDUSA_HEADS`` heads.

Example::

    pipo train --stage mtp --out runs/mtp --steps 400 --batch-size 8 --lr 1e-3
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import BUILTIN_DIR, load
from .data import load_corpus, sample_batch
from .heads import medusa_loss, mtp_loss, new_head, save_head

__all__ = ["HEAD_STAGES", "MEDUSA_HEADS", "MTP_DEPTH", "evaluate_head", "train_head"]

HEAD_STAGES = ("mtp", "medusa")
MTP_DEPTH = 3  # chain steps trained (step s reads step s-1's output)
MEDUSA_HEADS = 4


def _loss(stage: str, head, backbone, tokens):
    if stage == "mtp":
        return mtp_loss(head, backbone, tokens, depth=MTP_DEPTH)
    return medusa_loss(head, backbone, tokens)


@torch.no_grad()
def evaluate_head(stage: str, head, backbone, batches: list[torch.Tensor]) -> dict[str, float]:
    """Mean loss parts (CE per step / head, top-1 accuracies) over held-out batches."""
    sums: dict[str, float] = {}
    for tokens in batches:
        _, parts = _loss(stage, head, backbone, tokens)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(batches) for k, v in sums.items()}


def train_head(
    cfg,
    out: str | Path,
    *,
    init_from: str | None = None,
    progress: bool = True,
    corpus=None,
    stop_after: int | None = None,
):
    """Train (or resume) the head of ``cfg.stage`` (a pipo.train.TrainConfig) into ``out``:
    ``state.pt`` every ``save_every`` steps, ``log.jsonl`` of the evaluations, ``final/``
    (float16). Returns the head (float32, eval mode)."""
    from .train import _eval_batches, _lr, _optimizer

    if cfg.stage not in HEAD_STAGES:
        raise ValueError(f"stage: expected one of {HEAD_STAGES}, got {cfg.stage!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    backbone = load(init_from or BUILTIN_DIR / "ar", dtype=torch.float32)
    if type(backbone).__name__ != "ARModel":
        raise ValueError(f"--init-from {init_from}: the {cfg.stage} stage needs an AR backbone")
    backbone.eval().requires_grad_(False)
    shape = {"num_heads": MEDUSA_HEADS} if cfg.stage == "medusa" else {}
    head = new_head(cfg.stage, backbone, **shape)
    head.train()
    train_stream, heldout_stream = corpus if corpus is not None else load_corpus()
    opt = _optimizer(head, cfg)
    step, elapsed = 0, 0.0
    state_file = out / "state.pt"
    if state_file.is_file():
        state = torch.load(state_file, weights_only=True)
        head.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state.get("elapsed", 0.0)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    eval_set = _eval_batches(heldout_stream, cfg)
    log = (out / "log.jsonl").open("a")
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=cfg.stage, unit="step")
    t0, elapsed0 = time.perf_counter(), elapsed
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    budget = 60 * cfg.time_budget
    while step < end:
        elapsed = elapsed0 + time.perf_counter() - t0
        if budget > 0 and elapsed >= budget:
            break
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable: batch = f(step)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step, elapsed)
        tokens = sample_batch(train_stream, cfg.batch_size, cfg.seq_len, g)
        loss, parts = _loss(cfg.stage, head, backbone, tokens)
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in parts.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        step += 1

        bar.update(1)
        now = elapsed0 + time.perf_counter() - t0
        last = step == cfg.steps or (budget > 0 and now >= budget)
        if step % cfg.eval_every == 0 or last:
            head.eval()
            metrics = evaluate_head(cfg.stage, head, backbone, eval_set)
            head.train()
            record = {"step": step, "loss": loss.item(), "elapsed_s": round(now, 1), **metrics}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.write(" ".join(f"{k}={v:.4g}" for k, v in record.items()))
        if step % cfg.save_every == 0 or last:
            tmp = out / "state.pt.tmp"
            state = {"model": head.state_dict(), "optimizer": opt.state_dict(), "step": step}
            torch.save({**state, "elapsed": now}, tmp)
            tmp.replace(state_file)
    bar.close()
    log.close()
    head.eval()
    finished = step >= cfg.steps or (budget > 0 and elapsed0 + time.perf_counter() - t0 >= budget)
    if finished:
        export = new_head(cfg.stage, backbone, **shape)
        export.load_state_dict(head.state_dict())
        save_head(export.half(), backbone.config, out / "final")
    return head

"""Training of the built-in models: ``pipo train``.

Three stages, each resumable from its own output folder:

- ``ar``:   plain next-token cross-entropy of an ``ARModel`` (the baseline, and spec mode's verifier).
- ``pipo``: SFT of a ``PIPOModel`` with the paper's losses (docs/method.md): backbone CE on the next
  pair's first token + λ · MTP CE on its second token + μ · BCE of the confidence against the MTP
  head's own detached probability of the gold token, on inputs with the random PAD-split
  augmentation (fraction ~ U[0, 0.25]). ``--init-from`` starts it from a trained AR backbone
  (``PIPOModel.from_backbone``).
- ``opd``:  on-policy distillation of the PIPO model from the AR model: the student samples
  rollouts with the engine, then both models score them; the loss is the reverse KL
  KL(p_student || p_AR), computed over the whole vocabulary at every sampled position, plus the
  confidence BCE against α = min(1, p_AR(y) / p_student(y)) of the sampled token2 y.

Training runs dense (no KV cache): ``dense_hidden`` / ``dense_pipo`` (pipo.model, re-exported
here) evaluate the same weights as the engine's paged forward (tests/test_train.py checks they
agree).

Example::

    pipo train --stage ar --out runs/ar --steps 1200
    pipo train --stage pipo --out runs/pipo --init-from runs/ar/final --steps 1200
    pipo train --stage opd --out runs/opd --init-from runs/pipo/final --teacher runs/ar/final
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import train_real
from .checkpoint import load, save
from .config import ModelConfig, preset
from .data import load_corpus, pad_split, sample_batch
from .model import ARModel, PIPOModel, dense_hidden, dense_pipo

__all__ = [
    "BUILTIN_CONFIG",
    "TrainConfig",
    "ar_loss",
    "dense_hidden",
    "dense_pipo",
    "evaluate",
    "group_targets",
    "main",
    "pipo_loss",
    "pipo_targets",
    "train",
]

# The built-in model: the tiny preset with a narrower MLP, so that the PIPO checkpoint (backbone +
# MTP layer + compressor + confidence head, ~3.4 M parameters) fits in 8 MB at 16 bits.
BUILTIN_CONFIG: ModelConfig = preset("tiny", intermediate_size=512)
LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    """Hyper-parameters of one stage. The defaults are the built-in model's recipe."""

    stage: str = "ar"  # "ar" | "pipo" | "opd" | "mtp" | "medusa" (the last two: pipo.train_heads)
    steps: int = 1200
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 100
    time_budget: float = 0.0  # minutes; > 0: the schedule ends at steps or at this time, first
    pad_split_max: float = 0.25  # PAD-split fraction ~ U[0, pad_split_max] (pipo stage)
    mtp_weight: float = 1.0  # λ
    conf_weight: float = 1.0  # μ
    fold: int = 2  # pipo stage: tokens per group k (the PIPO-k model; 2 = pairs)
    # opd stage
    rollout_prompt: int = 64
    rollout_tokens: int = 64
    rollout_threshold: float = 0.5
    rollout_temperature: float = 1.0


# ---------------------------------------------------------------------------- losses


def ar_loss(model: ARModel, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE (nats) of token rows int64 [B, T]."""
    h = dense_hidden(model, model.embed_tokens(tokens[:, :-1]))
    logits = model.logits(h)
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def group_targets(tokens: torch.Tensor, pad_id: int, fold: int):
    """Targets of PIPO rows int64 [B, T] read as groups of k = ``fold`` tokens (every group
    starts with a real token, as ``pad_split`` makes them).

    Returns (mtp_in [B, L, J], target1 [B, L], targets [B, L, J]), J = k - 1, L = T / k, with -100
    where there is none. target1_i = the first token of group i+1; MTP step j (column j - 1)
    reads the (j-1)-th real token after target1 (mtp_in; 0 where none) and predicts the j-th
    (targets). Real tokens are counted along the row with PAD skipped: a PAD is a gate artefact,
    not a token to predict; at inference the chain always proposes the following real tokens.
    """
    b, t = tokens.shape
    k, dev = fold, tokens.device
    L, J = t // k, fold - 1
    real = tokens != pad_id
    rank = real.long().cumsum(1) - 1  # index of each real token in the row's PAD-free stream
    compact = torch.full((b, t + k), -100, dtype=tokens.dtype, device=dev)
    rows = torch.arange(b, device=dev).unsqueeze(1).expand(b, t)
    compact[rows[real], rank[real]] = tokens[real]
    first = k * torch.arange(1, L + 1, device=dev)  # position of group i+1's first token
    inside = first < t
    r = rank[:, first.clamp(max=t - 1)]  # [B, L]
    idx = r.unsqueeze(-1) + torch.arange(k, device=dev)  # ranks of target1 and the J after it
    picked = compact.gather(1, idx.flatten(1)).view(b, L, k)
    picked = torch.where(inside.view(1, L, 1), picked, torch.full_like(picked, -100))
    target1 = picked[..., 0]
    targets = picked[..., 1:]
    return picked[..., :J].clamp(min=0), target1, targets


def pipo_targets(tokens: torch.Tensor, pad_id: int):
    """``group_targets`` of pairs (k = 2) in the pairs' layout: (mtp_in [B, L], target1 [B, L],
    target2 [B, L]); target2_i = t_{2i+3}, or t_{2i+4} when pair i+1 was split."""
    mtp_in, target1, targets = group_targets(tokens, pad_id, 2)
    return mtp_in[..., 0], target1, targets[..., 0]


def pipo_loss(model: PIPOModel, tokens: torch.Tensor, mtp_weight=1.0, conf_weight=1.0):
    """PIPO SFT loss of (augmented) token rows int64 [B, T]: (total, dict of float parts in nats).

    total = CE(logits1, target1) + λ CE(logits of the MTP steps, their targets) + μ BCE(c_j,
    p_mtp_j(target_j).detach()), the MTP and confidence terms averaged over every (group, step)
    with a target (k = 2: the pairs' token2). Parts: ce1, ce2 (all MTP steps), bce, and for
    k > 2 ``ce_step{j}`` per step.
    """
    k = model.config.fold
    mtp_in, target1, targets = group_targets(tokens, model.config.pad_id, k)
    h, m, conf = dense_pipo(model, tokens, mtp_in)
    ce1 = F.cross_entropy(model.logits(h).flatten(0, 1), target1.flatten())
    logp = F.log_softmax(model.logits(m), -1)
    valid = targets >= 0
    gold = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ce2 = -(gold[valid]).mean()
    conf_target = gold.detach().exp()
    bce = F.binary_cross_entropy(conf[valid].clamp(1e-6, 1 - 1e-6), conf_target[valid])
    total = ce1 + mtp_weight * ce2 + conf_weight * bce
    parts = {"ce1": ce1.item(), "ce2": ce2.item(), "bce": bce.item()}
    if k > 2:
        for j in range(k - 1):
            v = valid[..., j]
            parts[f"ce_step{j + 1}"] = -(gold[..., j][v]).mean().item()
    return total, parts


def opd_loss(student: PIPOModel, teacher: ARModel, tokens: torch.Tensor, gen_from: int):
    """On-policy distillation loss of rollout rows int64 [B, T] (T even; positions >= gen_from
    were sampled by the student): reverse KL(p_s || p_AR) of token1 and token2 over the whole
    vocabulary at every generated position, + BCE(c, min(1, p_AR(y2) / p_s(y2))) for the sampled
    token2 y2. Returns (total, dict of float parts)."""
    mtp_in, target1, target2 = pipo_targets(tokens, student.config.pad_id)
    h, m, conf = dense_pipo(student, tokens, mtp_in)
    with torch.no_grad():
        t_logp = F.log_softmax(
            teacher.logits(dense_hidden(teacher, teacher.embed_tokens(tokens))), -1
        )
    # pair i: token1 is position 2i+2 (teacher row 2i+1), token2 is position 2i+3 (teacher row 2i+2)
    L = tokens.shape[1] // 2
    idx = torch.arange(L, device=tokens.device)
    rows1 = (2 * idx + 1).clamp(max=tokens.shape[1] - 1)
    rows2 = (2 * idx + 2).clamp(max=tokens.shape[1] - 1)
    gen1 = (2 * idx + 2 >= gen_from) & (target1[0] >= 0)
    gen2 = (2 * idx + 3 >= gen_from) & (target2[0] >= 0)
    s1 = F.log_softmax(student.logits(h), -1)
    s2 = F.log_softmax(student.logits(m), -1)
    kl1 = (s1.exp() * (s1 - t_logp[:, rows1])).sum(-1)[:, gen1].mean()
    kl2 = (s2.exp() * (s2 - t_logp[:, rows2])).sum(-1)[:, gen2].mean()
    y2 = target2.clamp(min=0).unsqueeze(-1)
    with torch.no_grad():
        alpha = (t_logp[:, rows2].gather(-1, y2) - s2.gather(-1, y2)).exp().clamp(max=1.0)
    bce = F.binary_cross_entropy(conf[:, gen2].clamp(1e-6, 1 - 1e-6), alpha.squeeze(-1)[:, gen2])
    total = kl1 + kl2 + bce
    return total, {"kl1": kl1.item(), "kl2": kl2.item(), "bce": bce.item()}


# ---------------------------------------------------------------------------- evaluation


def _eval_batches(stream: np.ndarray, cfg: TrainConfig) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(12345)  # the same held-out windows in every evaluation
    return [sample_batch(stream, cfg.batch_size, cfg.seq_len, g) for _ in range(cfg.eval_batches)]


@torch.no_grad()
def evaluate(model: ARModel | PIPOModel, batches: list[torch.Tensor]) -> dict[str, float]:
    """Held-out bits per byte. AR: next-token CE / ln 2. PIPO (teacher-forced, every token2
    committed): "bpb1" of token1, "bpb2" of token2 (MTP) and "bpb" of both together."""
    was_training = model.training
    model.eval()
    if isinstance(model, PIPOModel):
        sums: dict[str, float] = {}
        for tokens in batches:
            _, parts = pipo_loss(model, tokens)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        n, j = len(batches), model.config.fold - 1
        s1, s2 = sums["ce1"], sums["ce2"]
        out = {"bpb1": s1 / n / LN2, "bpb2": s2 / n / LN2, "bpb": (s1 + j * s2) / (1 + j) / n / LN2}
        for key in sorted(k for k in sums if k.startswith("ce_step")):
            out["bpb_step" + key.removeprefix("ce_step")] = sums[key] / n / LN2
    else:
        out = {"bpb": sum(ar_loss(model, t).item() for t in batches) / len(batches) / LN2}
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------- loop


def _progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Fraction of the schedule done: by steps, or by wall time when a time budget is set (then
    a run on a busy machine ends on time with a fully decayed learning rate, at fewer steps)."""
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_budget > 0:
        frac = max(frac, elapsed / (60 * cfg.time_budget))
    return frac


def _lr(cfg: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = _progress(cfg, step, elapsed)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _build(cfg: TrainConfig, init_from: str | None, config: ModelConfig):
    if cfg.stage == "opd" and cfg.fold != 2:
        raise ValueError(f"--fold: the opd stage is implemented for pairs only, got {cfg.fold}")
    if cfg.stage == "ar":
        if init_from:
            return load(init_from, dtype=torch.float32)
        model = ARModel(config)
        model.init_random(cfg.seed)
        return model
    if init_from:
        loaded = load(init_from, dtype=torch.float32)
        if not isinstance(loaded, PIPOModel):
            return PIPOModel.from_backbone(loaded, fold=cfg.fold)
        if loaded.config.fold != cfg.fold:
            raise ValueError(
                f"--fold {cfg.fold}: --init-from {init_from} is a PIPO model with fold "
                f"{loaded.config.fold}"
            )
        return loaded
    if cfg.stage == "opd":
        raise ValueError("--init-from: the opd stage needs a PIPO (or AR) checkpoint to start from")
    model = PIPOModel(config.replace(fold=cfg.fold))
    model.init_random(cfg.seed)
    return model


def _rollouts(student: PIPOModel, stream: np.ndarray, cfg: TrainConfig, g: torch.Generator):
    """Student rollouts: int64 [B, prompt + new] rows (PAD removed; cut to an even length)."""
    from .engine import Engine, Request, SamplingParams

    prompts = sample_batch(stream, cfg.batch_size, cfg.rollout_prompt, g)
    engine = Engine(
        student,
        mode="pipo",
        threshold=cfg.rollout_threshold,
        use_kernels=False,
        max_batch_size=cfg.batch_size,
        num_pages=cfg.batch_size * ((cfg.rollout_prompt + cfg.rollout_tokens) // 16 + 4),
    )
    seed = int(torch.randint(0, 2**31, (), generator=g))
    params = SamplingParams(
        temperature=cfg.rollout_temperature,
        seed=seed,
        max_new_tokens=cfg.rollout_tokens,
        ignore_eos=True,
    )
    student.eval()
    results = engine.generate([Request(p.tolist(), params) for p in prompts])
    student.train()
    length = cfg.rollout_prompt + min(len(r.token_ids) for r in results)
    length -= length % 2
    rows = [(r.prompt_ids + r.token_ids)[:length] for r in results]
    return torch.tensor(rows, dtype=torch.int64)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    init_from: str | None = None,
    teacher: str | None = None,
    config: ModelConfig = BUILTIN_CONFIG,
    corpus: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> ARModel | PIPOModel:
    """Run (or resume) one stage into folder ``out``: ``state.pt`` (model, optimizer, step) every
    ``save_every`` steps, ``log.jsonl`` with the evaluations, ``final/`` (float16 checkpoint).

    ``corpus``: (train, heldout) token streams (default: ``load_corpus()``). ``stop_after``: leave
    after this many steps of this call (as an interruption would; a later call resumes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train_stream, heldout_stream = corpus if corpus is not None else load_corpus()
    model = _build(cfg, init_from, config)
    model.train()
    opt = _optimizer(model, cfg)
    step, elapsed = 0, 0.0
    state_file = out / "state.pt"
    if state_file.is_file():
        state = torch.load(state_file, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state.get("elapsed", 0.0)
    ar_teacher = None
    if cfg.stage == "opd":
        if teacher is None:
            raise ValueError("--teacher: the opd stage needs the AR checkpoint")
        ar_teacher = load(teacher, dtype=torch.float32).eval().requires_grad_(False)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    eval_set = _eval_batches(heldout_stream, cfg)
    log = (out / "log.jsonl").open("a")
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=cfg.stage, unit="step")
    tokens_seen, t0, elapsed0 = 0, time.perf_counter(), elapsed
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    while step < end:
        elapsed = elapsed0 + time.perf_counter() - t0
        if cfg.time_budget > 0 and elapsed >= 60 * cfg.time_budget:
            bar.write(f"time budget of {cfg.time_budget} min reached at step {step}")
            break
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable: batch = f(step)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step, elapsed)
        if cfg.stage == "ar":
            tokens = sample_batch(train_stream, cfg.batch_size, cfg.seq_len, g)
            loss = ar_loss(model, tokens)
            parts = {}
        elif cfg.stage == "pipo":
            tokens = sample_batch(train_stream, cfg.batch_size, cfg.seq_len, g)
            tokens = pad_split(
                tokens, cfg.pad_split_max, g, model.config.pad_id, fold=model.config.fold
            )
            loss, parts = pipo_loss(model, tokens, cfg.mtp_weight, cfg.conf_weight)
        else:
            tokens = _rollouts(model, train_stream, cfg, g)
            loss, parts = opd_loss(model, ar_teacher, tokens, cfg.rollout_prompt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens_seen += tokens.numel()
        rate = tokens_seen / (time.perf_counter() - t0)
        bar.set_postfix(
            loss=f"{loss.item():.3f}",
            tok_s=f"{rate:.0f}",
            **{k: f"{v:.3f}" for k, v in parts.items()},
        )
        bar.update(1)
        last = step == cfg.steps or (
            cfg.time_budget > 0 and elapsed0 + time.perf_counter() - t0 >= 60 * cfg.time_budget
        )
        if step % cfg.eval_every == 0 or last:
            metrics = evaluate(model, eval_set)
            record = {"step": step, "loss": loss.item(), **parts, **metrics, "tok_s": rate}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.write(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in record.items()
                )
            )
        if step % cfg.save_every == 0 or last:
            tmp = out / "state.pt.tmp"
            done = elapsed0 + time.perf_counter() - t0
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
            torch.save({**state, "elapsed": done}, tmp)
            tmp.replace(state_file)
    bar.close()
    log.close()
    model.eval()
    if step < cfg.steps and not (cfg.time_budget > 0 and elapsed >= 60 * cfg.time_budget):
        return model  # interrupted (stop_after): no final export
    export = type(model)(model.config)
    export.load_state_dict(model.state_dict())
    save(export.half(), out / "final")
    return model


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``pipo train`` options (one per TrainConfig field, plus the paths)."""
    p.add_argument("--out", required=True, help="output folder (resumes from its state.pt)")
    p.add_argument("--init-from", help="checkpoint to start from (pipo: an AR backbone works)")
    p.add_argument("--teacher", help="opd stage: the AR checkpoint to distil from")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    for name, value in asdict(TrainConfig()).items():
        flag = "--" + name.replace("_", "-")
        if name == "stage":
            p.add_argument(flag, choices=("ar", "pipo", "opd", "mtp", "medusa"), default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    train_real.add_arguments(p)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    fields = asdict(TrainConfig())
    cfg = TrainConfig(**{k: getattr(args, k) for k in fields})
    if cfg.stage in ("mtp", "medusa"):  # draft heads on a frozen backbone (pipo.train_heads)
        from .train_heads import train_head

        train_head(cfg, args.out, init_from=args.init_from, progress=not args.no_progress)
        return 0
    if cfg.stage == "pipo" and train_real.is_real_backbone(args.init_from):
        return train_real.main(args, cfg)  # a Hugging Face / GGUF backbone (docs/training.md)
    train(
        cfg, args.out, init_from=args.init_from, teacher=args.teacher, progress=not args.no_progress
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="pipo.train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))

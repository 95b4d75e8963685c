"""PIPO heads on a real pretrained backbone: ``pipo train --stage pipo --init-from DIR``, where DIR
is a Hugging Face / GGUF-converted Llama or Qwen3 folder (e.g. ``pipo fetch smollm2``).

What differs from the built-in recipe (pipo.train), and why:

- **PAD.** Real vocabularies have no PIPO PAD (SmolLM2's pad = eos = 2, a real token the model
  emits). One id is appended, ``pad_id = V``: a zero embedding row (so the fold of (t, PAD) starts
  as e(t) alone) that is also the tied LM head's row (logit 0). It stays frozen: training the
  row would mean a gradient through the whole [V+1, H] matrix every step, and no loss asks for
  PAD (pipo.train.pipo_targets).
- **What trains.** The compressor (sum init), the MTP head (its decoder layer copied from the
  backbone's last layer) and the confidence head fully, and a rank-r LoRA on every linear of
  every backbone layer (q/k/v/o, gate/up/down); embeddings and norms stay frozen. Full
  fine-tuning of 135 M parameters is out of reach of a 2-core CPU hour (AdamW state alone is
  1 GB, and every step updates 540 MB of weights); LoRA keeps the step near one forward + one
  backward pass, and the delta small enough to ship.
- **Data.** The stdlib corpus (pipo.data's file split) tokenized with the backbone's tokenizer,
  windows cropped at line starts, mixed with the backbone's own greedy continuations of prompts
  drawn from the training files (self-distillation: on those rows the target is agreement with
  AR greedy decoding). The greedy rows are generated once, batched through the engine, and
  cached in the output folder.
- **Output.** ``final/``: a full PIPO checkpoint (LoRA merged, float32, + the tokenizer files) for
  ``pipo generate --model OUT/final --mode pipo``; ``delta/``: only the trained tensors (float16)
  plus the recipe, which ``apply_delta`` (``python -m pipo.train_real --delta D --backbone B
  --out O``) turns back into the full checkpoint given the backbone.

Resumable: ``state.pt`` (trained tensors, optimizer, step, wall time) every ``--save-every``
steps; re-running the same command continues. Example::

    pipo train --stage pipo --init-from ~/.cache/pipo/smollm2-135m-instruct --out runs/smollm2 \\
        --batch-size 4 --seq-len 256 --lr 5e-4 --time-budget 45 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import load, save
from .config import ModelConfig
from .data import corpus_files, pad_split, split_files
from .model import ARModel, PIPOModel
from .tokenizer import HFTokenizer

__all__ = [
    "LoRALinear",
    "add_lora",
    "apply_delta",
    "build_model",
    "extend_vocab_with_pad",
    "greedy_rows",
    "is_real_backbone",
    "merge_lora",
    "save_delta",
    "tokenize_corpus",
    "train_real",
    "window_batch",
]

LN2 = math.log(2.0)
DELTA_FORMAT = 1
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def is_real_backbone(path: str | Path | None) -> bool:
    """True for a Hugging Face folder (config.json without pipo's marker) or a .gguf file."""
    if path is None:
        return False
    p = Path(path).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        return True
    config = p / "config.json"
    return config.is_file() and "pipo_checkpoint" not in json.loads(config.read_text())


# ---------------------------------------------------------------------------- model surgery


@torch.no_grad()
def extend_vocab_with_pad(ar: ARModel) -> ARModel:
    """A copy of ``ar`` with one more token, ``pad_id = V`` (zero embedding row; with an untied
    head, a zero head row too), and the other ids unchanged. Returns a float32 ARModel."""
    c = ar.config
    config = c.replace(vocab_size=c.vocab_size + 1, pad_id=c.vocab_size)
    with torch.device("meta"):
        out = ARModel(config)
    out = out.to(torch.float32).to_empty(device="cpu")
    state = {k: v.float() for k, v in ar.state_dict().items()}
    zero = torch.zeros(1, c.hidden_size)
    state["embed_tokens.weight"] = torch.cat([state["embed_tokens.weight"], zero])
    if "lm_head.weight" in state:
        state["lm_head.weight"] = torch.cat([state["lm_head.weight"], zero])
    out.load_state_dict(state)
    return out


class LoRALinear(nn.Module):
    """y = base(x) + scale · (x Aᵀ) Bᵀ with A [r, in], B [out, r]; B starts at zero, so the layer
    starts equal to ``base``. ``base`` is frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        a = torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features)
        self.lora_a = nn.Parameter(a.to(base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t()) @ self.lora_b.t() * self.scale

    def merged(self) -> nn.Linear:
        """An nn.Linear with W + scale · B A."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
        return out


def _lora_sites(model: PIPOModel):
    """(parent module, attribute name) of every backbone linear LoRA adapts (not the MTP layer's:
    the MTP layer trains fully)."""
    for layer in model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                if hasattr(parent, name):
                    yield parent, name


def add_lora(model: PIPOModel, rank: int, alpha: float, seed: int = 0) -> None:
    """Replace every backbone linear with a LoRALinear in place."""
    if rank < 1:
        raise ValueError(f"lora_rank: expected >= 1, got {rank}")
    g = torch.Generator().manual_seed(seed)
    for parent, name in _lora_sites(model):
        setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, g))


def merge_lora(model: PIPOModel) -> None:
    """Fold every LoRALinear back into a plain nn.Linear in place (the saved checkpoint is then
    an ordinary PIPOModel that the engine and its kernels read)."""
    for parent, name in _lora_sites(model):
        module = getattr(parent, name)
        if isinstance(module, LoRALinear):
            setattr(parent, name, module.merged())


def _freeze_for_training(model: PIPOModel) -> None:
    """Trainable: compressor, MTP head, confidence head, LoRA factors. Frozen: the rest."""
    model.requires_grad_(False)
    for part in (model.compressor, model.mtp, model.confidence):
        part.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_a.requires_grad_(True)
            module.lora_b.requires_grad_(True)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def build_model(
    backbone: str | Path, lora_rank: int, lora_alpha: float, seed: int = 0
) -> PIPOModel:
    """The PIPO model to train on the real backbone at ``backbone`` (float32, LoRA attached):
    vocabulary + PAD, heads at their documented initialisation (PIPOModel.from_backbone)."""
    ar = load(Path(backbone).expanduser())
    if not isinstance(ar, ARModel):
        raise ValueError(f"--init-from {backbone}: expected an AR backbone, got a PIPO checkpoint")
    model = PIPOModel.from_backbone(extend_vocab_with_pad(ar))
    add_lora(model, lora_rank, lora_alpha, seed)
    _freeze_for_training(model)
    return model


# ---------------------------------------------------------------------------- data


def tokenize_corpus(tokenizer: HFTokenizer, root: str | Path | None = None, eos_id: int = 0):
    """(train, heldout) int32 token streams of the stdlib corpus (pipo.data's file split), each
    file's tokens followed by ``eos_id``."""
    train_files, heldout_files = split_files(corpus_files(root), root)

    def encode(files):
        texts = [f.read_bytes().decode("utf-8", errors="replace") for f in files]
        parts = []
        for enc in tokenizer.tokenizer.encode_batch(texts, add_special_tokens=False):
            parts += [np.asarray(enc.ids, dtype=np.int32), np.array([eos_id], dtype=np.int32)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    return encode(train_files), encode(heldout_files)


def newline_ids(tokenizer: HFTokenizer) -> np.ndarray:
    """bool [V]: the ids whose text contains a newline (a line starts after them)."""
    tok = tokenizer.tokenizer
    v = tok.get_vocab_size(with_added_tokens=True)
    return np.array(["\n" in tok.decode([i], skip_special_tokens=False) for i in range(v)])


def token_line_starts(stream: np.ndarray, newline: np.ndarray, eos_id: int) -> np.ndarray:
    """int64 [n]: offsets after a newline-bearing token or EOS (and 0), EOS itself excluded."""
    after = newline[stream[:-1]] | (stream[:-1] == eos_id)
    starts = np.concatenate([[0], np.flatnonzero(after) + 1]).astype(np.int64)
    return starts[stream[starts] != eos_id]


def window_batch(stream, starts, batch_size: int, seq_len: int, generator) -> torch.Tensor:
    """int64 [batch_size, seq_len]: crops of ``stream`` beginning at line starts (uniformly)."""
    starts = starts[: np.searchsorted(starts, len(stream) - seq_len, side="right")]
    if len(starts) == 0:
        raise ValueError(f"stream: no line start with {seq_len} tokens after it")
    pick = torch.randint(0, len(starts), (batch_size,), generator=generator).numpy()
    return torch.from_numpy(stream[starts[pick][:, None] + np.arange(seq_len)].astype(np.int64))


@torch.no_grad()
def greedy_rows(
    ar: ARModel, prompts: torch.Tensor, new_tokens: int, batch: int = 16, progress=None
) -> torch.Tensor:
    """The backbone's greedy continuations: int64 [N, P + new_tokens] rows (prompt then output),
    prompts int64 [N, P], decoded ``batch`` at a time through the engine (mode ar)."""
    from .engine import Engine, Request, SamplingParams

    n, p = prompts.shape
    page = 16
    engine = Engine(
        ar,
        mode="ar",
        use_kernels=False,
        max_batch_size=batch,
        page_size=page,
        num_pages=batch * ((p + new_tokens) // page + 2),
    )
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    rows = []
    for i in range(0, n, batch):
        chunk = prompts[i : i + batch].tolist()
        for r in engine.generate([Request(q, params) for q in chunk]):
            rows.append(r.prompt_ids + r.token_ids)
        if progress is not None:
            progress(len(rows))
    return torch.tensor(rows, dtype=torch.int64)


# ---------------------------------------------------------------------------- delta


def save_delta(model: PIPOModel, out: str | Path, recipe: dict) -> Path:
    """``out``/delta.safetensors (the trained tensors, float16) + delta.json (config + recipe)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.half().contiguous() for n, t in trainable_state(model).items()}
    save_file(tensors, str(out / "delta.safetensors"))
    meta = {"pipo_delta": DELTA_FORMAT, "config": model.config.to_dict(), **recipe}
    (out / "delta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def apply_delta(delta: str | Path, backbone: str | Path, out: str | Path) -> Path:
    """Rebuild the full PIPO checkpoint of a delta folder on its backbone folder into ``out``
    (float32, LoRA merged, with the backbone's tokenizer files)."""
    from safetensors.torch import load_file

    delta = Path(delta)
    meta = json.loads((delta / "delta.json").read_text())
    if meta.get("pipo_delta") != DELTA_FORMAT:
        raise ValueError(f"{delta / 'delta.json'}: not a pipo delta (format {DELTA_FORMAT})")
    model = build_model(backbone, meta["lora_rank"], meta["lora_alpha"])
    expected = ModelConfig.from_dict(meta["config"])
    if model.config != expected:
        raise ValueError(
            f"{backbone}: this backbone's config does not match the delta's ({delta}/delta.json)"
        )
    tensors = load_file(str(delta / "delta.safetensors"))
    missing = sorted(set(trainable_state(model)) - set(tensors))
    if missing:
        raise ValueError(f"{delta}: delta.safetensors lacks {missing[:4]}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    return _export(model, backbone, out)


def _export(model: PIPOModel, backbone: str | Path, out: str | Path) -> Path:
    """Merged float32 checkpoint + tokenizer files of the backbone folder into ``out``."""
    plain = copy.deepcopy(model)
    merge_lora(plain)
    plain.requires_grad_(False)
    out = save(plain, out)
    src = Path(backbone).expanduser()
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    return out


# ---------------------------------------------------------------------------- training


def _corpus(out: Path, tokenizer: HFTokenizer, eos_id: int, root) -> dict[str, np.ndarray]:
    """The tokenized corpus and its line starts, cached in ``out``/corpus.npz."""
    file = out / "corpus.npz"
    if file.is_file():
        with np.load(file) as z:
            return dict(z)
    train, heldout = tokenize_corpus(tokenizer, root, eos_id)
    newline = newline_ids(tokenizer)
    data = {
        "train": train,
        "heldout": heldout,
        "train_starts": token_line_starts(train, newline, eos_id),
        "heldout_starts": token_line_starts(heldout, newline, eos_id),
    }
    np.savez(out / "corpus.tmp.npz", **data)
    (out / "corpus.tmp.npz").replace(file)
    return data


def _distill_pool(out: Path, backbone, data, cfg, rows: int, prompt_len: int, log) -> torch.Tensor:
    """int64 [rows, seq_len]: the backbone's greedy continuations of training-file prompts,
    cached in ``out``/distill.pt (generated once)."""
    file = out / "distill.pt"
    if rows <= 0:
        return torch.zeros(0, cfg.seq_len, dtype=torch.int64)
    if file.is_file():
        pool = torch.load(file, weights_only=True)
        if pool.shape == (rows, cfg.seq_len):
            return pool
    if not 0 < prompt_len < cfg.seq_len:
        raise ValueError(f"distill_prompt: expected 0 < value < seq_len, got {prompt_len}")
    g = torch.Generator().manual_seed(cfg.seed + 777)
    prompts = window_batch(data["train"], data["train_starts"], rows, prompt_len, g)
    ar = load(Path(backbone).expanduser(), dtype=torch.float32).eval()
    t0 = time.perf_counter()
    pool = greedy_rows(
        ar,
        prompts,
        cfg.seq_len - prompt_len,
        progress=lambda n: log(f"distill: {n}/{rows} rows, {time.perf_counter() - t0:.0f} s"),
    )
    del ar
    torch.save(pool, out / "distill.pt.tmp")
    (out / "distill.pt.tmp").replace(file)
    return pool


@torch.no_grad()
def _ar_bits(backbone, batches: list[torch.Tensor]) -> float:
    """Teacher-forced bits per token of the plain backbone on the evaluation windows."""
    from .train import ar_loss

    ar = load(Path(backbone).expanduser(), dtype=torch.float32).eval()
    return sum(ar_loss(ar, t).item() for t in batches) / len(batches) / LN2


def _optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def train_real(
    cfg,
    out: str | Path,
    backbone: str | Path,
    *,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    distill_rows: int = 64,
    distill_prompt: int = 64,
    distill_fraction: float = 0.5,
    corpus_root: str | Path | None = None,
    bf16: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> PIPOModel:
    """Train (or resume) PIPO heads + LoRA on the real backbone folder ``backbone`` into ``out``
    (pipo.train.TrainConfig ``cfg``: steps, batch, lr schedule, time budget, PAD-split, λ, μ).

    Each batch: ``distill_fraction`` of the rows from the greedy pool (``distill_rows`` rows of
    ``distill_prompt`` corpus tokens + the backbone's greedy continuation; 0 rows: corpus only),
    the rest corpus windows; then the PAD-split augmentation and pipo.train.pipo_loss.
    ``bf16``: the training forward under CPU bfloat16 autocast (float32 master weights and
    evaluation; 1.7x the tokens/s of float32 on the AVX512-BF16 development CPU).
    ``stop_after``: leave after this many steps of this call (a later call resumes)."""
    from .train import _lr, evaluate, pipo_loss

    if cfg.seq_len % 2:
        raise ValueError(f"seq_len: expected an even length, got {cfg.seq_len}")
    if not 0.0 <= distill_fraction <= 1.0:
        raise ValueError(f"distill_fraction: expected a value in [0, 1], got {distill_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = Path(backbone).expanduser()
    if backbone.is_file():  # the tokenizer and its files are read from a folder
        raise ValueError(
            f"--init-from {backbone}: a file; convert it to a folder first (pipo convert FILE --out DIR)"
        )
    torch.manual_seed(cfg.seed)
    bar = tqdm(total=cfg.steps, disable=not progress, desc="pipo (real backbone)", unit="step")
    tokenizer = HFTokenizer.from_folder(backbone)
    model = build_model(backbone, lora_rank, lora_alpha, cfg.seed)
    model.train()
    c = model.config
    data = _corpus(out, tokenizer, c.eos_id, corpus_root)
    pool = _distill_pool(out, backbone, data, cfg, distill_rows, distill_prompt, bar.write)
    n_pool = round(cfg.batch_size * distill_fraction) if len(pool) else 0
    recipe = {
        "backbone": str(backbone),
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_targets": list(LORA_TARGETS),
        "distill_rows": distill_rows,
        "distill_prompt": distill_prompt,
        "distill_fraction": distill_fraction,
        "bf16_autocast": bf16,
        "train": asdict(cfg),
    }
    (out / "train_config.json").write_text(json.dumps(recipe, indent=2) + "\n")
    g_eval = torch.Generator().manual_seed(12345)
    eval_set = [
        window_batch(data["heldout"], data["heldout_starts"], cfg.batch_size, cfg.seq_len, g_eval)
        for _ in range(cfg.eval_batches)
    ]
    opt = _optimizer(model, cfg)
    step, elapsed, tokens_total = 0, 0.0, 0
    state_file = out / "state.pt"
    if state_file.is_file():
        state = torch.load(state_file, weights_only=True)
        model.load_state_dict(state["trainable"], strict=False)
        opt.load_state_dict(state["optimizer"])
        step, elapsed, tokens_total = state["step"], state["elapsed"], state["tokens"]
    log = (out / "log.jsonl").open("a")
    if step == 0:
        record = {"step": 0, "ar_bpt": _ar_bits(backbone, eval_set)}
        record |= _bits_of(evaluate(model, eval_set))
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.write(f"step 0: {record}")
    bar.reset(total=cfg.steps)
    bar.update(step)
    t0, elapsed0 = time.perf_counter(), elapsed
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    budget_s = 60 * cfg.time_budget
    trainable = [p for p in model.parameters() if p.requires_grad]
    while step < end:
        elapsed = elapsed0 + time.perf_counter() - t0
        if budget_s > 0 and elapsed >= budget_s:
            bar.write(f"time budget of {cfg.time_budget} min reached at step {step}")
            break
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable: batch = f(step)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step, elapsed)
        rows = window_batch(
            data["train"], data["train_starts"], cfg.batch_size - n_pool, cfg.seq_len, g
        )
        if n_pool:
            rows = torch.cat([rows, pool[torch.randint(0, len(pool), (n_pool,), generator=g)]])
        rows = pad_split(rows, cfg.pad_split_max, g, c.pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, parts = pipo_loss(model, rows, cfg.mtp_weight, cfg.conf_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        step += 1
        tokens_total += rows.numel()
        now = elapsed0 + time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in parts.items()})
        bar.update(1)
        last = step == cfg.steps or (budget_s > 0 and now >= budget_s)
        if step % cfg.eval_every == 0 or last:
            record = {"step": step, "loss": loss.item(), **parts}
            record |= _bits_of(evaluate(model, eval_set))
            record |= {"tokens": tokens_total, "elapsed_s": now, "load": _load_average()}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.write(" ".join(f"{k}={v:.4g}" for k, v in record.items()))
        if step % cfg.save_every == 0 or last:
            state = {
                "trainable": trainable_state(model),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed": now,
                "tokens": tokens_total,
            }
            torch.save(state, out / "state.pt.tmp")
            (out / "state.pt.tmp").replace(state_file)
    bar.close()
    log.close()
    model.eval()
    done = step >= cfg.steps or (budget_s > 0 and elapsed0 + time.perf_counter() - t0 >= budget_s)
    if not done:
        return model  # interrupted (stop_after): no final export
    recipe |= {"steps_done": step, "tokens_seen": tokens_total}
    save_delta(model, out / "delta", recipe)
    _export(model, backbone, out / "final")
    return model


def _bits_of(metrics: dict[str, float]) -> dict[str, float]:
    """pipo.train.evaluate's names are per byte for the byte model; here they are per token."""
    return {k.replace("bpb", "bpt"): v for k, v in metrics.items()}


def _load_average() -> float:
    import os

    return os.getloadavg()[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options only a real backbone's PIPO stage reads (pipo.train adds the shared ones)."""
    g = p.add_argument_group("real backbone (--init-from a Hugging Face / GGUF folder)")
    g.add_argument("--lora-rank", type=int, default=8, help="LoRA rank of the backbone linears")
    g.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale numerator")
    g.add_argument("--distill-rows", type=int, default=64, help="greedy self-distillation rows")
    g.add_argument("--distill-prompt", type=int, default=64, help="prompt tokens of each row")
    g.add_argument(
        "--distill-fraction", type=float, default=0.5, help="share of each batch from the pool"
    )
    g.add_argument("--no-bf16", action="store_true", help="train in float32 (no bf16 autocast)")


def main(args: argparse.Namespace, cfg) -> int:
    train_real(
        cfg,
        args.out,
        args.init_from,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        distill_rows=args.distill_rows,
        distill_prompt=args.distill_prompt,
        distill_fraction=args.distill_fraction,
        bf16=not args.no_bf16,
        progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m pipo.train_real",
        description="Rebuild the full PIPO checkpoint of a delta folder (delta.json + "
        "delta.safetensors) on its backbone folder.",
    )
    parser.add_argument("--delta", required=True, help="the delta folder")
    parser.add_argument("--backbone", required=True, help="the backbone folder (pipo fetch)")
    parser.add_argument("--out", required=True, help="where the full checkpoint goes")
    ns = parser.parse_args()
    print(apply_delta(ns.delta, ns.backbone, ns.out))

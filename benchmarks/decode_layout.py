"""JAX sampler throughput by layer layout: stacked layers under `lax.scan` vs a list of layers, side by side.

Decoding is memory-bound: with stacked layers every token step slices each layer's weights out of its stack (a
copy of the whole model per token on XLA:CPU), the list layout reads them in place. Same model, prompts and
truncation (T 1.0, top-k 20, top-p 0.8), EOS ignored so both generate the same number of tokens; the layouts
alternate over rounds, best of each. Usage: python benchmarks/decode_layout.py [--n 8] [--new 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax

from ssd_jax import bundled
from ssd_jax.models import hf
from ssd_jax.sampling.jax_sampler import JaxSampler, SamplingParams

TASKS = ["reverse a linked list", "check if a string is a palindrome", "merge two sorted lists",
         "compute fibonacci numbers", "find the longest common prefix", "count vowels in a string",
         "flatten a nested list", "parse a CSV line"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled:smollm2-135m")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import transformers

    path = bundled.resolve_model(args.model)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Write a Python function to {TASKS[i % 8]}."}],
                                       add_generation_prompt=True, tokenize=False) for i in range(args.n)]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    params = [SamplingParams(temperature=1.0, top_k=20, top_p=0.8, max_tokens=args.new, seed=i) for i in range(args.n)]
    samplers = {name: JaxSampler(hf.load(path, scan_layers=scan), tok, batch_size=args.n, max_prompt_len=64,
                                 max_new_tokens=args.new, eos_token_ids=[])
                for name, scan in (("stacked (scan)", True), ("list", False))}
    best = {name: float("inf") for name in samplers}
    for name, s in samplers.items():
        s.generate(ids, params)  # compile
    for _ in range(args.rounds):
        for name, s in samplers.items():
            t0 = time.perf_counter()
            s.generate(ids, params)
            best[name] = min(best[name], time.perf_counter() - t0)
    tokens = args.n * args.new
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, jax {jax.__version__}, backend {jax.default_backend()}")
    print(f"model: {path.name}, fp32, {args.n} prompts x {args.new} new tokens, best of {args.rounds}")
    for name, t in best.items():
        print(f"{name:16s} {tokens / t:8.1f} tokens/s   ({t:.2f} s)")
    print(f"ratio list / stacked: {best['stacked (scan)'] / best['list']:.2f}x")


if __name__ == "__main__":
    main()

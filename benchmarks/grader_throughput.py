"""Grader throughput, programs graded per second with 2 workers: each sandbox layer, launched fresh (a new
interpreter per program) and from a zygote (a fork of a preloaded fork server inside the same barrier), and
LiveCodeBench's official grader (`check_correctness`), side by side on the same programs.

Each "program" is one LiveCodeBench-style stdin solution graded in lcb_compat mode against 5 tests (one sandboxed
process per program, as in production), plus the bare cost of one sandboxed `pass`. Our layers run in a
`WorkerPool` (forkserver; each worker has its own zygote per layer); LiveCodeBench's `check_correctness(sample,
code, timeout=6)` runs as LiveCodeBench runs it, in a 2-process `ProcessPoolExecutor` (fork), each call starting its
multiprocessing Manager and forking a child that runs `run_test` (no namespace, no rlimits). Everything alternates
in rounds (A B C D A B C D ...) so machine noise hits all alike; medians are shown, and the ratios are what to read
(printed last: each barrier layer's zygote and fresh rate against LiveCodeBench's).
LiveCodeBench: `pip install --no-deps nvidia-livecodebench` (module `livecodebench`; needs numpy and tqdm only).
Usage: python benchmarks/grader_throughput.py [--programs 40] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from ssd_jax.evaluation.grader import TestCase, grade
from ssd_jax.evaluation.pool import WorkerPool
from ssd_jax.evaluation.sandbox import check_isolation, run_python

PROGRAM = """
import sys
data = sys.stdin.read().split()
n = int(data[0])
xs = list(map(int, data[1:1 + n]))
best = cur = xs[0]
for x in xs[1:]:
    cur = max(x, cur + x)
    best = max(best, cur)
print(best)
"""
LAYERS = (("unsafe-rlimits", "fresh"), ("bwrap", "fresh"), ("namespaces", "fresh"), ("bwrap", "zygote"),
          ("namespaces", "zygote"))
LCB = "LiveCodeBench check_correctness"


def tests() -> list[TestCase]:
    out = []
    for seed in range(5):
        xs = [((i * 7919 + seed * 104729) % 201) - 100 for i in range(200)]
        best = cur = xs[0]
        for x in xs[1:]:
            cur = max(x, cur + x)
            best = max(best, cur)
        out.append(TestCase(f"{len(xs)}\n{' '.join(map(str, xs))}\n", f"{best}\n"))
    return out


def lcb_check(code: str) -> list:
    """One program through LiveCodeBench's own grader, as its evaluate_generations calls it."""
    from livecodebench.evaluation.compute_code_generation_metrics import check_correctness

    ts = tests()
    sample = {"input_output": json.dumps({"inputs": [t.input for t in ts], "outputs": [t.output for t in ts]})}
    return check_correctness(sample, code, timeout=6, debug=False)[0]


def timed(submit: Callable, n: int, check: Callable) -> float:
    t0 = time.perf_counter()
    results = [f.result() for f in [submit() for _ in range(n)]]
    rate = n / (time.perf_counter() - t0)
    assert all(map(check, results)), results[0]
    return rate


def rate(pool: WorkerPool, layer: tuple[str, str], n: int) -> tuple[float, float]:
    ts = tests()
    iso, launch = layer
    graded = timed(lambda: pool.submit(grade, PROGRAM, ts, isolation=iso, launch=launch), n, lambda r: r.passed)
    bare = timed(lambda: pool.submit(run_python, "pass", isolation=iso, launch=launch), n,
                 lambda r: r.returncode == 0)
    return graded, bare


def machine(workers: int) -> str:
    exe = shutil.which("bwrap")
    bw = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip() if exe else "no bwrap"
    return (f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {bw}, "
            f"{workers} workers, uid {os.getuid()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    labels = {layer: check_isolation(layer[0], launch=layer[1]) for layer in LAYERS}  # raises if one cannot run
    print(machine(args.workers))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    acc: dict = {k: [] for k in (*LAYERS, LCB)}
    with WorkerPool(args.workers) as pool, \
            ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as lcb_pool:
        for layer in LAYERS:
            rate(pool, layer, 4)  # warm the workers (their probes, their zygotes)
        timed(lambda: lcb_pool.submit(lcb_check, PROGRAM), 4, lambda r: r == [True] * 5)
        for _ in range(args.rounds):
            for layer in LAYERS:
                acc[layer].append(rate(pool, layer, args.programs))
            lcb = timed(lambda: lcb_pool.submit(lcb_check, PROGRAM), args.programs, lambda r: r == [True] * 5)
            acc[LCB].append((lcb, 0.0))
    med = {k: tuple(sorted(v[i] for v in vals)[len(vals) // 2] for i in (0, 1)) for k, vals in acc.items()}
    print(f"{'grader (isolation)':<34} {'graded programs/s':>18} {'bare runs/s':>12} {'vs LCB official':>16}")
    for k in (*LAYERS, LCB):
        bare = f"{med[k][1]:.1f}" if k != LCB else "-"
        print(f"{labels.get(k, k):<34} {med[k][0]:>18.1f} {bare:>12} {med[k][0] / med[LCB][0]:>15.2f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for iso in ("bwrap", "namespaces"):
        z, f = med[(iso, "zygote")][0], med[(iso, "fresh")][0]
        print(f"ratio {iso}: zygote/LCB official {z / med[LCB][0]:.2f}x, fresh/LCB official "
              f"{f / med[LCB][0]:.2f}x, zygote/fresh {z / f:.2f}x")


if __name__ == "__main__":
    main()

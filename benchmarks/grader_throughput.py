"""Grader throughput: programs graded per second through a 2-worker pool, bubblewrap vs plain rlimits, side by side.

Each "program" is one LiveCodeBench-style stdin solution graded in lcb_compat mode against 5 tests (one sandboxed
process per program, as in production), plus the bare cost of one sandboxed `pass`. The two isolations alternate
in rounds (A B A B ...) so machine noise hits both alike; the ratio is what to read.
Usage: python benchmarks/grader_throughput.py [--programs 60] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import time

from ssd_jax.evaluation.grader import TestCase, grade
from ssd_jax.evaluation.sandbox import WorkerPool, bwrap_support, run_python

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


def rate(pool: WorkerPool, isolation: str, n: int) -> tuple[float, float, str]:
    ts = tests()
    t0 = time.perf_counter()
    results = [f.result() for f in [pool.submit(grade, PROGRAM, ts, isolation=isolation) for _ in range(n)]]
    graded = n / (time.perf_counter() - t0)
    assert all(r.passed for r in results), results[0]
    t0 = time.perf_counter()
    bare = [f.result() for f in [pool.submit(run_python, "pass", isolation=isolation) for _ in range(n)]]
    return graded, n / (time.perf_counter() - t0), bare[0].isolation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if bwrap_support() is None:
        raise SystemExit("bubblewrap cannot run here: nothing to compare (apt-get install bubblewrap)")
    bw_version = subprocess.run([shutil.which("bwrap"), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {bw_version}, "
          f"{args.workers} workers, uid {os.getuid()}")
    with WorkerPool(args.workers) as pool:
        rate(pool, "rlimits", 4)  # warm the workers
        rate(pool, "bwrap", 4)
        acc: dict[str, list[tuple[float, float]]] = {"rlimits": [], "bwrap": []}
        labels = {}
        for _ in range(args.rounds):
            for iso in ("rlimits", "bwrap"):
                g, b, labels[iso] = rate(pool, iso, args.programs)
                acc[iso].append((g, b))
    med = {iso: tuple(sorted(v[i] for v in vals)[len(vals) // 2] for i in (0, 1)) for iso, vals in acc.items()}
    print(f"{'isolation':<30} {'graded programs/s':>18} {'bare runs/s':>12}")
    for iso in ("rlimits", "bwrap"):
        print(f"{labels[iso]:<30} {med[iso][0]:>18.1f} {med[iso][1]:>12.1f}")
    print(f"{'ratio bwrap / rlimits':<30} {med['bwrap'][0] / med['rlimits'][0]:>18.2f} "
          f"{med['bwrap'][1] / med['rlimits'][1]:>12.2f}")


if __name__ == "__main__":
    main()

"""The paper configs planned for each GPU kind by XLA's GPU compiler, beside the CPU simulation: one markdown row
per (config, target), each from its own `ssd-jax plan` process (so no compile is shared between rows).

    python benchmarks/plan_table.py [--kinds h100,h200,b200] [--devices 8] [--configs a.yaml,b.yaml] [--out DIR]

`--simulate-cpu` rows are judged against a B200 as before, from the same config.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ["qwen3-30b-a3b-instruct-2507", "qwen3-30b-a3b-thinking-2507", "qwen3-4b-instruct-2507",
                 "qwen3-4b-thinking-2507", "llama-3.1-8b-instruct"]
GiB = 2**30


def run(config: Path, kind: str, devices: int, out: Path) -> tuple[dict | None, float, str]:
    simulate = kind == "cpu-sim"
    cmd = [sys.executable, "-m", "ssd_jax.cli", "plan", "--config", str(config), "--devices", str(devices),
           "--device-kind", "b200" if simulate else kind, "--out", str(out)] + (["--simulate-cpu"] if simulate else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if not out.exists():
        return None, wall, (p.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(out.read_text()), wall, ""


def row(name: str, kind: str, r: dict | None, wall: float, err: str) -> str:
    if r is None:
        return f"| {name} | {kind} | — | — | — | — | — | — | failed: {err} |"
    t = r["train"]
    m, hbm = t["memory_per_device"], r["device"]["hbm_bytes"]
    coll = ", ".join(f"{k} {v['traffic_bytes'] / GiB:,.1f}" for k, v in t["collectives"].items())
    mesh = " ".join(f"{k}{v}" for k, v in t["mesh"].items() if v > 1)
    return (f"| {name} | {kind} | {mesh} | {m['peak'] / GiB:.1f} ({m['peak'] / hbm:.0%}) | "
            f"{'yes' if t['fits'] else '**no**'} | {t['flops_per_device']:.3e} | {coll} | {t['time']['mfu']:.0%} | "
            f"{wall:.0f} s |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="h100,h200,b200,cpu-sim")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--configs", default=",".join(f"configs/{c}.yaml" for c in PAPER_CONFIGS))
    ap.add_argument("--out", default="runs/plan_table")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| config | target | mesh | peak GiB per device (of HBM) | fits 90% | FLOPs/device/step | "
          "collective traffic GiB/device/step | implied MFU | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        name = Path(config).stem
        for kind in args.kinds.split(","):
            r, wall, err = run(ROOT / config, kind, args.devices, out / f"{name}-{kind}-{args.devices}.json")
            print(row(name, kind, r, wall, err), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

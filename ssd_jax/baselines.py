"""Decode-only baselines the paper did not run, as one command (`ssd-jax baselines`).

SSD changes the model *and* is read at a new decoding setting. To separate the two, evaluate the base model:
  - at its own evaluation setting (paper Table 4, `<model>/base-eval`);
  - over a temperature sweep at the evaluation truncation (top-k/top-p of `<model>/eval`);
  - with the *training* truncation (`<model>/train`: T_train, k, p) — what the SSD data were drawn from;
  - at the matched effective temperature T_eff = T_train × T_eval with the evaluation truncation;
and, when given, the SSD model at its evaluation setting. Each setting is an `ssd-jax eval` run in its own folder
(resumable); the table (baselines.json, baselines.md) compares pass@k overall and by difficulty.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ssd_jax.config import EvalConfig
from ssd_jax.eval_run import run_eval
from ssd_jax.evaluation.metrics import group_order, pass_at_k_values
from ssd_jax.io_utils import atomic_write_text
from ssd_jax.presets import preset


def settings(model_preset: str, temps: list[float], ssd_model: str | None) -> list[dict]:
    train, ev = preset(f"{model_preset}/train"), preset(f"{model_preset}/eval")
    out = [{"name": "base @ base-eval (Table 4)", "model": "base", "preset": f"{model_preset}/base-eval"}]
    for t in temps:
        out.append({"name": f"base @ T={t:g}, eval truncation", "model": "base", "temperature": t,
                    "top_k": ev.top_k, "top_p": ev.top_p})
    out.append({"name": f"base @ training truncation (T={train.temperature:g}, k={train.top_k}, p={train.top_p:g})",
                "model": "base", "preset": f"{model_preset}/train"})
    t_eff = round(train.temperature * ev.temperature, 4)
    out.append({"name": f"base @ matched T_eff={t_eff:g} (T_train×T_eval), eval truncation", "model": "base",
                "temperature": t_eff, "top_k": ev.top_k, "top_p": ev.top_p})
    if ssd_model:
        out.append({"name": "SSD @ eval (Table 3)", "model": "ssd", "preset": f"{model_preset}/eval"})
    return out


def _slug(s: dict, i: int) -> str:
    return f"{i:02d}-" + "".join(c if c.isalnum() else "-" for c in s["name"].lower()).strip("-")[:60]


def run_baselines(cfg: EvalConfig, model_preset: str, temps: list[float], ssd_model: str | None,
                  out_dir: str) -> list[dict]:
    rows = []
    for i, s in enumerate(settings(model_preset, temps, ssd_model)):
        decode = replace(cfg.decode, preset=s.get("preset"), temperature=s.get("temperature"),
                         top_k=s.get("top_k"), top_p=s.get("top_p"))
        model = replace(cfg.model, path=ssd_model) if s["model"] == "ssd" else cfg.model
        one = replace(cfg, model=model, decode=decode, out_dir=str(Path(out_dir) / _slug(s, i)))
        doc = run_eval(one)
        m = doc["metrics"]
        rows.append({"setting": s["name"], "model": model.path, "decode": doc["decode"], "overall": m["overall"],
                     "by_difficulty": {k: {kk: vv for kk, vv in v.items() if kk.startswith("pass@")}
                                       for k, v in m.get("by_difficulty", {}).items()},
                     "dir": one.out_dir})
    write_table(rows, Path(out_dir))
    return rows


def write_table(rows: list[dict], out: Path) -> None:
    atomic_write_text(out / "baselines.json", json.dumps(rows, indent=2) + "\n")
    ks = [f"pass@{k}" for k in pass_at_k_values(rows[0]["overall"])]
    diffs = group_order(d for r in rows for d in r["by_difficulty"])
    head = ["setting", *ks, *[f"{d} {ks[0]}" for d in diffs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["setting"]]
        for k in ks:
            lo, hi = r["overall"].get(f"{k}_ci95", [None, None])
            ci = f" [{lo:.1%}, {hi:.1%}]" if lo is not None else ""
            cells.append(f"{r['overall'][k]:.1%}{ci}")
        cells += [f"{r['by_difficulty'].get(d, {}).get(ks[0], float('nan')):.1%}" for d in diffs]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(out / "baselines.md", "\n".join(lines) + "\n")

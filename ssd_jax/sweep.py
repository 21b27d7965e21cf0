"""`ssd-jax sweep`: several models over a T_eval grid, one `ssd-jax eval` per point, and the paper's grid figures.

The paper's Figs 3, 9, 10 and 11 read pass@1 over T_train × T_eval: the base model and SSD models trained at
different T_train, each evaluated at several temperatures with the evaluation truncation (top-k/top-p of the
config's decode). Each point is an eval run in `OUT/<label>/T<t>/` (resumable: a rerun samples and grades only
what is missing); `sweep.json`, `sweep.md` and `sweep.png` (a models × T_eval grid of pass@1) sum them up.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ssd_jax import bundled
from ssd_jax.config import EvalConfig
from ssd_jax.errors import UserError
from ssd_jax.eval_run import check_model_format, run_eval
from ssd_jax.evaluation.metrics import pass_at_k_values
from ssd_jax.io_utils import atomic_write_text
from ssd_jax.models import hf


def parse_models(items: list[str]) -> list[tuple[str, str]]:
    """`LABEL=PATH` pairs (a label names a row of the grid: "base", "T_train 1.6", …), labels unique."""
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label.strip() or not path.strip():
            raise UserError(f"--model {item!r}: expected LABEL=PATH (e.g. base=bundled:smollm2-135m)")
        out.append((label.strip(), path.strip()))
    labels = [label for label, _ in out]
    if not out or len(set(labels)) != len(labels):
        raise UserError(f"--model: expected one or more models with distinct labels, got {labels}")
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in label).strip("-") or "model"


def point_config(cfg: EvalConfig, path: str, t_eval: float, out: Path, label: str) -> EvalConfig:
    """One grid point: the model at T_eval with the config's truncation, in its own folder."""
    return replace(cfg, model=replace(cfg.model, path=path), decode=replace(cfg.decode, temperature=t_eval),
                   out_dir=str(out / _slug(label) / f"T{t_eval:g}"))


def run_sweep(cfg: EvalConfig, models: list[tuple[str, str]], temps: list[float], out_dir: str) -> dict:
    """Evaluate every model at every T_eval; returns (and writes) the grid."""
    if any(t < 0 for t in temps) or len(set(temps)) != len(temps):
        raise UserError(f"--temps {temps}: expected distinct temperatures ≥ 0")
    out = Path(out_dir)
    points = [(label, path, t) for label, path in models for t in temps]
    for label, path, t in points[:: len(temps)]:  # every model checked before the first evaluation
        check_model_format(point_config(cfg, path, t, out, label))
    grid = {label: {"path": path, "trained": hf.read_provenance(bundled.resolve_model(path)) or None, "points": {}}
            for label, path in models}
    for label, path, t in points:
        one = point_config(cfg, path, t, out, label)
        doc = run_eval(one)
        values = pass_at_k_values(doc["metrics"]["overall"])
        grid[label]["points"][f"{t:g}"] = {**{f"pass@{k}": v for k, v in values.items()}, "dir": one.out_dir,
                                           "decode": doc["decode"]}
    doc = {"temperatures": temps, "models": grid, "problems": cfg.problems.kind, "n": cfg.decode.n}
    write_sweep(doc, out)
    return doc


def write_sweep(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.json", json.dumps(doc, indent=2) + "\n")
    temps = [f"{t:g}" for t in doc["temperatures"]]
    first = next(iter(doc["models"].values()))["points"][temps[0]]
    ks = [k for k in first if k.startswith("pass@")]
    lines = [" / ".join(ks) + " per model and T_eval", "",
             "| model | " + " | ".join(f"T_eval {t}" for t in temps) + " |", "|---|" + "---|" * len(temps)]
    for label, m in doc["models"].items():
        cells = [" / ".join(f"{m['points'][t][k]:.1%}" for k in ks) for t in temps]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    plot_grid(doc, out / "sweep.png", ks[0])


def plot_grid(doc: dict, path: Path, k: str = "pass@1") -> None:
    """The paper's grid figure: pass@k for each model (row) at each T_eval (column), values written in."""
    import numpy as np

    from ssd_jax.figures import new_figure, save_figure

    temps = [f"{t:g}" for t in doc["temperatures"]]
    labels = list(doc["models"])
    z = np.array([[doc["models"][m]["points"][t][k] * 100 for t in temps] for m in labels])
    fig, ax = new_figure(figsize=(1.6 + 1.1 * len(temps), 1.2 + 0.6 * len(labels)))
    top = max(float(z.max()), 1.0)  # an all-zero grid still gets a readable 0-1% scale
    im = ax.imshow(z, cmap="viridis", aspect="auto", vmin=0, vmax=top)
    for i in range(len(labels)):
        for j in range(len(temps)):
            ax.text(j, i, f"{z[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if z[i, j] < 0.6 * top else "black")
    ax.set_xticks(range(len(temps)), temps)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="evaluation temperature T_eval", ylabel="model (T_train)",
           title=f"{k} (%) on {doc['problems']}, n={doc['n']}")
    fig.colorbar(im, ax=ax, label=f"{k} (%)")
    save_figure(fig, path)

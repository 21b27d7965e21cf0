"""The four panels of the paper's Figure 6 from a fork/lock result JSON, base vs student, one PNG each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssd_jax.figures import new_figure, save_figure

COLORS = {"base": "tab:blue", "student": "tab:orange"}
PANEL_FILES = {"a": "a_cumulative_mass.png", "b": "b_survivors.png", "c": "c_entropy.png",
               "d": "d_entropy_by_top20_mass.png"}


def _lines(ax, xs, panel: dict, groups=("all", "lock", "fork")) -> None:
    styles = {"all": "-", "lock": ":", "fork": "--"}
    for m in ("base", "student"):
        for g in groups:
            ys = panel[m][g]
            if not np.all(np.isfinite(ys)):
                continue
            ax.plot(xs, ys, styles[g], color=COLORS[m], label=f"{m} ({g})", linewidth=1.6 if g == "all" else 1.1)
    ax.legend(fontsize=7, ncol=2)


def plot_panels(result: dict, out: Path) -> dict[str, str]:
    """Write panels (a)–(d); returns {panel: path}."""
    p, lab, cfg = result["panels"], result["labels"], result["config"]
    ev = cfg["evaluate"]
    counts = f"{lab['positions']} positions: {lab['lock']['count']} locks, {lab['fork']['count']} forks"
    paths = {k: str(out / v) for k, v in PANEL_FILES.items()}

    fig, ax = new_figure()
    _lines(ax, p["a"]["ranks"], p["a"])
    ax.set(xlabel="token rank", ylabel="cumulative probability (T = 1)", title=f"(a) cumulative mass — {counts}")
    save_figure(fig, paths["a"])

    trunc = f"top-k {ev['top_k']}, top-p {ev['top_p']:g}"
    fig, ax = new_figure()
    _lines(ax, p["b"]["temperatures"], p["b"])
    ax.set(xlabel=f"evaluation temperature ({trunc})", ylabel="tokens surviving truncation",
           title="(b) survivors after temper → top-k → top-p")
    save_figure(fig, paths["b"])

    fig, ax = new_figure()
    _lines(ax, p["c"]["temperatures"], p["c"])
    ax.set(xlabel=f"evaluation temperature ({trunc})", ylabel="entropy after truncation (nats)",
           title="(c) entropy of what survives")
    save_figure(fig, paths["c"])

    d = p["d"]
    fig, ax = new_figure()
    xs = np.arange(len(d["bins"]))
    for j, m in enumerate(("base", "student")):
        bars = ax.bar(xs + (j - 0.5) * 0.4, d[m]["entropy"], 0.4, color=COLORS[m], label=m)
        ax.bar_label(bars, labels=[f"n={c}" for c in d[m]["count"]], fontsize=6, padding=1)
    ax.set_xticks(xs, d["bins"], fontsize=8)
    ax.set(xlabel="top-20 probability mass of the position (T = 1)",
           ylabel=f"entropy after truncation (nats), T = {d['temperature']:g}",
           title="(d) entropy by how peaked the position is")
    ax.legend(fontsize=8)
    save_figure(fig, paths["d"])
    return paths

"""The run report of `ssd-jax run`: report.md and report.png, the base model and every round side by side.

Written from the manifest (and the files it points to) after every run, so a rerun or a resumed run refreshes it.
Every link is relative to the run folder, so the folder can be moved or shared as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from ssd_jax.data.sft import describe_passes
from ssd_jax.evaluation.metrics import pass_at_k_values
from ssd_jax.io_utils import atomic_write_text


def _rounds(stages: dict) -> list[int]:
    return sorted({int(k.split("/")[0].split("-")[1]) for k in stages if k.startswith("round-")})


def _ks(overall: dict) -> list[int]:
    return sorted(pass_at_k_values(overall))


def _pass_cells(overall: dict) -> str:
    cells = []
    for k in _ks(overall):
        lo, hi = overall.get(f"pass@{k}_ci95", [overall[f"pass@{k}"]] * 2)
        cells.append(f"pass@{k} {100 * overall[f'pass@{k}']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    return "; ".join(cells) + f" (n={overall.get('n_problems', '?')})"


def _evaluations(stages: dict) -> list[tuple[str, dict, str]]:
    """(name, its eval stage's manifest entry, chart path) for the base model and each evaluated round."""
    out = []
    if "overall" in stages.get("base-eval", {}):
        out.append(("base", stages["base-eval"], "base-eval/pass_at_k.png"))
    for r in _rounds(stages):
        ev = stages.get(f"round-{r}/eval", {})
        if "overall" in ev:
            out.append((f"round {r}", ev, f"round-{r}/eval/pass_at_k.png"))
    return out


def _decoding(ev: dict) -> str:
    """How an evaluation sampled (T, top-k, top-p, max tokens, its preset) and how many answers the cap cut."""
    d = ev.get("decode")
    if not d:
        return "?"
    text = f"T {d['temperature']:g}, top-k {d['top_k']}, top-p {d['top_p']:g}, {d['max_tokens']:,} tokens"
    if d.get("preset"):
        text += f" ({d['preset']})"
    cut = ev.get("truncated")
    return text + (f"; {cut['share']:.1%} cut at max_tokens" if cut else "")


def _round_lines(r: int, stages: dict) -> list[str]:
    lines = ["", f"## Round {r}"]
    flt, tr, an = (stages.get(f"round-{r}/{s}", {}) for s in ("filter", "train", "analyze"))
    if flt.get("status") == "done":
        dropped = {k: v for k, v in flt["by_reason"].items() if v}
        lines.append(f"- filter: kept {flt['kept']} of {flt['total']} samples (dropped: {dropped or 'none'})")
        if flt.get("code_block"):  # App. C.5: how many samples hold code the evaluator can extract
            shares = ", ".join(f"{rule} {v['share']:.1%}" for rule, v in flt["code_block"].items() if rule != "samples")
            lines.append(f"- samples with an extractable code block (App. C.5): {shares}")
    if tr.get("status") == "done" and tr.get("final"):
        lines.append(f"- train: {tr['final']['step']} steps, final loss {tr['final']['loss']:.4f} "
                     f"([metrics](round-{r}/train/metrics.jsonl))")
    if tr.get("passes"):
        lines.append(f"- {describe_passes(tr['passes'])}")
    if an.get("status") == "done":
        lk, fk = an["locks"], an["forks"]
        lines += [f"- fork/lock ([page](round-{r}/analysis/forklock.html)): {an['positions']} positions of "
                  f"held-out responses; {lk['count']} locks, tail mass base {lk['tail_mass']['base']:.4f} → "
                  f"SSD {lk['tail_mass']['student']:.4f}; {fk['count']} forks, entropy within the kept set "
                  f"base {fk['head_entropy']['base']:.3f} → SSD {fk['head_entropy']['student']:.3f} nats",
                  "", f"![entropy after truncation](round-{r}/analysis/c_entropy.png)"]
    return lines


def write_report(root: Path, manifest: dict) -> None:
    """report.md (tables and links) and report.png (the same numbers as four charts)."""
    stages = manifest["stages"]
    evals = _evaluations(stages)
    lines = [f"# SSD run report: {root.name}", "",
             f"commit {manifest.get('git_commit') or '?'}; jax {manifest.get('versions', {}).get('jax', '?')}; "
             f"host {manifest.get('host', '?')}", "", "![summary](report.png)", "",
             "| model | evaluation | decoding | chart |", "|---|---|---|---|"]
    lines += [f"| {name} | {_pass_cells(ev['overall'])} | {_decoding(ev)} | [pass@k]({chart}) |"
              for name, ev, chart in evals]
    for r in _rounds(stages):
        lines += _round_lines(r, stages)
    plot_report(root, stages, root / "report.png")
    atomic_write_text(root / "report.md", "\n".join(lines) + "\n")


def _loss_curve(root: Path, r: int) -> tuple[list[int], list[float]]:
    path = root / f"round-{r}" / "train" / "metrics.jsonl"
    steps, losses = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if "loss" in rec:
                steps.append(rec["step"])
                losses.append(rec["loss"])
    return steps, losses


def plot_report(root: Path, stages: dict, path: Path) -> None:
    """pass@k with 95% CIs for base and each round; the filter's kept share; each round's loss curve; the
    fork/lock tail mass at locks and entropy at forks, base vs each round."""
    import numpy as np

    from ssd_jax.figures import new_figure, save_figure

    fig, axes = new_figure(ncols=4, figsize=(17, 3.6))
    evals = [(name, ev["overall"], chart) for name, ev, chart in _evaluations(stages)]
    ks = _ks(evals[0][1]) if evals else []
    for j, k in enumerate(ks):
        xs = np.arange(len(evals)) + (j - (len(ks) - 1) / 2) * 0.8 / len(ks)
        vals = [100 * o[f"pass@{k}"] for _, o, _ in evals]
        ci = [o.get(f"pass@{k}_ci95", [o[f"pass@{k}"]] * 2) for _, o, _ in evals]
        err = [[v - 100 * c[0] for v, c in zip(vals, ci)], [100 * c[1] - v for v, c in zip(vals, ci)]]
        axes[0].bar(xs, vals, 0.8 / len(ks), yerr=err, capsize=3, label=f"pass@{k}")
    axes[0].set_xticks(range(len(evals)), [name for name, _, _ in evals])
    axes[0].set(title="pass@k (95% CI)", ylabel="%")
    axes[0].legend(fontsize=8)
    rounds = _rounds(stages)
    flt = [stages.get(f"round-{r}/filter", {}) for r in rounds]
    axes[1].bar([f"round {r}" for r in rounds], [100 * f.get("kept", 0) / max(f.get("total", 1), 1) for f in flt])
    axes[1].set(title="filter: samples kept", ylabel="%", ylim=(0, 105))
    for r in rounds:
        axes[2].plot(*_loss_curve(root, r), marker="o", label=f"round {r}")
    axes[2].set(title="SFT loss", xlabel="step")
    axes[2].legend(fontsize=8)
    an = [(r, stages[f"round-{r}/analyze"]) for r in rounds if stages.get(f"round-{r}/analyze", {}).get("status")
          == "done"]
    if an:
        names = ["base"] + [f"round {r}" for r, _ in an]
        tails = [an[0][1]["locks"]["tail_mass"]["base"]] + [a["locks"]["tail_mass"]["student"] for _, a in an]
        heads = [an[0][1]["forks"]["head_entropy"]["base"]] + [a["forks"]["head_entropy"]["student"] for _, a in an]
        x = np.arange(len(names))
        axes[3].bar(x - 0.2, tails, 0.4, label="tail mass at locks")
        twin = axes[3].twinx()
        twin.bar(x + 0.2, heads, 0.4, color="tab:orange", label="entropy at forks (nats)")
        axes[3].set_xticks(x, names)
        axes[3].set(title="fork/lock (held-out responses)", ylabel="tail mass")
        twin.set_ylabel("entropy (nats)")
        axes[3].legend(loc="lower left", fontsize=7)
        twin.legend(loc="lower right", fontsize=7)
    else:
        axes[3].set_axis_off()
    save_figure(fig, path)

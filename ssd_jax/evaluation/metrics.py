"""pass@k and friends, computed per problem and then averaged, as LiveCodeBench and the paper report them.

- pass@k per problem is the unbiased estimator 1 − C(n−c, k)/C(n, k) (Chen et al. 2021; LCB's
  `lcb_runner/evaluation/pass_k_utils.py::estimate_pass_at_k`), in the product form
  1 − ∏_{i=n−c+1}^{n} (1 − k/i), which never forms the huge binomials.
- The overall number is the unweighted mean over problems; a group (difficulty, platform) is the unweighted mean
  over the problems in it, so easy/medium/hard are not weighted by their sizes.
- Confidence intervals: percentile bootstrap over *problems* (the unit that was sampled), seeded.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

from ssd_jax.errors import ConfigError, UserError
from ssd_jax.io_utils import atomic_write_text

ERROR_KINDS = {0: "passed", -2: "WA", -3: "TLE", -4: "RE", -5: "runner_error"}
DIFFICULTY_ORDER = ("easy", "medium", "hard")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not (0 <= c <= n):
        raise UserError(f"pass@k: {c} correct out of {n} samples is impossible (expected 0 <= c <= n)")
    if not (1 <= k <= n):
        raise UserError(f"pass@{k} needs at least {k} samples per problem, got n={n} (expected 1 <= k <= n)")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def check_ks(ks: Sequence[int], n: int, where: str = "ks", n_key: str = "decode.n") -> None:
    """Refuse, before any sampling, a pass@k that `n` samples per problem cannot estimate (LCB's runner silently
    drops such a k; a report missing a number it was asked for is worse than an error)."""
    for k in ks:
        if not 1 <= k <= n:
            raise ConfigError(f"{where}: pass@{k} needs at least {k} samples per problem, but {n_key} is {n} "
                              f"(expected every k in 1..{n}; lower the k or raise {n_key})")


def counts_by_problem(results: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """{problem_id: (n, c)} from graded records `{problem_id, passed, ...}` (one per sample)."""
    n: Counter = Counter()
    c: Counter = Counter()
    for r in results:
        pid = str(r["problem_id"])
        n[pid] += 1
        c[pid] += bool(r["passed"])
    return {pid: (n[pid], c[pid]) for pid in n}


def per_problem_pass_at_k(counts: Mapping[str, tuple[int, int]], ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """{problem_id: {k: pass@k}}; every problem needs n >= k (LCB silently drops a k some problem cannot reach;
    we refuse, naming the problem, rather than report a number over a different set)."""
    out = {}
    for pid, (n, c) in counts.items():
        for k in ks:
            if n < k:
                raise UserError(f"pass@{k}: problem {pid!r} has only {n} graded samples (expected at least {k})")
        out[pid] = {k: pass_at_k(n, c, k) for k in ks}
    return out


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling problems with replacement; (nan, nan) for no values or
    n_boot 0 (no interval asked for)."""
    import numpy as np

    vals = np.asarray(list(values), dtype=np.float64)
    if vals.size == 0 or n_boot == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, vals.size, size=(n_boot, vals.size))
    means = vals[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def error_counts(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Samples per outcome: passed / WA / TLE / RE / runner_error / other, from `error_code`."""
    counts = {name: 0 for name in ERROR_KINDS.values()}
    counts["other"] = 0
    for r in results:
        code = 0 if r.get("passed") else r.get("error_code")
        counts[ERROR_KINDS.get(code, "other")] += 1
    return counts


def group_order(names: Iterable[str]) -> list[str]:
    """Difficulties easy → medium → hard, then any other group names alphabetically."""
    names = set(names)
    known = [d for d in DIFFICULTY_ORDER if d in names]
    return known + sorted(names - set(known))


def compute_metrics(
    results: Sequence[Mapping[str, Any]],
    problems: Mapping[str, Mapping[str, Any]] | None = None,
    ks: Sequence[int] = (1, 5),
    group_by: Sequence[str] = ("difficulty", "platform"),
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Overall and per-group pass@k with bootstrap CIs, plus outcome counts.

    `results`: graded records `{problem_id, sample_idx, passed, error_code, ...}`; `problems`: per problem_id the
    fields to group by (missing → "unknown"). Returns (the "metrics" of metrics.json)::

        {"n_problems": int, "n_samples": int, "n_per_problem": [distinct n, sorted],
         "overall": SUMMARY,
         "by_<key>": {group: SUMMARY}          # per `group_by` key, unless every problem's value is unknown
         "outcomes": {kind: count},             # `error_counts`
         "per_problem": {problem_id: {"n": int, "c": int, "pass@<k>": float, ...}}}

    where SUMMARY is {"n_problems": int, "pass@<k>": float, "pass@<k>_ci95": [lo, hi], ...} for each k in `ks`
    (flat keys; `pass_at_k_values` picks out the pass@k numbers).
    """
    counts = counts_by_problem(results)
    if not counts:
        raise UserError("metrics: no graded results")
    per = per_problem_pass_at_k(counts, ks)
    problems = problems or {}
    out: dict[str, Any] = {"n_problems": len(per), "n_samples": sum(n for n, _ in counts.values())}
    out["n_per_problem"] = sorted({n for n, _ in counts.values()})

    def summary(pids: list[str]) -> dict[str, Any]:
        s: dict[str, Any] = {"n_problems": len(pids)}
        for k in ks:
            vals = [per[p][k] for p in pids]
            s[f"pass@{k}"] = mean(vals)
            s[f"pass@{k}_ci95"] = list(bootstrap_ci(vals, n_boot=n_boot, seed=seed))
        return s

    pids = sorted(per)
    out["overall"] = summary(pids)
    for key in group_by:
        groups: dict[str, list[str]] = defaultdict(list)
        for p in pids:
            groups[str(problems.get(p, {}).get(key) or "unknown")].append(p)
        if set(groups) == {"unknown"}:
            continue
        out[f"by_{key}"] = {g: summary(groups[g]) for g in group_order(groups)}
    out["outcomes"] = error_counts(results)
    out["per_problem"] = {p: {"n": counts[p][0], "c": counts[p][1], **{f"pass@{k}": per[p][k] for k in ks}}
                          for p in pids}
    return out


def pass_at_k_values(summary: Mapping[str, Any]) -> dict[int, float]:
    """{k: pass@k} from a `compute_metrics` SUMMARY ("overall", a by_<key> group or a per_problem entry), in its
    order: the "pass@<k>" keys, not their "_ci95" intervals or the counts."""
    return {int(key[5:]): float(v) for key, v in summary.items() if key.startswith("pass@") and key[5:].isdigit()}


def write_metrics_json(
    path,
    metrics: Mapping[str, Any],
    *,
    model: str,
    decode: Mapping[str, Any],
    n: int,
    grader_mode: str,
    isolation: str,
    timeout_s: float,
    extra: Mapping[str, Any] | None = None,
    extraction: str | None = None,
    grader_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write metrics plus everything needed to know what they mean (model, decoding, n, grader: mode, extraction
    rule and the mode's options, since each changes verdicts) atomically."""
    grader = {"mode": grader_mode, "extraction": extraction, "isolation": isolation, "timeout_s": timeout_s,
              **(dict(grader_options) if grader_options else {})}
    doc = {"model": model, "decode": dict(decode), "n_samples_per_problem": n,
           "grader": {k: v for k, v in grader.items() if v is not None},
           **(dict(extra) if extra else {}), "metrics": dict(metrics)}
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False, allow_nan=True) + "\n")
    return doc


def plot_pass_at_k(metrics: Mapping[str, Any], path, group: str = "difficulty", title: str | None = None) -> None:
    """PNG bar chart: pass@k (k side by side) for "overall" and each group, with the bootstrap CI as error bars."""
    from ssd_jax.figures import new_figure, save_figure

    rows = [("overall", metrics["overall"])] + list(metrics.get(f"by_{group}", {}).items())
    ks = list(pass_at_k_values(metrics["overall"]))
    fig, ax = new_figure(figsize=(1.6 + 1.3 * len(rows), 3.6))
    width = 0.8 / max(len(ks), 1)
    for j, k in enumerate(ks):
        xs = [i + (j - (len(ks) - 1) / 2) * width for i in range(len(rows))]
        vals = [100 * r[f"pass@{k}"] for _, r in rows]
        ci = [r.get(f"pass@{k}_ci95", [r[f"pass@{k}"]] * 2) for _, r in rows]
        err = [[100 * r[f"pass@{k}"] - 100 * c[0] for (_, r), c in zip(rows, ci)],
               [100 * c[1] - 100 * r[f"pass@{k}"] for (_, r), c in zip(rows, ci)]]
        bars = ax.bar(xs, vals, width, yerr=err, capsize=3, label=f"pass@{k}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(rows)), [f"{name}\n(n={r['n_problems']})" for name, r in rows])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)

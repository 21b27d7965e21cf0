"""Fault injection for the interrupted-run tests: kill the job at a named point, not after a guessed delay.

`SSD_JAX_FAULT=<point>[@<n>]` makes the n-th arrival (default the first) of this process at `point` SIGKILL its
whole process group: the stage's process, a parent `ssd-jax run` and its children, as a preemption would (start
the job in its own session). Without the variable `point` costs a dictionary lookup. The points, in pipeline order:
"""

from __future__ import annotations

import os
import signal

ENV = "SSD_JAX_FAULT"
POINTS = {
    "sample.appended": "a sample stage appended a batch of finished samples (sampling/stage.py)",
    "filter.verdicts": "the filter wrote verdicts.jsonl, not yet filtered.jsonl (data/filters.py)",
    "train.step": "a training step updated the model, before its checkpoint (train/loop.py)",
    "checkpoint.saving": "a checkpoint's write started, not finished (train/checkpoint.py; async saves)",
    "eval.graded": "the grader appended graded records (eval_run.py)",
    "analysis.scored": "the fork/lock analysis scored a batch of responses (analysis/forklock.py)",
}
__doc__ += "".join(f"\n- `{k}`: {v}" for k, v in POINTS.items()) + "\n"
_arrivals: dict[str, int] = {}


def point(name: str) -> None:
    """Arrive at fault point `name` (one of POINTS)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(nth or 1):
        os.killpg(os.getpgid(0), signal.SIGKILL)

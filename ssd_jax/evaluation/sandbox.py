"""Run untrusted Python (model samples) in a child process that cannot hurt the host or outlive its budget.

The entry points: `run_python` runs one program, `check_isolation` fails early where it could not run. A run uses
one isolation layer (`isolation.py`: bubblewrap, our own namespaces, or, only by name, none) behind the barrier its
`Layer` describes (`barrier.py`), under rlimits (`limits.py`), and reports its label in `RunResult.isolation`.

`launch` picks how the program's process starts, in the same layer: "fresh" (default here) a new interpreter per
program (`launch.py`); "zygote" (the grader's default) a fork of a long-lived fork server that the layer started once
and that imported the grading harness's modules (`zygote.py`, `_zygote.py`): same barrier, same limits, a new
session, work dir and environment per program, and everything a program leaves in the sandbox (processes, files
in the private /tmp and /dev/shm) removed before the next; labels end in "+zygote".

Call them from the workers of a `pool.WorkerPool` (forkserver/spawn), so the JAX process never forks at all.
"""

from __future__ import annotations

import sys
from typing import Iterable, Literal, Mapping

from ssd_jax.errors import ConfigError
from ssd_jax.evaluation import zygote
from ssd_jax.evaluation.barrier import Layer
from ssd_jax.evaluation.isolation import Isolation, select_layer
from ssd_jax.evaluation.launch import RunResult, _execute
from ssd_jax.evaluation.limits import _limits

LAUNCHES = ("fresh", "zygote")
Launch = Literal["fresh", "zygote"]


def run_python(
    code: str,
    stdin: str | bytes = "",
    *,
    timeout_s: float = 10.0,
    memory_mb: int | None = 4096,
    cpu_s: int | None = None,
    fsize_mb: int = 64,
    nproc: int = 64,
    output_limit: int = 1 << 20,
    isolation: Isolation = "auto",
    site_packages: bool = False,
    files: Mapping[str, str | bytes] | None = None,
    collect: Iterable[str] = (),
    collect_limit: int = 256 << 20,
    args: Iterable[str] = (),
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    drop_root: bool = True,
    precompile: bool = False,
    launch: Launch = "fresh",
) -> RunResult:
    """Run `code` as `__main__` of a fresh interpreter in the sandbox, feed it `stdin`, and wait at most `timeout_s`.

    `memory_mb` caps the address space (RLIMIT_AS; None = no cap), `cpu_s` the CPU seconds (default: the wall
    limit rounded up, +1), `fsize_mb` any one written file, `nproc` the processes/threads the program may add.
    `files` are written into the work dir first; `collect` names files read back (regular files only, at most
    `collect_limit` bytes) into `RunResult.files`. `site_packages=True` drops `-S` so installed packages (numpy)
    import, as in LiveCodeBench's own environment. `env` adds variables to the minimal environment.
    `precompile=True` compiles `code` here once per process (for code run over and over: the grading harness).
    `launch="zygote"` forks the program from this process's zygote of the layer (`zygote.py`: same barrier and
    limits, a fork instead of an interpreter start; label "...+zygote"); unsafe-rlimits, another `python`, and a
    PYTHON* variable in `env` always start a fresh interpreter, and so does a program whose zygote died under it.
    Raises SandboxUnavailable when `isolation` cannot run here, SandboxError when the sandbox broke in the child.
    """
    python = python or sys.executable
    _check_launch(launch)
    layer = select_layer(isolation, python, drop_root)
    limits, nproc_on = _limits(layer, timeout_s, memory_mb, cpu_s, fsize_mb, nproc)
    precompile = precompile and python == sys.executable
    if launch == "zygote" and _zygote_serves(layer, python, env):
        r = zygote.run(layer, python, layer.label(nproc_on) + "+zygote", code, stdin, timeout_s=timeout_s,
                       limits=limits, output_limit=output_limit, files=files, collect=collect,
                       collect_limit=collect_limit, args=args, env=env, site_packages=site_packages,
                       precompile=precompile)
        if r is not None:
            return r
    return _execute(layer, code, stdin, python=python, timeout_s=timeout_s, limits=limits,
                    label=layer.label(nproc_on), output_limit=output_limit, site_packages=site_packages,
                    files=files, collect=collect, collect_limit=collect_limit, args=args, env=env,
                    precompile=precompile)


def check_isolation(isolation: str, python: str | None = None, drop_root: bool = True,
                    launch: Launch = "fresh") -> str:
    """Fail early (SandboxUnavailable / ConfigError; SandboxError when a zygote cannot start or fails its probe) if
    `isolation` cannot run here; else the label runs will get."""
    python = python or sys.executable
    _check_launch(launch)
    layer = select_layer(isolation, python, drop_root)
    label = layer.label(layer.run_uid() != 0)
    if launch == "zygote" and _zygote_serves(layer, python, None):
        zygote.check(layer, python, label + "+zygote")
        return label + "+zygote"
    return label


def _check_launch(launch: str) -> None:
    if launch not in LAUNCHES:
        raise ConfigError(f"sandbox launch {launch!r}: expected one of {', '.join(LAUNCHES)}")


def _zygote_serves(layer: Layer, python: str, env: Mapping[str, str] | None) -> bool:
    """A zygote needs a barrier (its sweep relies on the PID namespace), our own interpreter (it ships compiled
    code), and no PYTHON* variable in `env` (those act when an interpreter starts, not when it forks)."""
    return layer.kind in ("bwrap", "ns") and python == sys.executable and \
        not any(k.startswith("PYTHON") for k in (env or {}))

"""The processes that grade: a pool started by "forkserver" (Linux) or "spawn", never by fork.

The process that samples or trains holds a JAX runtime (threads, device handles); forking it is unsafe. Workers of
this pool are fresh interpreters (forkserver forks them from a clean, single-threaded server), and they are the ones
that start sandbox children, so the JAX process never forks at all.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from ssd_jax.errors import ConfigError


def _take_disable(value: str | None) -> None:
    """Worker initializer: the pool creator's SSD_SANDBOX_DISABLE, not the one the (process-wide, long-lived)
    forkserver happened to start with."""
    if value is None:
        os.environ.pop("SSD_SANDBOX_DISABLE", None)
    else:
        os.environ["SSD_SANDBOX_DISABLE"] = value


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class WorkerPool:
    """Grader processes started by "forkserver" (Linux) or "spawn", never by fork (see the module docstring).

    Use as a context manager; `submit` takes any picklable, importable function, e.g.
    `ssd_jax.evaluation.grader.grade`.
    """

    def __init__(self, max_workers: int | None = None, start_method: str | None = None,
                 preload: Iterable[str] = ("ssd_jax.evaluation.grader",)):
        method = start_method or _default_start_method()
        if method == "fork":
            raise ConfigError("WorkerPool start_method 'fork': expected forkserver or spawn (never fork a JAX process)")
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(list(preload))
        self.start_method = method
        self.max_workers = max_workers or min(os.cpu_count() or 1, 16)
        self._ex = ProcessPoolExecutor(self.max_workers, mp_context=ctx, initializer=_take_disable,
                                       initargs=(os.environ.get("SSD_SANDBOX_DISABLE"),))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._ex.submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
        return self._ex.map(fn, *iterables, chunksize=chunksize)

    def shutdown(self, wait: bool = True) -> None:
        self._ex.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

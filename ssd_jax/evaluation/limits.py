"""The rlimits of one sandboxed run, set by the bootstrap before the program is compiled.

Address space, CPU seconds (SIGXCPU, then SIGKILL a second later), the size of any one written file, no core files,
and processes: RLIMIT_NPROC counts every task of the uid the program runs as, so the cap is the program's share plus
what that uid runs already (only the sandbox's own tasks in a fresh user namespace). The kernel exempts host uid 0,
which the label then shows as "rlimits(no-nproc)". No limit goes above the hard limit we were given.
"""

from __future__ import annotations

import math
import os

from ssd_jax.evaluation.barrier import Layer


def _uid_task_count(uid: int) -> int:
    """Tasks (threads count: RLIMIT_NPROC counts threads) that `uid` owns now, from /proc."""
    n = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid == uid:
                n += len(os.listdir(f"/proc/{name}/task"))
        except OSError:
            pass
    return n


def _limits(layer: Layer, timeout_s: float, memory_mb: int | None, cpu_s: int | None, fsize_mb: int,
            nproc: int) -> tuple[dict[str, tuple[int, int]], bool]:
    """The rlimits of one run, never above the hard limits we were given; and whether RLIMIT_NPROC binds."""
    import resource

    cpu = cpu_s if cpu_s is not None else int(math.ceil(timeout_s)) + 1
    limits: dict[str, tuple[int, int]] = {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU first, SIGKILL one second later
        "RLIMIT_FSIZE": (fsize_mb << 20, fsize_mb << 20),
    }
    if memory_mb is not None:
        limits["RLIMIT_AS"] = (memory_mb << 20, memory_mb << 20)
    run_uid = layer.run_uid()
    nproc_on = run_uid != 0  # the kernel never applies RLIMIT_NPROC to host uid 0
    if nproc_on:
        # In a fresh user namespace the count covers only the sandbox; otherwise all tasks of that uid. The
        # namespace layer's PID 1 reaper counts too.
        n = nproc + (layer.kind == "ns") + (0 if layer.userns else _uid_task_count(run_uid))
        limits["RLIMIT_NPROC"] = (n, n)
    for name, (soft, hard) in list(limits.items()):
        cur_hard = resource.getrlimit(getattr(resource, name))[1]
        if cur_hard != resource.RLIM_INFINITY:
            limits[name] = (min(soft, cur_hard), min(hard, cur_hard))
    return limits, nproc_on

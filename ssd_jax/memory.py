"""Peak memory of a stage: host RSS high-water mark and, on accelerators, the device's peak bytes in use.

Why not reset the high-water mark per stage: `ssd-jax run` runs several stages in one process, and the kernel's mark
(VmHWM) only grows. Writing "5" to /proc/self/clear_refs would reset it, but the kernel also reports that mark as
`ru_maxrss` to whoever measures the process from outside (`/usr/bin/time -v`), which would then see only the last
stage. So a stage compares the mark at its end with the mark at its start: if it grew, the stage set the process's
peak and the new mark is its exact peak; if not, the stage's peak is the largest RSS a sampling thread saw (every
20 ms). A stage run as a child process is measured from its own /proc status while it runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import resource
import threading
import time
from contextlib import contextmanager
from typing import Iterator

GB = 1e9
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
_SET_HERE: list[str] = []  # the value this process set for itself: not a launcher's, so its children do not inherit it


def reserve_device_memory(fraction: float) -> dict:
    """Let JAX take `fraction` of each accelerator's memory: MEM_FRACTION_ENV, read once when the backend starts,
    so this must run first (the CLI calls it for `train` and for `run`'s in-process stages; a child stage calls it
    from its own config). A value already set in the environment wins. Returns what is in effect, for the records."""
    from jax._src import xla_bridge

    started = xla_bridge.backends_are_initialized()
    if not started and MEM_FRACTION_ENV not in os.environ:
        os.environ[MEM_FRACTION_ENV] = f"{fraction:g}"
        _SET_HERE.append(os.environ[MEM_FRACTION_ENV])
    return {"hbm_fraction": os.environ.get(MEM_FRACTION_ENV), "set_before_backend": not started}


def return_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc's `malloc_trim`; elsewhere only the
    collection).

    Why: glibc keeps what Python, orbax and tensorstore free in its arenas, so without this a process's RSS only
    grows. Measured on SmolLM2-135M's SFT (4 × 768, micro-batch 1): one checkpoint save left 1.4 GB behind, which
    the next step's 2.2 GB of XLA temporaries then came on top of (peak 6.3 GB instead of 4.6); between stages run in
    one process the sampler's 0.9 GB stayed resident."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def rss_bytes() -> int:
    """This process's resident set now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark since it started."""
    hwm = _vm_hwm("self")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def device_peak_bytes() -> int | None:
    """Largest `peak_bytes_in_use` over the local accelerators (None on CPU, where JAX does not track it, and in a
    process that never started a JAX backend: asking would start one, and a vLLM stage's process must not)."""
    import sys

    if "jax" not in sys.modules:
        return None
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        return None

    peaks = []
    for d in jax.local_devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


class _StagePeak:
    """The peak RSS of the running stage: exact where the stage raised the process's mark, sampled otherwise."""

    def __init__(self, interval_s: float = 0.02):
        self.start_hwm = peak_rss_bytes()
        self.sampled = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), name="stage-peak", daemon=True)
        self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.sampled = max(self.sampled, rss_bytes())

    def peak(self) -> int:
        hwm = peak_rss_bytes()
        return hwm if hwm > self.start_hwm else max(self.sampled, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak()


_current: _StagePeak | None = None


def process_peak() -> dict:
    """The running stage's peak so far (inside `ssd-jax run`), else this process's: for a stage's own outputs."""
    if _current is not None:
        return record(_current.peak(), "stage", device_peak=device_peak_bytes())
    return record(peak_rss_bytes(), "process", device_peak=device_peak_bytes())


def record(peak_rss: int, scope: str, seconds: float | None = None, device_peak: int | None = None) -> dict:
    out = {"peak_rss_gb": round(peak_rss / GB, 3), "scope": scope}
    if device_peak is not None:
        out["device_peak_gb"] = round(device_peak / GB, 3)
    if seconds is not None:
        out["seconds"] = round(seconds, 1)
    return out


@contextmanager
def stage_peak() -> Iterator[dict]:
    """`with stage_peak() as mem: …` fills `mem` with the block's peak RSS (and device peak) when it ends."""
    global _current
    outer, _current = _current, _StagePeak()
    mem: dict = {}
    t0 = time.perf_counter()
    try:
        yield mem
    finally:
        stage, _current = _current, outer
        mem.update(record(stage.stop(), "stage", time.perf_counter() - t0, device_peak_bytes()))


def _vm_hwm(pid: int | str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_child(argv: list[str], poll_s: float = 0.05, env: dict | None = None) -> tuple[int, dict]:
    """Run a command to completion (in `env`, default ours); (exit code, its own peak memory).

    Why polling: the kernel's rusage of a child (`ru_maxrss`) folds in the parent's high-water mark at the
    moment the child was spawned (the mm it exec'd from), so a child of a large process would report the parent's
    size. VmHWM in /proc/<pid>/status belongs to the child's own address space after exec and only grows, so its
    last reading before exit is the child's peak (growth in the final `poll_s` can be missed)."""
    import subprocess

    t0 = time.perf_counter()
    env = dict(os.environ if env is None else env)
    if _SET_HERE and env.get(MEM_FRACTION_ENV) == _SET_HERE[-1]:
        del env[MEM_FRACTION_ENV]  # each child stage takes its own config's share
    proc = subprocess.Popen(argv, env=env)
    peak = 0
    while True:
        hwm = _vm_hwm(proc.pid)
        if hwm is not None:
            peak = hwm  # monotonic after exec: the latest reading is the largest
        try:
            proc.wait(timeout=poll_s)
            break
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode, record(peak, "child process", time.perf_counter() - t0)


def format_peaks(peaks: dict[str, dict]) -> str:
    """One line per stage ({stage: memory record}): for `ssd-jax run`'s closing summary."""
    rows = list(peaks.items())
    if not rows:
        return ""
    width = max(len(n) for n, _ in rows)
    lines = ["peak memory per stage (host RSS high-water mark):"]
    for name, m in rows:
        dev = f", device {m['device_peak_gb']:.2f} GB" if "device_peak_gb" in m else ""
        lines.append(f"  {name:<{width}}  {m['peak_rss_gb']:6.2f} GB{dev}  ({m['scope']})")
    return "\n".join(lines)

"""Peak memory of a stage: host RSS high-water mark and, on accelerators, the device's peak bytes in use.

Why per stage: `ssd-jax run` runs several stages in one process, and a process's high-water mark (VmHWM) only ever
grows. Linux resets it when "5" is written to /proc/self/clear_refs, so each stage starts its own count; a stage
run as a child process is measured from its own /proc status while it runs. Where neither is possible the number is the
process's peak so far, and `scope` says so.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from typing import Iterator

GB = 1e9


def reset_peak_rss() -> bool:
    """Start a new high-water mark for this process; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark (since the last reset)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def device_peak_bytes() -> int | None:
    """Largest `peak_bytes_in_use` over the local accelerators (None on CPU, where JAX does not track it)."""
    import sys

    if "jax" not in sys.modules:
        return None
    import jax

    peaks = []
    for d in jax.local_devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def process_peak() -> dict:
    """This process's peak so far (since the stage's reset, inside `ssd-jax run`): for a stage's own outputs."""
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
    scope = "stage" if reset_peak_rss() else "process"
    mem: dict = {}
    t0 = time.perf_counter()
    try:
        yield mem
    finally:
        mem.update(record(peak_rss_bytes(), scope, time.perf_counter() - t0, device_peak_bytes()))


def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_child(argv: list[str], poll_s: float = 0.05) -> tuple[int, dict]:
    """Run a command to completion; (exit code, its own peak memory).

    Why polling: the kernel's rusage of a child (`ru_maxrss`) folds in the parent's high-water mark at the
    moment the child was spawned (the mm it exec'd from), so a child of a large process would report the parent's
    size. VmHWM in /proc/<pid>/status belongs to the child's own address space after exec and only grows, so its
    last reading before exit is the child's peak (growth in the final `poll_s` can be missed)."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
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

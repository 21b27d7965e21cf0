"""One writer per run folder: `ssd-jax run`, `train`, `sample` and `eval` hold their output folder for the job.

The lock is an exclusive `flock` on `<folder>/.ssd-jax.lock`, held by an open file for the life of the process, with
the holder written into the file (host, pid, job, command, since). The kernel drops the lock when its process dies,
however it dies, so a lock left by a killed job is simply taken over; a live holder makes another job exit 2 at once,
naming it. One job is one token (`SSD_JAX_JOB`, inherited by child processes): a run's own child stages write inside
the folder their parent holds, so a folder held by an enclosing or enclosed folder's lock is refused only when that
lock belongs to another job. In a multi-process JAX job, process 0 holds the locks and writes (ssd_jax.distributed).

`flock` is per host on most network filesystems: two hosts writing one folder are not stopped by it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ssd_jax.errors import UserError

LOCK_NAME = ".ssd-jax.lock"
JOB_ENV = "SSD_JAX_JOB"
NESTED_DEPTH = 3  # how deep below a folder its stages' own locks can sit (run/round-r/train)


def job_token() -> str:
    """This job's token, made once and inherited by every child process."""
    if JOB_ENV not in os.environ:
        os.environ[JOB_ENV] = uuid.uuid4().hex
    return os.environ[JOB_ENV]


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(h: dict) -> str:
    return (f"`{h.get('command', 'ssd-jax')}` (host {h.get('host', '?')}, pid {h.get('pid', '?')}, job "
            f"{str(h.get('job', '?'))[:8]}, since {h.get('since', '?')})")


def _held_by_another_job(lock: Path, token: str) -> dict | None:
    """The holder of `lock` when a live process of another job holds it; else None."""
    if not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it: a finished or killed job's file
    except BlockingIOError:
        h = _holder(lock)
        return None if h.get("job") == token else h
    finally:
        os.close(fd)


def _related_locks(folder: Path) -> list[Path]:
    """Locks of the folders enclosing `folder` and of those inside it (up to NESTED_DEPTH levels)."""
    up = [p / LOCK_NAME for p in folder.parents]
    down = [p for depth in range(1, NESTED_DEPTH + 1) for p in folder.glob("/".join(["*"] * depth) + "/" + LOCK_NAME)]
    return up + down


def _writer_process() -> bool:
    """Process 0 of a multi-process job (joined, or about to join as JAX_PROCESS_ID says), or a single process."""
    from ssd_jax import distributed

    if distributed.process_count() > 1:
        return distributed.is_writer()
    return os.environ.get("JAX_PROCESS_ID", "0").strip() in ("", "0")


@contextmanager
def hold(folder: str | os.PathLike, command: str):
    """Hold `folder` for this job while the block runs (see the module docstring); a no-op in the processes of a
    multi-process job other than process 0, which writes for them."""
    if not _writer_process():
        yield
        return
    folder = Path(folder).resolve()
    token = job_token()
    for other in _related_locks(folder):
        h = _held_by_another_job(other, token)
        if h is not None:
            raise UserError(f"{folder}: {other.parent} is being written by {_describe(h)}; wait for it to finish "
                            f"or stop it (a killed job's lock is taken over)")
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(lock)
            if h.get("job") == token:  # this job's own process holds it (a parent run): write under its lock
                yield
                return
            raise UserError(f"{folder} is being written by {_describe(h)}; wait for it to finish or stop it "
                            f"(a killed job's lock is taken over)") from None
        previous = _holder(lock)
        if previous.get("pid") and previous.get("job") != token:
            print(f"{folder}: taking over the lock of a job that is no longer running ({_describe(previous)})",
                  file=sys.stderr)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "job": token, "command": command,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        yield
    finally:
        os.close(fd)  # releases the flock

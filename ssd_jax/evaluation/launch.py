"""Start one program in a fresh interpreter inside a chosen layer, follow it to its end, and clean up after it.

The child is `python -c _BOOT <setup> main.py [args]`: the bootstrap (`_boot.py`) sets the rlimits, builds the
namespaces (layer "ns"), drops to "nobody" and capabilities, then runs the program; bwrap's arguments go in front.
A set-up failure is reported on a private pipe and raised as `SandboxError`, so a broken sandbox is never graded as
a wrong program. The child gets a new session (its process group is SIGKILLed as a whole on timeout and after its
exit), a fresh work dir (cwd and HOME, removed afterwards), an environment built from scratch (no parent secrets),
and its stdout/stderr are read up to a cap. It runs `-s` (no user site) and `-S`: with `site_packages=True` the
bootstrap puts our interpreter's site-packages on sys.path itself (.pth path lines honoured; .pth `import` lines and
sitecustomize not run).

Why a bootstrap instead of `preexec_fn`: `preexec_fn` forces a full fork() of the caller and runs Python between
fork and exec, which CPython documents as unsafe in threaded processes (a JAX runtime is one). Without it
`subprocess` uses vfork+exec, and the limits still bind before the first byte of untrusted code is compiled.
Even so, grading belongs in a `pool.WorkerPool` (forkserver/spawn workers), so the JAX process never forks at all.
Per-run costs kept low: the bootstrap (and, with `precompile`, the program) reach the child compiled.
"""

from __future__ import annotations

import functools
import marshal
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ssd_jax.evaluation.barrier import Layer, _boot_items

# The child bootstrap, passed as `python -c _BOOT <setup> main.py [args]` (see _boot.py for <setup>); to our own
# interpreter compiled, as `python -c _BOOT_STUB <marshalled _BOOT> <setup> ...` (compiling it costs ~5 ms a run).
_BOOT = (Path(__file__).parent / "_boot.py").read_text(encoding="utf-8")
_BOOT_STUB = "import sys, marshal; exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"


class SandboxError(RuntimeError):
    """The sandbox could not set itself up in the child (not the program's fault): the run has no verdict."""


@dataclass
class RunResult:
    """What one sandboxed run did. `returncode` is negative for a signal (bwrap's 128+N is mapped back)."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_by: str | None  # "timeout" (we killed it) or a signal name ("SIGXCPU", "SIGSEGV", ...)
    isolation: str
    wall_s: float
    truncated: bool  # stdout or stderr went over `output_limit`
    pid: int = 0  # the child's pid = its session and process-group id (from a zygote: as seen inside the sandbox)
    files: dict[str, bytes] = field(default_factory=dict)  # `collect`ed files from the work dir


def _child_env(work: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": work,
        "TMPDIR": work,
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.update(extra or {})
    return env


def _write_inputs(work: str, code: str, files: Mapping[str, str | bytes] | None) -> None:
    with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as f:
        f.write(code)
    for name, data in (files or {}).items():
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"sandbox file names must be plain names, got {name!r}")
        with open(os.path.join(work, name), "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def _prepare(work: str, layer: Layer, code: str, files: Mapping[str, str | bytes] | None,
             precompile: bool) -> None:
    """The work dir as the program finds it (a fresh child's or a zygote's): owned by the uid the program runs as,
    with main.py (and main.pyc) and `files`."""
    if layer.drop is not None:
        os.chown(work, *layer.drop)
    _write_inputs(work, code, files)
    if precompile:
        with open(os.path.join(work, "main.pyc"), "wb") as f:
            f.write(_marshalled(code))


def _finish(result: RunResult, err_r: int, label: str, work: str, collect: Iterable[str],
            collect_limit: int) -> RunResult:
    """A failure the bootstrap reported on its pipe is the sandbox's (SandboxError), not the program's; else label
    the result and read the `collect`ed files back."""
    failure = _drain(err_r)
    if failure:
        raise SandboxError(f"sandbox ({label}) failed to set up in the child: {failure}")
    result.isolation = label
    for name in collect:
        data = _read_regular(os.path.join(work, name), collect_limit)
        if data is not None:
            result.files[name] = data
    return result


@functools.lru_cache(maxsize=1)
def _site_dirs() -> tuple[str, ...]:
    import site

    return tuple(d for d in site.getsitepackages() if os.path.isdir(d))


@functools.lru_cache(maxsize=1)
def _boot_hex() -> str:
    return marshal.dumps(compile(_BOOT, "<ssd-jax sandbox bootstrap>", "exec")).hex()


@functools.lru_cache(maxsize=8)
def _marshalled(code: str) -> bytes:
    return marshal.dumps(compile(code, "main.py", "exec", dont_inherit=True))


def _command(layer: Layer, python: str, site_packages: bool, limits: Mapping[str, tuple[int, int]], work: str,
             errfd: int, args: Iterable[str], compiled: bool = False) -> list[str]:
    """The child's command line. site-packages of our own interpreter go on sys.path through the bootstrap (`-S`
    stays: `site` would run every .pth import, ~35 ms per run with an editable install); another interpreter gets
    its own `site`."""
    same = python == sys.executable
    items = [f"errfd:{errfd}"] + ["marshal:"] * compiled
    if site_packages and same:
        items += [f"site:{d.encode().hex()}" for d in _site_dirs()]
    items += _boot_items(layer, work, python)
    items += [f"{k}:{s}:{h}" for k, (s, h) in limits.items()]
    py = [python, "-s", "-B"] + ([] if site_packages and not same else ["-S"])
    boot = [_BOOT_STUB, _boot_hex()] if same else [_BOOT]
    cmd = [*py, "-c", *boot, ";".join(items), "main.py", *args]
    if layer.kind == "bwrap":
        cmd = [*layer.args, "--bind", work, work, "--chdir", work, *cmd]
    return cmd


def _drain(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace").strip()


def _execute(layer: Layer, code: str, stdin: str | bytes, *, python: str, timeout_s: float,
             limits: Mapping[str, tuple[int, int]], label: str, output_limit: int = 1 << 20,
             site_packages: bool = False, files: Mapping[str, str | bytes] | None = None,
             collect: Iterable[str] = (), collect_limit: int = 256 << 20, args: Iterable[str] = (),
             env: Mapping[str, str] | None = None, precompile: bool = False) -> RunResult:
    """One run in `layer` with a fresh work dir; raises SandboxError if the bootstrap reported a set-up failure."""
    work = tempfile.mkdtemp(prefix="ssd-sandbox-")
    err_r, err_w = os.pipe()
    try:
        _prepare(work, layer, code, files, precompile)
        cmd = _command(layer, python, site_packages, limits, work, err_w, args, precompile)
        result = _run(cmd, work, _child_env(work, env), stdin, timeout_s, output_limit, layer.kind == "bwrap",
                      err_w)
        return _finish(result, err_r, label, work, collect, collect_limit)
    finally:
        os.close(err_r)
        os.close(err_w)
        _rmtree(work)


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _exited(pid: int) -> bool:
    """True once `pid` has exited, without reaping it (so its pid, = our pgid, cannot be reused yet)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _rmtree(path: str) -> None:
    """Remove the work dir even if the program chmod-ed things read-only."""

    def retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _read_regular(path: str, limit: int) -> bytes | None:
    """Read a file the program may have tampered with: no symlinks, no FIFOs/devices, at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, total = [], 0
        while total < limit:
            b = os.read(fd, min(1 << 20, limit - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _Feed:
    """A program's stdin, written in pieces when its pipe has room, so a program that never reads cannot stall us."""

    def __init__(self, data: bytes):
        self.view, self.pos = memoryview(data), 0

    def write(self, fd: int) -> bool:
        """Write the next piece to `fd`; True once all is written or the program closed its end."""
        try:
            self.pos += os.write(fd, self.view[self.pos : self.pos + 65536])
        except OSError:
            self.pos = len(self.view)
        return self.pos >= len(self.view)


class _Capture:
    """A program's stdout and stderr, kept up to `limit` bytes each; past that drained and dropped (so the program
    never blocks on a full pipe) and marked `truncated`."""

    def __init__(self, fds: Iterable[int], limit: int):
        self.bufs = {fd: bytearray() for fd in fds}
        self.limit = limit
        self.truncated = False

    def read(self, fd: int) -> bool:
        """Take what `fd` has; False at EOF."""
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        buf = self.bufs[fd]
        room = self.limit - len(buf)
        if len(chunk) > room:
            self.truncated = True
        buf += chunk[: max(room, 0)]
        return True

    def text(self, fd: int) -> str:
        return bytes(self.bufs[fd]).decode("utf-8", "replace")


def _run(cmd: list[str], cwd: str, env: dict[str, str], stdin: str | bytes, timeout_s: float,
         output_limit: int, via_bwrap: bool, errfd: int) -> RunResult:
    """Start `cmd` in a new session, follow it under the wall-clock limit, then kill its whole group and reap it."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True, pass_fds=(errfd,))
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    capture = _Capture((out_fd, err_fd), output_limit)
    try:
        timed_out = _follow(proc, data, t0 + timeout_s, capture)
    finally:
        rc = _reap(proc)
    wall = time.monotonic() - t0
    rc, killed_by = _verdict(rc, timed_out, via_bwrap)
    return RunResult(returncode=rc, stdout=capture.text(out_fd), stderr=capture.text(err_fd), timed_out=timed_out,
                     killed_by=killed_by, isolation="", wall_s=wall, truncated=capture.truncated, pid=proc.pid)


def _follow(proc: subprocess.Popen, data: bytes, deadline: float, capture: _Capture) -> bool:
    """Feed stdin and read the outputs until they close or the deadline passes; True if the program timed out."""
    timed_out = exited = False
    feed = _Feed(data)
    sel = selectors.DefaultSelector()
    try:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        if data:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = not exited
                break
            for key, _ in sel.select(min(deadline - now, 0.1)):
                if key.fileobj is proc.stdin:
                    if feed.write(key.fd):
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                elif not capture.read(key.fd):
                    sel.unregister(key.fileobj)
            if not exited and _exited(proc.pid):
                # The program is done: kill whatever it left in its group, then drain briefly. A process that
                # escaped the group (setsid) may hold the pipes open, so stop waiting for EOF after 1 s.
                exited = True
                _killpg(proc.pid)
                deadline = min(deadline, time.monotonic() + 1.0)
    finally:
        sel.close()
    return timed_out or (not exited and _outlives(proc.pid, deadline))


def _outlives(pid: int, deadline: float) -> bool:
    """Output closed but the process lives on: wait out the remaining budget; True if it still runs then."""
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.005)
    return False


def _reap(proc: subprocess.Popen) -> int:
    """Kill the group before reaping (the zombie keeps the pgid from being reused) and again after; close the pipes.
    Returns the exit status."""
    _killpg(proc.pid)
    rc = proc.wait()
    _killpg(proc.pid)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            f.close()
        except OSError:
            pass
    return rc


def _verdict(rc: int, timed_out: bool, via_bwrap: bool) -> tuple[int, str | None]:
    """The return code (negative for a signal) and what killed the program: "timeout", a signal name, or None."""
    if timed_out:
        return rc, "timeout"
    if rc < 0:
        return rc, _signame(-rc)
    if via_bwrap and 128 < rc < 128 + 65:
        # bwrap reports a child killed by signal N as exit status 128+N (ambiguous with exit(129..192),
        # which Python programs practically never use).
        return -(rc - 128), _signame(rc - 128)
    return rc, None

"""Run untrusted Python (model samples) in a child process that cannot hurt the host or outlive its budget.

Layers, each recorded in `RunResult.isolation` (e.g. "bwrap+rlimits+nobody") so a score says how it was obtained:
- "bwrap": bubblewrap namespaces when `bwrap` works here (probed once per process): no network
  (`--unshare-net`), own PID namespace (a fork bomb or a daemon dies with the sandbox; the parent is invisible, so
  `os.kill(os.getppid(), 9)` only reaches bwrap's reaper), `/` read-only, a private size-capped `/tmp`, the
  caller's home hidden (the interpreter re-exposed if it lives there), only the fresh work dir writable.
- "rlimits": address space, CPU seconds, file size, no core files and a process budget, set by our bootstrap
  inside the child before the program is compiled. "rlimits(no-nproc)" where RLIMIT_NPROC cannot work: the
  kernel exempts host uid 0 (even as root of a user namespace), so a fork bomb is then bounded only by the
  wall clock (and, with bwrap, killed whole with its PID namespace).
- "nobody": when we are root the bootstrap switches to the "nobody" user before running anything (with bwrap:
  privileged bwrap keeps just CAP_SETUID/CAP_SETGID for that switch, then no capabilities are left). That makes
  RLIMIT_NPROC count, and root-owned files and processes out of reach.
- Always: a new session/process group that is SIGKILLed as a whole on timeout and after exit, a fresh temp work
  dir (cwd and HOME) removed afterwards, an environment built from scratch (no parent secrets), stdout/stderr read
  up to a cap, `-s` (no user site) and by default `-S` (no site-packages).

Why a bootstrap instead of `preexec_fn`: `preexec_fn` forces a full fork() of the caller and runs Python between
fork and exec, which CPython documents as unsafe in threaded processes (a JAX runtime is one). Without it
`subprocess` uses vfork+exec, and the limits still bind before the first byte of untrusted code is compiled.
Even so, grading belongs in a `WorkerPool` (forkserver/spawn workers), so the JAX process never forks at all.

Without bwrap, a child can open sockets and write world-writable paths such as /tmp, and (without "nobody") signal
its parent: the isolation string says so, and the tests check both modes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping

from ssd_jax.errors import ConfigError, UserError

Isolation = Literal["auto", "bwrap", "rlimits"]

# Runs inside the child as `python -c _BOOT <setup> <script> [args]`: switch user, set limits, run the script as
# __main__. <setup> is ";"-separated "setuid:UID:GID" and "RLIMIT_X:soft:hard" items.
_BOOT = """\
import sys
def _boot():
    import builtins, os, resource
    for item in filter(None, sys.argv[1].split(";")):
        name, a, b = item.split(":")
        if name == "setuid":
            os.setgroups([])
            os.setgid(int(b))
            os.setuid(int(a))
        else:
            resource.setrlimit(getattr(resource, name), (int(a), int(b)))
    if not hasattr(builtins, "exit"):  # -S leaves out site's exit()/quit(); programs call them
        builtins.exit = builtins.quit = sys.exit
    path = sys.argv[2]
    del sys.argv[:2]
    with open(path, "rb") as f:
        src = f.read()
    g = globals()
    del g["_boot"]
    g["__file__"] = path
    return compile(src, path, "exec")
exec(_boot())
"""


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
    pid: int = 0  # the child's pid = its session and process-group id
    files: dict[str, bytes] = field(default_factory=dict)  # `collect`ed files from the work dir


@dataclass(frozen=True)
class _Bwrap:
    args: tuple[str, ...]  # bwrap and its namespace flags (everything except the per-run binds)
    userns: bool  # a fresh user namespace: RLIMIT_NPROC then counts only the sandbox's processes
    drop: tuple[int, int] | None  # (uid, gid) the bootstrap switches to inside; None = stay the caller


_bwrap_cache: dict[tuple, _Bwrap | None] = {}
_warned: list[bool] = []


def _nobody() -> tuple[int, int]:
    import pwd

    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


def _interpreter_dirs(python: str) -> set[str]:
    return {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(python)))}


def _world_traversable(path: str) -> bool:
    """Could an unrelated user reach `path` (every ancestor o+x, the path itself o+r)?"""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        parts = path.split(os.sep)
        for i in range(1, len(parts)):
            if not os.stat(os.sep.join(parts[:i]) or os.sep).st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


def _rebind_under(root: str, python: str) -> list[str]:
    """After `root` was replaced by an empty tmpfs, bind the interpreter's own directories under it back read-only
    (a venv in /tmp, a pyenv under the home), with world-readable mount points so "nobody" can import."""
    args: list[str] = []
    made: set[str] = set()
    dirs = sorted(p for p in _interpreter_dirs(python) if p.startswith(root.rstrip(os.sep) + os.sep))
    for p in dirs:
        if any(p.startswith(q + os.sep) for q in dirs):
            continue  # inside a directory bound already
        parts = os.path.relpath(p, root).split(os.sep)
        for i in range(1, len(parts)):
            d = os.path.join(root, *parts[:i])
            if d not in made:
                made.add(d)
                args += ["--perms", "0755", "--dir", d]
        args += ["--ro-bind", p, p]
    return args


def _hide_home(python: str) -> list[str]:
    """Hide the caller's home (credentials live there) but re-expose the interpreter if it lives under it."""
    home = os.path.realpath(os.path.expanduser("~"))
    if home in ("/", "") or not os.path.isdir(home):
        return []
    return ["--perms", "0755", "--tmpfs", home, *_rebind_under(home, python)]


def bwrap_support(python: str | None = None, drop_root: bool = True) -> _Bwrap | None:
    """Probe (once per process) which bubblewrap set-up actually runs here; None when none does.

    As root (with `drop_root`): privileged bwrap that keeps only CAP_SETUID/CAP_SETGID so the bootstrap can become
    "nobody". Otherwise: a user namespace (what unprivileged bwrap needs) with `--disable-userns`, then plainer
    variants for older bwrap or kernels/containers without user namespaces. Each variant also tries a size-capped
    private /tmp first (`--size`, bwrap >= 0.7).
    """
    python = python or sys.executable
    key = (python, drop_root, os.geteuid())
    if key in _bwrap_cache:
        return _bwrap_cache[key]
    exe = shutil.which("bwrap")
    found = None
    if exe:
        common = ["--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                  "--unshare-cgroup-try", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        variants: list[tuple[list[str], bool, tuple[int, int] | None]] = []
        if os.geteuid() == 0 and drop_root:
            variants.append((["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"], False, _nobody()))
        variants += [(["--unshare-user", "--disable-userns"], True, None), (["--unshare-user"], True, None),
                     ([], False, None)]
        for extra, userns, drop in variants:
            for sized in (True, False):
                tmp = (["--size", str(256 << 20)] if sized else []) + ["--perms", "1777", "--tmpfs", "/tmp",
                                                                        *_rebind_under("/tmp", python)]
                cand = _Bwrap((exe, *extra, *common, *tmp, *_hide_home(python)), userns, drop)
                if _probe(cand, python):
                    found = cand
                    break
            if found:
                break
    _bwrap_cache[key] = found
    return found


def _probe(bw: _Bwrap, python: str) -> bool:
    work = tempfile.mkdtemp(prefix="ssd-bwrap-probe-")
    try:
        if bw.drop:
            os.chown(work, *bw.drop)
        setup = f"setuid:{bw.drop[0]}:{bw.drop[1]}" if bw.drop else ""
        cmd = [*bw.args, "--bind", work, work, "--chdir", work, python, "-s", "-S", "-c", _BOOT, setup, "main.py"]
        with open(os.path.join(work, "main.py"), "w") as f:
            f.write("import os, json\nopen('probe', 'w').write(json.dumps(os.getuid()))\n")
        try:
            r = subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                               env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.SubprocessError):
            return False
        want = str(bw.drop[0]) if bw.drop else None
        got = _read_regular(os.path.join(work, "probe"), 64)
        return r.returncode == 0 and got is not None and (want is None or got.decode() == want)
    finally:
        _rmtree(work)


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
) -> RunResult:
    """Run `code` as `__main__` of a fresh interpreter in the sandbox, feed it `stdin`, and wait at most `timeout_s`.

    `memory_mb` caps the address space (RLIMIT_AS; None = no cap), `cpu_s` the CPU seconds (default: the wall
    limit rounded up, +1), `fsize_mb` any one written file, `nproc` the processes/threads the program may add.
    `files` are written into the work dir first; `collect` names files read back (regular files only, at most
    `collect_limit` bytes) into `RunResult.files`. `site_packages=True` drops `-S` so installed packages (numpy)
    import, as in LiveCodeBench's own environment. `env` adds variables to the minimal environment.
    """
    if isolation not in ("auto", "bwrap", "rlimits"):
        raise ConfigError(f"sandbox isolation {isolation!r}: expected auto, bwrap or rlimits")
    python = python or sys.executable
    bw = bwrap_support(python, drop_root) if isolation in ("auto", "bwrap") else None
    if isolation == "bwrap" and bw is None:
        raise UserError("sandbox isolation 'bwrap' requested but bubblewrap is missing or cannot run here "
                        "(install the Debian/Ubuntu package `bubblewrap`, or use isolation: auto)")
    if bw is not None:
        drop = bw.drop
    elif os.geteuid() == 0 and drop_root and all(map(_world_traversable, (python, *_interpreter_dirs(python)))):
        drop = _nobody()
    else:
        drop = None  # not root, or root whose interpreter "nobody" cannot reach (e.g. under /root)
        if os.geteuid() == 0 and not _warned:
            _warned.append(True)
            warnings.warn("sandbox: untrusted code runs as root under rlimits only (bubblewrap not used, and "
                          "'nobody' cannot reach the interpreter); use bubblewrap for real isolation", stacklevel=2)
    run_uid = drop[0] if drop else os.geteuid()

    cpu = cpu_s if cpu_s is not None else int(math.ceil(timeout_s)) + 1
    limits: dict[str, tuple[int, int]] = {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU first, SIGKILL one second later
        "RLIMIT_FSIZE": (fsize_mb << 20, fsize_mb << 20),
    }
    if memory_mb is not None:
        limits["RLIMIT_AS"] = (memory_mb << 20, memory_mb << 20)
    nproc_on = run_uid != 0  # the kernel never applies RLIMIT_NPROC to host uid 0
    if nproc_on:
        # In a fresh user namespace the count covers only the sandbox; otherwise all tasks of that uid.
        n = nproc if (bw is not None and bw.userns) else _uid_task_count(run_uid) + nproc
        limits["RLIMIT_NPROC"] = (n, n)
    # Never ask for more than the hard limits we were given (an unprivileged setrlimit would fail).
    import resource

    for name, (soft, hard) in list(limits.items()):
        cur_hard = resource.getrlimit(getattr(resource, name))[1]
        if cur_hard != resource.RLIM_INFINITY:
            limits[name] = (min(soft, cur_hard), min(hard, cur_hard))
    setup = ([f"setuid:{drop[0]}:{drop[1]}"] if drop else []) + [f"{k}:{s}:{h}" for k, (s, h) in limits.items()]
    iso = "+".join(["bwrap"] * (bw is not None) + ["rlimits" if nproc_on else "rlimits(no-nproc)"]
                   + ["nobody"] * (drop is not None))

    work = tempfile.mkdtemp(prefix="ssd-sandbox-")
    try:
        if drop is not None:
            os.chown(work, *drop)
        script = os.path.join(work, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        for name, data in (files or {}).items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file names must be plain names, got {name!r}")
            with open(os.path.join(work, name), "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        child_env = {
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
        child_env.update(env or {})
        py = [python, "-s", "-B"] + ([] if site_packages else ["-S"])
        cmd = [*py, "-c", _BOOT, ";".join(setup), "main.py", *args]
        if bw is not None:
            cmd = [*bw.args, "--bind", work, work, "--chdir", work, *cmd]
        result = _run(cmd, work, child_env, stdin, timeout_s, output_limit, bw is not None)
        result.isolation = iso
        for name in collect:
            data = _read_regular(os.path.join(work, name), collect_limit)
            if data is not None:
                result.files[name] = data
        return result
    finally:
        _rmtree(work)


def _run(cmd: list[str], cwd: str, env: dict[str, str], stdin: str | bytes, timeout_s: float,
         output_limit: int, via_bwrap: bool) -> RunResult:
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    pid = proc.pid
    deadline = t0 + timeout_s
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    truncated = timed_out = exited = False
    sel = selectors.DefaultSelector()
    try:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        view, pos = memoryview(data), 0
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
                    try:
                        pos += os.write(key.fd, view[pos : pos + 65536])
                    except (BrokenPipeError, OSError):
                        pos = len(view)
                    if pos >= len(view):
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fd]
                room = output_limit - len(buf)
                if len(chunk) > room:
                    truncated = True  # keep draining (so the child never blocks on a full pipe), keep nothing
                buf += chunk[: max(room, 0)]
            if not exited and _exited(pid):
                # The program is done: kill whatever it left in its group, then drain briefly. A process that
                # escaped the group (setsid) may hold the pipes open, so stop waiting for EOF after 1 s.
                exited = True
                _killpg(pid)
                deadline = min(deadline, time.monotonic() + 1.0)
        if not exited and not timed_out:
            # Output closed but the process lives on: wait out the remaining budget.
            while not _exited(pid):
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                time.sleep(0.005)
    finally:
        _killpg(pid)  # before reaping: the zombie keeps the pgid from being reused
        rc = proc.wait()
        _killpg(pid)
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
    wall = time.monotonic() - t0
    killed_by = None
    if timed_out:
        killed_by = "timeout"
    elif rc < 0:
        killed_by = _signame(-rc)
    elif via_bwrap and 128 < rc < 128 + 65:
        # bwrap reports a child killed by signal N as exit status 128+N (ambiguous with exit(129..192),
        # which Python programs practically never use).
        rc = -(rc - 128)
        killed_by = _signame(-rc)
    return RunResult(
        returncode=rc,
        stdout=bytes(bufs[out_fd]).decode("utf-8", "replace"),
        stderr=bytes(bufs[err_fd]).decode("utf-8", "replace"),
        timed_out=timed_out,
        killed_by=killed_by,
        isolation="",
        wall_s=wall,
        truncated=truncated,
        pid=pid,
    )


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class WorkerPool:
    """Grader processes started by "forkserver" (Linux) or "spawn", never by fork.

    The process that samples or trains holds a JAX runtime (threads, device handles); forking it is unsafe.
    Workers of this pool are fresh interpreters (forkserver forks them from a clean, single-threaded server), and
    they are the ones that start sandbox children. Use as a context manager; `submit` takes any picklable,
    importable function, e.g. `ssd_jax.evaluation.grader.grade`.
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
        self._ex = ProcessPoolExecutor(self.max_workers, mp_context=ctx)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._ex.submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1):
        return self._ex.map(fn, *iterables, chunksize=chunksize)

    def shutdown(self, wait: bool = True) -> None:
        self._ex.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

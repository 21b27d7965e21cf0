"""The grading process's side of the sandbox's fork server (`_zygote.py` runs inside the barrier).

`run_python(..., launch="zygote")` runs a program in a zygote of its isolation layer instead of a fresh interpreter:
one zygote per layer per process (a `WorkerPool` worker has its own), started through the same layer as a fresh
child (bwrap, or our namespaces; "nobody" as root; no network; read-only `/`; private `/tmp`), checked with the same
isolation probe before its first program, and replaced whenever it is not fit to serve:
- it exits or breaks the protocol while a program runs: that program runs again the fresh way (its verdict must
  not depend on the zygote; a sandbox that cannot set itself up still raises `SandboxError`), the next program gets
  a new zygote;
- it reports itself unhealthy after a program (a process survived the sweep, something of the private file
  systems' skeleton changed, a System V IPC object was left): the program's result stands, the zygote exits;
- it does not answer a kill at the wall-clock limit within `KILL_GRACE_S`: the program timed out; the zygote is
  killed.
Each program gets a fresh work dir `run-*` under the zygote's work base (bound writable into the sandbox; mode 711,
so "nobody" can use only its own run dir), removed afterwards with anything else found in the base. Labels end in
"+zygote" (e.g. "bwrap+rlimits+nobody+zygote").
"""

from __future__ import annotations

import atexit
import json
import multiprocessing.util
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping

from ssd_jax.evaluation import _harness, isolation, launch
from ssd_jax.evaluation.barrier import Layer, _boot_items
from ssd_jax.evaluation.launch import RunResult, SandboxError

_ZYGOTE = (Path(__file__).parent / "_zygote.py").read_text(encoding="utf-8") + "\n" + launch._BOOT
START_S = 30.0  # the zygote's start-up (imports, namespaces) and its answer to a run request
KILL_GRACE_S = 5.0
MSG_MAX = 1 << 16


class ZygoteLost(RuntimeError):
    """The zygote died or broke the protocol while a program ran: that run has no verdict."""


_hex: list[str] = []


def _zygote_hex() -> str:
    if not _hex:
        import marshal

        _hex.append(marshal.dumps(compile(_ZYGOTE, "<ssd-jax sandbox zygote>", "exec")).hex())
    return _hex[0]


def _command(layer: Layer, python: str, base: str, sockfd: int, errfd: int) -> list[str]:
    preload = ",".join(_harness.ZYGOTE_PRELOAD).encode().hex()
    items = [f"errfd:{errfd}", f"zygote:{sockfd}", f"preload:{preload}", *_boot_items(layer, base, python)]
    cmd = [python, "-s", "-B", "-S", "-c", launch._BOOT_STUB, _zygote_hex(), ";".join(items)]
    if layer.kind == "bwrap":
        cmd = [*layer.args, "--as-pid-1", "--bind", base, base, "--chdir", base, *cmd]
    return cmd


class Zygote:
    """One zygote in `layer`; `run` one program at a time. Raises SandboxError when it cannot start or its probe
    shows no barrier."""

    def __init__(self, layer: Layer, python: str, label: str):
        self.layer, self.python, self.label = layer, python, label
        self.owner = os.getpid()
        self.dead = False
        self.seq = 0
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="ssd-zygote-"))
        os.chmod(self.base, 0o711)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe()
        try:
            cmd = _command(layer, python, self.base, theirs.fileno(), err_w)
            self.proc = subprocess.Popen(cmd, cwd=self.base, env=launch._child_env(self.base, None),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(), err_w))
        except BaseException:
            ours.close()
            launch._rmtree(self.base)
            raise
        finally:
            theirs.close()
            os.close(err_w)
        self.sock = ours
        try:
            ready = self._receive(time.monotonic() + START_S)
            if ready is None or "ready" not in ready:
                why = launch._drain(err_r) or self._stderr() or "no answer"
                raise SandboxError(f"sandbox ({label}) zygote failed to start: {why}")
            self.pid = ready["ready"]
            self.roots = ready["roots"]  # the private file systems it cleans after each program
        except BaseException:
            self.close()
            raise
        finally:
            os.close(err_r)
        self._probe()

    def _probe(self) -> None:
        """The isolation probe, as the zygote's first program: the barrier every program of it will get."""
        why = ""
        try:
            r = self.run(isolation._PROBE, "", timeout_s=20.0, limits={"RLIMIT_CORE": (0, 0)})
            if r.returncode != 0:
                why = f"the probe exited with {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:300]}"
            else:
                why = isolation._check_probe(json.loads(r.stdout), self.layer, self.base)
        except (ZygoteLost, OSError, ValueError, KeyError, TypeError) as e:
            why = f"{type(e).__name__}: {e}"
        if why:
            self.close()
            raise SandboxError(f"sandbox ({self.label}) zygote failed its isolation check: {why} (set "
                               "grader.launch: fresh to start a fresh interpreter per program)")

    def _stderr(self) -> str:
        try:
            return launch._drain(self.proc.stderr.fileno())[-2000:]
        except (OSError, ValueError):
            return ""

    def _receive(self, deadline: float) -> dict | None:
        """The next message, None on EOF or at the deadline."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(MSG_MAX)
            except (socket.timeout, OSError):
                return None
            finally:
                self.sock.settimeout(None)
            return json.loads(data) if data else None

    def host_pid(self) -> int:
        """The zygote's pid as seen here (the child of bubblewrap's monitor, or of the namespace layer's P0)."""
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        if int(f.read().rsplit(b")", 1)[1].split()[1]) == self.proc.pid:
                            return int(name)
                except (OSError, IndexError, ValueError):
                    pass
        raise ProcessLookupError(f"no zygote under pid {self.proc.pid}")

    def alive(self) -> bool:
        return not self.dead and self.owner == os.getpid() and self.proc.poll() is None

    def close(self) -> None:
        """Kill the zygote (PID 1: the kernel kills everything left in its namespace) and remove its work base."""
        self.dead = True
        try:
            self.sock.close()
        except (AttributeError, OSError):
            pass
        if self.owner == os.getpid():
            launch._killpg(self.proc.pid)
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            launch._rmtree(self.base)

    def forget(self) -> None:
        """In a forked child: let go of the parent's zygote without touching it."""
        self.dead = True
        for f in (self.sock, self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass

    def run(self, code: str, stdin: str | bytes = "", *, timeout_s: float,
            limits: Mapping[str, tuple[int, int]], output_limit: int = 1 << 20,
            files: Mapping[str, str | bytes] | None = None, collect: Iterable[str] = (),
            collect_limit: int = 256 << 20, args: Iterable[str] = (), env: Mapping[str, str] | None = None,
            site_packages: bool = False, precompile: bool = False) -> RunResult:
        """One program, as `launch._execute` runs one in a fresh child. Raises ZygoteLost (no verdict: run it
        again elsewhere) or SandboxError (the program's process failed to set itself up)."""
        self.seq += 1
        rid = self.seq
        work = tempfile.mkdtemp(prefix="run-", dir=self.base)
        err_r, err_w = os.pipe()
        ends: list[int] = [err_w]
        try:
            launch._prepare(work, self.layer, code, files, precompile)
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            errout_r, errout_w = os.pipe()
            ends += [in_r, out_w, errout_w]
            request = {"op": "run", "id": rid, "work": work, "env": launch._child_env(work, env),
                       "rlimits": [[k, s, h] for k, (s, h) in limits.items()], "args": list(args),
                       "marshal": bool(precompile), "site": list(launch._site_dirs()) if site_packages else []}
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [in_r, out_w, errout_w, err_w])
            except OSError as e:
                raise ZygoteLost(f"cannot reach the zygote: {e}") from e
            finally:
                for fd in ends:
                    os.close(fd)
                ends = []
            result = self._io(rid, in_w, out_r, errout_r, stdin, timeout_s, output_limit)
            return launch._finish(result, err_r, self.label, work, collect, collect_limit)
        finally:
            for fd in ends:
                os.close(fd)
            os.close(err_r)
            self._wipe(work)

    def _wipe(self, work: str) -> None:
        launch._rmtree(work)
        try:
            left = os.listdir(self.base)
        except OSError:
            left = []
        for name in left:  # only where the programs share the zygote's uid (no "nobody"): the base is theirs too
            p = os.path.join(self.base, name)
            if os.path.isdir(p) and not os.path.islink(p):
                launch._rmtree(p)
            else:
                os.unlink(p)

    def _io(self, rid: int, in_w: int, out_r: int, err_r: int, stdin: str | bytes, timeout_s: float,
            output_limit: int) -> RunResult:
        """Feed stdin, read stdout/stderr up to the cap, and follow the zygote's messages until the program's exit
        (kill it at the wall-clock limit); see `launch._run`."""
        data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        t0 = time.monotonic()
        follow = _Follow(self, rid, t0 + timeout_s, in_w, launch._Capture((out_r, err_r), output_limit))
        try:
            follow.run(data)
        finally:
            follow.close()
        if self.dead:
            self.close()
        wall = time.monotonic() - t0
        if follow.timed_out:
            rc, killed_by = -9, "timeout"
        else:
            rc = os.waitstatus_to_exitcode(follow.status) if follow.status is not None else -9
            killed_by = launch._signame(-rc) if rc < 0 else None
        return RunResult(returncode=rc, stdout=follow.capture.text(out_r), stderr=follow.capture.text(err_r),
                         timed_out=follow.timed_out, killed_by=killed_by, isolation="", wall_s=wall,
                         truncated=follow.capture.truncated, pid=follow.pid)


class _Follow:
    """One program on the zygote, from the request to its exit: stdin fed, outputs captured, the zygote's messages
    (started, exit) read, and at the wall-clock limit a kill request, then `KILL_GRACE_S` for its answer."""

    def __init__(self, zygote: Zygote, rid: int, deadline: float, in_w: int, capture: launch._Capture):
        self.z, self.rid, self.deadline = zygote, rid, deadline
        self.in_w = in_w  # -1 once closed
        self.capture = capture
        self.readers = set(capture.bufs)  # outputs not at EOF yet
        self.pid = 0
        self.status: int | None = None  # the wait status, once the zygote reported the exit
        self.timed_out = self.kill_sent = False
        self.sel = selectors.DefaultSelector()

    def run(self, data: bytes) -> None:
        """Until the program exited and its outputs closed (or the deadline after either), or the zygote is gone."""
        for fd in self.readers:
            self.sel.register(fd, selectors.EVENT_READ)
        self.sel.register(self.z.sock, selectors.EVENT_READ)
        feed = launch._Feed(data)
        if data:
            os.set_blocking(self.in_w, False)
            self.sel.register(self.in_w, selectors.EVENT_WRITE)
        else:
            os.close(self.in_w)
            self.in_w = -1
        while self.status is None or self.readers:
            now = time.monotonic()
            if now >= self.deadline:
                if self._at_deadline(now):
                    return
                continue
            for key, _ in self.sel.select(min(self.deadline - now, 0.1)):
                if key.fileobj is self.z.sock:
                    if self._on_message():
                        return
                elif key.fd == self.in_w:
                    if feed.write(key.fd):
                        self.sel.unregister(key.fd)
                        os.close(key.fd)
                        self.in_w = -1
                elif not self.capture.read(key.fd):
                    self.sel.unregister(key.fd)
                    self.readers.discard(key.fd)

    def _at_deadline(self, now: float) -> bool:
        """Past the deadline: ask the zygote to kill the program (then wait `KILL_GRACE_S` more), or stop (True)."""
        if self.status is not None:
            return True  # outputs still open 1 s after the exit and the sweep: nothing can write them now
        if self.kill_sent:  # the zygote does not answer: the program timed out all the same
            self.z.dead = True
            if not self.pid:
                raise ZygoteLost("the zygote never started the program")
            return True
        self.timed_out = self.kill_sent = True
        try:
            self.z.sock.send(json.dumps({"op": "kill", "id": self.rid}).encode())
        except OSError:
            self.z.dead = True
            return True
        self.deadline = now + KILL_GRACE_S
        return False

    def _on_message(self) -> bool:
        """Read one message of the zygote's; True when it is gone after the program was killed (nothing to wait
        for). Raises ZygoteLost when it is gone or lost the program otherwise."""
        try:
            raw = self.z.sock.recv(MSG_MAX)
        except OSError:
            raw = b""
        if not raw:  # the zygote is gone
            self.z.dead = True
            if self.timed_out and self.pid:
                return True
            raise ZygoteLost(f"the zygote exited during the run: {self.z._stderr() or 'no message'}")
        msg = json.loads(raw)
        if msg.get("id") != self.rid:
            return False
        if "started" in msg:
            self.pid = int(msg["started"])
        if "exit" in msg:
            self._on_exit(msg["exit"], msg.get("unhealthy") or "")
        return False

    def _on_exit(self, status: int | None, unhealthy: str) -> None:
        """The program's exit (None: the zygote lost it); its outputs get at most 1 s more to close."""
        self.status = status
        self.sel.unregister(self.z.sock)
        if unhealthy:
            self.z.dead = True  # it exits by itself; the next program gets a new one
        if self.status is None:
            if self.timed_out and self.pid:
                self.status = -1
            else:
                raise ZygoteLost(f"the zygote lost the program: {unhealthy}")
        self.deadline = min(self.deadline, time.monotonic() + 1.0)

    def close(self) -> None:
        """Release the selector and our ends of the program's pipes (whatever happened)."""
        self.sel.close()
        for fd in (self.in_w, *self.capture.bufs):
            if fd >= 0:
                os.close(fd)


_zygotes: dict[tuple, Zygote] = {}
_lock = threading.Lock()
_checked: set[tuple] = set()


def _close_all() -> None:
    for z in list(_zygotes.values()):
        z.close()
    _zygotes.clear()


def _forget_all() -> None:
    for z in list(_zygotes.values()):
        z.forget()
    _zygotes.clear()


atexit.register(_close_all)
multiprocessing.util.Finalize(None, _close_all, exitpriority=0)  # pool workers end by os._exit, after finalizers
os.register_at_fork(after_in_child=_forget_all)


def run(layer: Layer, python: str, label: str, code: str, stdin: str | bytes, **kwargs) -> RunResult | None:
    """One program in this process's zygote of `layer` (started, or replaced, as needed); None when the zygote was
    lost during the run (the caller runs the program the fresh way). One program at a time per process."""
    key = (layer, python)
    with _lock:
        z = _zygotes.get(key)
        if z is None or not z.alive():
            if z is not None:
                _zygotes.pop(key).close()
            z = _zygotes[key] = Zygote(layer, python, label)
        try:
            return z.run(code, stdin, **kwargs)
        except ZygoteLost:
            return None
        finally:
            if not z.alive():
                z.close()
                _zygotes.pop(key, None)


def serving(layer: Layer, python: str | None = None) -> Zygote | None:
    """This process's zygote of `layer`, if one is running."""
    z = _zygotes.get((layer, python or sys.executable))
    return z if z is not None and z.alive() else None


def check(layer: Layer, python: str, label: str) -> None:
    """Start a zygote of `layer` once per process (its probe runs) and stop it: SandboxError if that fails."""
    key = (layer, python)
    if key not in _checked:
        Zygote(layer, python, label).close()
        _checked.add(key)

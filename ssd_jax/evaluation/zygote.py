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

from ssd_jax.evaluation import _harness
from ssd_jax.evaluation import sandbox as sb

_ZYGOTE = (Path(__file__).parent / "_zygote.py").read_text(encoding="utf-8") + "\n" + sb._BOOT
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


def _command(layer: sb._Layer, python: str, base: str, sockfd: int, errfd: int) -> list[str]:
    preload = ",".join(_harness.ZYGOTE_PRELOAD).encode().hex()
    items = [f"errfd:{errfd}", f"zygote:{sockfd}", f"preload:{preload}"]
    if layer.kind == "ns":
        items += sb._ns_items(layer, base, python, sb._FORCE_LEGACY_RO)
    if layer.capdrop:
        items.append("capdrop:")
    if layer.drop is not None:
        items.append(f"setuid:{layer.drop[0]}:{layer.drop[1]}")
    cmd = [python, "-s", "-B", "-S", "-c", sb._BOOT_STUB, _zygote_hex(), ";".join(items)]
    if layer.kind == "bwrap":
        cmd = [*layer.args, "--as-pid-1", "--bind", base, base, "--chdir", base, *cmd]
    return cmd


class Zygote:
    """One zygote in `layer`; `run` one program at a time. Raises SandboxError when it cannot start or its probe
    shows no barrier."""

    def __init__(self, layer: sb._Layer, python: str, label: str):
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
            self.proc = subprocess.Popen(cmd, cwd=self.base, env=sb._child_env(self.base, None),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(), err_w))
        except BaseException:
            ours.close()
            sb._rmtree(self.base)
            raise
        finally:
            theirs.close()
            os.close(err_w)
        self.sock = ours
        try:
            ready = self._receive(time.monotonic() + START_S)
            if ready is None or "ready" not in ready:
                why = sb._drain(err_r) or self._stderr() or "no answer"
                raise sb.SandboxError(f"sandbox ({label}) zygote failed to start: {why}")
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
            r = self.run(sb._PROBE, "", timeout_s=20.0, limits={"RLIMIT_CORE": (0, 0)})
            if r.returncode != 0:
                why = f"the probe exited with {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:300]}"
            else:
                why = sb._check_probe(json.loads(r.stdout), self.layer, self.base)
        except (ZygoteLost, OSError, ValueError, KeyError, TypeError) as e:
            why = f"{type(e).__name__}: {e}"
        if why:
            self.close()
            raise sb.SandboxError(f"sandbox ({self.label}) zygote failed its isolation check: {why} (set "
                                  "grader.launch: fresh to start a fresh interpreter per program)")

    def _stderr(self) -> str:
        try:
            return sb._drain(self.proc.stderr.fileno())[-2000:]
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
            sb._killpg(self.proc.pid)
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            sb._rmtree(self.base)

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
            site_packages: bool = False, precompile: bool = False) -> sb.RunResult:
        """One program, as `sandbox._execute` runs one in a fresh child. Raises ZygoteLost (no verdict: run it
        again elsewhere) or SandboxError (the program's process failed to set itself up)."""
        self.seq += 1
        rid = self.seq
        work = tempfile.mkdtemp(prefix="run-", dir=self.base)
        err_r, err_w = os.pipe()
        ends: list[int] = [err_w]
        try:
            if self.layer.drop is not None:
                os.chown(work, *self.layer.drop)
            sb._write_inputs(work, code, files)
            if precompile:
                with open(os.path.join(work, "main.pyc"), "wb") as f:
                    f.write(sb._marshalled(code))
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            errout_r, errout_w = os.pipe()
            ends += [in_r, out_w, errout_w]
            request = {"op": "run", "id": rid, "work": work, "env": sb._child_env(work, env),
                       "rlimits": [[k, s, h] for k, (s, h) in limits.items()], "args": list(args),
                       "marshal": bool(precompile), "site": list(sb._site_dirs()) if site_packages else []}
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [in_r, out_w, errout_w, err_w])
            except OSError as e:
                raise ZygoteLost(f"cannot reach the zygote: {e}") from e
            finally:
                for fd in ends:
                    os.close(fd)
                ends = []
            result = self._io(rid, in_w, out_r, errout_r, stdin, timeout_s, output_limit)
            failure = sb._drain(err_r)
            if failure:
                raise sb.SandboxError(f"sandbox ({self.label}) failed to set up in the child: {failure}")
            result.isolation = self.label
            for name in collect:
                data = sb._read_regular(os.path.join(work, name), collect_limit)
                if data is not None:
                    result.files[name] = data
            return result
        finally:
            for fd in ends:
                os.close(fd)
            os.close(err_r)
            self._wipe(work)

    def _wipe(self, work: str) -> None:
        sb._rmtree(work)
        try:
            left = os.listdir(self.base)
        except OSError:
            left = []
        for name in left:  # only where the programs share the zygote's uid (no "nobody"): the base is theirs too
            p = os.path.join(self.base, name)
            if os.path.isdir(p) and not os.path.islink(p):
                sb._rmtree(p)
            else:
                os.unlink(p)

    def _io(self, rid: int, in_w: int, out_r: int, err_r: int, stdin: str | bytes, timeout_s: float,
            output_limit: int) -> sb.RunResult:
        """Feed stdin, read stdout/stderr up to the cap, and follow the zygote's messages until the program's exit
        (kill it at the wall-clock limit); see `sandbox._run`."""
        data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        bufs = {out_r: bytearray(), err_r: bytearray()}
        truncated = timed_out = kill_sent = False
        status: int | None = None
        pid = 0
        unhealthy = ""
        sel = selectors.DefaultSelector()
        readers = {out_r, err_r}
        try:
            for fd in readers:
                sel.register(fd, selectors.EVENT_READ)
            sel.register(self.sock, selectors.EVENT_READ)
            view, pos = memoryview(data), 0
            if data:
                os.set_blocking(in_w, False)
                sel.register(in_w, selectors.EVENT_WRITE)
            else:
                os.close(in_w)
                in_w = -1
            done = False
            while not done:
                if status is not None and not readers:
                    break
                now = time.monotonic()
                if now >= deadline:
                    if status is not None:
                        break  # outputs still open 1 s after the exit and the sweep: nothing can write them now
                    if kill_sent:  # the zygote does not answer: the program timed out all the same
                        self.dead = True
                        if not pid:
                            raise ZygoteLost("the zygote never started the program")
                        break
                    timed_out = kill_sent = True
                    try:
                        self.sock.send(json.dumps({"op": "kill", "id": rid}).encode())
                    except OSError:
                        self.dead = True
                        break
                    deadline = now + KILL_GRACE_S
                    continue
                for key, _ in sel.select(min(deadline - now, 0.1)):
                    fd = key.fd
                    if key.fileobj is self.sock:
                        try:
                            raw = self.sock.recv(MSG_MAX)
                        except OSError:
                            raw = b""
                        if not raw:  # the zygote is gone
                            self.dead = True
                            if timed_out and pid:
                                done = True
                                break
                            raise ZygoteLost(f"the zygote exited during the run: {self._stderr() or 'no message'}")
                        msg = json.loads(raw)
                        if msg.get("id") != rid:
                            continue
                        if "started" in msg:
                            pid = int(msg["started"])
                        if "exit" in msg:
                            status, unhealthy = msg["exit"], msg.get("unhealthy") or ""
                            sel.unregister(self.sock)
                            if unhealthy:
                                self.dead = True  # it exits by itself; the next program gets a new one
                            if status is None:
                                if timed_out and pid:
                                    status = -1
                                else:
                                    raise ZygoteLost(f"the zygote lost the program: {unhealthy}")
                            deadline = min(deadline, time.monotonic() + 1.0)
                    elif fd == in_w:
                        try:
                            pos += os.write(fd, view[pos : pos + 65536])
                        except OSError:
                            pos = len(view)
                        if pos >= len(view):
                            sel.unregister(fd)
                            os.close(fd)
                            in_w = -1
                    else:
                        chunk = os.read(fd, 65536)
                        if not chunk:
                            sel.unregister(fd)
                            readers.discard(fd)
                            continue
                        buf = bufs[fd]
                        room = output_limit - len(buf)
                        if len(chunk) > room:
                            truncated = True
                        buf += chunk[: max(room, 0)]
        finally:
            sel.close()
            for fd in (in_w, out_r, err_r):
                if fd >= 0:
                    os.close(fd)
        if self.dead:
            self.close()
        wall = time.monotonic() - t0
        if timed_out:
            rc, killed_by = -9, "timeout"
        else:
            rc = os.waitstatus_to_exitcode(status) if status is not None else -9
            killed_by = sb._signame(-rc) if rc < 0 else None
        return sb.RunResult(returncode=rc, stdout=bytes(bufs[out_r]).decode("utf-8", "replace"),
                            stderr=bytes(bufs[err_r]).decode("utf-8", "replace"), timed_out=timed_out,
                            killed_by=killed_by, isolation="", wall_s=wall, truncated=truncated, pid=pid)


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


def run(layer: sb._Layer, python: str, label: str, code: str, stdin: str | bytes, **kwargs) -> sb.RunResult | None:
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


def serving(layer: sb._Layer, python: str | None = None) -> Zygote | None:
    """This process's zygote of `layer`, if one is running."""
    z = _zygotes.get((layer, python or sys.executable))
    return z if z is not None and z.alive() else None


def check(layer: sb._Layer, python: str, label: str) -> None:
    """Start a zygote of `layer` once per process (its probe runs) and stop it: SandboxError if that fails."""
    key = (layer, python)
    if key not in _checked:
        Zygote(layer, python, label).close()
        _checked.add(key)

"""Run untrusted Python (model samples) in a child process that cannot hurt the host or outlive its budget.

A run uses one isolation layer, recorded in `RunResult.isolation` (e.g. "bwrap+rlimits+nobody") so a score says
how it was obtained. `isolation` picks it:
- "bwrap": bubblewrap (probed once per process): no network (`--unshare-net`: only a loopback of its own), own
  PID namespace, `/` read-only, a private size-capped `/tmp`, a fresh `/dev` and `/proc`, the caller's home hidden
  (the interpreter re-exposed if it lives there), only the fresh work dir writable.
- "namespaces" (labels "ns+..."): the same barrier built by our own bootstrap (`_boot.py`) with unshare/mount via
  ctypes, for machines without bubblewrap: a user namespace when we are not root, then mount, network (only a
  `lo` that stays down), PID (the program runs under a PID 1 reaper; when it exits the kernel kills everything
  left, setsid daemons included; the parent is invisible), IPC and UTS namespaces; every mount read-only, private
  size-capped `/tmp` and `/dev/shm`, a minimal `/dev`, fresh `/proc` (kernel knobs read-only) and `/sys`, home
  hidden, the work dir writable, no-new-privs. As root it drops to "nobody": the interpreter usually lives under
  /root (mode 700), so the home (and any other directory "nobody" cannot traverse on the way to the interpreter)
  is replaced by an empty tmpfs and the interpreter's own directories are bound back read-only. That keeps the
  host untouched (no chmod of /root) and leaves nothing else of the home readable.
- "auto" (default): bwrap where it works, else namespaces where they work, else *refuse* (`SandboxUnavailable`,
  exit 2): generated code never runs without a network and file-system barrier unless asked to.
- "unsafe-rlimits": no barrier at all (network and world-writable host paths reachable), only the limits below;
  the label starts with "unsafe-" so it shows in every result and in metrics.json.
Every layer is checked before its first use: a probe program must see no interface but `lo` (down, in our
namespaces), no more than 3 processes, the expected uid, and no writable mount shared with the host except the
work dir. Not capped by any layer: the total size of the files a program writes into its work dir (each file is
capped by RLIMIT_FSIZE; /tmp and /dev/shm are private and size-capped).

Always: rlimits set by the bootstrap before the program is compiled (address space, CPU seconds, file size, no
core files, processes: "rlimits(no-nproc)" where the kernel exempts host uid 0), "nobody" when we are root, a new
session/process group SIGKILLed as a whole on timeout and after exit, a fresh temp work dir (cwd and HOME)
removed afterwards, an environment built from scratch (no parent secrets), stdout/stderr read up to a cap, `-s`
(no user site) and `-S`: with `site_packages=True` the bootstrap puts our interpreter's site-packages on sys.path
itself (.pth path lines honoured; .pth `import` lines and sitecustomize not run). A sandbox that fails to set itself
up reports on a private pipe and `run_python` raises `SandboxError`, so a broken sandbox is never graded as a wrong
program. Per-run costs kept low: the bootstrap (and, with `precompile`, the program) reach the child compiled.

`launch` picks how the program's process starts, in the same layer: "fresh" (default here) a new interpreter per
program, as above; "zygote" (the grader's default) a fork of a long-lived fork server that the layer started once
and that imported the grading harness's modules (`zygote.py`, `_zygote.py`): same barrier, same limits, a new
session, work dir and environment per program, and everything a program leaves in the sandbox (processes, files
in the private /tmp and /dev/shm) removed before the next; labels end in "+zygote".

Why a bootstrap instead of `preexec_fn`: `preexec_fn` forces a full fork() of the caller and runs Python between
fork and exec, which CPython documents as unsafe in threaded processes (a JAX runtime is one). Without it
`subprocess` uses vfork+exec, and the limits still bind before the first byte of untrusted code is compiled.
Even so, grading belongs in a `WorkerPool` (forkserver/spawn workers), so the JAX process never forks at all.

`SSD_SANDBOX_DISABLE=bwrap,namespaces` makes the probes report a layer as unavailable (to test the refusal).
"""

from __future__ import annotations

import functools
import json
import marshal
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
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

from ssd_jax.errors import ConfigError, UserError

ISOLATIONS = ("auto", "bwrap", "namespaces", "unsafe-rlimits")
Isolation = Literal["auto", "bwrap", "namespaces", "unsafe-rlimits"]
LAUNCHES = ("fresh", "zygote")
Launch = Literal["fresh", "zygote"]
# The child bootstrap, passed as `python -c _BOOT <setup> main.py [args]` (see _boot.py for <setup>); to our own
# interpreter compiled, as `python -c _BOOT_STUB <marshalled _BOOT> <setup> ...` (compiling it costs ~5 ms a run).
_BOOT = (Path(__file__).parent / "_boot.py").read_text(encoding="utf-8")
_BOOT_STUB = "import sys, marshal; exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"
TMP_BYTES = 256 << 20  # the private /tmp of bwrap and namespaces
FIX = ("install bubblewrap (as root: apt-get install -y bubblewrap, or source scripts/_setup.sh), or allow "
       "namespaces (root with CAP_SYS_ADMIN, or sysctl kernel.unprivileged_userns_clone=1 / "
       "user.max_user_namespaces > 0), or set grader.isolation: unsafe-rlimits to run generated code without a "
       "network and file-system barrier")


class SandboxError(RuntimeError):
    """The sandbox could not set itself up in the child (not the program's fault): the run has no verdict."""


class SandboxUnavailable(UserError):
    """The requested isolation cannot run on this machine (exit 2)."""


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


@dataclass(frozen=True)
class _Layer:
    kind: Literal["bwrap", "ns", "unsafe"]
    args: tuple[str, ...] = ()  # bwrap and its namespace flags (everything except the per-run binds)
    ns: Literal["host", "user"] | None = None  # namespaces: "user" = in a fresh user namespace
    userns: bool = False  # a fresh user namespace: RLIMIT_NPROC then counts only the sandbox's processes
    drop: tuple[int, int] | None = None  # (uid, gid) the bootstrap switches to inside; None = stay the caller
    capdrop: bool = False  # drop all capabilities (a user namespace's root cannot switch uid)

    def label(self, nproc_on: bool) -> str:
        """e.g. "bwrap+rlimits+nobody", "ns+userns+rlimits", "unsafe-rlimits(no-nproc)"."""
        head = {"bwrap": "bwrap+", "ns": "ns+userns+" if self.ns == "user" else "ns+", "unsafe": "unsafe-"}[self.kind]
        return head + ("rlimits" if nproc_on else "rlimits(no-nproc)") + "+nobody" * (self.drop is not None)


_probe_cache: dict[tuple, tuple[_Layer | None, str]] = {}
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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _home() -> str | None:
    home = os.path.realpath(os.path.expanduser("~"))
    return home if home not in ("/", "") and os.path.isdir(home) else None


def _rebind_under(root: str, python: str) -> list[str]:
    """bwrap: after `root` was replaced by an empty tmpfs, bind the interpreter's own directories under it back
    read-only (a venv in /tmp, a pyenv under the home), with world-readable mount points so "nobody" can import."""
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
    home = _home()
    return ["--perms", "0755", "--tmpfs", home, *_rebind_under(home, python)] if home else []


def _disabled(kind: str) -> bool:
    return kind in {s.strip() for s in os.environ.get("SSD_SANDBOX_DISABLE", "").split(",")}


def _cached_probe(key: tuple, variants: Callable[[], list[_Layer]], none_why: str) -> _Layer | None:
    """The first variant whose probe passes (once per process and key); None when none does, with the reason kept
    for the error message (`none_why` when there is nothing to try)."""
    if _disabled(key[0]):
        _probe_cache[key] = (None, "disabled by SSD_SANDBOX_DISABLE")
        return None
    if key not in _probe_cache:
        whys: list[str] = []
        found = None
        for layer in variants():
            ok, why = _probe(layer, key[1])
            if ok:
                found = layer
                break
            if why not in whys:
                whys.append(why)
        _probe_cache[key] = (found, " / ".join(whys[:3]) or none_why)
    return _probe_cache[key][0]


def _key(kind: str, python: str, drop_root: bool) -> tuple:
    return (kind, python, drop_root, os.geteuid(), shutil.which("bwrap") if kind == "bwrap" else None)


def _why(key: tuple) -> str:
    return _probe_cache.get(key, (None, "not probed"))[1]


def bwrap_support(python: str | None = None, drop_root: bool = True) -> _Layer | None:
    """Which bubblewrap set-up passes the probe here (once per process); None when none does.

    As root (with `drop_root`): privileged bwrap that keeps only CAP_SETUID/CAP_SETGID so the bootstrap can become
    "nobody". Otherwise: a user namespace (what unprivileged bwrap needs) with `--disable-userns`, then plainer
    variants for older bwrap or kernels/containers without user namespaces. Each variant also tries a size-capped
    private /tmp first (`--size`, bwrap >= 0.7).
    """
    python = python or sys.executable
    key = _key("bwrap", python, drop_root)
    return _cached_probe(key, lambda: _bwrap_variants(key[4], python, drop_root), "bwrap is not on PATH")


def _bwrap_variants(exe: str | None, python: str, drop_root: bool) -> list[_Layer]:
    if not exe:
        return []
    common = ["--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
              "--unshare-cgroup-try", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    variants: list[tuple[list[str], bool, tuple[int, int] | None]] = []
    if os.geteuid() == 0 and drop_root:
        variants.append((["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"], False, _nobody()))
    variants += [(["--unshare-user", "--disable-userns"], True, None), (["--unshare-user"], True, None),
                 ([], False, None)]
    out = []
    for extra, userns, drop in variants:
        for sized in (True, False):
            tmp = (["--size", str(TMP_BYTES)] if sized else []) + ["--perms", "1777", "--tmpfs", "/tmp",
                                                                   *_rebind_under("/tmp", python)]
            out.append(_Layer("bwrap", (exe, *extra, *common, *tmp, *_hide_home(python)), userns=userns, drop=drop))
    return out


def namespace_support(python: str | None = None, drop_root: bool = True) -> _Layer | None:
    """Which built-in namespace set-up passes the probe here (once per process); None when none does.

    As root (with `drop_root`): namespaces of the host user, then "nobody". Otherwise (or if that fails): a fresh
    user namespace mapping only our own uid, every capability dropped.
    """
    python = python or sys.executable
    variants = ([_Layer("ns", ns="host", drop=_nobody())] if os.geteuid() == 0 and drop_root else []) \
        + [_Layer("ns", ns="user", userns=True, capdrop=True)]
    return _cached_probe(_key("namespaces", python, drop_root), lambda: variants, "no variant")


def _blocking_ancestor(path: str) -> str | None:
    """The outermost directory above `path` that an unrelated user cannot traverse (no o+x); None if none."""
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        d = os.sep.join(parts[:i])
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return None
    return None


def _outermost(paths: Iterable[str]) -> list[str]:
    ps = sorted(set(paths))
    return [p for p in ps if not any(q != p and _under(p, q) for q in ps)]


def _ns_items(layer: _Layer, work: str, python: str, legacy_ro: bool = False) -> list[str]:
    """The bootstrap's namespace plan: private /tmp, hidden home (and, when dropping to "nobody", every directory
    it could not traverse on the way to the interpreter), the interpreter bound back, a minimal /dev, the work dir."""
    hx = lambda p: p.encode().hex()  # noqa: E731
    tmp = os.path.realpath("/tmp")
    hides = [_home()] if _home() else []
    if layer.drop is not None:
        hides += [a for d in _interpreter_dirs(python) if (a := _blocking_ancestor(d))]
    hides = [h for h in _outermost(hides) if not _under(h, tmp)]
    roots = [tmp, *hides]
    binds = [d for d in _outermost(_interpreter_dirs(python)) if any(_under(d, r) for r in roots)]
    return [f"ns:{layer.ns}", f"tmp:{hx(tmp)}:{TMP_BYTES}", *(f"hide:{hx(h)}" for h in hides),
            *(f"bind:{hx(b)}" for b in binds), "dev:", f"work:{hx(work)}"] + (["rolegacy:"] if legacy_ro else [])


_FORCE_LEGACY_RO = False  # tests: build the read-only view the pre-5.12 way (remount by remount)

# Run inside each candidate layer before its first use; its report is checked by `_check_probe`.
_PROBE = """
import fcntl, json, os, socket, stat, struct
mounts = []
for line in open("/proc/self/mountinfo"):
    f = line.split()
    point = f[4].encode().decode("unicode_escape")
    try:
        st = os.stat(point)
    except OSError:
        continue
    if st.st_dev != os.makedev(*map(int, f[2].split(":"))):
        continue  # overmounted: unreachable from here
    mounts.append([point, f[2], f[5].split(",")[0] == "rw", stat.S_ISCHR(st.st_mode)])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    lo_up = bool(struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1] & 1)
except OSError:
    lo_up = None
print(json.dumps({"uid": os.getuid(), "cwd": os.getcwd(), "mounts": mounts, "lo_up": lo_up,
                  "nets": sorted(n for _, n in socket.if_nameindex()),
                  "pids": len([p for p in os.listdir("/proc") if p.isdigit()])}))
"""


def _host_devices() -> set[str]:
    """major:minor of every file system mounted here (a writable one of these inside the sandbox is shared)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return {line.split()[2] for line in f if line.strip()}


def _check_probe(rep: dict, layer: _Layer, work: str | None = None) -> str:
    """Why the probe's report shows no barrier ("" when it does). The one writable host mount allowed is the work
    dir, the probe's cwd (a zygote's: its work base, `work`, which holds the work dir of each program)."""
    if layer.drop is not None and rep["uid"] != layer.drop[0]:
        return f"the program runs as uid {rep['uid']}, expected {layer.drop[0]}"
    if rep["nets"] != ["lo"]:
        return f"network interfaces {rep['nets']}; expected only lo"
    if layer.kind == "ns" and rep["lo_up"] is not False:  # bwrap brings up a loopback of its own namespace
        return f"lo is {'up' if rep['lo_up'] else 'unreadable'}; expected it down"
    if rep["pids"] > 3:
        return f"{rep['pids']} processes visible; expected a PID namespace of its own"
    host = _host_devices()
    shared = [p for p, dev, rw, chardev in rep["mounts"]
              if rw and not chardev and p not in (rep["cwd"], work) and dev in host]
    return f"host file systems writable inside: {', '.join(shared[:3])}" if shared else ""


def _probe(layer: _Layer, python: str) -> tuple[bool, str]:
    """Run `_PROBE` in `layer`: (True, "") when it shows a network, PID and file-system barrier, else the reason."""
    lim = {"RLIMIT_CORE": (0, 0)}
    try:
        r = _execute(layer, _PROBE, "", python=python, timeout_s=20.0, limits=lim, label=layer.kind)
    except (OSError, SandboxError, subprocess.SubprocessError) as e:
        return False, str(e).splitlines()[0] if str(e) else type(e).__name__
    if r.returncode != 0:
        return False, f"the probe exited with {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:300]}"
    try:
        why = _check_probe(json.loads(r.stdout), layer)
    except (ValueError, KeyError, TypeError) as e:
        return False, f"unreadable probe report ({e})"
    return not why, why


def _unsafe_layer(python: str, drop_root: bool) -> _Layer:
    """Only limits; as root "nobody" where it can reach the interpreter (no namespace here to re-expose it)."""
    if os.geteuid() == 0 and drop_root and all(map(_world_traversable, (python, *_interpreter_dirs(python)))):
        return _Layer("unsafe", drop=_nobody())
    if os.geteuid() == 0 and not _warned:
        _warned.append(True)
        warnings.warn("sandbox: untrusted code runs as root under rlimits only (isolation unsafe-rlimits, and "
                      "'nobody' cannot reach the interpreter)", stacklevel=3)
    return _Layer("unsafe")


def select_layer(isolation: str, python: str | None = None, drop_root: bool = True) -> _Layer:
    """The layer `isolation` means here; raises SandboxUnavailable (exit 2) rather than run without a barrier."""
    python = python or sys.executable
    if isolation == "rlimits":
        raise ConfigError("sandbox isolation 'rlimits' is now spelled 'unsafe-rlimits' (it has no network or "
                          "file-system barrier); use auto for a real sandbox")
    if isolation not in ISOLATIONS:
        raise ConfigError(f"sandbox isolation {isolation!r}: expected one of {', '.join(ISOLATIONS)}")
    if isolation == "unsafe-rlimits":
        return _unsafe_layer(python, drop_root)
    if isolation in ("auto", "bwrap"):
        bw = bwrap_support(python, drop_root)
        if bw is not None:
            return bw
        why_bw = _why(_key("bwrap", python, drop_root))
        if isolation == "bwrap":
            raise SandboxUnavailable(f"sandbox isolation 'bwrap' cannot run here ({why_bw}): install it "
                                     "(apt-get install -y bubblewrap) or use isolation: auto")
    ns = namespace_support(python, drop_root)
    if ns is not None:
        return ns
    why_ns = _why(_key("namespaces", python, drop_root))
    if isolation == "namespaces":
        raise SandboxUnavailable(f"sandbox isolation 'namespaces' cannot run here ({why_ns}); use isolation: auto "
                                 "with bubblewrap installed")
    raise SandboxUnavailable(f"sandbox: refusing to run generated code, no isolation works here (bubblewrap: "
                             f"{why_bw}; namespaces: {why_ns}). Fix: {FIX}")


def check_isolation(isolation: str, python: str | None = None, drop_root: bool = True,
                    launch: Launch = "fresh") -> str:
    """Fail early (SandboxUnavailable / ConfigError; SandboxError when a zygote cannot start or fails its probe) if
    `isolation` cannot run here; else the label runs will get."""
    python = python or sys.executable
    _check_launch(launch)
    layer = select_layer(isolation, python, drop_root)
    run_uid = layer.drop[0] if layer.drop else os.geteuid()
    label = layer.label(run_uid != 0)
    if launch == "zygote" and _zygote_serves(layer, python, None):
        from ssd_jax.evaluation import zygote

        zygote.check(layer, python, label + "+zygote")
        return label + "+zygote"
    return label


def _check_launch(launch: str) -> None:
    if launch not in LAUNCHES:
        raise ConfigError(f"sandbox launch {launch!r}: expected one of {', '.join(LAUNCHES)}")


def _zygote_serves(layer: _Layer, python: str, env: Mapping[str, str] | None) -> bool:
    """A zygote needs a barrier (its sweep relies on the PID namespace), our own interpreter (it ships compiled
    code), and no PYTHON* variable in `env` (those act when an interpreter starts, not when it forks)."""
    return layer.kind in ("bwrap", "ns") and python == sys.executable and \
        not any(k.startswith("PYTHON") for k in (env or {}))


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


def _limits(layer: _Layer, timeout_s: float, memory_mb: int | None, cpu_s: int | None, fsize_mb: int,
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
    run_uid = layer.drop[0] if layer.drop else os.geteuid()
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
        from ssd_jax.evaluation import zygote

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


def _command(layer: _Layer, python: str, site_packages: bool, limits: Mapping[str, tuple[int, int]], work: str,
             errfd: int, args: Iterable[str], compiled: bool = False) -> list[str]:
    """The child's command line. site-packages of our own interpreter go on sys.path through the bootstrap (`-S`
    stays: `site` would run every .pth import, ~35 ms per run with an editable install); another interpreter gets
    its own `site`."""
    same = python == sys.executable
    items = [f"errfd:{errfd}"] + ["marshal:"] * compiled
    if site_packages and same:
        items += [f"site:{d.encode().hex()}" for d in _site_dirs()]
    if layer.kind == "ns":
        items += _ns_items(layer, work, python, _FORCE_LEGACY_RO)
    if layer.capdrop:
        items.append("capdrop:")
    if layer.drop is not None:
        items.append(f"setuid:{layer.drop[0]}:{layer.drop[1]}")
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


def _execute(layer: _Layer, code: str, stdin: str | bytes, *, python: str, timeout_s: float,
             limits: Mapping[str, tuple[int, int]], label: str, output_limit: int = 1 << 20,
             site_packages: bool = False, files: Mapping[str, str | bytes] | None = None,
             collect: Iterable[str] = (), collect_limit: int = 256 << 20, args: Iterable[str] = (),
             env: Mapping[str, str] | None = None, precompile: bool = False) -> RunResult:
    """One run in `layer` with a fresh work dir; raises SandboxError if the bootstrap reported a set-up failure."""
    work = tempfile.mkdtemp(prefix="ssd-sandbox-")
    err_r, err_w = os.pipe()
    try:
        if layer.drop is not None:
            os.chown(work, *layer.drop)
        _write_inputs(work, code, files)
        if precompile:
            with open(os.path.join(work, "main.pyc"), "wb") as f:
                f.write(_marshalled(code))
        cmd = _command(layer, python, site_packages, limits, work, err_w, args, precompile)
        result = _run(cmd, work, _child_env(work, env), stdin, timeout_s, output_limit, layer.kind == "bwrap",
                      err_w)
        failure = _drain(err_r)
        if failure:
            raise SandboxError(f"sandbox ({label}) failed to set up in the child: {failure}")
        result.isolation = label
        for name in collect:
            data = _read_regular(os.path.join(work, name), collect_limit)
            if data is not None:
                result.files[name] = data
        return result
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




def _run(cmd: list[str], cwd: str, env: dict[str, str], stdin: str | bytes, timeout_s: float,
         output_limit: int, via_bwrap: bool, errfd: int) -> RunResult:
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True, pass_fds=(errfd,))
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
        self._ex = ProcessPoolExecutor(self.max_workers, mp_context=ctx, initializer=_take_disable,
                                       initargs=(os.environ.get("SSD_SANDBOX_DISABLE"),))

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

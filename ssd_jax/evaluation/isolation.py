"""Which isolation layer can run here: the set-ups of each to try, the probe that checks each, and the choice.

`isolation` picks the layer, recorded in `RunResult.isolation` (e.g. "bwrap+rlimits+nobody") so a score says how
it was obtained:
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
- "unsafe-rlimits": no barrier at all (network and world-writable host paths reachable), only the limits; the
  label starts with "unsafe-" so it shows in every result and in metrics.json.
Every layer is checked before its first use: a probe program must see no interface but `lo` (down, in our
namespaces), no more than 3 processes, the expected uid, and no writable mount shared with the host except the
work dir. Not capped by any layer: the total size of the files a program writes into its work dir (each file is
capped by RLIMIT_FSIZE; /tmp and /dev/shm are private and size-capped).

`SSD_SANDBOX_DISABLE=bwrap,namespaces` makes the probes report a layer as unavailable (to test the refusal).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from typing import Callable, Literal

from ssd_jax.errors import ConfigError, UserError
from ssd_jax.evaluation.barrier import TMP_BYTES, Layer, _hide_home, _interpreter_dirs, _rebind_under
from ssd_jax.evaluation.launch import SandboxError, _execute

ISOLATIONS = ("auto", "bwrap", "namespaces", "unsafe-rlimits")
Isolation = Literal["auto", "bwrap", "namespaces", "unsafe-rlimits"]
FIX = ("install bubblewrap (as root: apt-get install -y bubblewrap, or source scripts/_setup.sh), or allow "
       "namespaces (root with CAP_SYS_ADMIN, or sysctl kernel.unprivileged_userns_clone=1 / "
       "user.max_user_namespaces > 0), or set grader.isolation: unsafe-rlimits to run generated code without a "
       "network and file-system barrier")


class SandboxUnavailable(UserError):
    """The requested isolation cannot run on this machine (exit 2)."""


_probe_cache: dict[tuple, tuple[Layer | None, str]] = {}
_warned: list[bool] = []


def _nobody() -> tuple[int, int]:
    import pwd

    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


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


def _disabled(kind: str) -> bool:
    return kind in {s.strip() for s in os.environ.get("SSD_SANDBOX_DISABLE", "").split(",")}


def _cached_probe(key: tuple, variants: Callable[[], list[Layer]], none_why: str) -> Layer | None:
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


def bwrap_support(python: str | None = None, drop_root: bool = True) -> Layer | None:
    """Which bubblewrap set-up passes the probe here (once per process); None when none does.

    As root (with `drop_root`): privileged bwrap that keeps only CAP_SETUID/CAP_SETGID so the bootstrap can become
    "nobody". Otherwise: a user namespace (what unprivileged bwrap needs) with `--disable-userns`, then plainer
    variants for older bwrap or kernels/containers without user namespaces. Each variant also tries a size-capped
    private /tmp first (`--size`, bwrap >= 0.7).
    """
    python = python or sys.executable
    key = _key("bwrap", python, drop_root)
    return _cached_probe(key, lambda: _bwrap_variants(key[4], python, drop_root), "bwrap is not on PATH")


def _bwrap_variants(exe: str | None, python: str, drop_root: bool) -> list[Layer]:
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
            out.append(Layer("bwrap", (exe, *extra, *common, *tmp, *_hide_home(python)), userns=userns, drop=drop))
    return out


def namespace_support(python: str | None = None, drop_root: bool = True) -> Layer | None:
    """Which built-in namespace set-up passes the probe here (once per process); None when none does.

    As root (with `drop_root`): namespaces of the host user, then "nobody". Otherwise (or if that fails): a fresh
    user namespace mapping only our own uid, every capability dropped.
    """
    python = python or sys.executable
    variants = ([Layer("ns", ns="host", drop=_nobody())] if os.geteuid() == 0 and drop_root else []) \
        + [Layer("ns", ns="user", userns=True, capdrop=True)]
    return _cached_probe(_key("namespaces", python, drop_root), lambda: variants, "no variant")


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


def _check_probe(rep: dict, layer: Layer, work: str | None = None) -> str:
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


def _probe(layer: Layer, python: str) -> tuple[bool, str]:
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


def _unsafe_layer(python: str, drop_root: bool) -> Layer:
    """Only limits; as root "nobody" where it can reach the interpreter (no namespace here to re-expose it)."""
    if os.geteuid() == 0 and drop_root and all(map(_world_traversable, (python, *_interpreter_dirs(python)))):
        return Layer("unsafe", drop=_nobody())
    if os.geteuid() == 0 and not _warned:
        _warned.append(True)
        warnings.warn("sandbox: untrusted code runs as root under rlimits only (isolation unsafe-rlimits, and "
                      "'nobody' cannot reach the interpreter)", stacklevel=3)
    return Layer("unsafe")


_TRIED = {"auto": ("bwrap", "namespaces"), "bwrap": ("bwrap",), "namespaces": ("namespaces",)}
_HINT = {"bwrap": ": install it (apt-get install -y bubblewrap) or use isolation: auto",
         "namespaces": "; use isolation: auto with bubblewrap installed"}


def select_layer(isolation: str, python: str | None = None, drop_root: bool = True) -> Layer:
    """The layer `isolation` means here; raises SandboxUnavailable (exit 2) rather than run without a barrier."""
    python = python or sys.executable
    if isolation == "rlimits":
        raise ConfigError("sandbox isolation 'rlimits' is now spelled 'unsafe-rlimits' (it has no network or "
                          "file-system barrier); use auto for a real sandbox")
    if isolation not in ISOLATIONS:
        raise ConfigError(f"sandbox isolation {isolation!r}: expected one of {', '.join(ISOLATIONS)}")
    if isolation == "unsafe-rlimits":
        return _unsafe_layer(python, drop_root)
    why = {}
    support = {"bwrap": bwrap_support, "namespaces": namespace_support}
    for kind in _TRIED[isolation]:
        layer = support[kind](python, drop_root)
        if layer is not None:
            return layer
        why[kind] = _why(_key(kind, python, drop_root))
    if isolation != "auto":
        raise SandboxUnavailable(f"sandbox isolation {isolation!r} cannot run here ({why[isolation]})"
                                 f"{_HINT[isolation]}")
    raise SandboxUnavailable(f"sandbox: refusing to run generated code, no isolation works here (bubblewrap: "
                             f"{why['bwrap']}; namespaces: {why['namespaces']}). Fix: {FIX}")

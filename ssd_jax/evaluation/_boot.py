"""Bootstrap of every sandbox child, run as `python -s -B [-S] -c <this source> <setup> main.py [args]`.

subprocess starts the child with vfork+exec (no `preexec_fn`: the grading process may hold threads), so whatever
must happen between exec and the first byte of untrusted code happens here. Stdlib only; it imports nothing from
ssd_jax, and every name it defines is removed from `__main__` before the program runs there.

<setup> is ";"-separated items, ":"-separated fields, paths hex-encoded (they may hold ":" or ";"):
- "errfd:N"            a pipe to the parent: a set-up failure is written there (exit 125) and the parent raises;
                       closed before the program runs, so a program cannot forge one
- "setuid:UID:GID"     become that user (we are root and drop to "nobody")
- "capdrop:"           drop every capability (a user namespace's root, which cannot switch to another uid)
- "RLIMIT_X:soft:hard" resource limits
- "site:PATH"          a site-packages directory for sys.path, with the path lines of its .pth files (their
                       `import` lines are not run: `site` itself costs ~35 ms per run with an editable install)
- "marshal:"           main.py has a compiled twin, main.pyc (marshal): no compile in the child
- "zygote:FD"          do not run a program: become the sandbox's fork server (`_zygote.py`, shipped with this
                       source) on the socket FD, which forks each program; its children come back here to run
                       them. With it, "setuid:" and the rlimits apply to each program, never to the zygote
- "preload:HEX"        the zygote's modules to import once (comma-separated names, hex-encoded)
- "ns:host|user"       the built-in namespace layer, "user" with a fresh user namespace; then
  "tmp:PATH:BYTES"     a private size-capped tmpfs (mode 1777), "hide:PATH" an empty tmpfs over PATH,
  "bind:PATH"          PATH re-exposed read-only (an interpreter directory under a hidden one), "work:PATH" the
                       work dir, bound writable (the cwd), "dev:" a minimal /dev, "rolegacy:" the pre-5.12
                       read-only remount (tests)

The namespace layer (when bubblewrap is absent): unshare user (optional), mount, network, PID, IPC and UTS
namespaces. The process the parent started (P0) stays outside the new PID namespace only to relay the status; its
child P1 is PID 1: it makes every mount read-only, puts the tmpfs/binds in place, mounts a fresh /proc (with
/proc/sys read-only) and /sys, drops privileges, sets the limits and no-new-privs, and forks the program (P2). When
the program exits, P1 reports its status and exits, and the kernel kills everything left in the namespace (a
setsid daemon, a fork storm). The network namespace has only `lo`, never brought up: no route anywhere.
"""

import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 4, 24, 38
CAP_SETGID, CAP_SETUID = 6, 7
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1  # one number on all arches
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_RO = ("sys", "sysrq-trigger", "irq", "bus")  # kernel knobs: read-only even for a namespace's root
SETUP_FAILED = 125


class SetupError(Exception):
    """The sandbox could not be built; the parent gets the message on the error pipe, never the program."""


def parse(arg):
    """<setup> → dict of lists/values (see the module docstring)."""
    plan = {"errfd": -1, "ids": None, "capdrop": False, "rlimits": [], "ns": None, "tmp": [], "hide": [],
            "bind": [], "work": None, "dev": False, "rolegacy": False, "site": [], "marshal": False,
            "zygote": None, "preload": []}
    for item in filter(None, arg.split(";")):
        name, *f = item.split(":")
        if name == "errfd":
            plan["errfd"] = int(f[0])
        elif name == "setuid":
            plan["ids"] = (int(f[0]), int(f[1]))
        elif name in ("capdrop", "dev", "rolegacy", "marshal"):
            plan[name] = True
        elif name == "ns":
            plan["ns"] = f[0]
        elif name == "zygote":
            plan["zygote"] = int(f[0])
        elif name == "preload":
            plan["preload"] = [m for m in bytes.fromhex(f[0]).decode().split(",") if m]
        elif name == "tmp":
            plan["tmp"].append((bytes.fromhex(f[0]).decode(), int(f[1])))
        elif name in ("hide", "bind", "site"):
            plan[name].append(bytes.fromhex(f[0]).decode())
        elif name == "work":
            plan["work"] = bytes.fromhex(f[0]).decode()
        else:
            plan["rlimits"].append((name, int(f[0]), int(f[1])))
    return plan


class Libc:
    """The few libc calls Python 3.11's os module lacks (unshare, mount, prctl, capset), raising SetupError."""

    def __init__(self):
        import ctypes

        self.ct = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)

    def check(self, ret, what):
        if ret != 0:
            import os

            raise SetupError(f"{what}: {os.strerror(self.ct.get_errno())}")

    def unshare(self, flags):
        self.check(self.lib.unshare(flags), "unshare")

    def mount(self, src, dst, fstype, flags, data=None):
        b = lambda s: None if s is None else s.encode()  # noqa: E731
        ret = self.lib.mount(b(src), b(dst), b(fstype), self.ct.c_ulong(flags), b(data))
        self.check(ret, f"mount {fstype or src or ''} on {dst}")

    def prctl(self, option, arg):
        c = self.ct.c_ulong
        self.check(self.lib.prctl(option, c(arg), c(0), c(0), c(0)), f"prctl {option}")

    def readonly_tree(self):
        """Every mount read-only, recursively (mount_setattr, Linux >= 5.12); False where the call is missing."""
        c = self.ct.c_long
        attr = (self.ct.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
        ret = self.lib.syscall(c(SYS_MOUNT_SETATTR), c(AT_FDCWD), b"/", c(AT_RECURSIVE), self.ct.byref(attr), c(32))
        if ret != 0 and self.ct.get_errno() == 38:  # ENOSYS
            return False
        self.check(ret, "mount_setattr / read-only")
        return True

    def drop_caps(self, keep=()):
        """No capabilities left but `keep` (effective and permitted), none inheritable, and none to regain by exec
        (bounding set emptied but `keep`)."""
        for cap in range(64):
            if cap not in keep and self.lib.prctl(PR_CAPBSET_DROP, self.ct.c_ulong(cap), 0, 0, 0) != 0:
                break  # past the last capability this kernel knows
        header = (self.ct.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        mask = sum(1 << c for c in keep)
        lo, hi = mask & 0xFFFFFFFF, mask >> 32
        data = (self.ct.c_uint32 * 6)(lo, lo, 0, hi, hi, 0)  # {effective, permitted, inheritable} x 2 words
        self.check(self.lib.capset(self.ct.byref(header), self.ct.byref(data)), "capset")


def mount_flags(path):
    """The flags a remount of `path` must keep (a user namespace may not clear locked nosuid/nodev/noexec)."""
    import os

    f = os.statvfs(path).f_flag
    return (f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)) | (MS_RELATIME if f & 4096 else 0)


def readonly_legacy(libc):
    """Before mount_setattr: remount each mount point read-only, one by one (bind remounts touch only this view)."""
    with open("/proc/self/mountinfo", "rb") as f:
        points = [line.split()[4].decode("unicode_escape") for line in f]
    for p in points:
        try:
            flags = mount_flags(p)
        except OSError:
            continue  # overmounted or gone: not reachable from here
        libc.mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def make_target(path, is_dir):
    import os

    os.makedirs(path if is_dir else os.path.dirname(path), mode=0o755, exist_ok=True)
    if not is_dir and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def bind(libc, fd, target, is_dir=True, writable=False):
    """Bind what `fd` (opened before the tmpfs went over it) names at `target`; read-only unless `writable`."""
    make_target(target, is_dir)
    libc.mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    libc.mount(None, target, None, MS_REMOUNT | MS_BIND | mount_flags(target) | (0 if writable else MS_RDONLY))


def minimal_dev(libc, fds):
    """A fresh /dev: the harmless character devices, the /proc/self/fd links, a size-capped /dev/shm."""
    import os

    libc.mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEV_NODES:
        if ("dev", name) in fds:
            bind(libc, fds[("dev", name)], f"/dev/{name}", is_dir=False, writable=True)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2")):
        os.symlink(to, f"/dev/{name}")
    os.mkdir("/dev/shm")
    libc.mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")


def open_sources(plan):
    """O_PATH handles on everything bound later: the tmpfs mounts hide the originals."""
    import os

    fds = {("bind", p): os.open(p, os.O_PATH | os.O_DIRECTORY) for p in plan["bind"]}
    fds[("work", plan["work"])] = os.open(plan["work"], os.O_PATH | os.O_DIRECTORY)
    if plan["dev"]:
        for name in DEV_NODES:
            try:
                fds[("dev", name)] = os.open(f"/dev/{name}", os.O_PATH)
            except OSError:
                pass
    return fds


def build_mounts(libc, plan):
    """In P1 (PID 1 of the new namespaces): the file-system view the program gets (see the module docstring)."""
    import os

    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    fds = open_sources(plan)
    if plan["rolegacy"] or not libc.readonly_tree():
        readonly_legacy(libc)
    mounts = [(p, f"size={n},mode=1777") for p, n in plan["tmp"]] + [(p, "size=1m,mode=0755") for p in plan["hide"]]
    for path, opts in sorted(mounts, key=lambda m: len(m[0])):
        libc.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    if plan["dev"]:
        minimal_dev(libc, fds)
    for p in plan["bind"]:
        bind(libc, fds[("bind", p)], p)
    bind(libc, fds[("work", plan["work"])], plan["work"], writable=True)
    for path in plan["hide"] + (["/dev"] if plan["dev"] else []):
        libc.mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(path))
    for fd in fds.values():
        os.close(fd)
    fresh_proc_and_sys(libc)
    os.chdir(plan["work"])


def fresh_proc_and_sys(libc):
    """/proc of the new PID namespace (the host's processes vanish) with its kernel knobs read-only; /sys of the
    new network namespace (only `lo`), read-only; where a fresh /sys is refused the host's stays, read-only."""
    import os

    libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_RO:
        p = f"/proc/{name}"
        if os.path.exists(p):
            libc.mount(p, p, None, MS_BIND | MS_REC)
            libc.mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(p))
    try:
        libc.mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except SetupError:
        pass


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces(libc, plan):
    """unshare in P0, fork P1 = PID 1. P0 never returns (it relays the program's status); P1 returns."""
    import os

    uid, gid = os.geteuid(), os.getegid()
    user = plan["ns"] == "user"
    libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | (CLONE_NEWUSER * user))
    if user:  # map only ourselves: no other uid exists inside, and exec cannot turn into root
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    r, w = os.pipe()
    null = os.open("/dev/null", os.O_RDWR)  # before P1 replaces /dev in the mount namespace we share
    pid = os.fork()
    if pid:
        os.close(w)
        if plan["zygote"] is not None:
            os.close(plan["zygote"])  # only P1 talks to the grading process; its EOF must not wait for us
        relay(pid, r, plan["errfd"], null)
    os.close(r)
    os.close(null)
    return w


def quiet_stdio(null):
    """Our helper processes let go of the program's pipes, so the parent sees EOF when the program's side closes."""
    import os

    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def relay(pid, r, errfd, null):
    """P0: wait for P1, then end exactly as the program did (same exit code, or the same signal)."""
    import os

    if errfd >= 0:
        os.close(errfd)
    quiet_stdio(null)
    data = b""
    while chunk := os.read(r, 64):
        data += chunk
    _, status = os.waitpid(pid, 0)
    exit_like(int(data) if data else status)


def exit_like(status):
    import os

    if os.WIFSIGNALED(status):
        import _signal  # not `signal`: that imports enum, ~10 ms per run
        import resource

        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def reap(libc, w):
    """P1: fork the program; reap every orphan until the program itself exits; report its status; exit (which
    kills whatever is left in the PID namespace). Returns only in the program's process."""
    import os

    libc.prctl(PR_SET_DUMPABLE, 0)  # the program (same uid) may not ptrace PID 1 or open its fds
    import gc

    gc.freeze()  # the program's collections skip what it inherited: fewer copy-on-write faults, ~2 ms a run
    child = os.fork()
    if child == 0:
        os.close(w)
        libc.prctl(PR_SET_DUMPABLE, 1)
        return
    quiet_stdio(os.open("/dev/null", os.O_RDWR))
    status = 0
    while True:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            status = st
            break
    os.write(w, str(status).encode())
    os._exit(0)


def limits(plan):
    """Switch user or drop capabilities, then set the resource limits (lowering them needs no privilege)."""
    import os
    import resource

    if plan["ids"]:
        uid, gid = plan["ids"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    for name, soft, hard in plan["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))


def add_site(dirs):
    """What `site.addsitedir` does for sys.path, without executing .pth `import` lines or sitecustomize."""
    import os

    for d in dirs:
        if d in sys.path:
            continue
        sys.path.append(d)
        try:
            pths = sorted(n for n in os.listdir(d) if n.endswith(".pth"))
        except OSError:
            continue
        for name in pths:
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                p = os.path.abspath(os.path.join(d, line))
                if os.path.isdir(p) and p not in sys.path:
                    sys.path.append(p)


def load(path, compiled):
    """The program's code object: from main.pyc when the parent compiled it (same interpreter), else compiled here."""
    if compiled:
        import marshal

        with open(path + "c", "rb") as f:
            return marshal.loads(f.read())
    with open(path, "rb") as f:
        src = f.read()
    return compile(src, path, "exec", dont_inherit=True)


def fail(errfd, message):
    import os

    try:
        os.write(errfd, message.encode("utf-8", "replace")[:4000])
    except OSError:
        pass
    os._exit(SETUP_FAILED)


def setup(plan):
    """Everything before the program; in the namespace layer this returns in P2 only, with "zygote:" only in each
    program the zygote forks (`serve`, from _zygote.py)."""
    import os

    if not plan["ns"]:
        if plan["zygote"] is not None:
            return serve(plan, Libc())  # noqa: F821 - _zygote.py, shipped before this source
        limits(plan)
        return
    libc = Libc()
    w = enter_namespaces(libc, plan)
    os.umask(0o022)
    build_mounts(libc, plan)
    if plan["capdrop"]:
        libc.drop_caps()
    if plan["zygote"] is not None:  # PID 1 stays root only to make its children "nobody"
        if plan["ids"]:
            libc.drop_caps(keep=(CAP_SETGID, CAP_SETUID))
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.close(w)  # P0 relays our own end
        return serve(plan, libc)  # noqa: F821
    limits(plan)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if plan["errfd"] >= 0:
        os.close(plan["errfd"])
        plan["errfd"] = -1
    reap(libc, w)


def boot(keep):
    """Set the sandbox up, then return the program's code object with `__main__` as a fresh script would have it."""
    import builtins
    import os

    plan = parse(sys.argv[1])
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        setup(plan)
    except Exception as e:  # noqa: BLE001 - any failure here is the sandbox's, never the program's
        fail(plan["errfd"], f"{type(e).__name__}: {e}" if not isinstance(e, SetupError) else str(e))
    os.umask(umask)
    if plan["errfd"] >= 0:
        os.close(plan["errfd"])
    if not hasattr(builtins, "exit"):  # -S leaves out site's exit()/quit(); programs call them
        builtins.exit = builtins.quit = sys.exit
    add_site(plan["site"])
    path = sys.argv[2]
    del sys.argv[:2]
    code = load(path, plan["marshal"])
    g = globals()
    for name in [k for k in g if k not in keep]:
        del g[name]
    g["__doc__"] = None
    g["__file__"] = path
    return code


if __name__ == "__main__":
    exec(boot(("__name__", "__builtins__", "__loader__", "__spec__", "__package__", "__annotations__")))

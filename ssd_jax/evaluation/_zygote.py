"""The sandbox's fork server ("zygote"): one long-lived process inside the barrier that forks every program.

Shipped with `_boot.py` (this source first, then the bootstrap's, compiled as one) and started like a sandbox child
with two more <setup> items: "zygote:FD" (a SOCK_SEQPACKET socket to the grading process) and "preload:HEX" (the
modules to import once: the harness's and LiveCodeBench's prelude). Stdlib only, nothing from ssd_jax.

The zygote is built by the same layer as a fresh child (bubblewrap, or our own namespaces in `_boot.setup`), then,
before it serves anything: it is PID 1 of its PID namespace (bwrap `--as-pid-1`, or the namespace layer's P1),
non-dumpable (no ptrace, no /proc/<pid>/fd or mem for anyone without privilege), no-new-privs, and as root it
keeps only CAP_SETUID/CAP_SETGID (to make its children "nobody"). It never runs untrusted code: it imports the
preload, records the private writable file systems (every read-write tmpfs but the work base: /tmp, /dev/shm,
...) as they are, and loops:

  run request (JSON + 4 descriptors: the program's stdin, stdout, stderr, and the set-up error pipe)
    -> fork; the child: new session, the descriptors on 0/1/2 (everything else closed), an environment from
       scratch, "nobody" (setgroups/setgid/setuid, as root; else every capability dropped), dumpable again, cwd
       and HOME = its own fresh work dir (made by the grading process under the work base), its rlimits (plus
       RLIMIT_MSGQUEUE 0: no POSIX message queue can outlive it), argv; then it returns into `_boot.boot`, which
       loads the program and runs it as `__main__` exactly as in a fresh child (and the interpreter ends it as a
       fresh one ends; `random` is reseeded at the fork, as a fresh interpreter seeds it).
    -> "started"; wait for the program's exit (SIGCHLD wakes the loop; orphans are reaped as they come) or a
       "kill" from the grading process (its wall-clock limit);
    -> sweep: kill(-1, SIGKILL) with the program's effective uid, which reaches every process of the namespace
       but PID 1 (setsid daemons, fork storms), reaped until the zygote has no child left, checked in /proc;
       clean: everything new in the private file systems removed (as the program's uid), anything of the
       recorded skeleton changed, any System V IPC object left, or the zygote's own rlimits, niceness or CPUs
       changed (possible only for a program of its own uid) -> unhealthy;
    -> "exit" with the wait status and "" or why it is unhealthy. An unhealthy zygote exits; the grading process
       starts a new one (fresh namespaces, fresh tmpfs). So does an EOF on the socket (the grading process died).
Signals cannot reach it from inside: as root it has another uid than its children, and the kernel never delivers
a signal without a handler to a PID namespace's init from inside the namespace (SIGCHLD only wakes the loop).
"""

PR_SET_DUMPABLE_Z, PR_SET_NO_NEW_PRIVS_Z = 4, 38  # _boot.py's PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS
MSG_MAX = 1 << 16
SWEEP_S = 5.0  # processes that do not die from SIGKILL within this (D state): the zygote is unhealthy


def zsend(sock, obj):
    import json

    sock.send(json.dumps(obj).encode())


def writable_roots(base):
    """Mount points of the read-write tmpfs (ramfs) file systems a program could leave something in, but the work
    base (the grading process empties that one)."""
    roots = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            sep = fields.index(b"-")
            point = fields[4].decode("unicode_escape")
            if fields[sep + 1].decode() in ("tmpfs", "ramfs") and b"rw" in fields[5].split(b","):
                if point != base:
                    roots.append(point)
    return roots


def snapshot(roots):
    """{path: identity} of everything in the private file systems before any program ran (mount points
    included, not what is under them)."""
    import os

    snap = {}

    def walk(path, dev):
        for entry in os.scandir(path):
            st = entry.stat(follow_symlinks=False)
            snap[entry.path] = identity(st, dev)
            if entry.is_dir(follow_symlinks=False) and st.st_dev == dev:
                walk(entry.path, dev)

    for root in roots:
        st = os.lstat(root)
        snap[root] = identity(st, st.st_dev)
        walk(root, st.st_dev)
    return snap


def identity(st, dev):
    """What must not change: a file or link of the tmpfs itself entirely (its size and mtime too); a directory
    and a mount point (a device node bound from the host, another file system) by inode, type, mode, owner."""
    import stat

    if stat.S_ISDIR(st.st_mode) or st.st_dev != dev:
        return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid)
    return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)


def remove_tree(path):
    """Remove what a program left (no process of it is alive any more): symlinks are unlinked, never followed;
    directories it made unreadable are opened up first (it owns them)."""
    import os
    import stat

    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(path, 0o700)
        for entry in os.scandir(path):
            remove_tree(entry.path)
        os.rmdir(path)
    else:
        os.unlink(path)


def clean_files(roots, snap):
    """Remove everything not in `snap` under `roots`; "" when the rest is exactly as recorded, else why not."""
    import os

    problems = []

    def walk(path, dev):
        for entry in os.scandir(path):
            p = entry.path
            st = entry.stat(follow_symlinks=False)
            if p not in snap:
                try:
                    remove_tree(p)
                except Exception as e:  # noqa: BLE001 - e.g. nested too deep: a new zygote instead
                    problems.append(f"cannot remove {p}: {type(e).__name__}: {e}")
                continue
            if snap[p] != identity(st, dev):
                problems.append(f"{p} changed")
            elif entry.is_dir(follow_symlinks=False) and st.st_dev == dev:
                walk(p, dev)

    for root in roots:
        try:
            st = os.lstat(root)
            if snap[root] != identity(st, st.st_dev):
                problems.append(f"{root} changed")
                continue
            walk(root, st.st_dev)
        except OSError as e:
            problems.append(f"{root}: {e.strerror}")
    missing = [p for p in snap if p is not None and not os.path.lexists(p)]
    if missing:
        problems.append(f"{missing[0]} is gone")
    return "; ".join(problems[:3])


def ipc_left():
    """A System V shared memory segment, semaphore set or message queue left in the sandbox's IPC namespace."""
    for kind in ("shm", "sem", "msg"):
        try:
            with open(f"/proc/sysvipc/{kind}", "rb") as f:
                if len(f.read().splitlines()) > 1:
                    return f"a System V {kind} object was left behind"
        except OSError:
            pass
    return ""


def vitals():
    """What a program of the zygote's own uid could change on it (no root to drop from: prlimit, setpriority,
    sched_setaffinity need only the same uid): its rlimits, niceness and CPUs."""
    import os
    import resource

    names = sorted(n for n in dir(resource) if n.startswith("RLIMIT_"))
    return ([resource.getrlimit(getattr(resource, n)) for n in names], os.getpriority(os.PRIO_PROCESS, 0),
            sorted(os.sched_getaffinity(0)))


def as_program(uid, fn, *args):
    """Run `fn` with the programs' effective uid (root zygotes): kill(-1) then reaches exactly their processes,
    and file removal has exactly their rights."""
    import os

    if uid is None:
        return fn(*args)
    os.seteuid(uid)
    try:
        return fn(*args)
    finally:
        os.seteuid(0)


def kill_all():
    import os

    try:
        os.kill(-1, 9)
    except OSError:
        pass  # ESRCH: nothing left to kill


def reap_exited(child, status):
    """Reap every child that has exited: (the program's own status when it is among them, else `status`; whether
    the zygote has no child left at all)."""
    import os

    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, True
        if pid == 0:
            return status, False
        if pid == child:
            status = st


def sweep(uid, child, status):
    """Kill every process of the namespace but the zygote, reap them all; (status, why unhealthy or "")."""
    import os
    import time

    deadline = time.monotonic() + SWEEP_S
    while True:
        as_program(uid, kill_all)
        status, none_left = reap_exited(child, status)
        if none_left:
            break
        if time.monotonic() > deadline:
            return status, "processes survived SIGKILL"
        time.sleep(0.0005)
    me = str(os.getpid())
    left = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    return status, f"processes left after the sweep: {left[:5]}" if left else ""


def wait_program(sock, wake, child, run_id, uid):
    """Wait for the program's exit, reaping orphans as they come; a "kill" for this run sweeps at once.
    Returns the program's wait status (None if the zygote lost it, which cannot happen but is reported)."""
    import json
    import os
    import select

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake, select.POLLIN)
    status = None
    while status is None:
        for fd, _ in poller.poll():
            if fd == wake:
                try:
                    while os.read(wake, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                data = sock.recv(MSG_MAX)
                if not data:
                    os._exit(0)  # the grading process is gone: our exit kills the namespace
                msg = json.loads(data)
                if msg.get("op") == "kill" and msg.get("id") == run_id:
                    as_program(uid, kill_all)
        status, none_left = reap_exited(child, status)
        if none_left:
            break
    return status


def child_setup(plan, msg, fds, libc):
    """In the forked child, before `_boot.boot` loads the program: see the module docstring."""
    import os
    import signal
    import sys

    plan["errfd"] = fds[3]  # from here on a failure reaches the grading process as a set-up failure
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    os.setsid()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    err = fds[3]
    os.closerange(3, err)
    os.closerange(err + 1, 1 << 16)
    os.environ.clear()
    os.environ.update(msg["env"])
    if plan["ids"]:
        uid, gid = plan["ids"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)  # every capability goes with root
    else:
        # The zygote's own uid (no root to drop from): no capability may stay with the program, or it could
        # ptrace its zygote (bubblewrap leaves uid 0 of a fresh user namespace every one of them).
        libc.drop_caps()
    libc.prctl(PR_SET_DUMPABLE_Z, 1)
    os.chdir(msg["work"])  # as the program's user: its work dir is its own (mode 700)
    plan["rlimits"] = [tuple(x) for x in msg["rlimits"]] + [("RLIMIT_MSGQUEUE", 0, 0)]
    import resource

    for name, soft, hard in plan["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    plan["marshal"] = bool(msg["marshal"])
    plan["site"] = list(msg["site"])
    sys.argv[:] = ["-c", "", "main.py", *msg["args"]]


def serve(plan, libc):
    """The zygote's life (see the module docstring). Returns only in a forked child, ready for its program."""
    import gc
    import os
    import signal
    import socket
    import sys

    sock = socket.socket(fileno=plan["zygote"])
    libc.prctl(PR_SET_DUMPABLE_Z, 0)
    libc.prctl(PR_SET_NO_NEW_PRIVS_Z, 1)
    for name in plan["preload"]:
        __import__(name)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    # PID 1 gets only the signals it handles: SIGCHLD just wakes the loop, and SIGINT (Python's KeyboardInterrupt,
    # which a program of the zygote's own uid could send) is ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    base = os.getcwd()
    uid = plan["ids"][0] if plan["ids"] else None
    roots = writable_roots(base)
    snap = snapshot(roots)
    snap[None] = vitals()
    if plan["errfd"] >= 0:
        os.close(plan["errfd"])
        plan["errfd"] = -1
    gc.freeze()  # the children's collections skip what they inherit: fewer copy-on-write faults
    zsend(sock, {"ready": os.getpid(), "roots": roots})
    try:
        msg, fds = loop(sock, wake_r, wake_w, uid, roots, snap)
    except BaseException:  # a broken zygote says why (on its stderr, read by the grading process) and exits
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(70)
    # In a forked child: a failure from here on reaches `_boot.boot`, which reports it on the run's error pipe.
    child_setup(plan, msg, fds, libc)


def loop(sock, wake_r, wake_w, uid, roots, snap):
    """Serve run requests until EOF; returns only in a forked child: (its request, its 4 descriptors)."""
    import json
    import os
    import socket

    while True:
        data, fds, _, _ = socket.recv_fds(sock, MSG_MAX, 4)
        if not data:
            os._exit(0)  # the grading process is gone
        msg = json.loads(data)
        if msg.get("op") != "run":
            for fd in fds:
                os.close(fd)
            continue  # a "kill" that crossed the program's exit
        if len(fds) != 4:
            zsend(sock, {"id": msg.get("id"), "exit": None, "unhealthy": f"got {len(fds)} descriptors, not 4"})
            os._exit(0)
        child = os.fork()
        if child == 0:
            os.close(wake_r)
            os.close(wake_w)
            sock.detach()
            return msg, fds
        for fd in fds:
            os.close(fd)
        zsend(sock, {"id": msg["id"], "started": child})
        status = wait_program(sock, wake_r, child, msg["id"], uid)
        status, why = sweep(uid, child, status)
        if not why:
            why = as_program(uid, clean_files, roots, snap) or ipc_left()
        if not why and vitals() != snap[None]:
            why = "the zygote's own limits, priority or CPUs changed"
        if status is None and not why:
            why = "the program's exit status was lost"
        zsend(sock, {"id": msg["id"], "exit": status, "unhealthy": why})
        if why:
            os._exit(0)  # a new zygote replaces this one

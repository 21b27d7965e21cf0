"""The sandbox's zygote (launch "zygote"): the fresh path's hostile battery on it, in both barrier layers, and what
only a long-lived fork server can get wrong: something of one program reaching the next (daemons, files in the
private /tmp and /dev/shm, the environment, module state, System V IPC), a program attacking its zygote, and a
zygote that dies or turns unhealthy. Every run below must say "+zygote" (else the battery would test the fresh
path again); the processes left are counted in the zygote's own PID namespace, from the host. Network tests dial a
listener of ours on 127.0.0.1 only.
"""

import os
import signal
import sys
import threading

import pytest

from ssd_jax.config import GraderSpec, from_dict
from ssd_jax.errors import ConfigError
from ssd_jax.evaluation import barrier, isolation, zygote
from ssd_jax.evaluation.grader import TestCase, grade
from ssd_jax.evaluation.isolation import select_layer
from ssd_jax.evaluation.launch import SandboxError
from ssd_jax.evaluation.pool import WorkerPool
from ssd_jax.evaluation.sandbox import check_isolation, run_python
from tests.evaluation import test_sandbox as fresh
from tests.evaluation.test_sandbox import BARRIERS, listener, src  # noqa: F401 - listener is a fixture

pytestmark = pytest.mark.filterwarnings("ignore:sandbox. untrusted code runs as root")


def run_on_zygote(*args, **kwargs):
    """run_python from a zygote, checked to have run there."""
    r = run_python(*args, launch="zygote", **kwargs)
    assert r.isolation.endswith("+zygote"), r.isolation
    return r


@pytest.fixture
def on_zygote(monkeypatch):
    """The fresh path's tests, run from a zygote: their module's run_python is ours."""
    monkeypatch.setattr(fresh, "run_python", run_on_zygote)


def the_zygote(iso: str, drop_root: bool = True) -> zygote.Zygote:
    z = zygote.serving(select_layer(iso, drop_root=drop_root))
    assert z is not None, "no zygote serves this layer"
    return z


def left_in_sandbox(iso: str, drop_root: bool = True) -> list[int]:
    """Host pids of every process in the zygote's PID namespace but the zygote itself."""
    zpid = the_zygote(iso, drop_root).host_pid()
    ns = os.readlink(f"/proc/{zpid}/ns/pid")
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != zpid:
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns:
                    found.append(int(name))
            except OSError:
                pass
    return found


# --- the fresh path's battery, from a zygote ---------------------------------------------------------------------
BATTERY = [fresh.test_basic_run_reports_isolation_and_cleans_work_dir,
           fresh.test_infinite_loop_is_killed_at_the_wall_clock, fresh.test_cpu_rlimit_sends_sigxcpu,
           fresh.test_huge_stdout_is_capped_and_flagged, fresh.test_no_route_out_of_the_network_namespace,
           fresh.test_killing_the_parent_or_everyone_leaves_the_grader_alive,
           fresh.test_deep_recursion_and_crashes_are_reported, fresh.test_file_size_limit,
           fresh.test_disk_flood_of_tmp_stops_at_its_private_cap,
           fresh.test_precompiled_code_runs_with_its_source_in_tracebacks,
           fresh.test_the_program_gets_a_clean_main_module,
           fresh.test_no_capabilities_no_new_privileges_no_stray_descriptors]


@pytest.mark.parametrize("test", BATTERY, ids=lambda f: f.__name__.removeprefix("test_"))
@pytest.mark.parametrize("iso", BARRIERS)
def test_fresh_battery_on_the_zygote(iso, test, on_zygote):
    test(iso)


@pytest.mark.parametrize("iso", BARRIERS)
def test_fresh_battery_with_fixtures_on_the_zygote(iso, on_zygote, tmp_path, listener, monkeypatch):  # noqa: F811
    for hog in ("b = bytearray(8 << 30)", "x = []\nwhile True:\n    x.append(bytearray(1 << 24))"):
        fresh.test_memory_hog_is_contained(iso, hog)
    fresh.test_writes_outside_the_work_dir_fail_or_stay_private(iso, tmp_path)
    fresh.test_network_is_unreachable(iso, listener)
    fresh.test_collect_reads_regular_files_only()
    fresh.test_large_stdin_is_fed_without_deadlock()
    zygote._close_all()  # a zygote started after the secret is set must not carry it either
    fresh.test_parent_environment_secrets_are_not_inherited(iso, monkeypatch)


@pytest.mark.parametrize("iso", BARRIERS)
def test_fork_storm_and_setsid_daemons_leave_nothing_in_the_zygote(iso, on_zygote):
    """The fresh tests count survivors by their HOME, which a zygote's child does not carry in /proc/<pid>/environ;
    here every process of the zygote's PID namespace counts, right after the run (the sweep precedes the verdict)."""
    fresh.test_fork_bomb_is_contained_and_leaves_nothing(iso)
    assert left_in_sandbox(iso) == []
    fresh.test_daemon_that_escapes_the_session_dies_with_the_sandbox(iso)
    assert left_in_sandbox(iso) == []
    r = run_on_zygote(src("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
        time.sleep(60)
    """), timeout_s=1.0, isolation=iso)
    assert r.timed_out and r.wall_s < 3
    assert left_in_sandbox(iso) == []


@pytest.mark.parametrize("iso", BARRIERS)
def test_program_sees_only_itself_and_the_zygote_in_a_session_of_its_own(iso):
    run_on_zygote("pass", isolation=iso)
    r = run_on_zygote("import os\nprint(os.getsid(0), os.getpgrp(), os.getppid(), "
                      "*(p for p in os.listdir('/proc') if p.isdigit()))", isolation=iso)
    sid, pgrp, ppid, *visible = map(int, r.stdout.split())
    assert sid == pgrp == r.pid, r.stdout  # a session and process group of its own
    assert ppid == 1 and sorted(visible) == [1, r.pid], r.stdout  # PID 1 is the zygote


# --- nothing crosses from one program to the next ----------------------------------------------------------------
LEAVE = src("""
    import ctypes, json, os, time
    print(os.getcwd())
    os.environ["SSD_LEAK"] = "1"
    os.putenv("SSD_LEAK2", "1")
    json.dumps = None
    for p in ("/tmp/leak", "/dev/shm/leak", "leak"):
        try:
            with open(p, "w") as f:
                f.write("x")
            print("wrote", p)
        except OSError as e:
            print("refused", p, e.strerror)
    os.makedirs("/tmp/d/e")
    open("/tmp/d/e/f", "w").close()
    os.chmod("/tmp/d/e", 0)
    os.chmod("/tmp/d", 0)
    os.symlink("/etc/passwd", "/tmp/link")
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(60)
        os._exit(0)
    time.sleep(0.2)
""")

LOOK = src("""
    import json, os
    print("procs", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == sorted([1, os.getpid()]))
    print("env", os.environ.get("SSD_LEAK"), os.environ.get("SSD_LEAK2"), os.getenv("SSD_LEAK2"))
    print("json", json.dumps([1]))
    print("tmp", sorted(os.listdir("/tmp")) == sorted({{os.path.basename(os.path.dirname(os.getcwd()))}} | {interp}))
    print("shm", os.listdir("/dev/shm"))
    print("cwd", os.listdir("."))
    print("previous", os.path.exists({prev!r}))
    try:
        print("base", os.listdir(os.path.dirname(os.getcwd())))
    except OSError as e:
        print("base refused")
""")


def interpreter_under_tmp() -> set[str]:
    """The top-level /tmp entries the sandbox's private /tmp holds for an interpreter (or venv) that lives under
    /tmp: its folders are bound back read-only so it can run (none for a checkout elsewhere)."""
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)))}
    return {p.split(os.sep)[2] for p in dirs if p.startswith("/tmp/")}


@pytest.mark.parametrize("iso", BARRIERS)
def test_nothing_a_program_leaves_reaches_the_next(iso):
    a = run_on_zygote(LEAVE, isolation=iso)
    assert a.returncode == 0 and "wrote /tmp/leak" in a.stdout and "wrote leak" in a.stdout, a
    assert left_in_sandbox(iso) == []  # the setsid daemon is gone before the verdict
    z = the_zygote(iso)
    assert os.listdir(z.base) == [] and "/tmp" in z.roots and ("/dev/shm" in z.roots or "/dev" in z.roots)
    b = run_on_zygote(LOOK.format(prev=a.stdout.splitlines()[0], interp=interpreter_under_tmp()), isolation=iso)
    assert b.stdout.splitlines() == ["procs True", "env None None None", "json [1]", "tmp True", "shm []",
                                     "cwd ['main.py']", "previous False", "base refused"], b
    assert the_zygote(iso) is z  # served by the same zygote all along


SYSV_SHM = src("""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    print("shmget", libc.shmget(0x55D, 4096, 0o1000 | 0o600) >= 0)  # IPC_CREAT
    fd = libc.mq_open(b"/ssd-leak", 0o100 | 2, 0o600, None)  # O_CREAT | O_RDWR
    print("mq_open", fd, ctypes.get_errno())
""")


@pytest.mark.parametrize("iso", BARRIERS)
def test_ipc_objects_do_not_reach_the_next_program(iso):
    """A System V object outlives its creator: the zygote reports itself unhealthy and a new one (a new IPC
    namespace) serves the next program. POSIX message queues cannot be made at all (RLIMIT_MSGQUEUE 0)."""
    run_on_zygote("pass", isolation=iso)
    z = the_zygote(iso)
    a = run_on_zygote(SYSV_SHM, isolation=iso)
    assert a.returncode == 0 and "shmget True" in a.stdout, a
    assert f"mq_open -1 {24}" in a.stdout  # EMFILE
    b = run_on_zygote("import ctypes\nprint(ctypes.CDLL(None).shmget(0x55D, 0, 0), open('/proc/sysvipc/shm')"
                      ".read().count(chr(10)))", isolation=iso)
    assert b.stdout == "-1 1\n", b  # no such segment; only the header line
    assert the_zygote(iso) is not z and z.dead


@pytest.mark.parametrize("iso", BARRIERS)
def test_limits_are_each_programs_own(iso):
    r = run_on_zygote("b = bytearray(600 << 20)", memory_mb=256, isolation=iso)
    assert "MemoryError" in r.stderr
    r = run_on_zygote("import resource\nb = bytearray(600 << 20)\nprint(resource.getrlimit(resource.RLIMIT_AS))",
                      memory_mb=2048, isolation=iso)
    assert r.returncode == 0 and r.stdout == f"({2048 << 20}, {2048 << 20})\n", r


# --- attacks on the zygote ---------------------------------------------------------------------------------------
ATTACK = src("""
    import ctypes, os, signal
    for target, sig in [(1, signal.SIGKILL), (os.getppid(), signal.SIGKILL), (1, signal.SIGINT), (1, signal.SIGTERM),
                        (1, signal.SIGSTOP), (-1, signal.SIGKILL)]:
        try:
            os.kill(target, sig)
            print("sent", target, sig.name)
        except OSError as e:
            print("refused", target, sig.name)
    try:
        fds = os.listdir("/proc/1/fd")  # the fd numbers: readable where the program shares the zygote's uid
    except OSError:
        fds = []
    for path in [*(f"/proc/1/fd/{fd}" for fd in fds), "/proc/1/mem", "/proc/1/environ", "/proc/1/root/."]:
        try:
            os.listdir(path) if path.endswith(".") else open(path, "rb").read(1)
            print("opened", path)
        except OSError as e:
            print("refused", path)
    libc = ctypes.CDLL(None, use_errno=True)
    print("ptrace", libc.ptrace(16, 1, None, None))  # PTRACE_ATTACH
    print("fds", sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:3], len(os.listdir("/proc/self/fd")))
    print("caps", *(line.split()[1] for line in open("/proc/self/status") if line.startswith(("CapEff", "CapPrm"))))
    print("still here")
""")


@pytest.mark.parametrize("drop_root", [True, False], ids=["nobody", "same-uid"])
@pytest.mark.parametrize("iso", BARRIERS)
def test_a_program_cannot_kill_or_read_its_zygote(iso, drop_root):
    """As "nobody" the program may not signal the root zygote; where it shares the zygote's uid (no root to drop
    from), the kernel still delivers nothing to a PID namespace's init from inside (SIGINT is ignored), and a
    non-dumpable process's descriptors, memory and environment stay closed to a process without capabilities."""
    run_on_zygote("pass", isolation=iso, drop_root=drop_root)
    z = the_zygote(iso, drop_root)
    zpid = z.host_pid()
    r = run_on_zygote(ATTACK, isolation=iso, drop_root=drop_root)
    assert r.returncode == 0 and "still here" in r.stdout, r
    assert "opened" not in r.stdout and "ptrace -1" in r.stdout, r.stdout
    assert "fds [0, 1, 2] 4" in r.stdout  # nothing of the zygote's (its socket, its pipes) in the program
    assert "caps 0000000000000000 0000000000000000" in r.stdout
    assert the_zygote(iso, drop_root) is z and z.host_pid() == zpid  # alive, serving
    r = run_on_zygote("print(int(input()) * 2)", "21\n", isolation=iso, drop_root=drop_root)
    assert r.stdout == "42\n" and the_zygote(iso, drop_root) is z


@pytest.mark.parametrize("drop_root", [True, False], ids=["nobody", "same-uid"])
@pytest.mark.parametrize("iso", BARRIERS)
def test_a_program_that_limits_its_zygote_gets_it_replaced(iso, drop_root):
    """prlimit/setpriority need only the same uid: as "nobody" they are refused, else the zygote finds its own
    limits changed after the program, and a new zygote, with the limits it should have, serves the next program
    (a lowered hard RLIMIT_AS would otherwise make the next program's own memory limit a set-up failure)."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    for attack, check, kwargs in [
            ("resource.prlimit(1, resource.RLIMIT_AS, (1 << 30, 1 << 30))",
             "print(resource.getrlimit(resource.RLIMIT_AS)[1] >> 20)", {"memory_mb": 2048}),
            ("os.setpriority(os.PRIO_PROCESS, 1, 19)", "print(os.getpriority(os.PRIO_PROCESS, 0))", {})]:
        run_on_zygote("pass", isolation=iso, drop_root=drop_root)
        z = the_zygote(iso, drop_root)
        a = run_on_zygote(f"import os, resource\ntry:\n    {attack}\n    print('done')\nexcept OSError:\n"
                          "    print('refused')", isolation=iso, drop_root=drop_root)
        if drop_root and os.geteuid() == 0:
            assert a.stdout == "refused\n" and the_zygote(iso, drop_root) is z, a
        elif a.stdout == "done\n":
            assert z.dead
        r = run_on_zygote(f"import os, resource\n{check}", isolation=iso, drop_root=drop_root, **kwargs)
        assert r.stdout == f"{kwargs.get('memory_mb', nice)}\n", (attack, a, r)


@pytest.mark.parametrize("iso", BARRIERS)
def test_a_zygote_that_dies_under_a_program_costs_that_program_nothing(iso):
    """Killed from outside mid-run: that program runs again the fresh way (its verdict is the fresh one, never a
    failure made by the sandbox), and the next program gets a new zygote."""
    run_on_zygote("pass", isolation=iso)
    z = the_zygote(iso)
    killer = threading.Timer(0.5, os.kill, (z.host_pid(), signal.SIGKILL))
    killer.start()
    try:
        r = run_python("import time\ntime.sleep(1.5)\nprint(int(input()) + 1)", "41\n", isolation=iso,
                       launch="zygote")
    finally:
        killer.join()
    assert r.returncode == 0 and r.stdout == "42\n" and not r.isolation.endswith("+zygote"), r
    assert z.dead and not os.path.exists(z.base)
    r = run_on_zygote("print(int(input()) + 1)", "1\n", isolation=iso)
    assert r.stdout == "2\n" and the_zygote(iso) is not z


@fresh.needs_ns
def test_a_changed_skeleton_makes_the_zygote_unhealthy():
    """Same uid as the zygote (no root to drop from): the program owns /tmp and may chmod it. The zygote sees the
    private file systems differ from what it recorded, and a new one (a new tmpfs) serves the next program."""
    run_on_zygote("pass", isolation="namespaces", drop_root=False)
    z = the_zygote("namespaces", drop_root=False)
    run_on_zygote("import os\nos.chmod('/tmp', 0o700)", isolation="namespaces", drop_root=False)
    r = run_on_zygote("import os\nprint(oct(os.stat('/tmp').st_mode))", isolation="namespaces", drop_root=False)
    assert r.stdout == "0o41777\n" and the_zygote("namespaces", drop_root=False) is not z and z.dead


@pytest.mark.parametrize("iso", BARRIERS)
def test_a_set_up_failure_in_the_child_is_a_sandbox_error(iso):
    run_on_zygote("pass", isolation=iso)
    z = the_zygote(iso)
    with pytest.raises(SandboxError, match="RLIMIT_BOGUS"):
        z.run("print(1)", timeout_s=5.0, limits={"RLIMIT_BOGUS": (1, 1)})
    r = run_on_zygote("import sys\nprint('ssd-jax sandbox', file=sys.stderr)\nsys.exit(125)", isolation=iso)
    assert r.returncode == 125  # the program's own code: not a set-up failure
    assert the_zygote(iso) is z


# --- the probe, the switch, the grader ---------------------------------------------------------------------------
@pytest.mark.parametrize("iso", BARRIERS)
def test_every_zygote_passes_the_isolation_probe_first(iso, monkeypatch):
    check_isolation(iso)  # the fresh probe of the layer, done before anything below is patched
    seen = []
    check = isolation._check_probe
    monkeypatch.setattr(isolation, "_check_probe", lambda rep, layer, work=None: seen.append((rep, work)) or
                        check(rep, layer, work))
    zygote._close_all()
    run_on_zygote("pass", isolation=iso)
    z = the_zygote(iso)
    [(rep, work)] = [(rep, work) for rep, work in seen if work is not None]
    assert work == z.base and rep["cwd"].startswith(z.base + "/run-") and rep["nets"] == ["lo"]
    monkeypatch.setattr(isolation, "_check_probe", lambda rep, layer, work=None: "a writable host mount")
    zygote._close_all()
    with pytest.raises(SandboxError, match="isolation check: a writable host mount"):
        run_python("pass", isolation=iso, launch="zygote")
    monkeypatch.setattr(zygote, "_checked", set())
    with pytest.raises(SandboxError, match="isolation check"):
        check_isolation(iso, launch="zygote")


@fresh.needs_ns
def test_a_zygote_that_cannot_start_is_a_sandbox_error(monkeypatch):
    check_isolation("namespaces")  # the fresh probe, before the plan is broken
    plan = barrier._ns_items
    monkeypatch.setattr(barrier, "_ns_items", lambda *a: plan(*a) + ["bind:" + "/nonexistent".encode().hex()])
    zygote._close_all()
    with pytest.raises(SandboxError, match="zygote failed to start.*nonexistent"):
        run_python("print(1)", isolation="namespaces", launch="zygote")


def test_launch_switch_labels_and_fallbacks():
    assert GraderSpec().launch == "zygote"
    assert from_dict(GraderSpec, {"launch": "fresh"}).launch == "fresh"
    with pytest.raises(ConfigError, match="grader.launch"):
        from_dict(GraderSpec, {"launch": "fork"}, "grader")
    with pytest.raises(ConfigError, match="fresh, zygote"):
        run_python("pass", launch="forkserver")
    for iso in ("bwrap", "namespaces"):
        if iso == "bwrap" and not fresh.RUN_BWRAP or iso == "namespaces" and not fresh.RUN_NS:
            continue
        label = check_isolation(iso, launch="zygote")
        assert label.endswith("+zygote") and label.removesuffix("+zygote") == check_isolation(iso)
        assert not run_python("pass", isolation=iso).isolation.endswith("+zygote")  # run_python's default
        assert not run_python("pass", isolation=iso, launch="zygote",
                              env={"PYTHONHASHSEED": "1"}).isolation.endswith("+zygote")  # acts at start-up
    r = run_python("pass", isolation="unsafe-rlimits", launch="zygote")  # no barrier, no zygote
    assert r.isolation.startswith("unsafe-rlimits") and "zygote" not in r.isolation


def test_grader_defaults_to_the_zygote_and_agrees_with_fresh():
    tests = [TestCase("3\n", "6\n"), TestCase("4\n", "8\n")]
    programs = ["print(int(input()) * 2)", "print(int(input()) + 3)", "import time\ntime.sleep(5)",
                "1/0", "import signal\nsignal.raise_signal(signal.SIGKILL)"]
    for code in programs:
        z = grade(code, tests, timeout_s=1.0)
        f = grade(code, tests, timeout_s=1.0, launch="fresh")
        assert z.isolation == f.isolation + "+zygote", (z.isolation, f.isolation)
        assert (z.passed, z.error_code, z.error_message, z.per_test) == \
            (f.passed, f.error_code, f.error_message, f.per_test), code
    assert [grade(c, tests, timeout_s=1.0).error_code for c in programs] == [0, -2, -3, -4, -5]


FORK_CHECK = src("""
    import os, sys
    from ssd_jax.evaluation import zygote
    from ssd_jax.evaluation.sandbox import run_python
    assert run_python("print(1)", launch="zygote").isolation.endswith("+zygote")
    [z] = zygote._zygotes.values()
    pid = os.fork()
    if pid == 0:  # the child must neither use nor stop the parent's zygote
        os._exit(0 if not zygote._zygotes and z.dead else 1)
    _, status = os.waitpid(pid, 0)
    r = run_python("print(2)", launch="zygote")
    print(os.waitstatus_to_exitcode(status), z.alive(), zygote._zygotes.get((z.layer, z.python)) is z, r.stdout.strip())
""")


def test_a_forked_child_lets_go_of_the_parents_zygote():
    """Run in a process of its own: this one may hold JAX's threads, which must never be forked."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", FORK_CHECK], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout == "0 True True 2\n", out


def test_interpreter_exit_is_a_fresh_ones():
    """The child leaves the zygote's code and ends as a fresh interpreter ends: atexit handlers, non-daemon threads,
    SystemExit messages and codes, an uncaught exception's traceback and status 1, flushed buffers."""
    r = run_on_zygote(src("""
        import atexit, sys, threading, time
        atexit.register(lambda: print("atexit ran"))
        threading.Thread(target=lambda: (time.sleep(0.2), print("thread done"))).start()
        sys.stdout.write("unflushed")
        sys.exit("bye")
    """), isolation="auto")
    assert r.returncode == 1 and r.stderr == "bye\n" and r.stdout == "unflushedthread done\natexit ran\n", r
    r = run_on_zygote("raise KeyError('k')", isolation="auto")
    assert r.returncode == 1 and "KeyError: 'k'" in r.stderr and r.stderr.startswith("Traceback"), r
    r = run_on_zygote("import random, sys\nprint(random.random(), hash('x'), sys.argv)", isolation="auto")
    s = run_on_zygote("import random, sys\nprint(random.random(), hash('x'), sys.argv)", isolation="auto")
    f = run_python("import random, sys\nprint(random.random(), hash('x'), sys.argv)", isolation="auto")
    rnd, h, argv = r.stdout.split(" ", 2)
    assert rnd != s.stdout.split()[0]  # random is reseeded in every child, as a fresh interpreter seeds it
    assert (h, argv) == tuple(f.stdout.split(" ", 2)[1:])  # hash seed 0 and argv as in a fresh interpreter
    r = run_on_zygote("import sys\nprint(sys.flags.no_site, sys.flags.no_user_site, sys.dont_write_bytecode, "
                      "sys.stdin.encoding, sys.stdout.line_buffering, sys.stderr.line_buffering)", isolation="auto")
    assert r.stdout == run_python("import sys\nprint(sys.flags.no_site, sys.flags.no_user_site, "
                                  "sys.dont_write_bytecode, sys.stdin.encoding, sys.stdout.line_buffering, "
                                  "sys.stderr.line_buffering)", isolation="auto").stdout


def test_pool_workers_each_have_a_zygote():
    with WorkerPool(2) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(run_python, "print(1)", launch="zygote")
                                                 for _ in range(6)]]
    assert all(r.stdout == "1\n" and r.isolation.endswith("+zygote") for r in results)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

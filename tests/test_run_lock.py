"""One writer per run folder (ssd_jax/run_lock.py): another job is refused at once, naming the holder; a killed
holder's lock is taken over; a run's own child stages write inside the folder it holds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ssd_jax import run_lock
from ssd_jax.errors import UserError

HOLD = """
import sys, time
from ssd_jax import run_lock
with run_lock.hold(sys.argv[1], "ssd-jax run"):
    print("held", flush=True)
    time.sleep(600)
"""


def other_job_env():
    return {k: v for k, v in os.environ.items() if k != run_lock.JOB_ENV}


@pytest.fixture
def holder(tmp_path):
    """A live `ssd-jax run`-like process of another job holding tmp_path/run."""
    folder = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=other_job_env(), stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    yield folder, p
    p.kill()
    p.wait()


def test_a_second_run_on_a_held_folder_exits_2_at_once_naming_the_holder(holder, tmp_path):
    folder, p = holder
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "x", "model": {"path": "bundled:smollm2-135m"}, "out_dir": str(folder)}))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ssd_jax.cli", "run", "--config", str(cfg)], env=other_job_env(),
                       capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2 and elapsed < 5, (r.returncode, elapsed, r.stderr[-500:])
    assert f"pid {p.pid}" in r.stderr and "ssd-jax run" in r.stderr and str(folder) in r.stderr
    assert r.stderr.count("\n") == 1  # one line, no traceback


def test_a_killed_holders_lock_is_taken_over(holder, monkeypatch, capsys):
    folder, p = holder
    monkeypatch.setenv(run_lock.JOB_ENV, "another-job")
    with pytest.raises(UserError, match=f"pid {p.pid}"):
        with run_lock.hold(folder, "ssd-jax train"):
            pass
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with run_lock.hold(folder, "ssd-jax run"):
        held = json.loads((folder / run_lock.LOCK_NAME).read_text())
        assert held["pid"] == os.getpid() and held["job"] == "another-job"
    assert f"pid {p.pid}" in capsys.readouterr().err  # said whose lock it took over


def test_enclosing_and_enclosed_folders_are_refused_to_another_job_only(holder, monkeypatch):
    folder, p = holder
    monkeypatch.setenv(run_lock.JOB_ENV, "another-job")
    with pytest.raises(UserError, match=f"pid {p.pid}"):
        with run_lock.hold(folder / "round-1" / "train", "ssd-jax train"):
            pass
    with pytest.raises(UserError, match=f"pid {p.pid}"):
        with run_lock.hold(folder.parent, "ssd-jax run"):
            pass
    held = json.loads((folder / run_lock.LOCK_NAME).read_text())
    monkeypatch.setenv(run_lock.JOB_ENV, held["job"])  # the holder's own child stage
    with run_lock.hold(folder / "round-1" / "train", "ssd-jax train"):
        pass
    with run_lock.hold(folder, "ssd-jax eval"):  # its parent's own folder: written under the parent's lock
        pass

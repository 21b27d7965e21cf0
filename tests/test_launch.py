"""The launch recipes of scripts/launch/ run as written: the SLURM script's `srun` line and the two-host script, each
as 2 local processes × 4 CPU devices joined by jax.distributed on loopback, train the same tiny model to the same
losses as one process × 8 devices."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import tiny
from tests.train.test_train_run import metrics, sft_records

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "scripts" / "launch"


@pytest.fixture(scope="module")
def train_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    model = tiny.save_tiny_chat_model("qwen3_tied", root / "model")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_records()))
    (root / "train.yaml").write_text(yaml.safe_dump({
        "model": {"path": str(model)}, "data": {"train_file": str(data), "seq_len": 128, "packing_bins": 8},
        "optim": {"peak_lr": 3e-3, "floor_lr": 3e-4, "warmup_steps": 1, "total_steps": 3},
        "global_batch": 8, "checkpoint_every": 3, "export_dtype": "float32", "progress": False,
        "tensorboard": False, "mesh": {"fsdp": -1}}))
    return root


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS",
                                                                     "SLURM_", "SSD_JAX_COORDINATOR"))}
    env.update(JAX_PLATFORMS="cpu", SSD_JAX_COMPILATION_CACHE="off",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_all(commands: list[tuple[list[str], dict]]) -> None:
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for cmd, env in commands]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def _losses(out: Path) -> list[float]:
    return [m["loss"] for m in metrics(out)]


@pytest.fixture(scope="module")
def reference(train_config):
    out = train_config / "one"
    _run_all([(["ssd-jax", "train", "--config", str(train_config / "train.yaml"), "--set", f"out_dir={out}"],
               _env(8))])
    return _losses(out)


def test_the_slurm_script_runs_its_srun_line_as_two_processes(train_config, reference):
    text = (LAUNCH / "slurm.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert (directives["nodes"], directives["ntasks-per-node"], directives["gpus-per-node"]) == ("2", "1", "8")
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    task = shlex.split(srun)[2:]  # after `srun --kill-on-bad-exit=1`: bash scripts/launch/process.sh "$@"
    assert task == ["bash", "scripts/launch/process.sh", "$@"]
    out = train_config / "slurm"
    command = ["ssd-jax", "train", "--config", str(train_config / "train.yaml"), "--set", f"out_dir={out}"]
    coordinator = f"127.0.0.1:{_port()}"  # what the script derives from the job's first node
    _run_all([(task[:2] + command, _env(4, SLURM_NTASKS="2", SLURM_PROCID=str(rank), SSD_JAX_COORDINATOR=coordinator))
              for rank in range(2)])
    assert _losses(out) == pytest.approx(reference, rel=1e-5)


def test_the_two_host_script_runs_as_two_processes(train_config, reference):
    out = train_config / "two-hosts"
    command = ["ssd-jax", "train", "--config", str(train_config / "train.yaml"), "--set", f"out_dir={out}"]
    coordinator = f"127.0.0.1:{_port()}"  # host A's address
    _run_all([(["bash", str(LAUNCH / "two_hosts.sh"), str(rank), *command], _env(4, SSD_JAX_COORDINATOR=coordinator))
              for rank in range(2)])
    assert _losses(out) == pytest.approx(reference, rel=1e-5)


def test_process_sh_refuses_a_missing_coordinator():
    p = subprocess.run(["bash", str(LAUNCH / "process.sh"), "true"], env=_env(1), capture_output=True, text=True)
    assert p.returncode != 0 and "set SSD_JAX_COORDINATOR=host:port of process 0" in p.stderr

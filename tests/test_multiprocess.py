"""A 2-process × 4-device job on localhost (jax.distributed, gloo CPU collectives) against 1 process × 8 devices:
the same 20 SFT steps (killed with SIGKILL midway and resumed), the same export, and a sampled problem set split
across both processes with nothing lost or duplicated."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from ssd_jax.models.hf import Checkpoint
from tests import tiny
from tests.train.test_train_run import finished_steps, metrics, sft_records

TOTAL = 20
PROBLEMS, N = 7, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    model = tiny.save_tiny_chat_model("qwen3_tied", root / "model")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_records()))
    train = {
        "model": {"path": str(model)},
        "data": {"train_file": str(data), "seq_len": 128, "packing_bins": 8},
        "optim": {"peak_lr": 3e-3, "floor_lr": 3e-4, "warmup_steps": 3, "total_steps": TOTAL},
        "global_batch": 8, "micro_batch": 8, "checkpoint_every": 5, "keep_checkpoints": 100,
        "export_dtype": "float32", "progress": False, "tensorboard": False, "mesh": {"fsdp": -1},
    }
    (root / "train.yaml").write_text(yaml.safe_dump(train))
    probs = root / "problems.jsonl"
    probs.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Print {i} squared."}) + "\n"
                             for i in range(PROBLEMS)))
    sample = {"model": {"path": str(model)}, "problems": {"kind": "jsonl", "path": str(probs)},
              "decode": {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "max_tokens": 6, "n": N, "seed": 3},
              "batch_size": 2, "max_prompt_len": tiny.CHAT_PROMPT_LEN, "progress": False, "mesh": {"fsdp": -1}}
    (root / "sample.yaml").write_text(yaml.safe_dump(sample))
    return root


def launch(args: list[str], processes: int) -> list[subprocess.Popen]:
    """`ssd-jax ARGS` as one 8-device process, or as `processes` processes of 8/processes devices each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", SSD_JAX_COMPILATION_CACHE="off",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                       JAX_PROCESS_ID=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-m", "ssd_jax.cli", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    return procs


def finish(procs) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def train_args(root, out):
    return ["train", "--config", str(root / "train.yaml"), "--set", f"out_dir={out}"]


@pytest.fixture(scope="module")
def one_process(setup):
    finish(launch(train_args(setup, setup / "one"), 1))
    return setup / "one"


@pytest.mark.slow
def test_two_processes_train_like_one_killed_and_resumed(setup, one_process):
    run = setup / "two"
    procs = launch(train_args(setup, run), 2)
    deadline = time.time() + 600
    while time.time() < deadline and not [s for s in finished_steps(run) if s >= 10]:
        time.sleep(0.01)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (run / "train_summary.json").exists(), "the job finished before it could be killed"
    killed_at = max(finished_steps(run))
    assert 10 <= killed_at < TOTAL
    outs = finish(launch(train_args(setup, run), 2))
    assert f"resumed from step {killed_at}" in outs[0]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["devices"] == 8 and summary["resumed_from"] == killed_at

    a, b = metrics(one_process), metrics(run)
    assert [r["step"] for r in b] == list(range(1, TOTAL + 1))  # one writer: each step logged once
    for ra, rb in zip(a, b):
        assert ra["batch_crc32"] == rb["batch_crc32"], ra["step"]
        assert abs(ra["loss"] - rb["loss"]) <= 1e-5 * ra["loss"], (ra["step"], ra["loss"], rb["loss"])
    assert a[-1]["loss"] < 0.9 * a[0]["loss"]

    # The export: the same HF directory (files, config, every tensor).
    ea, eb = one_process / "export", run / "export"
    assert sorted(p.name for p in ea.iterdir()) == sorted(p.name for p in eb.iterdir())
    assert json.loads((ea / "config.json").read_text()) == json.loads((eb / "config.json").read_text())
    ca, cb = Checkpoint(ea), Checkpoint(eb)
    assert ca.keys() == cb.keys()
    for k in ca.keys():
        x, y = ca.get(k), cb.get(k)
        assert np.abs(x - y).max() <= 1e-5 * max(np.abs(x).max(), 1e-6), k
    assert not list(run.glob(".*tmp*")) and not list(run.parent.glob(".export*"))

    # `ssd-jax export` of an intermediate checkpoint on 2 processes (sharded over all 8 devices, one tensor at a
    # time to the host, process 0 writes) equals the same export by one process.
    outs = {}
    for procs in (1, 2):
        outs[procs] = run / f"export-10-by-{procs}"
        finish(launch(["export", "--run", str(run), "--step", "10", "--out", str(outs[procs]), "--dtype", "float32"],
                      procs))
    c1, c2 = Checkpoint(outs[1]), Checkpoint(outs[2])
    assert c1.keys() == c2.keys() and all(np.array_equal(c1.get(k), c2.get(k)) for k in c1.keys())


@pytest.mark.slow
def test_two_processes_sample_every_problem_once(setup):
    one, two = setup / "s1" / "samples.jsonl", setup / "s2" / "samples.jsonl"
    finish(launch(["sample", "--config", str(setup / "sample.yaml"), "--set", f"out={one}"], 1))
    finish(launch(["sample", "--config", str(setup / "sample.yaml"), "--set", f"out={two}"], 2))
    recs = [json.loads(line) for line in two.read_text().splitlines()]
    keys = [(r["problem_id"], r["sample_idx"]) for r in recs]
    assert len(keys) == len(set(keys)) == PROBLEMS * N
    assert keys == [(f"p{i}", j) for i in range(PROBLEMS) for j in range(N)]  # merged in problem order
    ref = {(r["problem_id"], r["sample_idx"]): r for r in map(json.loads, one.read_text().splitlines())}
    assert set(ref) == set(keys)
    # Real draws: every chat prompt fits, and each sample ran to its cap.
    assert {(r["finish_reason"], r["n_tokens"]) for r in [*recs, *ref.values()]} == {("length", 6)}
    # Per-request seeds: a sample does not depend on which process drew it.
    same = sum(ref[k]["response"] == r["response"] for k, r in zip(keys, recs))
    assert same >= 0.8 * len(keys), same
    assert not list(two.parent.glob("*.part-*"))
    manifest = json.loads(two.with_suffix(".manifest.json").read_text())
    assert manifest["samples"] == PROBLEMS * N


@pytest.mark.slow
def test_two_processes_evaluate_one_graded_file(setup):
    """`ssd-jax eval` on 2 processes: both sample, process 0 grades once, both report the same metrics."""
    cfg = setup / "eval.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": str(setup / "model")}, "problems": {"kind": "humaneval", "limit": 3},
        "decode": {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "max_tokens": 6, "n": 2}, "ks": [1, 2],
        "batch_size": 2, "max_prompt_len": 512, "progress": False, "mesh": {"fsdp": -1},
        "out_dir": str(setup / "eval")}))
    outs = finish(launch(["eval", "--config", str(cfg)], 2))
    graded = [json.loads(line) for line in (setup / "eval" / "graded.jsonl").read_text().splitlines()]
    assert sorted((g["problem_id"], g["sample_idx"]) for g in graded) == \
        sorted((f"HumanEval/{i}", j) for i in range(3) for j in range(2))
    assert outs[0].splitlines()[-1] == outs[1].splitlines()[-1]  # the same pass@k line from both processes


BARRIER_PROBE = """
import os, sys, time
from ssd_jax import distributed
distributed.initialize()
rank = distributed.process_index()
if rank == 1:
    time.sleep(1.5)  # process 0 must wait for this one at each barrier
t0 = time.monotonic()
distributed.barrier("stage-done")
distributed.barrier("stage-done")  # the same name again (a stage per round) is a new barrier
from jax._src import xla_bridge
print(rank, round(time.monotonic() - t0, 2), xla_bridge.backends_are_initialized(), flush=True)
"""


def test_barriers_wait_for_every_process_and_start_no_backend():
    """distributed.barrier goes through the job's coordination service: it waits for the slowest process and
    starts no JAX backend (a vLLM stage's process must not claim the GPU memory JAX preallocates)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", BARRIER_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                                  JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank)))
             for rank in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    rows = {int(r): (float(t), b) for r, t, b in (o.split() for o, _ in outs)}
    assert rows[0][0] >= 1.0 and rows[1][0] < 1.0  # process 0 waited for process 1
    assert rows[0][1] == rows[1][1] == "False"  # no backend started by joining the job and passing barriers


@pytest.mark.slow
def test_a_whole_run_with_child_stages_on_two_processes_matches_one(setup, tmp_path):
    """`ssd-jax run` with every stage in child processes (stage_processes: always, what `auto` picks for vLLM) as
    2 processes × 4 devices: the parents coordinate in a job of their own and each stage's children form theirs.
    Per-request seeds, so both layouts draw the same samples: the same samples, weights and metrics as 1 × 8."""
    from tests.data.test_problems import lcb_row

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Print {i} plus one."}) + "\n" for i in range(6)))
    lcb = tmp_path / "lcb"
    lcb.mkdir()
    (lcb / "test.jsonl").write_text("".join(json.dumps(lcb_row(q, "2025-03-01", "[]")) + "\n" for q in ("e1", "e2")))
    small = {"batch_size": 2, "max_prompt_len": tiny.CHAT_PROMPT_LEN, "progress": False}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "mp", "rounds": 1, "model": {"path": str(setup / "model")}, "mesh": {"fsdp": -1},
        "stage_processes": "always",
        "sample": {"problems": {"kind": "jsonl", "path": str(pool)},
                   "decode": {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "max_tokens": 24, "seed": 3}, **small},
        "filter": {"preset": "released"},
        "train": {"data": {"seq_len": 1024, "packing_bins": 4}, "optim": {"warmup_steps": 1, "total_steps": 2},
                  "global_batch": 8, "micro_batch": 8, "export_dtype": "float32", "progress": False,
                  "tensorboard": False},
        "eval": {"problems": {"kind": "lcb", "path": str(lcb)}, "decode": {"preset": "greedy", "n": 1,
                 "max_tokens": 6}, "ks": [1], **small}}))
    runs = {}
    for procs in (1, 2):
        runs[procs] = tmp_path / f"run-{procs}"
        finish(launch(["run", "--config", str(cfg), "--set", f"out_dir={runs[procs]}"], procs))
    one, two = runs[1], runs[2]
    m1, m2 = (json.loads((r / "manifest.json").read_text())["stages"] for r in (one, two))
    assert all(v["status"] == "done" for v in m2.values()) and set(m1) == set(m2)
    assert (one / "round-1" / "samples.jsonl").read_text() == (two / "round-1" / "samples.jsonl").read_text()
    assert (one / "round-1" / "filtered.jsonl").read_text() == (two / "round-1" / "filtered.jsonl").read_text()
    ca, cb = Checkpoint(one / "round-1" / "train" / "export"), Checkpoint(two / "round-1" / "train" / "export")
    for k in ca.keys():
        x, y = ca.get(k), cb.get(k)
        assert np.abs(x - y).max() <= 1e-5 * max(np.abs(x).max(), 1e-6), k
    for ev in ("base-eval", "round-1/eval"):
        a, b = (json.loads((r / ev / "metrics.json").read_text())["metrics"]["overall"] for r in (one, two))
        assert a == b, ev
    assert m2["round-1/analyze"]["status"] == "done"

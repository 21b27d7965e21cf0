"""The same run, interrupted or not: `ssd-jax run` (tiny model; base eval, sample, filter, train, eval, fork/lock
analysis) killed by SIGKILL at seven named points over its stages (ssd_jax/faults.py: placed, not timed) and
rerun after each kill ends with the outputs of a run that was never interrupted."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from ssd_jax import faults, run_lock
from tests import tiny
from tests.data.test_problems import lcb_row

# In pipeline order; each kill lands in the stage the rerun before it had reached.
KILLS = ["sample.appended@1",  # base-eval's sampling, after its first batch
         "eval.graded@1",  # base-eval's grading, after the first graded records
         "sample.appended@1",  # round 1's sampling
         "filter.verdicts",  # the filter, between its two outputs
         "train.step@2",  # step 2 updated the model, its checkpoint not written
         "checkpoint.saving@1",  # step 2's checkpoint write started, not finished
         "analysis.scored@1"]  # the fork/lock analysis


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos")
    model = tiny.save_tiny_chat_model("qwen3_tied", root / "model")
    # Every tenth token id ends a response: lengths vary, so completions arrive out of order (as a real model's do)
    # and the finished files' order is the stages' doing, not the sampler's.
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": list(range(2, 384, 10))}))
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Print {i} plus one."}) + "\n" for i in range(8)))
    lcb = root / "lcb"
    lcb.mkdir()
    (lcb / "test.jsonl").write_text("".join(json.dumps(lcb_row(q, "2025-03-01", "[]", difficulty=d)) + "\n"
                                            for q, d in [("e1", "easy"), ("m1", "medium"), ("h1", "hard")]))
    small = {"batch_size": 4, "max_prompt_len": 1024, "progress": False}
    cfg = {
        "name": "chaos", "rounds": 1, "model": {"path": str(model)}, "mesh": {"fsdp": 2},
        "sample": {"problems": {"kind": "jsonl", "path": str(pool)},
                   "decode": {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "max_tokens": 24}, **small},
        "filter": {"preset": "released"},
        "train": {"data": {"seq_len": 1024, "packing_bins": 4}, "global_batch": 2, "checkpoint_every": 1,
                  "optim": {"warmup_steps": 1, "total_steps": 3, "peak_lr": 1e-3, "floor_lr": 1e-4},
                  "async_checkpointing": True, "export_dtype": "float32", "progress": False,
                  "tensorboard": False},
        "eval": {"problems": {"kind": "lcb", "path": str(lcb)}, "grader": {"workers": 1},
                 "decode": {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "n": 3, "max_tokens": 16},
                 "ks": [1, 2], **small},
        "analysis": {"max_responses": 8},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def run(cfg, out, fault=None):
    """`ssd-jax run` in its own session (a fault kills its process group), as its own job."""
    env = {k: v for k, v in os.environ.items() if k not in (run_lock.JOB_ENV, faults.ENV)}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               SSD_JAX_COMPILATION_CACHE=str(out.parent / "jax-cache"), **({faults.ENV: fault} if fault else {}))
    p = subprocess.run([sys.executable, "-m", "ssd_jax.cli", "run", "--config", str(cfg), "--set",
                        f"out_dir={out}"], env=env, capture_output=True, text=True, start_new_session=True,
                       timeout=900)
    return p.returncode, p.stderr


def jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_run_killed_at_every_stage_ends_like_an_uninterrupted_one(config):
    root, cfg = config
    ref, out = root / "ref", root / "chaos"
    code, err = run(cfg, ref)
    if code != 0:
        pytest.fail(f"the uninterrupted run exited {code}:\n{err[-4000:]}")
    lengths = {r["n_tokens"] for r in jsonl(ref / "round-1" / "samples.jsonl")}
    assert len(lengths) > 2, lengths  # responses of many lengths: completion order is not submission order
    stages_reached = []
    for fault in KILLS:
        code, err = run(cfg, out, fault)
        if code != -9:  # killed there, not finished or failed before it
            pytest.fail(f"the run with {faults.ENV}={fault} exited {code}, not by the kill:\n{err[-4000:]}")
        man = json.loads((out / "manifest.json").read_text())
        stages_reached.append(next(k for k, v in reversed(man["stages"].items()) if v["status"] == "running"))
        if fault.startswith("checkpoint.saving"):  # the step's write was cut short: its temporary folder is left
            assert list((out / "round-1" / "train" / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    assert stages_reached == ["base-eval", "base-eval", "round-1/sample", "round-1/filter", "round-1/train",
                              "round-1/train", "round-1/analyze"]
    code, err = run(cfg, out)
    if code != 0:
        pytest.fail(f"the last rerun exited {code}:\n{err[-4000:]}")

    for name in ("filtered.jsonl", "verdicts.jsonl"):
        assert (out / "round-1" / name).read_bytes() == (ref / "round-1" / name).read_bytes(), name
    for samples in ("base-eval/samples.jsonl", "round-1/samples.jsonl", "round-1/eval/samples.jsonl"):
        got, want = jsonl(out / samples), jsonl(ref / samples)
        assert [(r["problem_id"], r["sample_idx"], r["response"]) for r in got] == \
               [(r["problem_id"], r["sample_idx"], r["response"]) for r in want], samples
    for graded in ("base-eval/graded.jsonl", "round-1/eval/graded.jsonl"):
        drop = ("isolation",)
        assert [{k: v for k, v in r.items() if k not in drop} for r in jsonl(out / graded)] == \
               [{k: v for k, v in r.items() if k not in drop} for r in jsonl(ref / graded)], graded
    stats = [json.loads((d / "round-1" / "filter_stats.json").read_text()) for d in (out, ref)]
    assert [(s["kept"], s["total"], s["by_reason"]) for s in stats][0] == \
           [(s["kept"], s["total"], s["by_reason"]) for s in stats][1]
    losses = [{r["step"]: r["loss"] for r in jsonl(d / "round-1" / "train" / "metrics.jsonl")} for d in (out, ref)]
    assert losses[0] == losses[1] and sorted(losses[0]) == [1, 2, 3]
    for metrics in ("base-eval/metrics.json", "round-1/eval/metrics.json"):
        got, want = (json.loads((d / metrics).read_text())["metrics"] for d in (out, ref))
        assert got == want, metrics
    a, b = ({k: v for f in sorted((d / "round-1" / "train" / "export").glob("*.safetensors"))
             for k, v in load_file(f).items()} for d in (out, ref))
    assert a and a.keys() == b.keys()
    for k in a:
        assert np.max(np.abs(a[k] - b[k])) <= 1e-6 * max(np.max(np.abs(b[k])), 1e-30), k
    fl = [json.loads((d / "round-1" / "analysis" / "forklock.json").read_text())["labels"] for d in (out, ref)]
    assert fl[0] == fl[1]

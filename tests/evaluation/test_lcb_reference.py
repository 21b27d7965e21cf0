"""Differential test: our lcb_compat grader against LiveCodeBench's own testing_util, case by case, always.

The reference is PyPI's nvidia-livecodebench 26.3 (installed --no-deps by scripts/_setup.sh), run as LiveCodeBench
runs it (`lcb_reference.run_packaged`: evaluate_generations_by_problem → check_correctness → run_test). It ships
LiveCodeBench's testing_util of 2025-01-17 (commit 15808c7). LiveCodeBench changed its stdin mock on 2025-05-23
(16de2a1: `sys.stdin` became an object with `.buffer`, whose read() returns the whole input every time and whose
readlines() drops the newlines, and which cannot be iterated); nothing else in testing_util or
compute_code_generation_metrics has changed since (checked by diffing the files up to HEAD 28fef95).

Our lcb_compat follows upstream LiveCodeBench by default (`lcb_version: upstream`): it is the benchmark's own
repository, what its leaderboard runs, and the mock ml-ssd's evaluator was copied from; the PyPI package is a
redistribution of an older snapshot. `lcb_version: nvidia-26.3` reproduces the package. So:
- with `nvidia-26.3`, every case must agree with the package exactly (verdict, error code and message, per-test);
- with `upstream`, every case must agree with it too except the stdin cases in UPSTREAM, whose verdicts come from
  running upstream's testing_util (LiveCodeBench 28fef95, lcb_runner/evaluation/testing_util.py) the same way.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from ssd_jax.evaluation.grader import TestCase, grade

from .lcb_reference import run_packaged

S = None  # stdin problem
CASES = [
    ("print(input())", [("abc\n", "abc\n")], S),
    ("x=input()\nprint(0.50000)", [("1\n", "0.5")], S),
    ("print('0.3333333')", [("", "0.333333333")], S),
    ("print('yes')", [("", "Yes")], S),
    ("print('a  ')\nprint()\nprint()", [("", "a\n")], S),
    ("print('a')\nprint()\nprint('b')", [("", "a\nb")], S),
    ("print(1)\nexit()\nprint(2)", [("", "1")], S),
    ("import sys\nprint(1)\nsys.exit(0)", [("", "1")], S),
    ("quit()", [("", "")], S),
    ("import sys\nd=sys.stdin.buffer.read().split()\nprint(sum(map(int,d)))", [("1 2\n3\n", "6")], S),
    ("import sys\nprint(sys.stdin.buffer.readline().decode().strip())\n"
     "print(sys.stdin.buffer.readline().decode().strip())", [("1\n2\n", "1\n2")], S),
    ("import sys\nfor line in sys.stdin: print(line)", [("1\n", "1")], S),
    ("import sys\nprint(sys.stdin.readlines())", [("1\n2\n", "['1', '2', '']")], S),
    ("import sys\ninput = sys.stdin.readline\nprint(repr(input()))", [("ab\n", "'ab\\n'")], S),
    ("from sys import stdin\nprint(repr(stdin.readline()))", [("ab\ncd\n", "'ab'")], S),
    ("print(repr(stdin.read()))", [("ab\n", "'ab\\n'")], S),
    ("print(open(0).read().split())", [("1 2\n", "['1', '2']")], S),
    ("print(len(open(0).readlines()))", [("1\n2\n", "2")], S),
    ("import builtins\nprint(builtins.open(0).read().split())", [("1 2\n", "['1', '2']")], S),
    ("while True: pass", [("", "1")], S),
    ("try:\n    while True: pass\nexcept:\n    print(1)", [("", "1")], S),
    ("print(1/0)", [("", "1")], S),
    ("def f(:", [("", "1")], S),
    ("import os\nos._exit(0)", [("", "1")], S),
    ("n=int(input())\nprint(n*2)", [("2\n", "4"), ("3\n", "7"), ("4\n", "8")], S),
    ("def main():\n    print(int(input())+1)\nif __name__ == '__main__':\n    main()", [("1\n", "2")], S),
    ("def main():\n    print(int(input())+1)\nif __name__ == \"__main__\":\n    main()\nx = 1", [("1\n", "2")], S),
    ("x = 5\ndef g():\n    global x\n    return x\nprint(g())", [("", "5")], S),
    ("import os\nprint(os.getcwd())", [("", "/")], S),
    ("import sys\nsys.stdout.write('hi\\n')", [("", "hi")], S),
    ("from sys import stdout\nstdout.write('hi\\n')", [("", "hi")], S),
    ("import sys\nsys.stdout.buffer.write(b'hi\\n')", [("", "hi")], S),
    ("import sys\nprint(1)\nsys.stdout.close()", [("", "1")], S),
    ("print(2**20000 % 10)", [("", "6")], S),
    ("def f(n): return f(n+1)\nf(0)", [("", "1")], S),
    ("def f(n): return 0 if n==0 else 1+f(n-1)\nprint(f(30000))", [("", "30000")], S),
    ("import numpy as np\nprint(np.int64(3))", [("", "3")], S),
    ("print(pow(2, 10, 1000), datetime.date(2020,1,1), Counter('aab')['a'])", [("", "24 2020-01-01 2")], S),
    ("print('1e3')", [("", "1000")], S),
    ("print('NaN')", [("", "nan")], S),
    ("print('1 2')", [("", "1  2")], S),
    ("import resource", [("", "")], S),
    ("import subprocess\nsubprocess.run(['ls'])", [("", "")], S),
    ("class Solution:\n    pass\nprint(1)", [("", "1")], S),
    ("print(1)", [("", "1"), ("", "1")], S),
    ("", [("", "")], S),
    ("import sys", [("", "")], S),
    ("class Solution:\n    def f(self, a, b):\n        return tuple(a+[b])", [("[1,2]\n3", "[1, 2, 3]")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return [tuple(a)]", [("[1,2]\n3", "[[1, 2]]")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return 0.1+0.2", [("1\n2", "0.3")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return 1.0", [("1\n2", "1")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return True", [("1\n2", "1")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        while True: pass", [("1\n2", "1")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return a/0", [("1\n2", "1")], "f"),
    ("class Solution:\n    def g(self, a, b):\n        return 1", [("1\n2", "1")], "f"),
    ("def f(a, b):\n    return a+b", [("1\n2", "3")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return a+b", [("1\n2", "3"), ("1\n2", "4"), ("1\n2", "3")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        exit()", [("1\n2", "3")], "f"),
    ("class Solution:\n    def f(self, a: List[int], b):\n        return sorted(a)", [("[3,1]\n2", "[1, 3]")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return a", [("[1,\n2", "1")], "f"),
    ("while True: pass\nclass Solution:\n    def f(self, a, b):\n        return a", [("1\n2", "1")], "f"),
    ("import numpy as np\nclass Solution:\n    def f(self, a, b):\n        return np.array([a, b])",
     [("1\n2", "[1, 2]")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        import os; return os.getcwd()", [("1\n2", "1")], "f"),
    ("import sys\nprint(next(sys.stdin).strip())", [("7\n8\n", "7")], S),
    ("import sys\na = sys.stdin.read()\nb = sys.stdin.read()\nprint(a == b)", [("x\n", "True")], S),
    ("import sys\nprint(sys.stdin.readline().strip())\nprint(len(sys.stdin.read()))", [("ab\ncd\n", "ab\n6")], S),
    ("print(input())\nprint(input())", [("1\n", "1\n1")], S),
    ("print(lcm(4, 6), isqrt(10), comb(4, 2))", [("", "12 3 6")], S),
    ("print(help)", [("", "None")], S),
    ("import time\ntime.sleep(1.5)\nprint(1)", [("", "1")], S),
    ("print(0.1 + 0.2)", [("", "0.3")], S),
    ("print(np.int64(3))", [("", "3")], S),
    ("class Solution:\n    def f(self, a, b):\n        return {'x': a}", [("1\n2", '{"x": 1}')], "f"),
    ("class Solution:\n    def f(self, a):\n        return a.upper()", [('"abc"', '"ABC"')], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return None", [("1\n2", "null")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        return a + b", [("1\n\n2", "3")], "f"),
    ("class Solution:\n    def f(self, a, b):\n        import sys; sys.exit(0)", [("1\n2", "3")], "f"),
]


# Where upstream LiveCodeBench (28fef95) and the packaged one (15808c7) disagree: upstream's verdict, observed by
# running lcb_runner/evaluation/testing_util.py at 28fef95 through the same check_correctness path, timeout 1 s.
UPSTREAM = {
    'import sys\nd=sys.stdin.buffer.read().split()\nprint(sum(map(int,d)))':
        [True, 0, 'passed', [True]],
    ('import sys\nprint(sys.stdin.buffer.readline().decode().strip())\n'
     'print(sys.stdin.buffer.readline().decode().strip())'):
        [False, -2, 'Wrong answer at output_line_idx=1: 1 != 2', [-2]],
    'import sys\nfor line in sys.stdin: print(line)':
        [False, -4, 'Runtime Error', [-4]],
    'import sys\nprint(sys.stdin.readlines())':
        [True, 0, 'passed', [True]],
    'import sys\nprint(next(sys.stdin).strip())':
        [False, -4, 'Runtime Error', [-4]],
    'import sys\na = sys.stdin.read()\nb = sys.stdin.read()\nprint(a == b)':
        [True, 0, 'passed', [True]],
    'import sys\nprint(sys.stdin.readline().strip())\nprint(len(sys.stdin.read()))':
        [True, 0, 'passed', [True]],
}


def ours(case, lcb_version: str) -> list:
    code, tests, fn = case
    kind = "functional" if fn else "stdin"
    r = grade(code, [TestCase(i, o, kind) for i, o in tests], mode="lcb_compat", timeout_s=1.0, func_name=fn,
              lcb_version=lcb_version)
    return [r.passed, r.error_code, r.error_message, r.per_test]


def grade_all(lcb_version: str) -> list[list]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda c: ours(c, lcb_version), CASES))


@pytest.fixture(scope="module")
def packaged() -> list[list]:
    return run_packaged([[code, [list(t) for t in tests], fn] for code, tests, fn in CASES], timeout=1)


def test_enough_cases():
    assert len(CASES) >= 60
    assert sum(fn is None for _, _, fn in CASES) >= 40 and sum(fn is not None for _, _, fn in CASES) >= 15
    assert set(UPSTREAM) <= {code for code, _, _ in CASES}


def test_lcb_compat_as_packaged_agrees_with_the_packaged_testing_util(packaged):
    diffs = [f"{case[0]!r}\n  lcb: {ref}\n  our: {got}"
             for case, ref, got in zip(CASES, packaged, grade_all("nvidia-26.3")) if got != ref]
    assert not diffs, "\n".join(diffs)


def test_lcb_compat_upstream_differs_from_the_package_exactly_on_the_stdin_mock(packaged):
    diffs = []
    for case, ref, got in zip(CASES, packaged, grade_all("upstream")):
        want = UPSTREAM.get(case[0], ref)
        if got != want:
            diffs.append(f"{case[0]!r}\n  want: {want}\n  our:  {got}")
        if case[0] in UPSTREAM and want == ref:
            diffs.append(f"{case[0]!r}: pinned as a difference, but upstream and the package agree")
    assert not diffs, "\n".join(diffs)

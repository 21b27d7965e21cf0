"""Differential test: our lcb_compat grader against LiveCodeBench's own testing_util.py, case by case.

Opt-in, because LiveCodeBench is not a dependency: point SSD_LCB_TESTING_UTIL at a checkout's
`lcb_runner/evaluation/testing_util.py` (it needs only numpy). Their `run_test` runs in a forked child per case, as
`compute_code_generation_metrics.check_correctness` does, with its fallback for a child that never reports
(results [-2], error_code -5, see grader.py). Last run: all cases agree with LiveCodeBench commit 28fef95.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ssd_jax.evaluation.grader import TestCase, grade

REF = os.environ.get("SSD_LCB_TESTING_UTIL")
pytestmark = pytest.mark.skipif(not REF or not os.path.isfile(REF),
                                reason="set SSD_LCB_TESTING_UTIL=<LiveCodeBench>/lcb_runner/evaluation/testing_util.py")

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
]

REFERENCE_RUNNER = textwrap.dedent("""
    import json, multiprocessing as mp, sys
    import numpy as np
    sys.set_int_max_str_digits(50000)  # as compute_code_generation_metrics does at import
    sys.path.insert(0, sys.argv[1])
    import testing_util

    def child(sample, code, q):
        q.put(testing_util.run_test(sample, test=code, timeout=1))

    out = []
    ctx = mp.get_context("fork")
    for code, tests, fn in json.load(sys.stdin):
        sample = {"input_output": json.dumps({"inputs": [t[0] for t in tests], "outputs": [t[1] for t in tests],
                                               "fn_name": fn})}
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(sample, code, q))
        p.start()
        try:
            res, meta = q.get(timeout=(1 + 1) * len(tests) + 5)
        except Exception:
            res, meta = [-2], {"error_code": -5, "error_message": "TestRunnerError"}
        p.join(1)
        p.kill()
        res = [r.item(0) if isinstance(r, np.ndarray) else r for r in res]
        res = [bool(r) if isinstance(r, np.bool_) else r for r in res]
        passed = bool(np.all(np.array(res) > 0))
        out.append([passed, 0 if passed else meta["error_code"], "passed" if passed else meta["error_message"], res])
    print(json.dumps(out))
""")


def test_lcb_compat_agrees_with_livecodebench_testing_util():
    proc = subprocess.run([sys.executable, "-c", REFERENCE_RUNNER, os.path.dirname(REF)], input=json.dumps(CASES),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    diffs = []
    for (code, tests, fn), ref in zip(CASES, reference):
        kind = "functional" if fn else "stdin"
        r = grade(code, [TestCase(i, o, kind) for i, o in tests], mode="lcb_compat", timeout_s=1.0, func_name=fn)
        ours = [r.passed, r.error_code, r.error_message, r.per_test]
        if ours != ref:
            diffs.append(f"{code!r}\n  lcb: {ref}\n  our: {ours}")
    assert not diffs, "\n".join(diffs)

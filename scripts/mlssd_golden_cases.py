"""The golden cases for apple/ml-ssd's evaluator: model responses (fences included) and LCB-style problems.

`scripts/mlssd_golden.py` runs ml-ssd's own evaluator on these and writes what it decided to
`tests/evaluation/data/mlssd_golden.jsonl`; the tests read only that file. Each case says what it exercises. All
use a 1 s timeout, so the global deadline is (1+1)·tests+5 s; "slow-within-budget" needs it.
"""

from __future__ import annotations


def fence(code: str, tag: str = "python") -> str:
    return f"```{tag}\n{code}\n```"


def _tests(pairs, kind: str) -> list[dict]:
    return [{"input": i, "output": o, "testtype": kind} for i, o in pairs]


def stdin(private, public=None) -> dict:
    """A stdin problem; its public tests default to its first private one (LCB problems always have some)."""
    return {"public_tests": _tests(public if public is not None else private[:1], "stdin"),
            "private_tests": _tests(private, "stdin")}


def functional(private, func_name: str = "f", public=None) -> dict:
    return {"public_tests": _tests(public if public is not None else private[:1], "functional"),
            "private_tests": _tests(private, "functional"), "func_name": func_name,
            "starter_code": f"class Solution:\n    def {func_name}(self, *args):\n        "}


def case(id_: str, exercises: str, program: str, problem: dict, timeout_s: float = 1) -> dict:
    return {"id": id_, "exercises": exercises, "program": program, "problem": problem, "timeout_s": timeout_s}


ECHO = "print(input())"
ECHO_TESTS = [("abc\n", "abc")]
DOUBLE = [("2\n", "4"), ("3\n", "6"), ("10\n", "20")]
SOL = "class Solution:\n    def f(self, {args}):\n        {body}"


def sol(body: str, args: str = "a, b") -> str:
    return fence(SOL.format(args=args, body=body))


EXTRACTION = [
    case("no-fence", "no fenced block: failed without running", "print(input())", stdin(ECHO_TESTS)),
    case("python3-tag", "```python3 opens no block (the tag must be letters then a newline)",
         fence(ECHO, "python3"), stdin(ECHO_TESTS)),
    case("python3-then-python", "after a ```python3 block, its closing fence opens a 'block' of the prose",
         fence("print(1)", "python3") + "\nThis prints the input.\n" + fence(ECHO), stdin(ECHO_TESTS)),
    case("truncated-last-block", "a final block cut off by the token limit: the previous complete block is graded",
         fence(ECHO) + "\nLet me refine.\n```python\nprint(input().upper(", stdin(ECHO_TESTS)),
    case("two-blocks-last-right", "two complete blocks: the last is graded",
         fence("print('x')") + "\nBetter:\n" + fence(ECHO), stdin(ECHO_TESTS)),
    case("two-blocks-last-wrong", "two complete blocks: the last is graded",
         fence(ECHO) + "\nOr:\n" + fence("print('x')"), stdin(ECHO_TESTS)),
    case("empty-block", "an empty block is graded as the empty program", "```\n```", stdin(ECHO_TESTS)),
    case("capital-tag", "a tag of letters in any case opens a block", fence(ECHO, "Python"), stdin(ECHO_TESTS)),
    case("space-before-tag", "``` python (a space) opens no block", fence(ECHO, " python"), stdin(ECHO_TESTS)),
    case("code-tag-cut", "post_process_code cuts at </code>",
         fence(ECHO + "\n</code>\nthis is not code"), stdin(ECHO_TESTS)),
    case("code-tag-dropped", "post_process_code drops <code>", fence("<code>" + ECHO), stdin(ECHO_TESTS)),
    case("closing-fence-inline", "a closing fence right after the code on the same line", "```python\n" + ECHO + "```",
         stdin(ECHO_TESTS)),
    case("prose-mentions-fence", "prose after the block mentioning ``` inline (LCB's rule loses the block)",
         fence(ECHO) + "\nWrap code in ``` fences.\n", stdin(ECHO_TESTS)),
]

STDIN = [
    case("pass-three-tests", "a correct program on three private tests", fence("print(int(input()) * 2)"),
         stdin(DOUBLE)),
    case("wa-second-test", "wrong on the 2nd test: stops there, the rest count as failed",
         fence("n = int(input())\nprint(4 if n == 2 else n)"), stdin(DOUBLE)),
    case("private-only-pass", "fails the public test, passes every private one: private tests only",
         fence("print(int(input()) * 2)"), stdin(DOUBLE, public=[("2\n", "5")])),
    case("private-only-fail", "passes the public test, fails a private one",
         fence("n = int(input())\nprint(5 if n == 2 else n * 2)"), stdin(DOUBLE, public=[("2\n", "5")])),
    case("iterate-stdin", "for line in sys.stdin (ml-ssd's mock is iterable)",
         fence("import sys\nfor line in sys.stdin:\n    print(line.strip())"), stdin([("1\n2\n", "1\n2")])),
    case("next-stdin", "next(sys.stdin)", fence("import sys\nprint(next(sys.stdin).strip())"),
         stdin([("7\n8\n", "7")])),
    case("buffer-read", "sys.stdin.buffer.read().split()",
         fence("import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))"), stdin([("1 2\n3\n", "6")])),
    case("buffer-readline", "sys.stdin.buffer.readline() returns the first line every time",
         fence("import sys\na = sys.stdin.buffer.readline()\nb = sys.stdin.buffer.readline()\nprint(a == b)"),
         stdin([("1\n2\n", "True")])),
    case("readlines", "sys.stdin.readlines() splits on newlines, keeping none",
         fence("import sys\nprint(sys.stdin.readlines())"), stdin([("1\n2\n", "['1', '2', '']")])),
    case("read-twice", "sys.stdin.read() returns the whole input every time",
         fence("import sys\na = sys.stdin.read()\nb = sys.stdin.read()\nprint(a == b)"), stdin([("x\n", "True")])),
    case("from-sys-import-stdin", "a hoisted `from sys import stdin` binds the real stdin, whose readline is patched",
         fence("from sys import stdin\nprint(repr(stdin.readline()))"), stdin([("ab\ncd\n", "'ab'")])),
    case("open-0", "open(0).read() sees the input (mock_open)", fence("print(open(0).read().split())"),
         stdin([("1 2\n", "['1', '2']")])),
    case("input-past-eof", "input() after the last line: EOFError", fence("input()\nprint(input())"),
         stdin([("1\n", "1")])),
    case("exit-call", "exit() mid-program: the guard made exit None", fence("print(1)\nexit()"), stdin([("", "1")])),
    case("quit-call", "quit() is None too", fence("print(1)\nquit()"), stdin([("", "1")])),
    case("sys-exit", "sys.exit() ends a stdin program normally (SystemExit is swallowed)",
         fence("import sys\nprint(1)\nsys.exit(0)\nprint(2)"), stdin([("", "1")])),
    case("os-exit", "os._exit kills the worker: every test counts as a time out",
         fence("import os\nprint(1)\nos._exit(0)"), stdin([("", "1"), ("", "1")])),
    case("recursion-5000", "recursion 5000 deep: Python's limit of 1000 (ml-ssd sets none)",
         fence("def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f(5000))"), stdin([("", "5000")])),
    case("recursion-500", "recursion 500 deep: within the limit",
         fence("def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f(500))"), stdin([("", "500")])),
    case("recursion-headroom-stdin", "how deep a stdin program may recurse (the number printed)",
         fence("def f(n):\n    try:\n        return f(n + 1)\n    except RecursionError:\n        return n\n"
               "print(f(0))"), stdin([("", "0")])),
    case("recursion-limit-value", "sys.getrecursionlimit() is Python's default",
         fence("import sys\nprint(sys.getrecursionlimit())"), stdin([("", "1000")])),
    case("big-int-print", "printing a 6021-digit int: over Python's 4300-digit str limit",
         fence("print(2 ** 20000 % 10)\nprint(len(str(2 ** 20000)))"), stdin([("", "6\n6021")])),
    case("float-format-wa", "0.1+0.2 printed in full is not 0.3", fence("print(0.1 + 0.2)"), stdin([("", "0.3")])),
    case("float-decimal-equal", "0.50000 equals 0.5 as a Decimal", fence("print('%.5f' % 0.5)"),
         stdin([("", "0.5")])),
    case("decimal-exponent", "1e3 equals 1000 as a Decimal", fence("print('1e3')"), stdin([("", "1000")])),
    case("decimal-precision", "0.3333333 is not 0.333333333", fence("print('0.3333333')"),
         stdin([("", "0.333333333")])),
    case("nan", "NaN never equals NaN as a Decimal", fence("print('NaN')"), stdin([("", "nan")])),
    case("whitespace", "trailing spaces and blank lines are stripped; inner spacing compared as numbers",
         fence("print('1  2  ')\nprint()\nprint()"), stdin([("", "1 2")])),
    case("case-sensitive", "yes is not Yes", fence("print('yes')"), stdin([("", "Yes")])),
    case("infinite-loop", "a loop that never ends: killed at the global deadline",
         fence("while True:\n    pass"), stdin([("", "1")])),
    case("loop-on-second-test", "passes test 1, loops on test 2: the result of test 1 is kept",
         fence("n = int(input())\nwhile n == 3:\n    pass\nprint(n * 2)"), stdin(DOUBLE)),
    case("slow-within-budget", "1.5 s a test with a 1 s timeout: no per-test alarm, within (1+1)·2+5 s",
         fence("import time\ntime.sleep(1.5)\nprint(int(input()) * 2)"), stdin(DOUBLE[:2])),
    case("zero-division", "a runtime error", fence("print(1 / 0)"), stdin([("", "1")])),
    case("syntax-error", "a syntax error: Compilation failed", fence("def f(:\n    pass"), stdin([("", "1")])),
    case("class-solution-stdin", "the text 'class Solution' in a stdin program: Compilation failed",
         fence("class Solution:\n    pass\nprint(1)"), stdin([("", "1")])),
    case("import-resource", "a guarded module (resource) imported at the top: Compilation failed",
         fence("import resource\nprint(1)"), stdin([("", "1")])),
    case("main-guard", "a final if __name__ == '__main__' block is unwrapped",
         fence("def main():\n    print(int(input()) + 1)\n\nif __name__ == '__main__':\n    main()"),
         stdin([("1\n", "2")])),
    case("global-in-nested-def", "top-level names become locals of the wrapper: `global x` finds nothing",
         fence("x = 5\ndef g():\n    global x\n    return x\nprint(g())"), stdin([("", "5")])),
    case("numpy-prelude", "np comes from the prelude", fence("print(np.array([1, 2]).sum())"),
         stdin([("", "3")])),
    case("pandas-prelude", "pd comes from the prelude", fence("print(pd.Series([1, 2, 3]).sum())"),
         stdin([("", "6")])),
    case("prelude-names", "names the prelude imports (deque, Counter, accumulate, inf)",
         fence("print(len(deque([1])), Counter('aab')['a'], list(accumulate([1, 2])), inf > 0)"),
         stdin([("", "1 2 [1, 3] True")])),
    case("not-in-prelude", "math.lcm is not in ml-ssd's prelude (LCB star-imports math)", fence("print(lcm(4, 6))"),
         stdin([("", "12")])),
    case("datetime-not-in-prelude", "no `datetime` name in ml-ssd's prelude",
         fence("print(datetime.date(2020, 1, 1))"), stdin([("", "2020-01-01")])),
    case("help-kept", "ml-ssd's guard leaves help (LCB's nulls it)", fence("print(help is None)"),
         stdin([("", "False")])),
    case("stdout-buffer", "sys.stdout.buffer does not exist on the capture", fence(
         "import sys\nsys.stdout.buffer.write(b'1\\n')"), stdin([("", "1")])),
    case("getcwd", "os.getcwd is None after the guard", fence("import os\nprint(os.getcwd())"), stdin([("", "/")])),
    case("sys-stdout-write", "sys.stdout.write goes to the capture", fence("import sys\nsys.stdout.write('hi\\n')"),
         stdin([("", "hi")])),
]

FUNCTIONAL = [
    case("fn-pass", "Solution().f on JSON list and int lines", sol("return sorted(a + [b])"),
         functional([("[3, 1]\n2", "[1, 2, 3]"), ("[]\n0", "[0]")])),
    case("fn-tuple", "a returned tuple becomes a list", sol("return tuple(a + [b])"),
         functional([("[1, 2]\n3", "[1, 2, 3]")])),
    case("fn-nested-tuple", "only the top-level tuple becomes a list", sol("return [tuple(a)]"),
         functional([("[1, 2]\n3", "[[1, 2]]")])),
    case("fn-float-wa", "0.1+0.2 as a string is not 0.3", sol("return 0.1 + 0.2"), functional([("1\n2", "0.3")])),
    case("fn-float-int-equal", "1.0 and 1 are equal as Decimals", sol("return 1.0"), functional([("1\n2", "1")])),
    case("fn-bool-vs-int", "True is printed 'True', not '1'", sol("return True"), functional([("1\n2", "1")])),
    case("fn-bool-json", "JSON true becomes True: 'True' == 'True'", sol("return a > b"),
         functional([("2\n1", "true")])),
    case("fn-string-arg", "a quoted line loses its quotes (no JSON decoding)", sol("return a.upper()", "a"),
         functional([('"abc"', '"ABC"')])),
    case("fn-escaped-string", "escapes stay raw: \\\" is two characters", sol("return len(a)", "a"),
         functional([('"a\\"b"', "3")])),
    case("fn-equals-in-input", "an '=' anywhere makes the input key=value pairs", sol("return len(a)", "a"),
         functional([('"a=b"', "3")])),
    case("fn-true-line", "a line `true` stays the string 'true'", sol("return a is True", "a"),
         functional([("true", "true")])),
    case("fn-dict-line", "a JSON object line stays a string", sol("return a['x']", "a"),
         functional([('{"x": 1}', "1")])),
    case("fn-float-arg", "a float line becomes a float", sol("return a * 2", "a"), functional([("1.5", "3.0")])),
    case("fn-blank-lines", "blank input lines are skipped", sol("return a + b"), functional([("1\n\n2", "3")])),
    case("fn-none", "None and JSON null print alike", sol("return None"), functional([("1\n2", "null")])),
    case("fn-strings-list", "a list of strings", sol("return [a, b]", "a, b"),
         functional([('"x"\n"y"', '["x", "y"]')])),
    case("fn-runtime-error", "an exception in the method", sol("return a / 0"), functional([("1\n2", "1")])),
    case("fn-missing-method", "no method of that name", fence("class Solution:\n    def g(self, a, b):\n        "
                                                               "return 1"), functional([("1\n2", "1")])),
    case("fn-top-level-function", "no Solution class: the top-level function is called",
         fence("def f(a, b):\n    return a + b"), functional([("1\n2", "3")])),
    case("fn-second-test-wrong", "wrong on the 2nd of three tests", sol("return a + b if a == 1 else 0"),
         functional([("1\n2", "3"), ("2\n2", "4"), ("1\n1", "2")])),
    case("fn-sys-exit", "sys.exit in the method: SystemExit ends the worker, all tests time out",
         fence("import sys\nclass Solution:\n    def f(self, a, b):\n        sys.exit(0)"),
         functional([("1\n2", "3"), ("1\n2", "3")])),
    case("fn-exit-none", "exit() in the method: exit is None", sol("exit()"), functional([("1\n2", "3")])),
    case("fn-infinite-loop", "a method that never returns: killed at the global deadline", sol("while True: pass"),
         functional([("1\n2", "3")])),
    case("fn-syntax-error", "a syntax error: the exec fails with a line number counted past the prelude",
         fence("class Solution:\n    def f(self, a, b):\n        return a +"), functional([("1\n2", "3")])),
    case("fn-list-type-hint", "List from the prelude's typing imports", fence(
         "class Solution:\n    def f(self, a: List[int], b: int) -> List[int]:\n        return a[::-1]"),
         functional([("[1, 2]\n0", "[2, 1]")])),
    case("fn-numpy", "numpy result printed as a string", sol("return int(np.array(a).sum())"),
         functional([("[1, 2]\n0", "3")])),
    case("recursion-headroom-functional", "how deep a method may recurse (the number returned)", fence(
         "class Solution:\n    def g(self, n):\n        try:\n            return self.g(n + 1)\n"
         "        except RecursionError:\n            return n\n    def f(self, a):\n        return self.g(0)"),
         functional([("1", "0")])),
    case("fn-no-private-tests", "a problem whose private test list is empty", sol("return a + b"),
         functional([], public=[("1\n2", "3")])),
]

CASES = EXTRACTION + STDIN + FUNCTIONAL
assert len({c["id"] for c in CASES}) == len(CASES), "case ids must be unique"

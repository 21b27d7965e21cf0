"""LiveCodeBench's own grader, as PyPI's nvidia-livecodebench 26.3 ships it, run case by case beside ours.

The package holds `livecodebench.evaluation.testing_util` byte for byte as LiveCodeBench's lcb_runner had it on
2025-01-17 (commit 15808c7; only the licence header differs), and `compute_code_generation_metrics` with its
`check_correctness` (a forked Process per program, joined for (timeout+1)·tests+5 s) and
`evaluate_generations_by_problem` (numpy clean-up; a program whose child never reported is [-2] with error code
-5). We call the latter, in a subprocess of its own, exactly as LiveCodeBench's pipeline does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

RUNNER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from livecodebench.evaluation.compute_code_generation_metrics import evaluate_generations_by_problem
    from livecodebench.lm_styles import LMStyle
    from livecodebench.utils.extraction_utils import extract_code

    cases, timeout, extract = json.load(sys.stdin)
    out = []
    for code, tests, fn in cases:
        if extract:
            code = extract_code(code, LMStyle.OpenAIChat)  # a chat model's default style: the last two fence lines
        sample = {"input_output": json.dumps({"inputs": [t[0] for t in tests], "outputs": [t[1] for t in tests],
                                               "fn_name": fn})}
        res, meta = evaluate_generations_by_problem(([code], sample, False, timeout))
        res, meta = res[0], meta[0]
        passed = bool(np.all(np.array(res) > 0))
        out.append([passed, 0 if passed else meta["error_code"], "passed" if passed else meta["error_message"], res])
    print("RESULT " + json.dumps(out))
""")


def run_packaged(cases: list, timeout: int = 1, extract: bool = False) -> list[list]:
    """[passed, error_code, error_message, per-test results] per (code, [(input, output)], fn_name or None).
    With `extract`, `code` is a model response and LCB's own extract_code finds the program in it."""
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps([cases, timeout, extract]),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])

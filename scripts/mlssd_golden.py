"""Run apple/ml-ssd's released evaluator on the golden cases and record what it decided (tests/evaluation/data).

ml-ssd is not packaged, and its code is not ours to commit: point this script at a checkout of it (its
`evaluation/` folder is imported from there). The cases come from `scripts/mlssd_golden_cases.py`; the
verdicts it writes are what `tests/evaluation/test_mlssd_golden.py` holds our `mlssd` mode to.

    python scripts/mlssd_golden.py /path/to/ml-ssd [--out tests/evaluation/data/mlssd_golden.jsonl]

How each case is run, and why:
- `datasets` and `vllm` are stubbed (benchmark.py imports them at the top; evaluation never uses them), and pandas
  is imported first, as `import datasets` does in ml-ssd's own process (its worker is a fork of that process and
  its prelude imports pandas after the guard has removed os functions pandas' first import needs);
- the sample goes through `LiveCodeBenchV6.evaluate_single_example` (has_code → last block → post_process_code →
  check_correctness → lcb_run), built as `map_to_example` builds it: private tests as `test`, `is_stdin` from the
  public tests, `metadata.func_name`, the starter code as `entry_point`;
- in a ThreadPoolExecutor worker thread, as `evaluate` runs it, so the stack under the program (which decides how
  deep it may recurse before Python's limit of 1000) is the one in ml-ssd's own runs;
- the one change: evaluate_single_example hard-codes `timeout=6`; each case's own `timeout_s` is put in its place
  (the constant, not a wrapper: no extra frame), so the cases that run into the global deadline
  ((timeout+1)·tests+5 s, ml-ssd's own formula) finish sooner.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stub_modules() -> None:
    """benchmark.py imports datasets and vllm at the top; the evaluation path uses neither."""
    import pandas  # noqa: F401  (what `import datasets` does in ml-ssd's process, see the module docstring)

    datasets = types.ModuleType("datasets")
    datasets.Dataset = object
    datasets.concatenate_datasets = datasets.load_dataset = lambda *a, **k: None
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = object
    sys.modules.setdefault("datasets", datasets)
    sys.modules.setdefault("vllm", vllm)


def _example(case: dict, has_code) -> dict:
    """The dict ml-ssd's evaluation sees for one sample of one problem (map_to_example + the model answer)."""
    p = case["problem"]
    public = json.dumps(p.get("public_tests", []))
    return {"prompt": "", "test": p["private_tests"], "entry_point": p.get("starter_code", ""),
            "task_id": case["id"], "is_stdin": any(t.get("testtype") == "stdin" for t in json.loads(public)),
            "public_test_cases": public, "difficulty": "easy",
            "metadata": {"func_name": p["func_name"]} if p.get("func_name") else {},
            "model_output": case["program"], "model_answer": has_code(case["program"])}


def _with_timeout(evaluate_single_example, seconds: float):
    """evaluate_single_example with `seconds` where it passes its hard-coded `timeout=6`: the same code object with
    that one constant replaced, so the call stack (which decides how deep a program may recurse) is unchanged."""
    code = evaluate_single_example.__code__
    sixes = [i for i, c in enumerate(code.co_consts) if type(c) is int and c == 6]
    if len(sixes) != 1:
        raise SystemExit(f"evaluate_single_example has {len(sixes)} constants 6; expected exactly one (the timeout)")
    consts = list(code.co_consts)
    consts[sixes[0]] = seconds
    return types.FunctionType(code.replace(co_consts=tuple(consts)), evaluate_single_example.__globals__)


def run(ml_ssd: Path, cases: list[dict]) -> list[dict]:
    sys.path.insert(0, str(ml_ssd))
    _stub_modules()
    bench = importlib.import_module("evaluation.benchmark")
    original = bench.LiveCodeBenchV6.evaluate_single_example
    commit = subprocess.run(["git", "-C", str(ml_ssd), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    evaluator = bench.LiveCodeBenchV6.__new__(bench.LiveCodeBenchV6)
    evaluator.logger = logging.getLogger("ml-ssd")
    out = []
    for case in cases:
        timeout = case["timeout_s"]
        evaluate = _with_timeout(original, timeout)
        # evaluate() runs each sample in a ThreadPoolExecutor worker: the same thread frames under the program here
        with ThreadPoolExecutor(max_workers=1) as pool:
            entry = pool.submit(evaluate, evaluator, _example(case, bench.has_code)).result()
        results = entry["test_results"]
        observed = {"correctness": bool(entry["correctness"]), "test_results": results,
                    "passed": bool(results) and all(r > 0 for r in results),  # what its pass@k counts
                    "first_failure": entry["test_output"], "reason": entry["reason"]}
        out.append({**case, "verdict_observed": observed,
                    "source": f"apple/ml-ssd {commit[:7]} evaluation/benchmark.py "
                              f"LiveCodeBenchV6.evaluate_single_example → evaluation/livecodebench_utils.py "
                              f"lcb_run (timeout {timeout} s in place of the hard-coded 6)"})
        print(f"{case['id']}: {observed['passed']} {results} {str(observed['first_failure'])[:60]!r}",
              file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ml_ssd", type=Path, help="a checkout of apple/ml-ssd (its evaluation/ folder is imported)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/evaluation/data/mlssd_golden.jsonl")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mlssd_golden_cases import CASES

    rows = run(args.ml_ssd.resolve(), CASES)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} cases → {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

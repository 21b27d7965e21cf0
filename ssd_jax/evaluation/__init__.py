"""Evaluation: sandboxed execution, graders (LiveCodeBench-compatible and robust, HumanEval) and pass@k metrics.

Nothing here imports JAX: grader workers must start fast and must never hold a JAX runtime.
"""

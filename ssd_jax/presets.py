"""Named presets, one mechanism for all: a config field left null takes its preset's value (else its default), and a
value the user writes always wins (DecodeSpec.resolve, FilterConfig.resolve).

Decoding presets from the paper (arXiv 2604.01193): Table 3 (SSD generation → SSD evaluation) and Table 4 (base model
evaluation), plus the popular summary's T=2.0 / top-k 10 variant. A preset name is `<model>/<use>` with use in
train (sampling SSD data), eval (evaluating the SSD model), base-eval (evaluating the base model).
Filter presets: the three readings of the degeneracy filter (data/filters.py says which source each is).
"""

from __future__ import annotations

from ssd_jax.errors import ConfigError
from ssd_jax.sampling.types import Truncation

T = Truncation
PRESETS: dict[str, Truncation] = {}
_TABLE = {
    #  model: (train, eval, base-eval); top_k 0 = none, top_p 1.0 = none
    "llama-3.1-8b-instruct": (T(0.8, 20, 0.8), T(0.7, 20, 0.8), T(0.9, 0, 0.8)),
    "qwen3-4b-instruct-2507": (T(1.6, 20, 0.8), T(1.1, 20, 0.8), T(0.7, 20, 0.8)),
    "qwen3-4b-thinking-2507": (T(1.1, 20, 0.95), T(0.7, 20, 0.95), T(0.6, 20, 0.95)),
    "qwen3-30b-a3b-instruct-2507": (T(1.6, 20, 0.8), T(0.9, 20, 0.8), T(0.7, 20, 0.8)),
    "qwen3-30b-a3b-thinking-2507": (T(1.2, 20, 0.95), T(0.7, 20, 0.95), T(0.6, 20, 0.95)),
    "gpt-oss-20b": (T(1.2, 0, 1.0), T(1.0, 20, 0.95), T(1.0, 0, 1.0)),
}
for _model, (_train, _eval, _base) in _TABLE.items():
    PRESETS[f"{_model}/train"] = _train
    PRESETS[f"{_model}/eval"] = _eval
    PRESETS[f"{_model}/base-eval"] = _base
# ml-ssd's released config samples Qwen3-4B-Instruct at T=1.5 (the authors call the difference minor).
PRESETS["qwen3-4b-instruct-2507/train-released"] = T(1.5, 20, 0.8)
# The popular write-up's setting: the best point of a shorter sweep (30B-Instruct, T_eval 1.1).
PRESETS["t2-k10/train"] = T(2.0, 10, 1.0)
PRESETS["t2-k10/eval"] = T(1.1, 20, 0.8)
# Greedy, for smoke tests and baselines.
PRESETS["greedy"] = T(0.0, 0, 1.0)


def preset(name: str) -> Truncation:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"decode preset {name!r} is unknown; expected one of {', '.join(sorted(PRESETS))}") from None


# FilterConfig's preset-controlled fields without a preset (the paper's rules, ssd-jax's stub reading)
FILTER_DEFAULTS: dict = dict(drop_empty=True, drop_single_line_stub=True, stub_rule="no_newline",
                             shortest_fraction=0.0, trl_min_chars=0)
FILTER_PRESETS: dict[str, dict] = {
    "paper": dict(drop_empty=True, drop_single_line_stub=True, stub_rule="no_newline", shortest_fraction=0.0,
                  trl_min_chars=0),
    "released": dict(drop_empty=True, drop_single_line_stub=False, shortest_fraction=0.10, trl_min_chars=0),
    "trl": dict(drop_empty=True, drop_single_line_stub=False, shortest_fraction=0.0, trl_min_chars=10),
}


def filter_preset(name: str) -> dict:
    try:
        return FILTER_PRESETS[name]
    except KeyError:
        raise ConfigError(f"filter preset {name!r} is unknown; expected one of {', '.join(FILTER_PRESETS)}") from None

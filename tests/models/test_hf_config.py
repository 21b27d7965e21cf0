"""Our config.json reader (`hf.HFConfig` over each family's `HF_DEFAULTS`) against transformers' config classes.

The reader exists so that JAX processes need not import torch (transformers' config module does); these tests make
sure it reads every config exactly as transformers would, including the keys a config.json leaves out."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from ssd_jax import bundled
from ssd_jax.errors import CheckpointError
from ssd_jax.models import family_for, hf
from tests import tiny

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs" / "hf").glob("*/config.json"))


class _Absent:
    """transformers' config object where an attribute its class lacks reads as None (the old getattr default)."""

    def __init__(self, c):
        self._c = c

    def __getattr__(self, key):
        return getattr(self._c, key, None)

    def to_dict(self):
        return self._c.to_dict()


def _outcome(fn):
    try:
        cfg = fn()
    except Exception as e:  # transformers raises its own validation errors too
        return ("error", type(e).__name__)
    return ("ok", dataclasses.replace(cfg, hf_config={}, source_dir=None))


def _ours(raw):
    family = family_for(raw["architectures"][0])
    return _outcome(lambda: family.config_from_hf(hf.HFConfig(raw, family)))


def _theirs(raw):
    family = family_for(raw["architectures"][0])
    return _outcome(lambda: family.config_from_hf(_Absent(transformers.AutoConfig.for_model(**raw))))


def _raw_configs():
    out = {p.parent.name: json.loads(p.read_text()) for p in PRESETS}
    out["SmolLM2-135M-Instruct"] = json.loads((bundled.smollm2_135m() / "config.json").read_text())
    for name, make in tiny.CONFIGS.items():
        c = make()
        c.architectures = [tiny.MODEL_CLASSES[type(c)].__name__]
        out[f"tiny-{name}-full"] = c.to_dict()
        out[f"tiny-{name}-diff"] = c.to_diff_dict()  # what save_pretrained writes: only non-default keys
    return out


RAW = _raw_configs()


def test_the_corpus_covers_every_family():
    assert {r["architectures"][0] for r in RAW.values()} == {"LlamaForCausalLM", "Qwen3ForCausalLM",
                                                           "Qwen3MoeForCausalLM"}
    assert len(PRESETS) == 5


@pytest.mark.parametrize("name", sorted(RAW))
def test_same_model_config_as_transformers(name):
    ours, theirs = _ours(RAW[name]), _theirs(RAW[name])
    assert ours[0] == "ok"
    assert ours == theirs


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"])
def test_every_default_matches_transformers(arch):
    """Each key the reader may fall back on, removed from a full config one at a time: same result as transformers."""
    full = next(r for n, r in RAW.items() if n.endswith("-full") and r["architectures"][0] == arch)
    full = {k: v for k, v in full.items() if k != "layer_types"}  # derived from num_hidden_layers by transformers
    for key in family_for(arch).HF_DEFAULTS:
        raw = {k: v for k, v in full.items() if k != key}
        assert _ours(raw) == _theirs(raw), key  # the same config, or the same error


def test_aliases_are_transformers_attribute_maps():
    classes = {"LlamaForCausalLM": transformers.LlamaConfig, "Qwen3ForCausalLM": transformers.Qwen3Config,
               "Qwen3MoeForCausalLM": transformers.Qwen3MoeConfig}
    for arch, cls in classes.items():
        assert family_for(arch).HF_ALIASES == cls.attribute_map, arch


def test_defaults_are_transformers_class_defaults():
    classes = {"LlamaForCausalLM": transformers.LlamaConfig, "Qwen3ForCausalLM": transformers.Qwen3Config,
               "Qwen3MoeForCausalLM": transformers.Qwen3MoeConfig}
    for arch, cls in classes.items():
        ref = cls()
        for key, value in family_for(arch).HF_DEFAULTS.items():
            if hasattr(ref, key) and key not in ("num_key_value_heads", "head_dim"):  # resolved in __init__
                assert getattr(ref, key) == value, (arch, key)


def test_reading_a_model_does_not_import_torch():
    code = ("import sys; from ssd_jax import bundled; from ssd_jax.models import hf; "
            "hf.load_tokenizer(bundled.smollm2_135m()); hf.model_config(bundled.smollm2_135m()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_a_wrong_type_names_the_file(tmp_path):
    raw = dict(RAW["tiny-llama3-full"], num_attention_heads="four")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"config.json: a value has the wrong type"):
        hf.model_config(tmp_path)

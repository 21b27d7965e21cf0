"""Bad checkpoints: one clear line naming the file/key and what was expected, exit code 2."""

import json
import shutil

import numpy as np
import pytest

from ssd_jax.cli import main
from ssd_jax.models import hf


@pytest.fixture
def broken(tiny_dir, tmp_path):
    """A fresh copy of a tiny checkpoint to damage."""
    def make(name="llama3"):
        d = tmp_path / "ckpt"
        shutil.copytree(tiny_dir(name), d)
        return d
    return make


def _rewrite(d, edit):
    """Apply edit(dict of tensors) to model.safetensors."""
    st = hf.SafetensorsFile(d / "model.safetensors")
    tensors = {k: np.array(st.get(k)) for k in st.keys()}
    del st
    edit(tensors)
    hf.write_safetensors(d / "model.safetensors", list(tensors.items()))


def _run(capsys, *argv):
    capsys.readouterr()  # drop what building the fixture printed
    code = main(["convert", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_missing_directory(capsys, tmp_path):
    code, err = _run(capsys, tmp_path / "nope", tmp_path / "out")
    assert code == 2 and err == f"error: {tmp_path / 'nope'}: model directory does not exist"


def test_missing_config(capsys, broken, tmp_path):
    d = broken()
    (d / "config.json").unlink()
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "config.json: missing" in err and "\n" not in err


def test_missing_and_unknown_architecture(capsys, broken, tmp_path):
    d = broken()
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("architectures")
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "key 'architectures' is missing" in err
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "'GPT2LMHeadModel' is not supported" in err and "LlamaForCausalLM" in err


def test_invalid_json(capsys, broken, tmp_path):
    d = broken()
    (d / "config.json").write_text("{not json")
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "config.json: not valid JSON" in err


def test_shape_mismatch_names_key_and_shapes(capsys, broken, tmp_path):
    d = broken()
    _rewrite(d, lambda t: t.__setitem__("model.layers.1.mlp.up_proj.weight", np.zeros((100, 64), np.float32)))
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2
    assert "model.layers.1.mlp.up_proj.weight" in err and "(100, 64)" in err and "(128, 64)" in err
    assert "model.safetensors" in err
    assert not (tmp_path / "out").exists()


def test_unmapped_key(capsys, broken, tmp_path):
    d = broken()
    _rewrite(d, lambda t: t.__setitem__("model.layers.0.mystery.weight", np.zeros((3,), np.float32)))
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "'model.layers.0.mystery.weight' matches no LlamaForCausalLM key rule" in err


def test_key_without_a_place(capsys, broken, tmp_path):
    """A bias tensor in a checkpoint whose config says attention_bias=false."""
    d = broken()
    _rewrite(d, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias", np.zeros((96,), np.float32)))
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "q_proj.bias" in err and "has no place" in err


def test_missing_key(capsys, broken, tmp_path):
    d = broken("qwen3_moe")
    _rewrite(d, lambda t: t.pop("model.layers.1.mlp.experts.5.up_proj.weight"))
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "missing tensor 'model.layers.1.mlp.experts.5.up_proj.weight'" in err


def test_missing_shard(capsys, tiny_dir, tmp_path):
    model = hf.load(tiny_dir("llama3"))
    d = hf.save(model, tmp_path / "sharded", max_shard_bytes=32 * 1024)
    victim = sorted(d.glob("model-*.safetensors"))[1]
    victim.unlink()
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and f"lists shard {victim.name}, which is missing" in err


def test_truncated_file(capsys, broken, tmp_path):
    d = broken()
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "truncated" in err and "model.safetensors" in err


def test_unsupported_rope_type(capsys, broken, tmp_path):
    d = broken()
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 12,
                              "long_factor": [1.0] * 12, "original_max_position_embeddings": 64}
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _run(capsys, d, tmp_path / "out")
    assert code == 2 and "'longrope'" in err


@pytest.mark.parametrize("options,match", [
    ({"remat": True}, "remat=True; expected one of none, full, save_dots"),
    ({"attention_impl": "flash"}, "attention_impl='flash'"),
    ({"moe_impl": "sparse"}, "moe_impl='sparse'"),
    ({"rope_theta": 1.0}, "model option 'rope_theta' is unknown"),
])
def test_bad_run_options_name_the_option(tiny_dir, options, match):
    from ssd_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        hf.model_config(tiny_dir("qwen3_moe"), **options)

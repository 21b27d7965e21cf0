"""HF safetensors ⇄ NNX: bit-exact round trips, sharded export that transformers loads, orbax model state."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from ssd_jax import parity
from ssd_jax.config import ModelSpec
from ssd_jax.models import hf, state_io
from ssd_jax.sharding import MeshConfig, make_mesh


def _tensors(directory):
    ckpt = hf.Checkpoint(directory)
    return {k: np.array(ckpt.get(k)) for k in ckpt.keys()}


@pytest.mark.parametrize("name", ["llama3", "llama_bias_tied", "qwen3_tied", "qwen3_moe_mixed"])
def test_round_trip_is_bit_exact(tiny_dir, tmp_path, name):
    src = tiny_dir(name)
    model = hf.load(src)
    out = hf.save(model, tmp_path / "export")
    a, b = _tensors(src), _tensors(out)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32
        assert a[k].tobytes() == b[k].tobytes(), k
    cfg_out = json.loads((out / "config.json").read_text())
    assert cfg_out["architectures"] == json.loads((src / "config.json").read_text())["architectures"]


def test_list_layout_loads_and_exports_the_same_checkpoint(tiny_dir, tmp_path):
    """scan_layers=False (one stack per layer, the sampler's layout) maps the same HF keys: bit-exact round trip and
    the stacked layout's logits."""
    src = tiny_dir("qwen3_moe_mixed")
    listed = hf.load(src, scan_layers=False)
    assert len(listed.layers) == listed.cfg.num_layers == 3
    assert listed.layers[2].mlp.experts_gate[...].shape[0] == 1
    out = hf.save(listed, tmp_path / "export")
    a, b = _tensors(src), _tensors(out)
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    ids, mask = parity.random_batch(listed.cfg.vocab_size, seed=7)
    np.testing.assert_allclose(parity.jax_forward(listed, ids, mask)[0], parity.jax_forward(hf.load(src), ids, mask)[0],
                               atol=1e-6, rtol=0)


def test_export_loads_in_transformers_with_identical_logits(tiny_dir, tmp_path):
    src = tiny_dir("qwen3_moe")
    model = hf.load(src)
    # Small shards: exercises the multi-file index path that real checkpoints use.
    out = hf.save(model, tmp_path / "export", max_shard_bytes=64 * 1024)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((out / s).exists() for s in shards)
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in index["weight_map"]
    ids, mask = parity.random_batch(model.cfg.vocab_size, seed=5)
    before, _ = parity.hf_forward(parity.load_hf_reference(src), ids, mask)
    after, _ = parity.hf_forward(parity.load_hf_reference(out), ids, mask)
    np.testing.assert_array_equal(before, after)
    jax_logits, _ = parity.jax_forward(hf.load(out), ids, mask)
    assert parity.compare(after, jax_logits, mask)["max_abs_logit_diff"] <= 1e-4


def test_bfloat16_load_and_export(tiny_dir, tmp_path):
    src = tiny_dir("llama3")
    model = hf.load(src, dtype="bfloat16")
    assert model.layers[0].attn.q_proj[...].dtype == jax.numpy.bfloat16
    out = hf.save(model, tmp_path / "bf16")
    t = _tensors(out)
    assert all(v.dtype == ml_dtypes.bfloat16 for v in t.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert ref.model.embed_tokens.weight.dtype == torch.bfloat16
    # bf16 export of fp32 master weights: each value is the fp32 value rounded to bf16.
    src_t = _tensors(src)
    for k in src_t:
        np.testing.assert_array_equal(t[k], src_t[k].astype(ml_dtypes.bfloat16))


def test_reexport_keeps_tokenizer_and_replaces_atomically(tiny_dir, tmp_path):
    src = tiny_dir("qwen3_tied")
    model = hf.load(src)
    out = tmp_path / "e"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    assert (src / "generation_config.json").exists()
    hf.save(model, out)
    assert not (out / "stale.txt").exists()
    assert (out / "generation_config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_orbax_state_round_trip_onto_a_mesh(tiny_dir, tmp_path):
    src = tiny_dir("qwen3_moe")
    model = hf.load(src)
    ck = state_io.save_state(model, tmp_path / "ck")
    mesh = make_mesh(MeshConfig(fsdp=2, tensor=2, expert=2))
    restored = state_io.load_state(ck, mesh=mesh)
    gate = restored.layers[0].mlp.experts_gate[...]  # (layers, experts, hidden, inter): the layer axis stays whole
    assert tuple(gate.sharding.spec)[:2] == (None, "expert")
    back = hf.save(restored, tmp_path / "hf")
    a, b = _tensors(src), _tensors(back)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert (back / "config.json").exists()


def test_load_model_dtype_policy(tiny_dir):
    """One policy per purpose: (compute, stored) dtypes, and the list layout only where the model decodes."""
    spec = ModelSpec(path=str(tiny_dir("qwen3_moe")), dtype="bfloat16", param_dtype="float32", moe_impl="dense")
    want = {"train": ("bfloat16", "float32"), "sample": ("bfloat16", "bfloat16"), "score": ("bfloat16", "bfloat16"),
            "export": ("float32", "float32")}
    for purpose, dtypes in want.items():
        model = hf.load_model(spec, None, purpose, weights=False)
        cfg = model.cfg
        assert (cfg.dtype, cfg.param_dtype, cfg.scan_layers, cfg.moe.impl) == (*dtypes, purpose != "sample", "dense")
        assert model.embed[...].dtype == jax.numpy.dtype(dtypes[1]) and not model.embed[...].any()

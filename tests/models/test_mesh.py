"""Loading straight onto an 8-device CPU mesh gives the single-device logits, with parameters really sharded."""

import jax
import numpy as np
import pytest

from ssd_jax import parity
from ssd_jax.models import hf
from ssd_jax.sharding import MeshConfig, make_mesh, param_spec


@pytest.mark.parametrize("name,mesh_cfg", [
    ("llama3", MeshConfig(fsdp=4, tensor=2)),
    ("qwen3_untied", MeshConfig(data=2, fsdp=2, tensor=2)),
    ("qwen3_moe", MeshConfig(fsdp=2, tensor=2, expert=2)),
])
def test_sharded_load_matches_single_device(tiny_dir, name, mesh_cfg):
    assert jax.device_count() == 8
    d = tiny_dir(name)
    ids, mask = parity.random_batch(256, lengths=(12, 7, 3, 9, 12, 1, 5, 8), seed=6)
    single, _ = parity.jax_forward(hf.load(d), ids, mask)
    mesh = make_mesh(mesh_cfg)
    model = hf.load(d, mesh=mesh)
    q = model.layers[0].attn.q_proj[...]
    assert len(q.sharding.device_set) == 8
    assert q.addressable_shards[0].data.size < q.size  # really split, not replicated
    sharded, _ = parity.jax_forward(model, ids, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(sharded[valid], single[valid], atol=1e-5, rtol=0)


def test_rules_cover_every_parameter_and_skip_indivisible_dims():
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    assert tuple(param_spec("layers.0.attn.q_proj", (64, 4, 24), mesh)) == ("fsdp", "tensor", None)
    # 3 heads cannot be split in 2: that axis is replicated, the rest still sharded.
    assert tuple(param_spec("layers.0.attn.k_proj", (64, 3, 24), mesh)) == ("fsdp", None, None)
    with pytest.raises(KeyError, match="no partition rule"):
        param_spec("layers.0.attn.mystery", (4,), mesh)

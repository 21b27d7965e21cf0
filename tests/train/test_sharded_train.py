"""The same 20 SFT steps on an 8-device CPU mesh give the single-device losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ssd_jax.models import hf
from ssd_jax.sharding import BATCH_AXES, MeshConfig, make_mesh
from ssd_jax.train import optim, step as train_step
from tests.train.test_step_parity import OPT, packed_batches


def run(model, batches, mesh=None):
    opt = nnx.Optimizer(model, optim.make_optimizer(OPT), wrt=nnx.Param)
    step = train_step.make_train_step(40, NamedSharding(mesh, P(BATCH_AXES, None)) if mesh else None)
    losses = []
    for b in batches:
        bb = {k: v[None] for k, v in b.items()}
        if mesh is not None:
            bb = {k: jax.device_put(v, NamedSharding(mesh, P(None, BATCH_AXES, None))) for k, v in bb.items()}
        else:
            bb = {k: jnp.asarray(v) for k, v in bb.items()}
        losses.append(float(step(model, opt, bb)["loss"]))
    return losses, opt


@pytest.mark.parametrize("name,mesh_cfg,moe_impl", [
    ("qwen3_tied", MeshConfig(fsdp=4, tensor=2), "ragged"),
    ("qwen3_moe", MeshConfig(fsdp=2, tensor=2, expert=2), "dense"),
    ("qwen3_moe", MeshConfig(fsdp=2, tensor=2, expert=2), "ragged"),
])
def test_mesh_training_matches_single_device(tiny_dir, name, mesh_cfg, moe_impl):
    d = tiny_dir(name)
    batches = packed_batches(20, rows=8)
    single, _ = run(hf.load(d, moe_impl=moe_impl), batches)
    mesh = make_mesh(mesh_cfg)
    model = hf.load(d, mesh=mesh, moe_impl=moe_impl)
    sharded, opt = run(model, batches, mesh)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    # Parameters and their Adam moments stay sharded after the updates.
    assert len(model.layers[0].attn.q_proj[...].sharding.device_set) == 8
    mu = nnx.state(opt)["opt_state"][1][0]["mu"]["layers"][0]["attn"]["q_proj"].get_value()
    assert mu.addressable_shards[0].data.size < mu.size

"""What the layer scan keeps for the backward pass: the checkpoint names the `save_dots` policy saves, the policy,
and how a kept value is stored.

`save_dots` keeps the matmul outputs without batch dimensions (JAX's own rule) and the values named here: custom
VJPs hide their products from that rule (`project`'s products), the CPU backward products read transposed copies
made in the forward (`layers.transposed_for_backward`), the einsum attention's backward needs only its output
and softmax statistics (`attention._softmax_attention`), so it does not rerun the forward, and it reads the
queries and keys after RoPE (`layers.Attention`) rather than recomputing the rotation from the projections.

For a program compiled for XLA:CPU (`cpu=True`, decided by the caller from its mesh's devices: `sharding.on_cpu`)
a bf16 value the scan keeps is stored as fp32 (exactly, cast back at use): XLA:CPU upcasts a bf16
dynamic-update-slice, so writing one layer's bf16 residual into the (layers, …) stack rewrote the whole stack every
layer (for SmolLM2's bf16 SFT step, 0.75 s of 8 in such rewrites). A GPU or TPU program keeps bf16 as bf16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array

TRANSPOSED = "cpu_transposed_operand"
PRODUCT = "projection"
SOFTMAX_RESIDUALS = "attention_softmax_residuals"
ROTATED = "rotated_queries_keys"


def stored(z: Array, cpu: bool) -> Array:
    """z as the layer scan stacks it: fp32 for a bf16 value compiled for XLA:CPU (exact), else z."""
    return z.astype(jnp.float32) if cpu and z.dtype == jnp.bfloat16 else z


def keep(z: Array, name: str, cpu: bool) -> Array:
    """z, named for the `save_dots` policy and kept as `stored(z, cpu)`."""
    return checkpoint_name(stored(z, cpu), name).astype(z.dtype)


def remat(fn, policy: str):
    """`fn` (a layer-scan body) rematerialised in the backward pass under `policy` (config.REMAT_POLICIES)."""
    if policy == "none":
        return fn
    cp = jax.checkpoint_policies
    named = cp.save_only_these_names(PRODUCT, TRANSPOSED, SOFTMAX_RESIDUALS, ROTATED)
    saveable = {"full": None, "save_dots": cp.save_from_both_policies(cp.dots_with_no_batch_dims_saveable, named)}
    return jax.checkpoint(fn, policy=saveable[policy], prevent_cse=False)

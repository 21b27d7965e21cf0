"""Device mesh and partition rules.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters sharded along it), `tensor`
(Megatron-style: heads / MLP columns / vocab), `expert` (MoE experts; data parallel for everything else). The
batch is split over data×fsdp×expert.
Every parameter path must match one rule below, so a new parameter cannot silently stay unsharded. A dimension
that an axis does not divide is replicated along that axis instead (tiny test models, odd vocabularies).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from ssd_jax.config import MeshConfig

AXES = tuple(f.name for f in dataclasses.fields(MeshConfig))  # ("data", "fsdp", "tensor", "expert")
# Expert-parallel ranks are data-parallel ranks too (as in MaxText): a mesh of `expert: 8` splits the batch 8 ways
# and runs attention data-parallel, rather than repeating the same rows on every GPU of the expert group.
BATCH_AXES = ("data", "fsdp", "expert")
# Parameters outside the experts are split over fsdp×expert (ZeRO-3 style), so an expert-parallel mesh holds
# no full copy of the embedding, attention or LM head either.
FSDP = ("fsdp", "expert")

# (regex on the dotted parameter path, PartitionSpec over the parameter's axes), first match wins.
PARAM_RULES: list[tuple[str, P]] = [
    (r"^embed$", P("tensor", FSDP)),  # (vocab, hidden)
    (r"^lm_head$", P(FSDP, "tensor")),  # (hidden, vocab)
    (r"\.attn\.[qkv]_proj$", P(FSDP, "tensor", None)),  # (hidden, heads, head_dim)
    (r"\.attn\.o_proj$", P("tensor", None, FSDP)),  # (heads, head_dim, hidden)
    (r"\.attn\.[qkv]_bias$", P("tensor", None)),
    (r"\.mlp\.(gate|up)_proj$", P(FSDP, "tensor")),  # (hidden, inter)
    (r"\.mlp\.down_proj$", P("tensor", FSDP)),  # (inter, hidden)
    (r"\.mlp\.(gate|up)_bias$", P("tensor")),
    # Router replicated: tiny, and an unsplit contraction keeps top-k routing bit-stable across mesh shapes.
    (r"\.mlp\.router$", P(None, None)),  # (hidden, experts)
    (r"\.mlp\.experts_(gate|up)$", P("expert", "fsdp", "tensor")),  # (experts, hidden, inter)
    (r"\.mlp\.experts_down$", P("expert", "tensor", "fsdp")),  # (experts, inter, hidden)
    (r"(\.scale|\.o_bias|\.down_bias)$", P()),  # norms and output biases: replicated
]


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A mesh with Auto axis types (so with_sharding_constraint works on JAX 0.10–0.12)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = cfg.shape(len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def platform(mesh: Mesh | None) -> str:
    """The platform a program over `mesh` is compiled for ("cpu", "gpu", "tpu"): its devices', which may be a
    described GPU on a machine without one (`ssd-jax plan`); without a mesh, the default device's. Every kernel and
    lowering choice reads this, never `jax.default_backend()` alone."""
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def on_cpu(mesh: Mesh | None) -> bool:
    """Compiled for XLA:CPU: the layers then take the forms written for it (see models/remat.py)."""
    return platform(mesh) == "cpu"


def fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Per dimension, keep the spec's mesh axes (in order) while their product divides the dimension; drop the
    rest and axes of size 1. A dimension no axis divides stays replicated."""
    out = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axis is None else (axis if isinstance(axis, tuple) else (axis,))
        kept, size = [], 1
        for a in names:
            if mesh.shape[a] > 1 and dim % (size * mesh.shape[a]) == 0:
                kept.append(a)
                size *= mesh.shape[a]
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return P(*out)


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The rule's spec for `path`; axes beyond the rule's length are leading stack axes (layers) and stay unsplit."""
    for pattern, spec in PARAM_RULES:
        if re.search(pattern, path):
            lead = max(len(shape) - len(spec), 0)
            return fit_spec(P(*([None] * lead), *spec), shape, mesh)
    raise KeyError(f"no partition rule for parameter {path!r}; add one to ssd_jax.sharding.PARAM_RULES")


def param_sharding(path: str, shape: tuple[int, ...], mesh: Mesh | None):
    """Where a parameter lives: a NamedSharding on the mesh, or the default device without one."""
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return NamedSharding(mesh, param_spec(path, shape, mesh))


def batch_axes(mesh: Mesh | None, size: int) -> tuple[str, ...]:
    """The batch axes that split `size` rows: in order, each kept while the product so far times its size divides
    `size` (size-1 axes skipped); rows are replicated over the rest (still correct, redundant work)."""
    if mesh is None:
        return ()
    entry = fit_spec(P(BATCH_AXES), (size,), mesh)[0]
    return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def batch_spec(mesh: Mesh, shape: tuple[int, ...], axis: int = 0) -> P:
    """`shape` split along `axis` over the batch axes that divide it (in order), everything else replicated."""
    spec = [None] * len(shape)
    spec[axis] = BATCH_AXES
    return fit_spec(P(*spec), shape, mesh)


def constrain_batch(x: jax.Array, mesh: Mesh | None, axis: int = 0) -> jax.Array:
    """Pin an activation to batch sharding (a no-op without a mesh): keeps the partitioner from choosing a layout
    that gathers the batch at layer boundaries and in the loss."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, batch_spec(mesh, x.shape, axis)))


def tree_shardings(tree, mesh: Mesh):
    """The parameter sharding of every leaf of an NNX state (or of a tree shaped like one: gradients, moments)."""

    def one(keypath, leaf):
        names = [getattr(k, "key", getattr(k, "idx", None)) for k in keypath]
        return param_sharding(".".join(str(n) for n in names if n is not None), leaf.shape, mesh)

    return jax.tree_util.tree_map_with_path(one, tree)


def path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)



def replicate_unplaced(node, mesh: Mesh | None):
    """Put every array of an NNX object that is not yet on `mesh` (e.g. optimizer step counters) replicated on it,
    so jit sees one device set and a checkpoint restores each value onto the mesh. Without a mesh, commit every
    array to the default device: an uncommitted input is a different jit signature from the committed output the
    first step returns, so the train step would compile twice."""
    from flax import nnx

    replicated = NamedSharding(mesh, P()) if mesh is not None else jax.devices()[0]
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(node)):
        value = var.get_value()
        on_mesh = mesh is not None and isinstance(getattr(value, "sharding", None), NamedSharding) \
            and value.sharding.mesh == mesh
        flat.append((path, var if on_mesh else var.replace(jax.device_put(value, replicated))))
    nnx.update(node, nnx.from_flat_state(flat))
    return node

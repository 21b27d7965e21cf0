"""Model-only orbax checkpoints: the NNX parameter state plus the HF config and tokenizer files to export it again.

Layout of a checkpoint directory:
  ssd_jax_model.json   {"format": 1, "architecture": …, "param_dtype": …}
  hf/                  config.json + tokenizer/generation files (the template for HF export)
  state/               orbax StandardCheckpointer tree of parameters (restorable onto any mesh)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from ssd_jax import distributed
from ssd_jax.config import ModelSpec
from ssd_jax.errors import CheckpointError
from ssd_jax.io_utils import atomic_write_text, replace_dir
from ssd_jax.models.hf import SIDE_FILES, model_config, options_for
from ssd_jax.models.transformer import CausalLM
from ssd_jax.sharding import param_sharding

MARKER = "ssd_jax_model.json"


def is_state_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).exists()


def save_state(model: CausalLM, out_dir: str | os.PathLike) -> Path:
    """Params (orbax, written by every process of a multi-process job into one shared folder) + the HF config and
    tokenizer files needed to export again (process 0), then one rename; every process returns after it."""
    out = Path(out_dir).absolute()
    tmp = out.parent / f".{out.name}.tmp"  # the same path on every process: orbax writes one checkpoint
    writer = distributed.is_writer()
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "hf").mkdir(parents=True)
        cfg = model.cfg
        (tmp / "hf" / "config.json").write_text(json.dumps(cfg.hf_config, indent=2, sort_keys=True) + "\n")
        if cfg.source_dir:
            for name in SIDE_FILES:
                if (Path(cfg.source_dir) / name).exists():
                    shutil.copy2(Path(cfg.source_dir) / name, tmp / "hf" / name)
    distributed.barrier("state-io-tmp")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / "state", params)
    ckptr.wait_until_finished()
    if writer:
        atomic_write_text(tmp / MARKER, json.dumps({"format": 1, "architecture": model.cfg.architecture,
                                                    "param_dtype": model.cfg.param_dtype}) + "\n")
        replace_dir(tmp, out)
    distributed.barrier("state-io-done")
    return out


def load_state(ckpt_dir: str | os.PathLike, *, mesh=None) -> CausalLM:
    """Restore a model saved by `save_state`, each parameter directly onto its sharding on `mesh`, in the dtype it
    was saved in (hf.load_model's export policy)."""
    d = Path(ckpt_dir).absolute()
    if not is_state_checkpoint(d):
        raise CheckpointError(f"{d}: not an ssd-jax model checkpoint ({MARKER} missing)")
    meta = json.loads((d / MARKER).read_text())
    spec = ModelSpec(path=str(d / "hf"), param_dtype=meta["param_dtype"])
    cfg = model_config(d / "hf", **options_for(spec, "export"))
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, nnx.Rngs(0), mesh=mesh))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    target = nnx.to_pure_dict(params)

    def abstract_leaf(path, leaf):
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=param_sharding(name, leaf.shape, mesh))

    target = jax.tree_util.tree_map_with_path(abstract_leaf, target)
    restored = ocp.StandardCheckpointer().restore(d / "state", target)
    nnx.replace_by_pure_dict(params, restored)
    return nnx.merge(graphdef, params, rest)

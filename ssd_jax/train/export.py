"""Export any checkpoint of a training run folder to an HF directory (the paper evaluates every 250 steps)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssd_jax import bundled
from ssd_jax.config import TrainConfig, load_config
from ssd_jax.errors import CheckpointError
from ssd_jax.models import hf
from ssd_jax.sharding import MeshConfig, make_mesh
from ssd_jax.train.checkpoint import TrainCheckpointer
from ssd_jax.train.loop import model_provenance


def export_checkpoint(run_dir: str | os.PathLike, *, step: int | None = None, out: str | os.PathLike | None = None,
                      dtype: str = "bfloat16") -> Path:
    run = Path(run_dir)
    if not (run / "config.yaml").exists():
        raise CheckpointError(f"{run}: not a training run folder (config.yaml missing)")
    if not (run / "checkpoints").is_dir():
        raise CheckpointError(f"{run / 'checkpoints'}: missing; the run saved no checkpoint yet")
    cfg = load_config(TrainConfig, run / "config.yaml")
    ckpt = TrainCheckpointer(run / "checkpoints", every=1, keep=10**9, async_save=False)
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{run / 'checkpoints'}: holds no complete checkpoint")
    step = step if step is not None else max(steps)
    if step not in steps:
        raise CheckpointError(f"{run / 'checkpoints'}: no checkpoint for step {step}; have {sorted(steps)}")
    model_dir = bundled.resolve_model(cfg.model.path)
    # Sharded over every device present (orbax reshards from however the run saved it): each process holds its
    # shards, never the whole model on one device; tensors reach the host one at a time.
    model = hf.load_model(cfg.model, make_mesh(MeshConfig(fsdp=-1)), "export", weights=False)
    ckpt.restore_params(step, model)
    ckpt.close()
    stats = run / "data_stats.json"
    prompt_format = json.loads(stats.read_text()).get("prompt_format") if stats.exists() else None
    return hf.save(model, out or run / f"export-step-{step}", dtype=dtype, source_dir=model_dir,
                   provenance=model_provenance(run, step, prompt_format))

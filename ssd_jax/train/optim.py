"""optax AdamW with linear warm-up + cosine decay to a floor, global-norm clipping, and a decay mask.

The schedule is defined once, here, as a formula on the number of updates already applied (`step`, 0-based):
  warm-up (step < W), `warmup: linear`:    lr = peak · (step + 1) / W   (the first update already moves; peak at W-1)
  warm-up (step < W), `warmup: megatron`:  lr = peak · step / W         (update 1 at lr 0; peak at step W)
  cosine  (step ≥ W):  lr = floor + (peak − floor) · ½ (1 + cos(π · min(1, (step − W) / (total − W))))
`megatron` is Megatron-LM's OptimizerParamScheduler (the paper trained with Megatron-LM): it sets the lr for
num_steps = 0 at construction (init_lr, 0 by default) and steps after each update, so update u runs at
lr(u − 1) = peak · (u − 1) / W. `linear` is one update ahead of it.
`lr_at` (plain Python, used by the PyTorch reference in the tests) and `lr_schedule` (JAX) are the same formula.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from ssd_jax.config import OptimConfig
from ssd_jax.errors import ConfigError

NO_DECAY_SUFFIXES = ("scale", "_bias")  # RMSNorm weights and biases


def _warmup_offset(cfg: OptimConfig) -> float:
    """Updates already counted at step 0: 1 for `linear` (the first update moves), 0 for `megatron` (it does not)."""
    if cfg.warmup not in ("linear", "megatron"):
        raise ConfigError(f"optim.warmup={cfg.warmup!r}: expected linear or megatron")
    return 1.0 if cfg.warmup == "linear" else 0.0


def lr_at(cfg: OptimConfig, step: int) -> float:
    w, total = cfg.warmup_steps, cfg.total_steps
    if step < w:
        return cfg.peak_lr * (step + _warmup_offset(cfg)) / w
    progress = min(1.0, (step - w) / max(total - w, 1))
    return cfg.floor_lr + (cfg.peak_lr - cfg.floor_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(cfg: OptimConfig):
    w, total = cfg.warmup_steps, cfg.total_steps
    offset = _warmup_offset(cfg)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = cfg.peak_lr * (s + offset) / max(w, 1)
        progress = jnp.clip((s - w) / max(total - w, 1), 0.0, 1.0)
        cos = cfg.floor_lr + (cfg.peak_lr - cfg.floor_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(s < w, warm, cos)

    return schedule


def _leaf_name(path) -> str:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    names = [str(n) for n in names if n is not None and n != "value"]
    return names[-1] if names else ""


def decay_mask(params, decay_norms_and_biases: bool):
    """True where weight decay applies: everything, or everything but norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decay_norms_and_biases or not _leaf_name(path).endswith(NO_DECAY_SUFFIXES), params
    )


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate=lr_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=lambda p: decay_mask(p, cfg.decay_norms_and_biases),
    )
    if cfg.clip_norm and cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw


def create(model, cfg: OptimConfig, mesh=None):
    """The NNX optimizer over the model's parameters, every state array placed (moments follow their parameter's
    sharding; counters replicated on `mesh`, or committed to the default device) so the step compiles once."""
    from flax import nnx

    from ssd_jax.sharding import replicate_unplaced

    return replicate_unplaced(nnx.Optimizer(model, make_optimizer(cfg), wrt=nnx.Param), mesh)

"""Qwen3 dense family: Llama's layout plus RMSNorm on each query/key head (q_norm, k_norm)."""

from __future__ import annotations

from ssd_jax.errors import CheckpointError
from ssd_jax.models import llama
from ssd_jax.models.transformer import ModelConfig

ARCHITECTURES = ("Qwen3ForCausalLM",)

KEY_RULES = llama.KEY_RULES + [
    ("model.layers.{layer}.self_attn.q_norm.weight", "layers.{layer}.attn.q_norm.scale", "reshape"),
    ("model.layers.{layer}.self_attn.k_norm.weight", "layers.{layer}.attn.k_norm.scale", "reshape"),
]


def check_no_sliding_window(c) -> None:
    if getattr(c, "use_sliding_window", False):
        raise CheckpointError("config.json: use_sliding_window=true is not supported (Qwen3 checkpoints ship false)")


def config_from_hf(c) -> ModelConfig:
    check_no_sliding_window(c)
    return ModelConfig(**llama.base_fields(c), qk_norm=True)

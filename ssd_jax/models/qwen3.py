"""Qwen3 dense family: Llama's layout plus RMSNorm on each query/key head (q_norm, k_norm)."""

from __future__ import annotations

from ssd_jax.errors import CheckpointError
from ssd_jax.models import llama
from ssd_jax.models.config import ModelConfig

ARCHITECTURES = ("Qwen3ForCausalLM",)

KEY_RULES = llama.KEY_RULES + [
    ("model.layers.{layer}.self_attn.q_norm.weight", "layers.{layer}.attn.q_norm.scale", "same"),
    ("model.layers.{layer}.self_attn.k_norm.weight", "layers.{layer}.attn.k_norm.scale", "same"),
]


# transformers' Qwen3Config defaults (see llama.HF_DEFAULTS).
HF_DEFAULTS = llama.HF_DEFAULTS | dict(vocab_size=151936, intermediate_size=22016, num_key_value_heads=32,
                                      head_dim=128, use_sliding_window=False)
HF_ALIASES: dict[str, str] = {}


def check_no_sliding_window(c) -> None:
    if c.use_sliding_window:
        raise CheckpointError("config.json: use_sliding_window=true is not supported (Qwen3 checkpoints ship false)")


def config_from_hf(c) -> ModelConfig:
    check_no_sliding_window(c)
    return ModelConfig(**llama.base_fields(c), qk_norm=True)

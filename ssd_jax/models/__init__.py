"""Flax NNX decoders for the HF families ssd-jax supports, looked up by the `architectures` field of config.json."""

from __future__ import annotations

from types import ModuleType

from ssd_jax.errors import CheckpointError
from ssd_jax.models import llama, qwen3, qwen3_moe
from ssd_jax.models.layers import KVCache
from ssd_jax.models.config import ModelConfig, MoEConfig
from ssd_jax.models.transformer import CausalLM, Output, padded_positions

FAMILIES: dict[str, ModuleType] = {arch: fam for fam in (llama, qwen3, qwen3_moe) for arch in fam.ARCHITECTURES}


def family_for(architecture: str, where: str = "config.json") -> ModuleType:
    """The family module (config reader + key map) for an HF architecture name."""
    try:
        return FAMILIES[architecture]
    except KeyError:
        raise CheckpointError(
            f"{where}: architecture {architecture!r} is not supported; expected one of {', '.join(sorted(FAMILIES))}"
        ) from None


__all__ = ["CausalLM", "KVCache", "ModelConfig", "MoEConfig", "Output", "FAMILIES", "family_for", "padded_positions"]

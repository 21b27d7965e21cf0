"""Qwen3-MoE family (30B-A3B shape: 128 experts, top-8, norm_topk_prob): Qwen3 attention, routed SwiGLU experts.

HF checkpoints (and transformers' own `save_pretrained`) store one (out, in) matrix per expert; we stack them
into (experts, in, out) kernels so the expert axis can be sharded and fed to `ragged_dot`.
"""

from __future__ import annotations

from ssd_jax.models import llama, qwen3
from ssd_jax.models.config import ModelConfig, MoEConfig

ARCHITECTURES = ("Qwen3MoeForCausalLM",)

# `{expert}` is not in the JAX path: it is the index along the stacked expert axis.
KEY_RULES = qwen3.KEY_RULES + [
    ("model.layers.{layer}.mlp.gate.weight", "layers.{layer}.mlp.router", "linear"),
    ("model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight", "layers.{layer}.mlp.experts_gate", "linear"),
    ("model.layers.{layer}.mlp.experts.{expert}.up_proj.weight", "layers.{layer}.mlp.experts_up", "linear"),
    ("model.layers.{layer}.mlp.experts.{expert}.down_proj.weight", "layers.{layer}.mlp.experts_down", "linear"),
]


# transformers' Qwen3MoeConfig defaults (see llama.HF_DEFAULTS).
HF_DEFAULTS = qwen3.HF_DEFAULTS | dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                                      num_key_value_heads=4, head_dim=None, mlp_only_layers=[],
                                      decoder_sparse_step=1, num_experts=128, num_experts_per_tok=8,
                                      moe_intermediate_size=768, norm_topk_prob=False)
# transformers 5 writes the expert count as num_local_experts (older checkpoints, e.g. Qwen's, say num_experts).
HF_ALIASES = {"num_experts": "num_local_experts"}


def config_from_hf(c) -> ModelConfig:
    qwen3.check_no_sliding_window(c)
    n = c.num_hidden_layers
    skip = set(c.mlp_only_layers or [])
    step = c.decoder_sparse_step or 1
    sparse = tuple(i not in skip and c.num_experts > 0 and (i + 1) % step == 0 for i in range(n))
    moe = MoEConfig(
        num_experts=c.num_experts,
        top_k=c.num_experts_per_tok,
        intermediate_size=c.moe_intermediate_size,
        norm_topk_prob=bool(c.norm_topk_prob),
        sparse_layers=sparse,
    )
    return ModelConfig(**llama.base_fields(c), qk_norm=True, moe=moe)

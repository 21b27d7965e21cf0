"""Qwen3-MoE family (30B-A3B shape: 128 experts, top-8, norm_topk_prob): Qwen3 attention, routed SwiGLU experts.

HF checkpoints (and transformers' own `save_pretrained`) store one (out, in) matrix per expert; we stack them
into (experts, in, out) kernels so the expert axis can be sharded and fed to `ragged_dot`.
"""

from __future__ import annotations

from ssd_jax.models import llama, qwen3
from ssd_jax.models.transformer import ModelConfig, MoEConfig

ARCHITECTURES = ("Qwen3MoeForCausalLM",)

# `{expert}` is not in the JAX path: it is the index along the stacked expert axis.
KEY_RULES = qwen3.KEY_RULES + [
    ("model.layers.{layer}.mlp.gate.weight", "layers.{layer}.mlp.router", "linear"),
    ("model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight", "layers.{layer}.mlp.experts_gate", "linear"),
    ("model.layers.{layer}.mlp.experts.{expert}.up_proj.weight", "layers.{layer}.mlp.experts_up", "linear"),
    ("model.layers.{layer}.mlp.experts.{expert}.down_proj.weight", "layers.{layer}.mlp.experts_down", "linear"),
]


def config_from_hf(c) -> ModelConfig:
    qwen3.check_no_sliding_window(c)
    n = c.num_hidden_layers
    skip = set(getattr(c, "mlp_only_layers", None) or [])
    step = getattr(c, "decoder_sparse_step", 1) or 1
    sparse = tuple(i not in skip and c.num_experts > 0 and (i + 1) % step == 0 for i in range(n))
    moe = MoEConfig(
        num_experts=c.num_experts,
        top_k=c.num_experts_per_tok,
        intermediate_size=c.moe_intermediate_size,
        norm_topk_prob=bool(c.norm_topk_prob),
        sparse_layers=sparse,
    )
    return ModelConfig(**llama.base_fields(c), qk_norm=True, moe=moe)

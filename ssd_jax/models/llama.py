"""Llama-3.x family (also SmolLM2): config from HF and the HF key map.

The module is the shared `CausalLM`; Llama's switches are `attention_bias`/`mlp_bias` and llama3 RoPE scaling.
"""

from __future__ import annotations

from ssd_jax.errors import CheckpointError
from ssd_jax.models.config import ModelConfig, RopeConfig

ARCHITECTURES = ("LlamaForCausalLM",)

# (HF key template, JAX param path template, transform). `{layer}` is the HF layer index on the HF side; on the JAX
# side it names the layer's stack, and the layer is a position along that parameter's leading axis (hf.py maps one
# to the other with ModelConfig.layer_slot). Transforms (hf.KeyRule, used to load and to export): "linear" transposes
# (out, in) → (in, out) then reshapes to the JAX shape, "linear_in2" is the same for a kernel whose *input* spans
# two JAX axes (o_proj), "same" keeps the shape (embeddings, norms), "flat" is a 1-D HF tensor reshaped to the JAX
# shape (biases: (heads * head_dim,) → (heads, head_dim)).
KEY_RULES: list[tuple[str, str, str]] = [
    ("model.embed_tokens.weight", "embed", "same"),
    ("model.norm.weight", "norm.scale", "same"),
    ("lm_head.weight", "lm_head", "linear"),
    ("model.layers.{layer}.input_layernorm.weight", "layers.{layer}.input_layernorm.scale", "same"),
    ("model.layers.{layer}.post_attention_layernorm.weight", "layers.{layer}.post_attention_layernorm.scale", "same"),
    ("model.layers.{layer}.self_attn.q_proj.weight", "layers.{layer}.attn.q_proj", "linear"),
    ("model.layers.{layer}.self_attn.k_proj.weight", "layers.{layer}.attn.k_proj", "linear"),
    ("model.layers.{layer}.self_attn.v_proj.weight", "layers.{layer}.attn.v_proj", "linear"),
    ("model.layers.{layer}.self_attn.o_proj.weight", "layers.{layer}.attn.o_proj", "linear_in2"),
    ("model.layers.{layer}.self_attn.q_proj.bias", "layers.{layer}.attn.q_bias", "flat"),
    ("model.layers.{layer}.self_attn.k_proj.bias", "layers.{layer}.attn.k_bias", "flat"),
    ("model.layers.{layer}.self_attn.v_proj.bias", "layers.{layer}.attn.v_bias", "flat"),
    ("model.layers.{layer}.self_attn.o_proj.bias", "layers.{layer}.attn.o_bias", "flat"),
    ("model.layers.{layer}.mlp.gate_proj.weight", "layers.{layer}.mlp.gate_proj", "linear"),
    ("model.layers.{layer}.mlp.up_proj.weight", "layers.{layer}.mlp.up_proj", "linear"),
    ("model.layers.{layer}.mlp.down_proj.weight", "layers.{layer}.mlp.down_proj", "linear"),
    ("model.layers.{layer}.mlp.gate_proj.bias", "layers.{layer}.mlp.gate_bias", "flat"),
    ("model.layers.{layer}.mlp.up_proj.bias", "layers.{layer}.mlp.up_bias", "flat"),
    ("model.layers.{layer}.mlp.down_proj.bias", "layers.{layer}.mlp.down_bias", "flat"),
]


# transformers' LlamaConfig defaults for every key the readers below fall back on (a config.json may omit them).
# tests/models/test_hf_config.py checks each against transformers, key by key.
HF_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-6,
                   tie_word_embeddings=False, attention_bias=False, mlp_bias=False, pad_token_id=None,
                   hidden_act="silu")
# transformers' attribute_map: attribute → the key its config.json stores it under.
HF_ALIASES: dict[str, str] = {}


def base_fields(c) -> dict:
    """Fields every family reads the same way from an HF config (`hf.HFConfig`: config.json over the family's
    transformers defaults)."""
    if c.hidden_act != "silu":
        raise CheckpointError(f"config.json: hidden_act={c.hidden_act!r} is not supported; expected 'silu'")
    heads = c.num_attention_heads
    kv = c.num_key_value_heads or heads
    if heads % kv:
        raise CheckpointError(f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    raw = c.to_dict()
    return dict(
        architecture=c.architectures[0],
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_layers=c.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=c.head_dim or c.hidden_size // heads,
        rms_norm_eps=float(c.rms_norm_eps),
        rope=RopeConfig.from_hf(raw),
        tie_word_embeddings=bool(c.tie_word_embeddings),
        attention_bias=bool(c.attention_bias),
        pad_token_id=_pad_id(c),
        hf_config=raw,
    )


def _pad_id(c) -> int | None:
    pad = c.pad_token_id
    return int(pad) if isinstance(pad, int) and 0 <= pad < c.vocab_size else None


def config_from_hf(c) -> ModelConfig:
    return ModelConfig(**base_fields(c), mlp_bias=bool(c.mlp_bias))

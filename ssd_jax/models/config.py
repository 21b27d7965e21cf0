"""Model configs: `ModelConfig` (one checkpoint's architecture, read from its HF config.json, plus how to run it),
its `MoEConfig` and `RopeConfig` parts, and the run options `ModelConfig.with_options` accepts.

Its own module so that the layers (layers.py) and the model (transformer.py) can both be typed against it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import jax
from flax import nnx

from ssd_jax.errors import CheckpointError, ConfigError
from ssd_jax.models.attention import IMPLS as ATTENTION_IMPLS

REMAT_POLICIES = ("none", "full", "save_dots")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings as HF's `rope_parameters` (or legacy `rope_theta`/`rope_scaling`) give them."""

    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    @classmethod
    def from_hf(cls, hf: dict) -> "RopeConfig":
        params = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling") or {}
        merged = {**scaling, **params}
        theta = merged.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = merged.get("rope_type", merged.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise CheckpointError(
                f"config.json: rope type {rope_type!r} (key rope_parameters.rope_type) is not supported; "
                "expected one of default, linear, llama3"
            )
        kw = dict(theta=float(theta), rope_type=rope_type)
        if rope_type in ("linear", "llama3"):
            kw["factor"] = float(merged["factor"])
        if rope_type == "llama3":
            kw["low_freq_factor"] = float(merged["low_freq_factor"])
            kw["high_freq_factor"] = float(merged["high_freq_factor"])
            kw["original_max_position_embeddings"] = int(merged["original_max_position_embeddings"])
        return cls(**kw)


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool
    sparse_layers: tuple[bool, ...]  # per layer: routed experts (True) or a dense MLP (False)
    impl: str = "sharded"  # sharded | ragged | dense  (see layers.MoE)
    dispatch: str = "auto"  # expert-parallel exchange: auto | ragged | padded (models/moe.py)
    capacity_factor: float = 0.0  # rows per (sender, owner) pair as a fraction of the routed rows; 0 = no drops
    grouped_gemm: str = "auto"  # auto | ragged_dot | tiled (models/moe.py)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one checkpoint, read from its HF `config.json` (never hard-coded), plus how to run it."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    moe: MoEConfig | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype (fp32 master weights when training)
    remat: str = "save_dots"  # per layer in the backward pass: none | full (recompute all) | save_dots (keep matmuls)
    # False stores every layer as a stack of one: a list of layers, L bodies to compile, but no per-step slicing of
    # stacked weights (memory-bound decoding on CPU reads each weight once per token instead of copying it first).
    scan_layers: bool = True
    attention_impl: str = "auto"  # auto | einsum | blockwise | cudnn | pallas (models/attention.py)
    # HF builds `nn.Embedding(..., padding_idx=pad_token_id)`: that row gets no gradient from the input lookup
    # (it still does through a tied LM head). We do the same so training matches PyTorch; None disables.
    pad_token_id: int | None = None
    # The checkpoint's own config.json, kept to write it back on export. Not part of equality/hash.
    hf_config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    source_dir: str = field(default="", compare=False, hash=False, repr=False)  # tokenizer files for export

    def with_options(self, **options) -> "ModelConfig":
        """The same architecture run differently. Keys are the RUN_OPTIONS fields (which do not describe the
        checkpoint) and `moe_<field>` for MoEConfig's MOE_RUN_OPTIONS; a MoE option on a dense model is ignored."""
        top, moe = {}, {}
        for key, value in options.items():
            if key in RUN_OPTIONS:
                top[key] = value
            elif key.startswith("moe_") and key[4:] in MOE_RUN_OPTIONS:
                moe[key[4:]] = value
            else:
                raise ConfigError(f"model option {key!r} is unknown; expected one of {', '.join(all_run_options())}")
            allowed = CHOICES.get(key)
            if allowed and value not in allowed:
                raise ConfigError(f"model option {key}={value!r}; expected one of {', '.join(allowed)}")
        cfg = replace(self, **top)
        if moe and cfg.moe is not None:
            cfg = replace(cfg, moe=replace(cfg.moe, **moe))
        return cfg

    def layer_stacks(self) -> tuple[tuple[bool, int], ...]:
        """(sparse, count) for each run of identical consecutive layers, in order; with `scan_layers` off, every
        layer is a stack of its own (a list of layers, each stored and compiled separately)."""
        sparse = self.moe.sparse_layers if self.moe else (False,) * self.num_layers
        if not self.scan_layers:
            return tuple((kind, 1) for kind in sparse)
        return tuple((kind, len(list(run))) for kind, run in itertools.groupby(sparse))

    def layer_slot(self, layer: int) -> tuple[int, int]:
        """(stack, index within the stack) of decoder layer `layer`."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a {self.num_layers}-layer model")
        for s, (_, count) in enumerate(self.layer_stacks()):
            if layer < count:
                return s, layer
            layer -= count
        raise AssertionError("unreachable")

    def stack_start(self, stack: int) -> int:
        """Index of the first decoder layer of `stack`."""
        return sum(count for _, count in self.layer_stacks()[:stack])

    def num_params(self) -> int:
        """Parameter count from the shapes (embedding counted once when tied)."""
        from ssd_jax.models.transformer import CausalLM  # the model imports this module

        abstract = nnx.eval_shape(lambda: CausalLM(self, nnx.Rngs(0)))
        return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


RUN_OPTIONS = ("dtype", "param_dtype", "remat", "scan_layers", "attention_impl")
MOE_RUN_OPTIONS = ("impl", "dispatch", "capacity_factor", "grouped_gemm")
CHOICES = {"remat": REMAT_POLICIES, "attention_impl": ATTENTION_IMPLS, "moe_impl": ("sharded", "ragged", "dense"),
           "moe_dispatch": ("auto", "ragged", "padded"), "moe_grouped_gemm": ("auto", "ragged_dot", "tiled")}


def all_run_options() -> tuple[str, ...]:
    return RUN_OPTIONS + tuple(f"moe_{k}" for k in MOE_RUN_OPTIONS)

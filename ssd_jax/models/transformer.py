"""The decoder-only causal LM that all three families instantiate, and its config.

The families differ only in switches (q/k norm, biases, MoE layers) that live in `ModelConfig`; each family file
reads its HF `config.json` into one of these and names its HF keys. One forward serves training (packed rows with
segment ids), scoring (padded batches) and decoding (a preallocated `KVCache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models.layers import MLP, Attention, KVCache, MoE, RMSNorm, RopeConfig, _init

Array = jax.Array


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool
    sparse_layers: tuple[bool, ...]  # per layer: routed experts (True) or a dense MLP (False)
    impl: str = "ragged"  # ragged | dense  (see layers.MoE)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one checkpoint, read from its HF `config.json` (never hard-coded)."""

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
    remat: bool = False  # rematerialise each decoder layer in the backward pass
    # HF builds `nn.Embedding(..., padding_idx=pad_token_id)`: that row gets no gradient from the input lookup
    # (it still does through a tied LM head). We do the same so training matches PyTorch; None disables.
    pad_token_id: int | None = None
    # The checkpoint's own config.json, kept to write it back on export. Not part of equality/hash.
    hf_config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    source_dir: str = field(default="", compare=False, hash=False, repr=False)  # tokenizer files for export

    def with_dtypes(self, dtype: str | None = None, param_dtype: str | None = None) -> "ModelConfig":
        return replace(self, dtype=dtype or self.dtype, param_dtype=param_dtype or self.param_dtype)

    def num_params(self) -> int:
        """Parameter count from the shapes (embedding counted once when tied)."""
        abstract = nnx.eval_shape(lambda: CausalLM(self, nnx.Rngs(0)))
        return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


class Output(NamedTuple):
    logits: Array  # (B, T, V) float32
    cache: KVCache | None = None
    hidden_states: tuple[Array, ...] | None = None  # HF convention: embeddings, layer 0..L-2 outputs, final norm
    router_logits: tuple[Array, ...] | None = None  # per MoE layer (B*T, E)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, sparse: bool, rngs: nnx.Rngs):
        pd = cfg.param_dtype
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        self.attn = Attention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        self.sparse = sparse
        self.mlp = MoE(cfg, rngs) if sparse else MLP(cfg.hidden_size, cfg.intermediate_size, cfg, rngs)

    def __call__(self, x, positions, segment_ids, cache_kv=None):
        h, new_kv = self.attn(self.input_layernorm(x), positions, segment_ids, cache_kv)
        x = x + h.astype(x.dtype)
        y = self.mlp(self.post_attention_layernorm(x))
        router_logits = None
        if self.sparse:
            y, router_logits = y
        return x + y.astype(x.dtype), new_kv, router_logits


class CausalLM(nnx.Module):
    """Embedding → decoder layers → final RMSNorm → LM head (tied to the embedding when the checkpoint says so:
    one parameter, so its gradient is the sum of both uses, as in PyTorch)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = cfg.param_dtype
        self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, cfg.hidden_size), pd))
        sparse = cfg.moe.sparse_layers if cfg.moe else (False,) * cfg.num_layers
        self.layers = nnx.List([DecoderLayer(cfg, sparse[i], rngs) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(_init(rngs, (cfg.hidden_size, cfg.vocab_size), pd))

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        c = self.cfg
        return KVCache.create(c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim, dtype or c.dtype)

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        cache: KVCache | None = None,
        *,
        output_hidden_states: bool = False,
        return_hidden: bool = False,
    ) -> Output:
        """tokens (B, T) int. `segment_ids` 0 marks padding (default: all ones); `positions` default 0..T-1.

        With `cache`, tokens are appended at `cache.end` and the updated cache is returned. With
        `return_hidden=True` the logits are skipped and `Output.logits` holds the final normed hidden states
        (B, T, D), for chunked losses that never materialise (B, T, V)."""
        cfg = self.cfg
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if cache is not None:
            kv_segment = jax.lax.dynamic_update_slice_in_dim(
                cache.segment_ids, segment_ids.astype(jnp.int32), cache.end, axis=1
            )
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.dtype)
        if cfg.pad_token_id is not None:
            x = jnp.where((tokens == cfg.pad_token_id)[..., None], jax.lax.stop_gradient(x), x)
        hidden = [x] if output_hidden_states else None
        routers, new_k, new_v = [], [], []
        for i, layer in enumerate(self.layers):
            cache_kv = None if cache is None else (cache.k[i], cache.v[i], kv_segment, cache.end)
            if cfg.remat and cache is None:
                x, kv, r = nnx.remat(lambda lyr, *a: lyr(*a))(layer, x, positions, segment_ids)
            else:
                x, kv, r = layer(x, positions, segment_ids, cache_kv)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
            if r is not None:
                routers.append(r)
            if output_hidden_states and i < cfg.num_layers - 1:
                hidden.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden.append(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(new_k), tuple(new_v), kv_segment, cache.end + t)
        out = x if return_hidden else self.logits(x)
        return Output(out, new_cache, tuple(hidden) if hidden else None, tuple(routers) or None)

    def head_kernel(self) -> Array:
        """(D, V) LM-head matrix in compute dtype (the transposed embedding when tied)."""
        w = self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
        return w.astype(self.cfg.dtype)

    def logits(self, x: Array) -> Array:
        return jnp.einsum("btd,dv->btv", x.astype(self.cfg.dtype), self.head_kernel(),
                          preferred_element_type=jnp.float32)


def padded_positions(segment_ids: Array) -> Array:
    """Positions for a left- or right-padded batch: count of real tokens before each slot (HF's
    `cumsum(mask) - 1`, clipped at 0 for the padding)."""
    return jnp.maximum(jnp.cumsum(segment_ids != 0, axis=1) - 1, 0).astype(jnp.int32)

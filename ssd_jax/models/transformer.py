"""The decoder-only causal LM that all three families instantiate (its config: models/config.py).

The families differ only in switches (q/k norm, biases, MoE layers) that live in `ModelConfig`; each family file
reads its HF `config.json` into one of these and names its HF keys. One forward serves training (packed rows with
segment ids), scoring (padded batches) and decoding (a preallocated `KVCache`).

Layers are stored stacked: `layers[s]` is one `DecoderLayer` whose parameters carry a leading axis over a run of
identical consecutive layers (one run for a homogeneous model; dense and MoE runs alternate where `mlp_only_layers`
or `decoder_sparse_step` mix them), and a run is applied with `jax.lax.scan`. So a 48-layer model traces and
compiles one layer body, not 48 (three times over in a remat'd train step). `scan_layers=False` makes every layer
a stack of one (the list layout) for decoding, where slicing a layer out of a stack copies its weights per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import remat
from ssd_jax.models.config import ModelConfig
from ssd_jax.models.layers import MLP, Attention, KVCache, MoE, RMSNorm, _init, rope_inv_freq, rope_tables
from ssd_jax.models.moe import MoEStats
from ssd_jax.sharding import constrain_batch, on_cpu

Array = jax.Array

class Output(NamedTuple):
    logits: Array | None  # (B, T, V) float32; None with return_hidden
    cache: KVCache | None = None
    hidden_states: tuple[Array, ...] | None = None  # HF convention: embeddings, layer 0..L-2 outputs, final norm
    moe_stats: MoEStats | None = None  # summed over the MoE layers (the load-balancing loss's inputs)
    last_hidden: Array | None = None  # (B, T, D) final normed hidden states, only with return_hidden


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, sparse: bool, rngs: nnx.Rngs):
        pd = cfg.param_dtype
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        self.attn = Attention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        self.sparse = sparse
        self.mlp = MoE(cfg, rngs) if sparse else MLP(cfg.hidden_size, cfg.intermediate_size, cfg, rngs)

    def __call__(self, x, rope, segment_ids, cache=None, mesh=None):
        h, new_kv = self.attn(self.input_layernorm(x), rope, segment_ids, cache, mesh)
        x = x + h.astype(x.dtype)
        stats = None
        if self.sparse:
            y, stats = self.mlp(self.post_attention_layernorm(x), mesh, segment_ids != 0)
        else:
            y = self.mlp(self.post_attention_layernorm(x), mesh)
        return x + y.astype(x.dtype), new_kv, stats


def _stacked_layers(cfg: ModelConfig, sparse: bool, count: int, rngs: nnx.Rngs) -> DecoderLayer:
    """`count` independently initialised layers as one DecoderLayer with a leading axis on every parameter."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(r: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(cfg, sparse, r)

    return make(rngs)


class CausalLM(nnx.Module):
    """Embedding → decoder layer stacks → final RMSNorm → LM head (tied to the embedding when the checkpoint says
    so: one parameter, so its gradient is the sum of both uses, as in PyTorch)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, mesh=None):
        self.cfg = cfg
        self.mesh = mesh  # the mesh the parameters live on (None: one device); the MoE and constraints use it
        pd = cfg.param_dtype
        self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, cfg.hidden_size), pd))
        self.layers = nnx.List([_stacked_layers(cfg, sparse, n, rngs) for sparse, n in cfg.layer_stacks()])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(_init(rngs, (cfg.hidden_size, cfg.vocab_size), pd))

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        c = self.cfg
        return KVCache.create([n for _, n in c.layer_stacks()], batch, max_len, c.num_kv_heads, c.head_dim,
                              dtype or c.dtype, on_cpu(self.mesh))

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
        `return_hidden=True` the logits are skipped (`Output.logits` is None) and `Output.last_hidden` holds the
        final normed hidden states (B, T, D): for chunked losses that never materialise (B, T, V), and for a LM head
        applied to the positions that need it."""
        cfg = self.cfg
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        kv_segment = None
        if cache is not None:
            kv_segment = jax.lax.dynamic_update_slice_in_dim(
                cache.segment_ids, segment_ids.astype(jnp.int32), cache.end, axis=1
            )
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.dtype)
        if cfg.pad_token_id is not None:
            x = jnp.where((tokens == cfg.pad_token_id)[..., None], jax.lax.stop_gradient(x), x)
        rope = rope_tables(positions, rope_inv_freq(cfg.rope, cfg.head_dim), cfg.dtype)
        hidden = [x] if output_hidden_states else None
        stats, new_k, new_v = None, [], []
        for s, stack in enumerate(self.layers):
            stack_cache = None if cache is None else (cache.k[s], cache.v[s], kv_segment, cache.end)
            x, kv, st, hs = self._run_stack(stack, x, rope, segment_ids, stack_cache, output_hidden_states)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
            if st is not None:
                st = MoEStats(*(a.sum(0) for a in st))
                stats = st if stats is None else MoEStats(*(a + b for a, b in zip(stats, st)))
            if output_hidden_states:
                hidden.extend(hs[i] for i in range(hs.shape[0]))
        x = self.norm(x)
        if output_hidden_states:
            hidden = hidden[: cfg.num_layers] + [x]
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(new_k), tuple(new_v), kv_segment, cache.end + t)
        return Output(logits=None if return_hidden else self.logits(x), cache=new_cache,
                      hidden_states=tuple(hidden) if hidden else None, moe_stats=stats,
                      last_hidden=x if return_hidden else None)

    def _run_stack(self, stack: DecoderLayer, x, rope, segment_ids, stack_cache, keep_hidden: bool):
        """Scan one stack of layers. The cache of a stack, (n, B, S, K, hd), rides in the carry so each layer's
        new keys are written in place at (layer, :, end)."""
        graphdef, state = nnx.split(stack)
        n = jax.tree.leaves(state)[0].shape[0]
        cpu = on_cpu(self.mesh)

        def body(carry, xs):
            h, ck, cv = carry
            h = h.astype(self.cfg.dtype)  # carried as `remat.stored(h, cpu)`: the scan keeps it for the backward
            params, i = xs
            layer = nnx.merge(graphdef, params)
            layer_cache = None if ck is None else (ck, cv, i) + tuple(stack_cache[2:])
            h, kv, stats = layer(h, rope, segment_ids, layer_cache, self.mesh)
            h = constrain_batch(h, self.mesh)
            ck, cv = (None, None) if kv is None else kv
            return (remat.stored(h, cpu), ck, cv), (stats, h if keep_hidden else None)

        if stack_cache is None:
            body = remat.remat(body, self.cfg.remat)
        carry = (remat.stored(x, cpu), None, None) if stack_cache is None else (remat.stored(x, cpu),) + stack_cache[:2]
        (x, ck, cv), (stats, hs) = jax.lax.scan(body, carry, (state, jnp.arange(n)))
        return x.astype(self.cfg.dtype), (None if ck is None else (ck, cv)), stats, hs

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

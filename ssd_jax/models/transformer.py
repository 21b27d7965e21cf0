"""The decoder-only causal LM that all three families instantiate, and its config.

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

import itertools
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.errors import ConfigError
from ssd_jax.models.attention import IMPLS as ATTENTION_IMPLS
from ssd_jax.models.layers import MLP, Attention, KVCache, MoE, RMSNorm, RopeConfig, _init
from ssd_jax.models.moe import MoEStats
from ssd_jax.sharding import constrain_batch

Array = jax.Array

REMAT_POLICIES = ("none", "full", "save_dots")


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
        abstract = nnx.eval_shape(lambda: CausalLM(self, nnx.Rngs(0)))
        return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


RUN_OPTIONS = ("dtype", "param_dtype", "remat", "scan_layers", "attention_impl")
MOE_RUN_OPTIONS = ("impl", "dispatch", "capacity_factor", "grouped_gemm")
CHOICES = {"remat": REMAT_POLICIES, "attention_impl": ATTENTION_IMPLS, "moe_impl": ("sharded", "ragged", "dense"),
           "moe_dispatch": ("auto", "ragged", "padded"), "moe_grouped_gemm": ("auto", "ragged_dot", "tiled")}


def all_run_options() -> tuple[str, ...]:
    return RUN_OPTIONS + tuple(f"moe_{k}" for k in MOE_RUN_OPTIONS)


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

    def __call__(self, x, positions, segment_ids, cache=None, mesh=None):
        h, new_kv = self.attn(self.input_layernorm(x), positions, segment_ids, cache, mesh)
        x = x + h.astype(x.dtype)
        stats = None
        if self.sparse:
            y, stats = self.mlp(self.post_attention_layernorm(x), mesh, segment_ids != 0)
        else:
            y = self.mlp(self.post_attention_layernorm(x))
        return x + y.astype(x.dtype), new_kv, stats


def _stacked_layers(cfg: ModelConfig, sparse: bool, count: int, rngs: nnx.Rngs) -> DecoderLayer:
    """`count` independently initialised layers as one DecoderLayer with a leading axis on every parameter."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(r: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(cfg, sparse, r)

    return make(rngs)


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    saveable = {"full": None, "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[policy]
    return jax.checkpoint(fn, policy=saveable, prevent_cse=False)


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
                              dtype or c.dtype)

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
        hidden = [x] if output_hidden_states else None
        stats, new_k, new_v = None, [], []
        for s, stack in enumerate(self.layers):
            stack_cache = None if cache is None else (cache.k[s], cache.v[s], kv_segment, cache.end)
            x, kv, st, hs = self._run_stack(stack, x, positions, segment_ids, stack_cache, output_hidden_states)
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

    def _run_stack(self, stack: DecoderLayer, x, positions, segment_ids, stack_cache, keep_hidden: bool):
        """Scan one stack of layers. The cache of a stack, (n, B, S, K, hd), rides in the carry so each layer's
        new keys are written in place at (layer, :, end)."""
        graphdef, state = nnx.split(stack)
        n = jax.tree.leaves(state)[0].shape[0]

        def body(carry, xs):
            h, ck, cv = carry
            params, i = xs
            layer = nnx.merge(graphdef, params)
            layer_cache = None if ck is None else (ck, cv, i) + tuple(stack_cache[2:])
            h, kv, stats = layer(h, positions, segment_ids, layer_cache, self.mesh)
            h = constrain_batch(h, self.mesh)
            ck, cv = (None, None) if kv is None else kv
            return (h, ck, cv), (stats, h if keep_hidden else None)

        if stack_cache is None:
            body = _remat(body, self.cfg.remat)
        carry = (x, None, None) if stack_cache is None else (x, stack_cache[0], stack_cache[1])
        (x, ck, cv), (stats, hs) = jax.lax.scan(body, carry, (state, jnp.arange(n)))
        return x, (None if ck is None else (ck, cv)), stats, hs

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

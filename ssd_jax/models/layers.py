"""Decoder building blocks shared by the Llama, Qwen3 and Qwen3-MoE families.

Every block computes exactly what its HF PyTorch counterpart computes (same op order, fp32 where HF upcasts), so
that the parity tests can hold fp32 logits to 1e-4. Parameters are stored in `param_dtype` (the fp32 master copy
during training) and cast to the compute `dtype` at use.

Layouts (JAX side, chosen so that every matmul is an einsum over named axes that the sharding rules can split):
  attention q/k/v kernels (hidden, heads, head_dim), o kernel (heads, head_dim, hidden);
  MLP kernels (in, out); MoE expert kernels (experts, in, out); router kernel (hidden, experts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssd_jax.errors import CheckpointError

Array = jax.Array


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


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies in float32, computed in HF's order of operations (modeling_rope_utils)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(rope.theta) ** exponent)).astype(np.float32)
    if rope.rope_type == "linear":
        inv_freq = inv_freq / np.float32(rope.factor)
    elif rope.rope_type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotate-half RoPE. x: (B, T, heads, head_dim); positions: (B, T) int."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # (B, T, hd/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos = jnp.cos(emb).astype(x.dtype)[:, :, None, :]
    sin = jnp.sin(emb).astype(x.dtype)[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _init(rngs: nnx.Rngs, shape: tuple[int, ...], dtype, std: float = 0.02) -> Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class RMSNorm(nnx.Module):
    """HF's RMSNorm: normalise in fp32, cast back, then scale (the weight multiplies the cast value)."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: Array) -> Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * h.astype(x.dtype)


class KVCache(NamedTuple):
    """Preallocated per-layer keys/values plus the slot bookkeeping the attention mask needs.

    `segment_ids[b, s]` is 0 for an empty or padding slot; `end` is the next slot to write (shared by the batch,
    which is left-padded). Kept functional (passed in, returned) so decode loops can carry it through `lax` loops.
    """

    k: tuple[Array, ...]  # per layer (B, S, kv_heads, head_dim)
    v: tuple[Array, ...]
    segment_ids: Array  # (B, S) int32
    end: Array  # () int32

    @classmethod
    def create(cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype) -> "KVCache":
        zeros = lambda: jnp.zeros((batch, max_len, kv_heads, head_dim), dtype)  # noqa: E731
        return cls(
            k=tuple(zeros() for _ in range(num_layers)),
            v=tuple(zeros() for _ in range(num_layers)),
            segment_ids=jnp.zeros((batch, max_len), jnp.int32),
            end=jnp.zeros((), jnp.int32),
        )


def attention_mask(q_segment: Array, kv_segment: Array, q_slot: Array, kv_slot: Array) -> Array:
    """(B, T, S) boolean: causal in slot order, same non-zero segment. Packing and padding share this one rule."""
    same = (q_segment[:, :, None] == kv_segment[:, None, :]) & (kv_segment[:, None, :] != 0)
    causal = kv_slot[None, None, :] <= q_slot[None, :, None]
    return same & causal


class Attention(nnx.Module):
    """Grouped-query attention with optional q/k RMSNorm (Qwen3) and biases (Llama `attention_bias`)."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        d, h, k, hd, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.param_dtype
        self.num_heads, self.num_kv_heads, self.head_dim = h, k, hd
        self.dtype = cfg.dtype
        self.q_proj = nnx.Param(_init(rngs, (d, h, hd), pd))
        self.k_proj = nnx.Param(_init(rngs, (d, k, hd), pd))
        self.v_proj = nnx.Param(_init(rngs, (d, k, hd), pd))
        self.o_proj = nnx.Param(_init(rngs, (h, hd, d), pd))
        if cfg.attention_bias:
            self.q_bias = nnx.Param(jnp.zeros((h, hd), pd))
            self.k_bias = nnx.Param(jnp.zeros((k, hd), pd))
            self.v_bias = nnx.Param(jnp.zeros((k, hd), pd))
            self.o_bias = nnx.Param(jnp.zeros((d,), pd))
        self.use_bias, self.use_qk_norm = cfg.attention_bias, cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=pd)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=pd)
        self._inv_freq = tuple(float(f) for f in rope_inv_freq(cfg.rope, hd))

    def __call__(
        self,
        x: Array,
        positions: Array,
        segment_ids: Array,
        cache_kv: tuple[Array, Array, Array, Array] | None = None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """x (B, T, D). With `cache_kv=(k, v, kv_segment_ids, end)` the new keys/values are written at slots
        [end, end+T) and attention runs over the whole cache; returns the updated (k, v)."""
        dt = self.dtype
        x = x.astype(dt)
        q = jnp.einsum("btd,dhk->bthk", x, self.q_proj[...].astype(dt))
        k = jnp.einsum("btd,dhk->bthk", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("btd,dhk->bthk", x, self.v_proj[...].astype(dt))
        if self.use_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = np.asarray(self._inv_freq, np.float32)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

        t = x.shape[1]
        if cache_kv is None:
            keys, values, kv_segment, start = k, v, segment_ids, 0
            new_kv = None
        else:
            ck, cv, kv_segment, start = cache_kv
            keys = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), start, axis=1)
            values = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), start, axis=1)
            new_kv = (keys, values)
        q_slot = start + jnp.arange(t)
        kv_slot = jnp.arange(keys.shape[1])
        mask = attention_mask(segment_ids, kv_segment, q_slot, kv_slot)
        out = dot_product_attention(q, keys.astype(dt), values.astype(dt), mask, self.num_kv_heads)
        y = jnp.einsum("bthk,hkd->btd", out, self.o_proj[...].astype(dt))
        if self.use_bias:
            y = y + self.o_bias[...].astype(dt)
        return y, new_kv


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array, kv_heads: int) -> Array:
    """Softmax attention in fp32 with GQA. q (B,T,H,hd), k/v (B,S,K,hd), mask (B,T,S) -> (B,T,H,hd).

    Fully masked rows (padding queries) get a uniform softmax instead of NaN; their outputs are never used."""
    b, t, h, hd = q.shape
    g = h // kv_heads
    qg = q.reshape(b, t, kv_heads, g, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / math.sqrt(hd)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, hd)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, inter: int, cfg, rngs: nnx.Rngs):
        pd = cfg.param_dtype
        self.dtype = cfg.dtype
        self.gate_proj = nnx.Param(_init(rngs, (hidden, inter), pd))
        self.up_proj = nnx.Param(_init(rngs, (hidden, inter), pd))
        self.down_proj = nnx.Param(_init(rngs, (inter, hidden), pd))
        self.use_bias = cfg.mlp_bias
        if self.use_bias:
            self.gate_bias = nnx.Param(jnp.zeros((inter,), pd))
            self.up_bias = nnx.Param(jnp.zeros((inter,), pd))
            self.down_bias = nnx.Param(jnp.zeros((hidden,), pd))

    def __call__(self, x: Array) -> Array:
        dt = self.dtype
        x = x.astype(dt)
        g = x @ self.gate_proj[...].astype(dt)
        u = x @ self.up_proj[...].astype(dt)
        if self.use_bias:
            g, u = g + self.gate_bias[...].astype(dt), u + self.up_bias[...].astype(dt)
        y = (jax.nn.silu(g) * u) @ self.down_proj[...].astype(dt)
        if self.use_bias:
            y = y + self.down_bias[...].astype(dt)
        return y


class MoE(nnx.Module):
    """Top-k routed SwiGLU experts (Qwen3-MoE): softmax router in fp32 → top-k → optional renormalisation.

    `impl="ragged"` sorts token-expert assignments by expert and runs `jax.lax.ragged_dot` (grouped GEMM on GPU/TPU,
    work proportional to top-k); `impl="dense"` runs every expert on every token and weights by the sparse gates
    (exact, E/k× the FLOPs; the simplest thing for tiny models and for GSPMD expert sharding).
    """

    def __init__(self, cfg, rngs: nnx.Rngs):
        m, pd = cfg.moe, cfg.param_dtype
        d, e, f = cfg.hidden_size, m.num_experts, m.intermediate_size
        self.dtype, self.top_k, self.norm_topk_prob, self.impl = cfg.dtype, m.top_k, m.norm_topk_prob, m.impl
        self.num_experts = e
        self.router = nnx.Param(_init(rngs, (d, e), pd))
        self.experts_gate = nnx.Param(_init(rngs, (e, d, f), pd))
        self.experts_up = nnx.Param(_init(rngs, (e, d, f), pd))
        self.experts_down = nnx.Param(_init(rngs, (e, f, d), pd))

    def route(self, x2: Array) -> tuple[Array, Array, Array]:
        """x2 (N, D) -> router logits (N, E), top-k weights (N, k) in compute dtype, top-k expert ids (N, k)."""
        logits = x2 @ self.router[...].astype(x2.dtype)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        weights, idx = jax.lax.top_k(probs, self.top_k)
        if self.norm_topk_prob:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return logits, weights.astype(x2.dtype), idx

    def __call__(self, x: Array) -> tuple[Array, Array]:
        dt = self.dtype
        b, t, d = x.shape
        x2 = x.astype(dt).reshape(b * t, d)
        logits, weights, idx = self.route(x2)
        wg, wu, wd = (p[...].astype(dt) for p in (self.experts_gate, self.experts_up, self.experts_down))
        if self.impl == "dense":
            combine = jnp.zeros((b * t, self.num_experts), dt).at[jnp.arange(b * t)[:, None], idx].add(weights)
            h = jax.nn.silu(jnp.einsum("nd,edf->nef", x2, wg)) * jnp.einsum("nd,edf->nef", x2, wu)
            y = jnp.einsum("nef,efd,ne->nd", h, wd, combine)
        else:
            flat_e = idx.reshape(-1)  # (N*k,)
            order = jnp.argsort(flat_e, stable=True)
            token = order // self.top_k
            xs = x2[token]
            sizes = jnp.bincount(flat_e, length=self.num_experts).astype(jnp.int32)
            h = jax.nn.silu(jax.lax.ragged_dot(xs, wg, sizes)) * jax.lax.ragged_dot(xs, wu, sizes)
            ys = jax.lax.ragged_dot(h, wd, sizes) * weights.reshape(-1)[order][:, None]
            y = jnp.zeros((b * t, d), dt).at[token].add(ys)
        return y.reshape(b, t, d), logits

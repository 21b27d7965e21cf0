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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from ssd_jax.models import moe, remat
from ssd_jax.models.activations import silu_mul
from ssd_jax.models.attention import attend, attend_cache
from ssd_jax.models.config import ModelConfig, RopeConfig
from ssd_jax.sharding import on_cpu

Array = jax.Array


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


def rope_tables(positions: Array, inv_freq: np.ndarray, dtype) -> tuple[Array, Array]:
    """(cos, sin), each (B, T, 1, head_dim) in `dtype`, for positions (B, T): computed once per forward and shared
    by every layer, as HF's rotary embedding is (fp32 angles, cast to the compute dtype)."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # (B, T, hd/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype)[:, :, None, :], jnp.sin(emb).astype(dtype)[:, :, None, :]


def _rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@jax.custom_vjp
def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate-half RoPE: x (B, T, heads, head_dim), tables from `rope_tables`.

    A custom VJP because XLA:CPU fused autodiff's backward (two slices, a pad and an add per half, rounded after
    each op in bf16) into a loop 12× slower than this one-pass form, dx = dy·cos − rotate_half(dy·sin), which is
    the same value (bit-identical in bf16; fp32 differs in the last bit by summation order). The tables get no
    gradient (positions are integers)."""
    return x * cos + _rotate_half(x) * sin


def _apply_rope_fwd(x, cos, sin):
    return apply_rope(x, cos, sin), (cos, sin)


def _apply_rope_bwd(res, dy):
    cos, sin = res
    return dy * cos - _rotate_half(dy * sin), None, None


apply_rope.defvjp(_apply_rope_fwd, _apply_rope_bwd)


def project(x: Array, w: Array | tuple[Array, ...], dtype, contract: int = 1, *, cpu: bool = False):
    """x's last `contract` axes times w's first ones (a linear layer over flattened tokens and features), in `dtype`,
    accumulated in fp32 and rounded once, as a bf16 GEMM computes it. A tuple of kernels gives a tuple of products
    of the same x.

    `cpu` (the program is compiled for XLA:CPU, `sharding.on_cpu`) takes `_matmuls`, whose dots ask for the fp32
    accumulation explicitly and whose backward reads transposed residuals: XLA:CPU runs a bf16 × bf16 → fp32 dot on
    AMX/AVX512-BF16 through YNNPACK but upcasts a bf16 → bf16 dot to an fp32 GEMM (4-7× slower on a CPU with AMX).
    Elsewhere these are plain dots and autodiff: cuBLAS and the TPU accumulate a bf16 GEMM in fp32 anyway."""
    lead = x.shape[: x.ndim - contract]
    x2 = x.astype(dtype).reshape(math.prod(lead), -1)
    ws = w if isinstance(w, tuple) else (w,)
    kernels = tuple(k.astype(dtype).reshape(x2.shape[1], -1) for k in ws)
    ys = _matmuls(x2, kernels) if cpu else tuple(jnp.dot(x2, k, preferred_element_type=dtype) for k in kernels)
    ys = tuple(y.reshape(lead + k.shape[contract:]) for y, k in zip(ys, ws))
    return ys if isinstance(w, tuple) else ys[0]


def transposed_for_backward(z: Array) -> Array:
    """The residual through which an XLA:CPU backward product reads zᵀ (z 2-D): for bf16 a transposed copy made in
    the forward pass, named `remat.TRANSPOSED` and stored fp32 (`remat.stored`); for fp32 z itself.

    Why: XLA:CPU hands only canonical row-major (M, K) × (K, N) products to YNNPACK's AMX/AVX512-BF16 kernels; it
    folds a transpose into the dot and then upcasts a bf16 product to an fp32 GEMM (1680 → 258 GFLOP/s for a
    2048 × 576 × 1536 weight-gradient product), and runs fp32 ones on a slower path too. A copy made in the forward
    and carried to the backward through the layer scan's residuals cannot be folded. In fp32 the transposed forms
    run at 80-100 % of the canonical one and the copies cost more than they save (SmolLM2's step: 17.8 s without,
    18.7 with)."""
    return checkpoint_name(remat.stored(z.T, cpu=True), remat.TRANSPOSED) if z.dtype == jnp.bfloat16 else z


def dot_t(a: Array, saved: Array) -> Array:
    """a @ zᵀ accumulated in fp32, in a's dtype, given `saved = transposed_for_backward(z)`."""
    saved = saved.astype(a.dtype)
    return jnp.dot(a, saved if a.dtype == jnp.bfloat16 else saved.T, preferred_element_type=jnp.float32)


def t_dot(saved: Array, b: Array) -> Array:
    """zᵀ @ b accumulated in fp32, in b's dtype, given `saved = transposed_for_backward(z)`."""
    saved = saved.astype(b.dtype)
    return jnp.dot(saved if b.dtype == jnp.bfloat16 else saved.T, b, preferred_element_type=jnp.float32)


def _dot(x: Array, w: Array) -> Array:
    """x (N, K) @ w (K, M) accumulated in fp32, rounded to x's dtype (see `project`)."""
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


@jax.custom_vjp
def _matmuls(x: Array, ws: tuple[Array, ...]) -> tuple[Array, ...]:
    """x (N, K) @ each w (K, M_i) (`_dot`) for XLA:CPU; the VJP reads transposed residuals."""
    return tuple(_dot(x, w) for w in ws)


def _matmuls_fwd(x, ws):
    ys = tuple(remat.keep(y, remat.PRODUCT, cpu=True) for y in _matmuls(x, ws))
    return ys, (transposed_for_backward(x), tuple(transposed_for_backward(w) for w in ws))


def _matmuls_bwd(res, dys):
    xs, wss = res
    dx = sum(dot_t(dy, w) for dy, w in zip(dys, wss))
    return dx.astype(dys[0].dtype), tuple(t_dot(xs, dy).astype(dy.dtype) for dy in dys)


_matmuls.defvjp(_matmuls_fwd, _matmuls_bwd)


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
    """Preallocated keys/values per layer stack plus the slot bookkeeping the attention mask needs.

    `k[s]` holds stack `s`'s keys as (layers, B, kv_heads, head_dim, S) and `v[s]` its values as (layers, B,
    kv_heads, S, head_dim): in that layout a decode step's scores and weighted sum are plain matmuls per (row, kv
    head) that read the cache in place (`attention.cached_einsum_attention`). `segment_ids[b, s]` is 0 for an empty
    or padding slot; `end` is the next slot to write (shared by the batch, which is left-padded). Kept functional
    (passed in, returned) so decode loops can carry it through `lax` loops.

    Compiled for XLA:CPU (`cpu`) a bf16 model's cache is stored in fp32 (its values are the bf16 keys and values,
    exactly) and attention over it runs in fp32. Why: XLA:CPU upcasts a bf16 dynamic-update-slice to fp32 (convert
    the whole buffer, write, convert back), so each layer's one-token write rewrote its whole cache: 11 ms against
    0.07 ms for a (96, 64, 2048) cache. Stored as uint16 bits the write is in place, but every read became a
    converting copy of the cache; and XLA:CPU's small batched fp32 dots are faster than its bf16 ones (0.9 against
    1.2 ms per decode layer)."""

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    segment_ids: Array  # (B, S) int32
    end: Array | int  # () int32

    @classmethod
    def create(cls, stack_sizes: list[int], batch: int, max_len: int, kv_heads: int, head_dim: int,
               dtype, cpu: bool) -> "KVCache":
        if jnp.dtype(dtype) == jnp.bfloat16 and cpu:
            dtype = jnp.float32
        return cls(
            k=tuple(jnp.zeros((n, batch, kv_heads, head_dim, max_len), dtype) for n in stack_sizes),
            v=tuple(jnp.zeros((n, batch, kv_heads, max_len, head_dim), dtype) for n in stack_sizes),
            segment_ids=jnp.zeros((batch, max_len), jnp.int32),
            end=0,  # a Python int until it crosses a jit boundary: a prefill into a fresh cache skips the empty part
        )


class Attention(nnx.Module):
    """Grouped-query attention with optional q/k RMSNorm (Qwen3) and biases (Llama `attention_bias`)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
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
        self.impl = cfg.attention_impl

    def __call__(
        self,
        x: Array,
        rope: tuple[Array, Array],
        segment_ids: Array,
        cache: tuple[Array, Array, Array, Array, Array] | None = None,
        mesh=None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """x (B, T, D); `rope` the model's (cos, sin) (`rope_tables`). With `cache=(k, v, layer, kv_segment_ids,
        end)` (k/v: the whole stack's cache) this layer's new keys/values are written at [layer, :, end:end+T] and
        attention runs over that layer's cache; returns the updated stack cache (k, v)."""
        dt, cpu = self.dtype, on_cpu(mesh)
        x = x.astype(dt)
        # (B, T, heads, head_dim) each, one saved xᵀ for the three.
        q, k, v = project(x, (self.q_proj[...], self.k_proj[...], self.v_proj[...]), dt, cpu=cpu)
        if self.use_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # Kept for the backward (the projections' outputs are then not needed there): recomputing the rotation
        # from the saved projection made XLA:CPU fuse the residual stack's dynamic slice into the rotation's
        # loop, 4-10x slower than the rotation itself (bf16: 0.46 s of a 6-8 s SmolLM2 step).
        q, k = (remat.keep(apply_rope(z, *rope), remat.ROTATED, cpu) for z in (q, k))

        if cache is None:
            out = attend(q, k, v, segment_ids, segment_ids, 0, impl=self.impl, mesh=mesh)
            new_kv = None
        else:
            ck, cv, layer, kv_segment, start = cache
            cdt = ck.dtype  # attention runs in the cache's dtype (see KVCache), on the same bf16-rounded values
            kt = jnp.transpose(k, (0, 2, 3, 1)).astype(cdt)  # (B, K, hd, T): the cache's key layout
            vt = jnp.transpose(v, (0, 2, 1, 3)).astype(cdt)  # (B, K, T, hd)
            out = attend_cache(q.astype(cdt), kt, vt, ck[layer], cv[layer], segment_ids, kv_segment, start,
                               impl=self.impl, mesh=mesh).astype(dt)
            # The new keys are written after attention has read the old cache, so XLA can update it in place (see
            # attend_cache). Nothing else orders the write after the reads (the new keys do not depend on the
            # attention output), and XLA would copy the whole cache to allow either order: this zero term, which
            # XLA does not fold for floats, makes the written values wait for the output.
            dep = (out[0, 0, 0, 0] * 0).astype(cdt)
            zero = jnp.zeros((), jnp.int32)
            ck = jax.lax.dynamic_update_slice(ck, (kt + dep)[None], (layer, zero, zero, zero, start))
            cv = jax.lax.dynamic_update_slice(cv, (vt + dep)[None], (layer, zero, zero, start, zero))
            new_kv = (ck, cv)
        y = project(out, self.o_proj[...], dt, contract=2, cpu=cpu)
        if self.use_bias:
            y = y + self.o_bias[...].astype(dt)
        return y, new_kv


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, inter: int, cfg: ModelConfig, rngs: nnx.Rngs):
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

    def __call__(self, x: Array, mesh=None) -> Array:
        dt = self.dtype
        b = (self.gate_bias[...].astype(dt), self.up_bias[...].astype(dt)) if self.use_bias else None
        x2 = x.astype(dt).reshape(-1, x.shape[-1])
        y = swiglu(x2, self.gate_proj[...].astype(dt), self.up_proj[...].astype(dt), self.down_proj[...].astype(dt), b,
                   cpu=on_cpu(mesh)).reshape(x.shape)
        if self.use_bias:
            y = y + self.down_bias[...].astype(dt)
        return y


def _gate_up(x: Array, wg: Array, wu: Array, b) -> tuple[Array, Array]:
    """x (N, D) → the gate and up pre-activations (N, F), biases added."""
    g, u = _dot(x, wg), _dot(x, wu)
    return (g, u) if b is None else (g + b[0], u + b[1])


def _down(g: Array, u: Array, wd: Array) -> tuple[Array, Array]:
    a = silu_mul(g, u)
    return _dot(a, wd), a


def swiglu(x: Array, wg: Array, wu: Array, wd: Array, b: tuple[Array, Array] | None, *, cpu: bool) -> Array:
    """down(silu(x @ wg + bg) * (x @ wu + bu)) for x (N, D), everything in x's dtype, accumulated in fp32. `cpu`
    (compiled for XLA:CPU): `_swiglu_xla_cpu`'s hand-written backward; elsewhere plain dots and autodiff (see
    `project`)."""
    if cpu:
        return _swiglu_xla_cpu(x, wg, wu, wd, b)
    g, u = jnp.dot(x, wg, preferred_element_type=x.dtype), jnp.dot(x, wu, preferred_element_type=x.dtype)
    if b is not None:
        g, u = g + b[0], u + b[1]
    return jnp.dot(silu_mul(g, u), wd, preferred_element_type=x.dtype)


@jax.custom_vjp
def _swiglu_xla_cpu(x: Array, wg: Array, wu: Array, wd: Array, b: tuple[Array, Array] | None) -> Array:
    """`swiglu` for XLA:CPU (fp32 accumulation asked for explicitly, see `project`).

    A custom VJP because of what XLA:CPU made of autodiff's backward: it fused the SiLU derivative into a copy that
    writes the (tokens, inter) cotangent transposed for the weight-gradient dots, unvectorised (46 % of the MLP's
    backward at 4 × 512 tokens on SmolLM2). Here every cotangent is computed row-major, each gradient is one dot
    over the residuals `transposed_for_backward` makes, and the result is autodiff's up to rounding order."""
    return _down(*_gate_up(x, wg, wu, b), wd)[0]


def _swiglu_fwd(x, wg, wu, wd, b):
    g, u = _gate_up(x, wg, wu, b)
    y, a = _down(g, u, wd)
    saved = tuple(transposed_for_backward(z) for z in (x, a, wg, wu, wd))
    return y, (remat.stored(g, cpu=True), remat.stored(u, cpu=True), saved, b)


def _swiglu_bwd(res, dy):
    g, u, (xs, as_, wgs, wus, wds), b = res
    dt, f32 = dy.dtype, jnp.float32
    g, u = g.astype(f32), u.astype(f32)
    sg = jax.nn.sigmoid(g)
    da = dot_t(dy, wds)
    du = (da * g * sg).astype(dt)
    dg = (da * u * sg * (1 + g * (1 - sg))).astype(dt)
    dx = dot_t(dg, wgs) + dot_t(du, wus)
    db = None if b is None else (jnp.sum(dg, 0, dtype=f32).astype(dt), jnp.sum(du, 0, dtype=f32).astype(dt))
    return dx.astype(dt), t_dot(xs, dg).astype(dt), t_dot(xs, du).astype(dt), t_dot(as_, dy).astype(dt), db


_swiglu_xla_cpu.defvjp(_swiglu_fwd, _swiglu_bwd)


class MoE(nnx.Module):
    """Top-k routed SwiGLU experts (Qwen3-MoE): softmax router in fp32 → top-k → optional renormalisation.

    `impl` (models/moe.py): "sharded" routes and runs grouped GEMMs on each device's own tokens under shard_map and
    sends rows to the experts' owners when `expert` > 1 (the scalable path); "ragged" is the global sort +
    `ragged_dot` reference; "dense" runs every expert on every token (exact, E/k× the FLOPs).
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        m, pd = cfg.moe, cfg.param_dtype
        d, e, f = cfg.hidden_size, m.num_experts, m.intermediate_size
        self.dtype, self.top_k, self.norm_topk_prob = cfg.dtype, m.top_k, m.norm_topk_prob
        self.impl, self.dispatch, self.capacity_factor, self.gemm = m.impl, m.dispatch, m.capacity_factor, m.grouped_gemm
        self.router = nnx.Param(_init(rngs, (d, e), pd))
        self.experts_gate = nnx.Param(_init(rngs, (e, d, f), pd))
        self.experts_up = nnx.Param(_init(rngs, (e, d, f), pd))
        self.experts_down = nnx.Param(_init(rngs, (e, f, d), pd))

    def __call__(self, x: Array, mesh=None, valid: Array | None = None) -> tuple[Array, moe.MoEStats]:
        """x (B, T, D) → (y, stats); `valid` (B, T) marks real tokens for the stats (load-balancing loss)."""
        dt = self.dtype
        args = (x.astype(dt), self.router[...]) + tuple(
            p[...].astype(dt) for p in (self.experts_gate, self.experts_up, self.experts_down))
        kw = dict(top_k=self.top_k, norm_topk_prob=self.norm_topk_prob, valid=valid)
        if self.impl == "dense":
            return moe.moe_dense(*args, **kw)
        if self.impl == "ragged":
            return moe.moe_ragged_global(*args, **kw)
        return moe.moe_sharded(*args, mesh=mesh, dispatch=self.dispatch, capacity_factor=self.capacity_factor,
                               grouped_gemm=self.gemm, **kw)

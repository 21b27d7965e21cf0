"""Causal, segment-aware attention with interchangeable implementations.

One rule everywhere: query t sits at slot `q_start + t`, key s at slot s, and query t may attend key s iff
`kv_segment[s] == q_segment[t] != 0` and `s <= q_start + t`. Packed training rows (several documents per row,
segment 0 = padding), left/right padding and a KV cache (empty slots have segment 0, `q_start` = write position)
are all expressed by this one rule, so every implementation must agree on every valid query (`q_segment != 0`).
Queries with no allowed key (padding) get finite outputs and finite gradients; their values differ between
implementations (uniform weights in `einsum`, zeros in `blockwise`/`cudnn`, padding-to-padding attention in
`pallas`) and are never used.

Implementations (`attend(impl=...)`):
- `einsum`: the exact fp32-softmax reference; O(T·S) memory. Cheapest for short rows on CPU.
- `blockwise`: pure-JAX FlashAttention-2 (online softmax, custom VJP that recomputes per block); O(T·block)
  memory forward and backward; skips key blocks that are causally unreachable or share no segment with a query
  block. Any platform, any q_start (prefill/decode into a cache).
- `pallas`: JAX's Pallas-Triton flash attention kernel (GPU only, no cache: q_start == 0 and S == T).
- `cudnn`: cuDNN fused flash attention through JAX's private packed-segment API (GPU only, no cache, bf16/fp16).
- `auto`: see `resolve_impl`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from ssd_jax.models import remat
from ssd_jax.sharding import on_cpu, platform

Array = jax.Array

IMPLS = ("auto", "einsum", "blockwise", "cudnn", "pallas")
TILE = 512  # default blockwise tile (query and KV rows)
LIVE_TILES_SCOPE = "attention_live_kv_tiles"  # names the blockwise loops over the live tiles
# CPU keeps the einsum up to this many scores per (row, head): below it the dense mask costs less than the loop
# overhead of blockwise, and the whole CPU test suite and demo run at these sizes.
CPU_EINSUM_MAX_SCORES = 2048 * 2048
# Queries per causal block of einsum self-attention (`_causal_attention`). Of 32, 64 and 128, 64 was fastest for
# SmolLM2's heads at T = 512 on a 2-core Xeon (benchmarks/attention_side_by_side.py: 85.8 ms forward + backward
# per layer, against 129 unblocked and 86 for torch's SDPA).
CAUSAL_BLOCK = 64
# Fixed number of packed segments per row that the cuDNN path can describe (its offsets are static-shaped).
CUDNN_MAX_SEGMENTS = 64
_GPU_PLATFORMS = ("gpu", "cuda")


# ---------------------------------------------------------------------------------------------------- dispatch


def resolve_impl(impl: str, *, platform: str, q_len: int, kv_len: int, decoding: bool) -> str:
    """'auto' → a concrete impl; anything else is validated and returned unchanged.

    Rule: GPU ('gpu'/'cuda') → `pallas` for self-attention without a cache (fused Triton kernel, fwd+bwd),
    `blockwise` with a cache (the kernel needs q_len == kv_len and q_start == 0). CPU → `einsum` while
    q_len·kv_len ≤ CPU_EINSUM_MAX_SCORES (the test suite and demo sizes), else `blockwise`. Anything else (TPU)
    → `blockwise`. `cudnn` is never picked automatically: its packed-segment path is unverified numerically."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; valid values: {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    if platform in _GPU_PLATFORMS:
        return "blockwise" if decoding or q_len != kv_len else "pallas"
    if platform == "cpu" and q_len * kv_len <= CPU_EINSUM_MAX_SCORES:
        return "einsum"
    return "blockwise"


def attend(
    q: Array,
    k: Array,
    v: Array,
    q_segment: Array,
    kv_segment: Array,
    q_start: Any,
    *,
    impl: str = "auto",
    mesh=None,
    block_q: int = TILE,
    block_kv: int = TILE,
) -> Array:
    """q (B,T,H,hd), k/v (B,S,K,hd) with H % K == 0 (GQA), q_segment (B,T) int32, kv_segment (B,S) int32
    (0 = padding / empty cache slot), q_start: scalar int32 (may be traced) = slot of query 0.
    Query t sits at slot q_start+t, key s at slot s. Allowed: kv_segment == q_segment != 0 and s <= q_start+t.
    Scale 1/sqrt(hd); softmax in fp32; returns (B,T,H,hd) in v.dtype.

    `mesh` is only used by `pallas` (a pallas_call cannot be auto-partitioned, so it is shard_mapped): pass it
    whenever the inputs are sharded. The other impls are plain XLA and partition themselves (cudnn through JAX's
    own custom partitioning). `block_q`/`block_kv` size the `blockwise` tiles; `pallas` uses its own tiles."""
    _check_shapes(q, k, v, q_segment, kv_segment)
    start = _static_int(q_start)
    self_attention = start == 0 and k.shape[1] == q.shape[1]
    impl = resolve_impl(
        impl, platform=platform(mesh), q_len=q.shape[1], kv_len=k.shape[1], decoding=not self_attention
    )
    if impl == "einsum":
        return einsum_attention(q, k, v, q_segment, kv_segment, q_start, cpu=on_cpu(mesh))
    if impl == "blockwise":
        return blockwise_attention(q, k, v, q_segment, kv_segment, q_start, block_q=block_q, block_kv=block_kv)
    if not self_attention:
        raise ValueError(
            f"attention impl {impl!r} needs self-attention without a cache (static q_start == 0 and S == T); "
            f"got q_start={'traced' if start is None else start}, T={q.shape[1]}, S={k.shape[1]}: use 'blockwise'"
        )
    segment = _same_segments(q_segment, kv_segment, impl)
    if platform(mesh) not in _GPU_PLATFORMS:
        raise ValueError(
            f"attention impl {impl!r} runs on CUDA GPUs only (platform is {platform(mesh)!r}); "
            "use 'blockwise' or 'einsum'"
        )
    if impl == "pallas":
        return pallas_attention(q, k, v, segment, mesh=mesh)
    return cudnn_attention(q, k, v, segment)


def _check_shapes(q: Array, k: Array, v: Array, q_segment: Array, kv_segment: Array) -> None:
    b, t, h, hd = q.shape
    if k.shape != v.shape or k.ndim != 4 or k.shape[0] != b or k.shape[3] != hd:
        raise ValueError(f"k/v must be (B, S, K, {hd}) with B={b}; got k {k.shape}, v {v.shape}")
    if h % k.shape[2]:
        raise ValueError(f"query heads {h} must be a multiple of kv heads {k.shape[2]}")
    if q_segment.shape != (b, t) or kv_segment.shape != (b, k.shape[1]):
        raise ValueError(
            f"segments must be (B, T)=({b}, {t}) and (B, S)=({b}, {k.shape[1]}); "
            f"got {q_segment.shape}, {kv_segment.shape}"
        )


def _static_int(x: Any) -> int | None:
    """The value of a concrete scalar, or None when traced: the fused kernels need q_start == 0 at trace time."""
    try:
        return int(x)
    except jax.errors.ConcretizationTypeError:
        return None


def _same_segments(q_segment: Array, kv_segment: Array, impl: str) -> Array:
    """The fused kernels take one segment array for queries and keys; accept only provably equal ones."""
    if q_segment is kv_segment:
        return q_segment
    try:
        if np.array_equal(np.asarray(q_segment), np.asarray(kv_segment)):
            return q_segment
    except jax.errors.TracerArrayConversionError:
        pass
    raise ValueError(f"attention impl {impl!r} needs kv_segment to be the same array as q_segment (no cache)")


# ------------------------------------------------------------------------------------------------------ einsum


def attention_mask(q_segment: Array, kv_segment: Array, q_slot: Array, kv_slot: Array) -> Array:
    """(B, T, S) boolean: causal in slot order, same non-zero segment. Packing and padding share this one rule."""
    same = (q_segment[:, :, None] == kv_segment[:, None, :]) & (kv_segment[:, None, :] != 0)
    causal = kv_slot[None, None, :] <= q_slot[None, :, None]
    return same & causal


def einsum_attention(q: Array, k: Array, v: Array, q_segment: Array, kv_segment: Array, q_start: Any, *,
                     cpu: bool = False) -> Array:
    """The reference: dense (B,T,S) mask, fp32 scores, fp32 softmax, probabilities cast to v.dtype.

    Fully masked rows (padding queries) get a uniform softmax instead of NaN; their outputs are never used.
    Self-attention (static q_start 0, S == T) runs in causal query blocks (`_causal_blocks`). `cpu`: compiled for
    XLA:CPU, whose layer scan keeps the backward's residuals in fp32 (`remat.stored`)."""
    mask = attention_mask(q_segment, kv_segment, q_start + jnp.arange(q.shape[1]), jnp.arange(k.shape[1]))
    k_t, v_t = jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))
    if _static_int(q_start) == 0 and k.shape[1] == q.shape[1]:
        return _causal_blocks(q, k_t, v_t, mask, cpu)
    return _grouped_attention(q, [(k_t, v_t, mask)], cpu)


def _causal_blocks(q: Array, k_t: Array, v_t: Array, mask: Array, cpu: bool = False) -> Array:
    """Self-attention of q (B, T, H, hd) over its own keys (B, K, hd, T) and values (B, K, T, hd) in causal query
    blocks (`_causal_attention`)."""
    qm, g = _fold_heads(q, k_t.shape[1])
    return _unfold_heads(_causal_attention(qm, k_t.astype(q.dtype), v_t, mask, g, cpu), q.shape)


def _grouped_attention(q: Array, parts: list[tuple[Array, Array, Array]], cpu: bool = False) -> Array:
    """Softmax attention of q (B, T, H, hd) over the keys of all `parts` at once; a part is (keys (B, K, hd, S_i),
    values (B, K, S_i, hd), mask (B, T, S_i)). Masked scores are finfo.min, so a fully masked row is uniform."""
    qm, g = _fold_heads(q, parts[0][0].shape[1])
    keys, values, masks = (tuple(p[i] for p in parts) for i in range(3))
    keys = tuple(kk.astype(q.dtype) for kk in keys)
    return _unfold_heads(_softmax_attention(qm, keys, values, masks, g, cpu), q.shape)


def _fold_heads(q: Array, kv_heads: int) -> tuple[Array, int]:
    """q (B, T, H, hd) → (B, K, T·G, hd) with the G query heads of a kv head folded into the row axis (m = t·G + g),
    and G.

    The layout is chosen for XLA:CPU: with keys as (hd, S), both products are plain batched GEMMs over (row, kv
    head). With the (B, T, K, G, hd) × (B, S, K, hd) einsum XLA transposed its operands and picked slow batched-dot
    forms: at T = S = 768 (SmolLM2 heads) one layer's forward took 57 ms instead of 13, forward + backward 137 ms
    instead of 86."""
    b, t, h, hd = q.shape
    g = h // kv_heads
    return jnp.transpose(q.reshape(b, t, kv_heads, g, hd), (0, 2, 1, 3, 4)).reshape(b, kv_heads, t * g, hd), g


def _unfold_heads(out: Array, shape: tuple[int, ...]) -> Array:
    """The inverse of `_fold_heads`: (B, K, T·G, hd) → `shape` (B, T, H, hd)."""
    b, t, h, hd = shape
    kv_heads = out.shape[1]
    return jnp.transpose(out.reshape(b, kv_heads, t, h // kv_heads, hd), (0, 2, 1, 3, 4)).reshape(shape)


def _row_mask(mask: Array, g: int) -> Array:
    """A (B, T, S) mask as (B, 1, T·G, S) over the folded rows m = t·G + g."""
    return jnp.repeat(mask, g, axis=1)[:, None]


def _masked_scores(qm: Array, kk: Array, mask: Array, g: int) -> Array:
    """fp32 scores qm·kk / √hd of one key part, finfo.min where masked."""
    s = jnp.einsum("bkmd,bkds->bkms", qm, kk, preferred_element_type=jnp.float32) * (1.0 / math.sqrt(qm.shape[-1]))
    return jnp.where(_row_mask(mask, g), s, jnp.finfo(jnp.float32).min)


def _attention_forward(qm, keys, values, masks, g):
    """(out (B, K, M, hd) in the values' dtype, the softmax's row max and 1/row sum (B, K, M, 1) fp32) of
    `_softmax_attention`."""
    scores = jnp.concatenate([_masked_scores(qm, kk, m, g) for kk, m in zip(keys, masks)], axis=-1)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(scores - row_max)
    inv_sum = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
    probs = e * inv_sum
    out, at = 0, 0
    for vv in values:  # fp32 accumulation (see layers.project), rounded once to the values' dtype
        n = vv.shape[-2]
        out = out + jnp.einsum("bkms,bksd->bkmd", probs[..., at : at + n].astype(vv.dtype), vv,
                               preferred_element_type=jnp.float32)
        at += n
    return out.astype(values[0].dtype), row_max, inv_sum


def _part_grads(qm, kk, vv, m, g, dout, delta, row_max, inv_sum):
    """(∂qm, ∂keys, ∂values), all fp32, of one key part: the probabilities recomputed from the row statistics, and
    the softmax's backward from delta = rowsum(dout·out)."""
    p = jnp.exp(_masked_scores(qm, kk, m, g) - row_max) * inv_sum
    dp = jnp.einsum("bkmd,bksd->bkms", dout, vv, preferred_element_type=jnp.float32)
    ds = (jnp.where(_row_mask(m, g), p * (dp - delta), 0.0) * (1.0 / math.sqrt(qm.shape[-1]))).astype(qm.dtype)
    dq = jnp.einsum("bkms,bkds->bkmd", ds, kk, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bkmd,bkms->bkds", qm, ds, preferred_element_type=jnp.float32)
    dv = jnp.einsum("bkms,bkmd->bksd", p.astype(vv.dtype), dout, preferred_element_type=jnp.float32)
    return dq, dk, dv


def _delta(dout, out):
    return jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)


def _saved(cpu: bool, *xs):
    return tuple(remat.keep(x, remat.SOFTMAX_RESIDUALS, cpu) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _softmax_attention(qm, keys, values, masks, g, cpu=False):
    """softmax(mask(qm·keys / √hd))·values over the concatenated parts; qm (B, K, M, hd), M = T·G.

    A custom VJP in FlashAttention's manner: the residuals are the output and the softmax's row statistics, named
    `remat.SOFTMAX_RESIDUALS` so that the `save_dots` remat policy keeps them (a few numbers per row); the backward
    recomputes the probabilities from one product of the scores and uses rowsum(dout·out) for the softmax's
    backward. Autodiff rematerialised the whole forward (both products and the softmax's reductions) and fused
    rowsum(dp·p) into a slow dot-and-reduce on XLA:CPU."""
    return _attention_forward(qm, keys, values, masks, g)[0]


def _softmax_attention_fwd(qm, keys, values, masks, g, cpu):
    out, row_max, inv_sum = _saved(cpu, *_attention_forward(qm, keys, values, masks, g))
    return out, (qm, keys, values, masks, out, row_max, inv_sum)


def _softmax_attention_bwd(g, cpu, res, dout):
    qm, keys, values, masks, out, row_max, inv_sum = res
    delta = _delta(dout, out)
    dq, dkeys, dvalues = 0, [], []
    for kk, vv, m in zip(keys, values, masks):
        dq_i, dk, dv = _part_grads(qm, kk, vv, m, g, dout, delta, row_max, inv_sum)
        dq = dq + dq_i
        dkeys.append(dk.astype(kk.dtype))
        dvalues.append(dv.astype(vv.dtype))
    return dq.astype(qm.dtype), tuple(dkeys), tuple(dvalues), tuple(None for _ in masks)


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def _blocks(t: int) -> list[tuple[int, int]]:
    """[first, last) query of each causal block of `CAUSAL_BLOCK` queries; its keys are [0, last)."""
    return [(s, min(s + CAUSAL_BLOCK, t)) for s in range(0, t, CAUSAL_BLOCK)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _causal_attention(qm, k_t, v_t, mask, g, cpu=False):
    """`_softmax_attention` of qm (B, K, T·G, hd) over its own T keys, `CAUSAL_BLOCK` queries at a time, each block
    over the keys up to its last query only: the causally masked upper triangle is never computed (at T = 512, 36
    of 64 score tiles). Exact: the skipped keys are masked for every query of the block, so they added exactly
    zero; only a fully masked (padding) row, uniform over fewer keys, differs.

    One custom VJP over all blocks, so the backward adds each block's key and value gradients into one buffer in
    place; through per-block slices, autodiff padded every block's gradients to T and summed them in one slow
    fusion."""
    return _causal_forward(qm, k_t, v_t, mask, g)[0]


def _causal_forward(qm, k_t, v_t, mask, g):
    parts = [_attention_forward(qm[:, :, s * g : e * g], (k_t[..., :e],), (v_t[:, :, :e],), (mask[:, s:e, :e],), g)
             for s, e in _blocks(k_t.shape[-1])]
    return tuple(jnp.concatenate(xs, axis=2) for xs in zip(*parts))


def _causal_attention_fwd(qm, k_t, v_t, mask, g, cpu):
    out, row_max, inv_sum = _saved(cpu, *_causal_forward(qm, k_t, v_t, mask, g))
    return out, (qm, k_t, v_t, mask, out, row_max, inv_sum)


def _causal_attention_bwd(g, cpu, res, dout):
    qm, k_t, v_t, mask, out, row_max, inv_sum = res
    delta = _delta(dout, out)
    dq, dk, dv = [], jnp.zeros(k_t.shape, jnp.float32), jnp.zeros(v_t.shape, jnp.float32)
    for s, e in _blocks(k_t.shape[-1]):
        rows = slice(s * g, e * g)
        dq_i, dk_i, dv_i = _part_grads(qm[:, :, rows], k_t[..., :e], v_t[:, :, :e], mask[:, s:e, :e], g,
                                       dout[:, :, rows], delta[:, :, rows], row_max[:, :, rows], inv_sum[:, :, rows])
        dq.append(dq_i.astype(qm.dtype))
        dk = dk.at[..., :e].add(dk_i)
        dv = dv.at[:, :, :e].add(dv_i)
    return jnp.concatenate(dq, axis=2), dk.astype(k_t.dtype), dv.astype(v_t.dtype), None


_causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


def attend_cache(
    q: Array, k: Array, v: Array, k_cache: Array, v_cache: Array, q_segment: Array, kv_segment: Array,
    q_start: Any, *, impl: str = "auto", mesh=None,
) -> Array:
    """`attend` for queries whose own keys/values go to slots [q_start, q_start + T) of a KV cache, everything in
    the cache's layout (see `layers.KVCache`): new keys `k` (B, K, hd, T) and values `v` (B, K, T, hd), the cache
    as it was *before* they are written, keys (B, K, hd, S) and values (B, K, S, hd). `kv_segment` (B, S) already
    includes the new tokens. The einsum works on these directly; the other impls get the written cache transposed
    to `attend`'s (B, S, K, hd)."""
    impl = resolve_impl(impl, platform=platform(mesh), q_len=q.shape[1], kv_len=k_cache.shape[-1], decoding=True)
    if impl == "einsum":
        return cached_einsum_attention(q, k, v, k_cache, v_cache, q_segment, kv_segment, q_start)
    zero = jnp.zeros((), jnp.int32)
    k_all = lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (zero, zero, zero, q_start))
    v_all = lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (zero, zero, q_start, zero))
    k_all, v_all = jnp.transpose(k_all, (0, 3, 1, 2)), jnp.transpose(v_all, (0, 2, 1, 3))
    return attend(q, k_all, v_all, q_segment, kv_segment, q_start, impl=impl, mesh=mesh)


def cached_einsum_attention(q: Array, k: Array, v: Array, k_cache: Array, v_cache: Array, q_segment: Array,
                            kv_segment: Array, q_start: Any) -> Array:
    """`einsum_attention` over [cache slots before q_start] + [the new block], in the cache layout.

    The cache is read as it was before this call's write and the new block is attended separately: reading the
    written cache made XLA:CPU materialise it as a second buffer (a full copy per layer and token) besides the
    in-place update. With the layout (see `_grouped_attention`), one decode layer at B 32, S 704 went from 18.6 to
    1.5 ms. With a static q_start of 0 (a prefill into an empty cache) only the new block is attended, in causal
    query blocks."""
    q_slot = q_start + jnp.arange(q.shape[1])
    new = (k, v, attention_mask(q_segment, q_segment, q_slot, q_slot))
    if _static_int(q_start) == 0:
        return _causal_blocks(q, *new)
    kv_slot = jnp.arange(k_cache.shape[-1])
    old = attention_mask(q_segment, kv_segment, q_slot, kv_slot) & (kv_slot < q_start)[None, None, :]
    return _grouped_attention(q, [(k_cache, v_cache, old), new])


# --------------------------------------------------------------------------------------------------- blockwise


def blockwise_attention(
    q: Array,
    k: Array,
    v: Array,
    q_segment: Array,
    kv_segment: Array,
    q_start: Any,
    *,
    block_q: int = TILE,
    block_kv: int = TILE,
) -> Array:
    """FlashAttention-2 in pure JAX: O(T·block) temporaries forward and backward, any platform, any q_start.

    Queries are tiled with T padded to a tile multiple (segment 0). Keys are tiled without copying a cache that
    the tile does not divide (the last tile is clamped to end at S and masked where it overlaps the previous
    one); K/V stay un-repeated (query heads are grouped per kv head). Only key tiles that some query tile can
    reach — causally (from q_start and its last non-padding query) and by segment-id range — are visited, so a
    causal row costs ~half the einsum FLOPs, a packed row less, and a decode step over a long cache only reads
    the filled prefix. Loop trip counts are data-dependent (fine inside the custom VJP; not reverse-mode
    differentiable by JAX itself, which is why the VJP is hand-written)."""
    b, t, h, hd = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    bq, bk = min(block_q, t), min(block_kv, s)
    tp = -(-t // bq) * bq
    qg = _pad_axis1(q, tp).reshape(b, tp, kv_heads, h // kv_heads, hd)
    qs = _pad_axis1(q_segment.astype(jnp.int32), tp)
    start = jnp.asarray(q_start, jnp.int32)
    out = _flash(qg, k, v, qs, kv_segment.astype(jnp.int32), start, bq, bk)
    return out[:, :t].reshape(b, t, h, hd)


def _pad_axis1(x: Array, size: int) -> Array:
    pad = size - x.shape[1]
    return x if pad == 0 else jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _block_ranges(seg: Array, block: int) -> tuple[Array, Array]:
    """Per tile and row: (min, max) non-zero segment id; an all-padding tile gets (INT_MAX, 0), overlapping nothing."""
    b, n = seg.shape
    tiles = seg.reshape(b, n // block, block)
    big = jnp.iinfo(jnp.int32).max
    lo = jnp.where(tiles != 0, tiles, big).min(-1)
    hi = jnp.where(tiles != 0, tiles, 0).max(-1)
    return lo.T, hi.T  # (tiles, B)


def _live_tiles(q_seg: Array, kv_seg: Array, q_start: Array, bq: int, bk: int) -> Array:
    """(nq, nk) bool: may any row's query tile i attend key tile j? A superset of the real mask, used only to
    bound loops: segment-id ranges overlap in some row, and tile j starts at or before the last real query of i."""
    kv_seg = _pad_axis1(kv_seg, -(-kv_seg.shape[1] // bk) * bk)
    qlo, qhi = _block_ranges(q_seg, bq)
    klo, khi = _block_ranges(kv_seg, bk)
    overlap = ((qlo[:, None, :] <= khi[None, :, :]) & (klo[None, :, :] <= qhi[:, None, :])).any(-1)
    nq = q_seg.shape[1] // bq
    idx = jnp.arange(bq)
    real = (q_seg.reshape(q_seg.shape[0], nq, bq) != 0).any(0)  # (nq, bq)
    last = q_start + jnp.max(jnp.where(real, idx, -1), axis=-1) + jnp.arange(nq) * bq  # (nq,)
    last = jnp.where(real.any(-1), last, -1)
    reach = jnp.arange(kv_seg.shape[1] // bk)[None, :] * bk <= last[:, None]
    return overlap & reach


def _span(live: Array) -> tuple[Array, Array]:
    """[lo, hi) covering the True entries of each row of `live` (empty → lo == hi == 0)."""
    n = live.shape[-1]
    anyl = live.any(-1)
    lo = jnp.argmax(live, axis=-1)
    hi = n - jnp.argmax(live[..., ::-1], axis=-1)
    return jnp.where(anyl, lo, 0).astype(jnp.int32), jnp.where(anyl, hi, 0).astype(jnp.int32)


def _tile_mask(qs: Array, ks: Array, q_slot: Array, kv_slot: Array) -> Array:
    """(B, bq, 1, 1, bk) mask for scores laid out (B, bq, K, G, bk)."""
    m = attention_mask(qs, ks, q_slot, kv_slot)
    return m[:, :, None, None, :]


def _kv_tile(k: Array, v: Array, ks: Array, j: Array, bk: int) -> tuple[Array, Array, Array, Array]:
    """Key tile j: (k, v, segments, slots). When bk does not divide S the last tile starts at S − bk instead of
    reading padding (so a decode step never copies the cache), and its slots before j·bk, which tile j − 1 already
    covered, get segment 0 (masked)."""
    s = k.shape[1]
    start = jnp.minimum(j * bk, s - bk)
    kv_slot = start + jnp.arange(bk)
    k_j, v_j, ks_j = (lax.dynamic_slice_in_dim(x, start, bk, axis=1) for x in (k, v, ks))
    if s % bk:
        ks_j = jnp.where(kv_slot >= j * bk, ks_j, 0)
    return k_j, v_j, ks_j, kv_slot


def _scores(q_i: Array, k_j: Array) -> Array:
    """fp32 scores (B, bq, K, G, bk), scaled exactly like the reference."""
    hd = q_i.shape[-1]
    return jnp.einsum("bqkgd,bskd->bqkgs", q_i, k_j, preferred_element_type=jnp.float32) / math.sqrt(hd)


def _slice(x: Array, i: Array, size: int) -> Array:
    return lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _flash_forward(qg, k, v, qs, ks, q_start, bq: int, bk: int):
    """Returns out (B,Tp,K,G,hd) in v.dtype and lse (B,Tp,K,G) fp32 (0 for rows with no allowed key)."""
    b, tp, kh, g, hd = qg.shape
    nq = tp // bq
    lo, hi = _span(_live_tiles(qs, ks, q_start, bq, bk))

    def q_tile(i):
        q_i, qs_i = _slice(qg, i, bq), _slice(qs, i, bq)
        q_slot = q_start + i * bq + jnp.arange(bq)

        def step(j, carry):
            m, l, acc = carry
            k_j, v_j, ks_j, kv_slot = _kv_tile(k, v, ks, j, bk)
            mask = _tile_mask(qs_i, ks_j, q_slot, kv_slot)
            sc = jnp.where(mask, _scores(q_i, k_j), -jnp.inf)
            m_new = jnp.maximum(m, sc.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # all-masked so far: keep exp() finite
            alpha = jnp.exp(m - m_safe)
            p = jnp.exp(sc - m_safe[..., None])
            pv = jnp.einsum("bqkgs,bskd->bqkgd", p.astype(v.dtype), v_j, preferred_element_type=jnp.float32)
            return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv

        init = (
            jnp.full((b, bq, kh, g), -jnp.inf, jnp.float32),
            jnp.zeros((b, bq, kh, g), jnp.float32),
            jnp.zeros((b, bq, kh, g, hd), jnp.float32),
        )
        with jax.named_scope(LIVE_TILES_SCOPE):  # length depends on the segments (ssd-jax plan)
            m, l, acc = lax.fori_loop(lo[i], hi[i], step, init)
        has = l > 0
        l_safe = jnp.where(has, l, 1.0)
        out = jnp.where(has[..., None], acc / l_safe[..., None], 0.0).astype(v.dtype)
        lse = jnp.where(has, m + jnp.log(l_safe), 0.0)
        return out, lse

    return _map_tiles(q_tile, nq, bq, [((b, tp, kh, g, hd), v.dtype), ((b, tp, kh, g), jnp.float32)])


def _map_tiles(fn, n: int, block: int, outs: list[tuple[tuple[int, ...], Any]]) -> tuple[Array, ...]:
    """Run fn(i) for tiles i < n in sequence, writing its results in place at [i·block, (i+1)·block) of axis 1 of
    zero buffers with the given (shape, dtype) — no stacked copy, no transpose, one tile live at a time."""

    def body(i, bufs):
        return tuple(lax.dynamic_update_slice_in_dim(buf, x, i * block, axis=1) for buf, x in zip(bufs, fn(i)))

    return lax.fori_loop(0, n, body, tuple(jnp.zeros(shape, dtype) for shape, dtype in outs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(qg, k, v, qs, ks, q_start, bq: int, bk: int) -> Array:
    return _flash_forward(qg, k, v, qs, ks, q_start, bq, bk)[0]


def _flash_fwd(qg, k, v, qs, ks, q_start, bq, bk):
    out, lse = _flash_forward(qg, k, v, qs, ks, q_start, bq, bk)
    return out, (qg, k, v, qs, ks, q_start, out, lse)


def _flash_bwd(bq, bk, res, d_out):
    """FlashAttention-2 backward: P is recomputed per tile from the saved logsumexp; one pass per query tile for
    dQ and one per key tile for dK/dV, so nothing is accumulated by scatter (deterministic). Keys are padded to a
    tile multiple here (training rows usually need none) so that each dK/dV tile is written exactly once."""
    qg, k_in, v_in, qs, ks, q_start, out, lse = res
    s = k_in.shape[1]
    k, v, ks = (_pad_axis1(x, -(-s // bk) * bk) for x in (k_in, v_in, ks))
    scale = 1.0 / math.sqrt(qg.shape[-1])
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # (B,Tp,K,G)
    live = _live_tiles(qs, ks, q_start, bq, bk)

    def probs_and_dscores(i, j):
        """For tiles (i, j): P (masked) and dS = P·(dP − D), both fp32 (B,bq,K,G,bk)."""
        q_i, do_i = _slice(qg, i, bq), _slice(d_out, i, bq)
        k_j, v_j, ks_j, kv_slot = _kv_tile(k, v, ks, j, bk)
        q_slot = q_start + i * bq + jnp.arange(bq)
        mask = _tile_mask(_slice(qs, i, bq), ks_j, q_slot, kv_slot)
        p = jnp.where(mask, jnp.exp(_scores(q_i, k_j) - _slice(lse, i, bq)[..., None]), 0.0)
        dp = jnp.einsum("bqkgd,bskd->bqkgs", do_i, v_j, preferred_element_type=jnp.float32)
        return p, p * (dp - _slice(delta, i, bq)[..., None])

    lo_q, hi_q = _span(live)

    def dq_tile(i):
        def step(j, dq):
            _, ds = probs_and_dscores(i, j)
            k_j = _slice(k, j, bk)
            return dq + jnp.einsum("bqkgs,bskd->bqkgd", ds.astype(k.dtype), k_j, preferred_element_type=jnp.float32)

        with jax.named_scope(LIVE_TILES_SCOPE):  # length depends on the segments (ssd-jax plan)
            dq = lax.fori_loop(lo_q[i], hi_q[i], step, jnp.zeros(qg.shape[:1] + (bq,) + qg.shape[2:], jnp.float32))
        return ((dq * scale).astype(qg.dtype),)

    lo_k, hi_k = _span(live.T)

    def dkv_tile(j):
        def step(i, carry):
            dk, dv = carry
            p, ds = probs_and_dscores(i, j)
            q_i, do_i = _slice(qg, i, bq), _slice(d_out, i, bq)
            dv = dv + jnp.einsum("bqkgs,bqkgd->bskd", p.astype(d_out.dtype), do_i, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("bqkgs,bqkgd->bskd", ds.astype(qg.dtype), q_i, preferred_element_type=jnp.float32)
            return dk, dv

        zeros = jnp.zeros((k.shape[0], bk) + k.shape[2:], jnp.float32)
        with jax.named_scope(LIVE_TILES_SCOPE):  # length depends on the segments (ssd-jax plan)
            dk, dv = lax.fori_loop(lo_k[j], hi_k[j], step, (zeros, zeros))
        return (dk * scale).astype(k.dtype), dv.astype(v.dtype)

    (dq,) = _map_tiles(dq_tile, qg.shape[1] // bq, bq, [(qg.shape, qg.dtype)])
    dk, dv = _map_tiles(dkv_tile, k.shape[1] // bk, bk, [(k.shape, k.dtype), (v.shape, v.dtype)])
    return dq, dk[:, :s], dv[:, :s], None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------------------------------------------ pallas


def pallas_attention(
    q: Array, k: Array, v: Array, segment: Array, *, mesh=None, interpret: bool = False, block_sizes=None
) -> Array:
    """JAX's Pallas-Triton flash attention (`jax.experimental.pallas.ops.gpu.attention.mha`), causal, self-attention
    only (one `segment` array for queries and keys, q_start == 0, S == T).

    The kernel masks `q_seg == kv_seg` (so padding attends padding, which keeps every row non-empty and finite) and
    causal by index; for valid queries that is exactly our rule. It needs equal q/kv heads (kv heads are repeated
    per device), lengths that its tiles divide (T is padded with segment 0 to a power of two ≤ 128 or a multiple of
    128), and heads with equal head_dim (padded to a power of two inside). With `mesh`, the call is shard_mapped
    over the batch axes that divide B and over `tensor` on kv heads when it divides K, because a pallas_call cannot
    be auto-partitioned. `interpret=True` runs the kernel in the Pallas interpreter (CPU tests)."""
    pallas_mha = _pallas_module()
    b, t, h, hd = q.shape
    tp = _pallas_len(t)
    if block_sizes is None:
        block_sizes = pallas_blocks(pallas_mha, hd, q.dtype)
    qp, kp, vp, sp = (_pad_axis1(x, tp) for x in (q, k, v, segment.astype(jnp.int32)))

    def local(q, k, v, seg):
        g = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
        return pallas_mha.mha(
            q, k, v, seg, sm_scale=1.0 / math.sqrt(hd), causal=True, block_sizes=block_sizes, interpret=interpret
        )

    if mesh is not None:
        batch, heads = _pallas_partition(mesh, b, k.shape[2])
        x_spec, seg_spec = P(batch, None, heads, None), P(batch, None)
        local = jax.shard_map(
            local, mesh=mesh, in_specs=(x_spec, x_spec, x_spec, seg_spec), out_specs=x_spec, check_vma=False
        )
    return local(qp, kp, vp, sp)[:, :t].astype(v.dtype)


def _pallas_module():
    """Imported lazily (GPU-only use). JAX 0.12 deprecates it in favour of `tokamax` with a DeprecationWarning on
    import; it still works, and tokamax is not a dependency, so the warning is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from jax.experimental.pallas.ops.gpu import attention

    return attention


# Shared memory the forward kernel's K/V tiles may take: double-buffered (its num_stages=2) K and V tiles must fit
# the opt-in limit of a block, 227 KiB on Hopper and Blackwell (XLA's h100/b200 specs) and 163 KiB on A100.
PALLAS_KV_SMEM = 160 * 2**10


def pallas_blocks(pallas_mha, head_dim: int, dtype):
    """The kernel's default tiles, with the forward's KV tile halved until its double-buffered K and V tiles fit
    `PALLAS_KV_SMEM`. At the defaults (128 × 128) an fp32 head_dim-128 model asks for 262,656 bytes, more than any
    GPU gives a block (XLA: "Shared memory size limit exceeded"); bf16 at 128 and fp32 at 64 fit as they are."""
    d = pallas_mha.BlockSizes.get_default()
    hd = 1 << max(0, head_dim - 1).bit_length()  # the kernel pads head_dim to a power of two
    block_k = d.block_k
    while block_k > 16 and 2 * 2 * block_k * hd * jnp.dtype(dtype).itemsize > PALLAS_KV_SMEM:
        block_k //= 2
    return dataclasses.replace(d, block_k=block_k)


def _pallas_len(t: int) -> int:
    """A length every default Pallas tile (128 forward, 32 backward, clipped to the length) divides."""
    if t <= 128:
        return max(16, 1 << (t - 1).bit_length())
    return -(-t // 128) * 128


def _pallas_partition(mesh, batch: int, kv_heads: int) -> tuple[Any, str | None]:
    """Mesh axes for the batch dim (the activations' own batch sharding, so no reshard surrounds the kernel) and
    for the kv heads (`tensor` when it divides them)."""
    from ssd_jax.sharding import batch_axes

    axes = batch_axes(mesh, batch)
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and kv_heads % tensor == 0 else None
    return (axes if len(axes) > 1 else (axes[0] if axes else None)), heads


# ------------------------------------------------------------------------------------------------------- cudnn


def cudnn_attention(q: Array, k: Array, v: Array, segment: Array, *, max_segments: int = CUDNN_MAX_SEGMENTS) -> Array:
    """cuDNN flash attention for packed self-attention rows, through JAX's private
    `jax._src.cudnn.fused_attention_stablehlo.dot_product_attention` (q/kv offsets + per-segment lengths).

    Why this API: public `jax.nn.dot_product_attention(implementation="cudnn")` has causal + per-row lengths but no
    segment ids, and a causal-only mask on a packed row silently attends across documents. Here each contiguous
    run of one non-zero segment id becomes a cuDNN segment (offset, length) and PADDING_CAUSAL masks causally
    within it, which equals our rule when (as the packer guarantees) every segment id is one contiguous run.
    Limits: bf16/fp16 only; at most `max_segments` (≥ 2) runs per row — rows with more are poisoned with NaN rather
    than silently wrong; padding queries are zeroed; Hopper+ GPU and cuDNN ≥ 9.6 for packed layouts (JAX's test).
    Verified here (no GPU): argument construction and lowering to the cuDNN custom call for platform 'cuda' (with
    JAX's cuDNN/compute-capability probes stubbed). NOT verified: numerics, gradients, speed on a GPU."""
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"attention impl 'cudnn' needs bf16/fp16 q/k/v; got {q.dtype}, {k.dtype}, {v.dtype}")
    if max_segments < 2:
        raise ValueError("cudnn max_segments must be ≥ 2 (JAX treats a single segment as the unpacked layout)")
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    seqlen, offsets, overflow = packed_segments(segment, max_segments)
    out = cudnn.dot_product_attention(
        q,
        k,
        v,
        q_seqlen=seqlen,
        kv_seqlen=seqlen,
        q_offsets=offsets,
        kv_offsets=offsets,
        scale=1.0 / math.sqrt(q.shape[-1]),
        mask_type=cudnn.MaskType.PADDING_CAUSAL,
        qkv_layout="BTNH",
    )
    out = jnp.where((segment != 0)[:, :, None, None], out, jnp.zeros((), out.dtype))
    return jnp.where(overflow[:, None, None, None], jnp.full((), jnp.nan, out.dtype), out).astype(v.dtype)


def packed_segments(segment: Array, max_segments: int) -> tuple[Array, Array, Array]:
    """Contiguous runs of non-zero segment ids → (lengths (B,M), offsets (B,M+1), overflow (B,)) in the layout of
    JAX's cuDNN API: unused entries are -1 (the extra offset column too), M = max_segments."""
    seg = segment.astype(jnp.int32)
    prev = jnp.pad(seg, ((0, 0), (1, 0)))[:, :-1]
    nxt = jnp.pad(seg, ((0, 0), (0, 1)))[:, 1:]
    starts = (seg != 0) & (seg != prev)
    ends = (seg != 0) & (seg != nxt)

    def first_m(mask_row: Array) -> Array:
        return jnp.nonzero(mask_row, size=max_segments, fill_value=-1)[0].astype(jnp.int32)

    s, e = jax.vmap(first_m)(starts), jax.vmap(first_m)(ends)
    lengths = jnp.where(s >= 0, e - s + 1, -1).astype(jnp.int32)
    offsets = jnp.concatenate([s, jnp.full((seg.shape[0], 1), -1, jnp.int32)], axis=1)
    return lengths, offsets, starts.sum(-1) > max_segments

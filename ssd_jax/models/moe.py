"""Functional top-k routed SwiGLU experts (Qwen3-MoE), with an expert-parallel `jax.shard_map` implementation.

Why a shard_map: left to the SPMD partitioner, the sort over token-expert assignments and `ragged_dot` both need
the token dimension replicated and the expert dimension gathered (Shardy's sort / ragged_dot rules), so the layer is
neither data- nor expert-parallel. `moe_sharded` keeps tokens on their batch shard and moves them to the experts'
owners with an all-to-all, as MaxText's `sparse_matmul` does.

Shapes: x (B, T, D) in the compute dtype; router_w (D, E); wg, wu (E, D, F); wd (E, F, D).
Sharding (ssd_jax.sharding rules): wg/wu P("expert", "fsdp", "tensor"), wd P("expert", "tensor", "fsdp"), router
replicated, tokens split over ssd_jax.sharding.BATCH_AXES = ("data", "fsdp", "expert") (expert-parallel ranks are
also data-parallel ranks). Inside the shard_map, per device:

  route the local tokens (replicated router) → top-k → sort the N·k assignments by expert
  → all-gather the local experts' weights over the D-splitting axis (fsdp), never over `expert`
  → if `expert` splits both the experts and the tokens: exchange rows with the owners of their experts
      (all-gathered (ep, E) histogram → sizes/offsets; "ragged": ragged_all_to_all, "padded": all_to_all of an
      (ep·C, D) buffer), group the received rows by local expert, grouped GEMM, and send the results back
    else: grouped GEMM on the local experts (if `expert` splits only the experts: the other ranks' assignments are
      masked out here and the partial outputs are psum'd over `expert`)
  → unpermute with gathers, weight, sum over k → psum over `tensor` (F-split partial sums of the down projection).

Every permutation is `_permute`, a gather whose backward is the gather by the inverse permutation, so neither
direction needs a scatter-add with duplicate indices (nondeterministic atomics on GPU).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssd_jax.models.activations import silu_mul
from ssd_jax.sharding import batch_axes, on_cpu, param_spec, platform

Array = jax.Array

# Parameter paths that select the MoE rules of ssd_jax.sharding.PARAM_RULES.
_PATHS = {
    "router": "layers.0.mlp.router",
    "gate": "layers.0.mlp.experts_gate",
    "up": "layers.0.mlp.experts_up",
    "down": "layers.0.mlp.experts_down",
}


class MoEStats(NamedTuple):
    """Global sums over valid tokens (all shards, all assignments incl. dropped ones): what the load-balancing loss
    and monitoring need. Sums, not means, so that layers and micro-batches add up before the loss is formed."""

    expert_counts: Array  # (E,) float32: number of (token, choice) assignments per expert
    router_prob_sums: Array  # (E,) float32: Σ router softmax probabilities per expert (differentiable)
    tokens: Array  # () float32: number of valid tokens
    dropped: Array  # () float32: assignments dropped by a capacity limit (0 without one)


# --------------------------------------------------------------------------------------------------------------------
# routing, stats, loss


def route(x2: Array, router_w: Array, top_k: int, norm_topk_prob: bool) -> tuple[Array, Array, Array]:
    """x2 (N, D) -> router logits (N, E) in x2's dtype, top-k weights (N, k) in x2's dtype, expert ids (N, k).

    Logits in the compute dtype and the softmax in fp32, as HF's Qwen3-MoE gate (and today's MoE.route) does."""
    logits = x2 @ router_w.astype(x2.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, idx = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return logits, weights.astype(x2.dtype), idx


def moe_stats(logits: Array, idx: Array, valid: Array | None, dropped: Array | float = 0.0) -> MoEStats:
    """Stats of one shard: logits (N, E), idx (N, k), valid (N,) bool or None (all valid)."""
    n, e = logits.shape
    v = jnp.ones((n,), jnp.float32) if valid is None else valid.reshape(n).astype(jnp.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    # bincount of exact small integers in fp32: order-independent, so deterministic even as a scatter-add.
    counts = jnp.bincount(idx.reshape(-1), weights=jnp.repeat(v, idx.shape[-1]), length=e).astype(jnp.float32)
    return MoEStats(counts, jnp.sum(probs * v[:, None], axis=0), jnp.sum(v), jnp.asarray(dropped, jnp.float32))


def load_balancing_loss(stats: MoEStats, num_experts: int) -> Array:
    """Switch-Transformer auxiliary loss exactly as transformers' `load_balancing_loss_func`:
    E · Σ_e (counts_e / tokens) · (prob_sums_e / tokens). HF concatenates the layers' router logits, so pass stats
    summed over layers (tokens then counts every layer, as HF's row count does). 0 tokens gives 0, not NaN."""
    t = jnp.maximum(stats.tokens, 1.0)
    return num_experts * jnp.sum((stats.expert_counts / t) * (stats.router_prob_sums / t))


def _valid2(valid: Array | None, n: int) -> Array | None:
    return None if valid is None else valid.reshape(n)


# --------------------------------------------------------------------------------------------------------------------
# single-device references (today's MoE impl="dense" / impl="ragged")


def moe_dense(x, router_w, wg, wu, wd, *, top_k, norm_topk_prob, valid=None) -> tuple[Array, MoEStats]:
    """Every expert on every token, weighted by the sparse gates: exact, E/k× the FLOPs; the reference."""
    b, t, d = x.shape
    x2 = x.reshape(b * t, d)
    logits, weights, idx = route(x2, router_w, top_k, norm_topk_prob)
    e = router_w.shape[1]
    combine = jnp.zeros((b * t, e), x.dtype).at[jnp.arange(b * t)[:, None], idx].add(weights)
    h = silu_mul(jnp.einsum("nd,edf->nef", x2, wg), jnp.einsum("nd,edf->nef", x2, wu))
    y = jnp.einsum("nef,efd,ne->nd", h, wd, combine)
    return y.reshape(b, t, d), moe_stats(logits, idx, _valid2(valid, b * t))


def moe_ragged_global(x, router_w, wg, wu, wd, *, top_k, norm_topk_prob, valid=None) -> tuple[Array, MoEStats]:
    """Today's impl="ragged": global argsort + ragged_dot + scatter-add. Kept as a reference; under GSPMD its sort
    and ragged_dot force the tokens replicated and the experts gathered (see the module docstring)."""
    b, t, d = x.shape
    x2 = x.reshape(b * t, d)
    logits, weights, idx = route(x2, router_w, top_k, norm_topk_prob)
    flat_e = idx.reshape(-1)
    order = jnp.argsort(flat_e, stable=True)
    token = order // top_k
    xs = x2[token]
    sizes = jnp.bincount(flat_e, length=router_w.shape[1]).astype(jnp.int32)
    h = silu_mul(jax.lax.ragged_dot(xs, wg, sizes), jax.lax.ragged_dot(xs, wu, sizes))
    ys = jax.lax.ragged_dot(h, wd, sizes) * weights.reshape(-1)[order][:, None]
    y = jnp.zeros((b * t, d), x.dtype).at[token].add(ys)
    return y.reshape(b, t, d), moe_stats(logits, idx, _valid2(valid, b * t))


# --------------------------------------------------------------------------------------------------------------------
# gather-only permutations


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _permute(x: Array, idx: Array, inv: Array, repeat: int = 1) -> Array:
    """out[p] = xr[idx[p]] (0 where idx[p] is out of range), xr = x with each row repeated `repeat` times (the
    (N, k, D) broadcast of the tokens, never materialised). `inv` is the inverse partial permutation: inv[idx[p]] = p,
    out of range for rows of xr that are not used. The backward is the gather g[inv] (summed over the repeats), not
    the scatter-add that autodiff would make of a gather: deterministic and cheaper on GPU."""
    return jnp.take(x, idx // repeat if repeat > 1 else idx, axis=0, mode="fill", fill_value=0)


def _permute_fwd(x, idx, inv, repeat):
    return _permute(x, idx, inv, repeat), (idx, inv)


def _permute_bwd(repeat, res, g):
    idx, inv = res
    dx = jnp.take(g, inv, axis=0, mode="fill", fill_value=0)
    if repeat > 1:
        dx = jnp.sum(dx.reshape(-1, repeat, *dx.shape[1:]), axis=1)
    return dx, None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def _vma(a) -> frozenset:
    """Mesh axes a value varies over inside a shard_map (`aval.mat.varying` on JAX 0.10–0.12, `aval.vma` before)."""
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _match_vma(a: Array, like: Array) -> Array:
    """Re-mark `a` varying over `like`'s axes: on JAX 0.10 argsort (sort with an iota operand) and zeros_like drop
    the varying axes of their input, which would make gathers by these indices look invariant."""
    extra = tuple(sorted(_vma(like) - _vma(a)))
    return jax.lax.pcast(a, extra, to="varying") if extra else a


def permute(x: Array, idx: Array, inv: Array, repeat: int = 1) -> Array:
    """`_permute` after marking x varying over the mesh axes the indices vary over (inside a shard_map): a custom_vjp
    must return cotangents of its inputs' exact types, so the cast (whose transpose is a psum) stays outside it."""
    extra = tuple(sorted((_vma(idx) | _vma(inv)) - _vma(x)))
    return _permute(jax.lax.pcast(x, extra, to="varying") if extra else x, idx, inv, repeat)


def _zeros_like_vma(shape, dtype, like: Array) -> Array:
    """A zero buffer of `like`'s varying mesh axes (ragged_all_to_all wants operand and output of one type)."""
    z = jnp.zeros(shape, dtype)
    axes = tuple(sorted(_vma(like)))
    return jax.lax.pcast(z, axes, to="varying") if axes else z


def _inverse(perm: Array) -> Array:
    """Inverse of a full permutation (an integer scatter with unique indices: exact and deterministic)."""
    inv = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype), unique_indices=True)
    return _match_vma(inv, perm)


def _excl_cumsum(a: Array, axis: int = -1) -> Array:
    return jnp.cumsum(a, axis=axis) - a


GROUPED_GEMMS = ("auto", "ragged_dot", "tiled")
TILE_ROWS = 256
TILES_SCOPE = "moe_grouped_tiles"  # names the tiled GEMM's loops (their length depends on the routing)


def _expert_ffn(xs: Array, sizes: Array, wg: Array, wu: Array, wd: Array, gemm: str = "ragged_dot",
                rows_hint: int | None = None) -> Array:
    """Grouped SwiGLU on rows sorted by expert; rows past sum(sizes) are zero rows and give zeros. `rows_hint`:
    the rows expected to be real (under even routing), which sizes the tiled form's tiles."""
    if gemm == "tiled":
        return _expert_ffn_tiled(xs, sizes, wg, wu, wd, tile_rows(rows_hint or xs.shape[0], sizes.shape[0]))
    h = silu_mul(jax.lax.ragged_dot(xs, wg, sizes), jax.lax.ragged_dot(xs, wu, sizes))
    return jax.lax.ragged_dot(h, wd, sizes)


def tile_rows(buffer_rows: int, groups: int) -> int:
    """The tiled grouped GEMM's tile: the mean rows per group, a power of two in [8, TILE_ROWS]."""
    return min(TILE_ROWS, max(8, 1 << max(0, math.ceil(math.log2(max(1, buffer_rows // groups))))))


def _expert_ffn_tiled(xs: Array, sizes: Array, wg: Array, wu: Array, wd: Array, tile: int | None = None) -> Array:
    """The grouped SwiGLU as a loop over row tiles, each group padded to whole tiles so a tile has one expert.

    Why: XLA:CPU lowers `ragged_dot` to a dense dot over a masked (G, M, K) broadcast, G× the FLOPs and memory of
    the grouped product (at Qwen3-30B-A3B's shapes, terabytes of temporaries), so on CPU, and in `ssd-jax plan`'s
    compile of a GPU mesh, this form stands for what a grouped-GEMM kernel does: only the tiles that hold rows run
    (sum(sizes) rows + < 1 tile per group, however large the static buffer), one tile's weights live at a time.
    Exact: every row meets its own expert's weights once. `tile` defaults to tile_rows(M, G)."""
    m, d = xs.shape
    g = sizes.shape[0]
    tile = max(1, min(tile or tile_rows(m, g), m))
    n_tiles = -(-m // tile) + g  # padding each group to whole tiles adds < 1 tile per group
    slots = n_tiles * tile
    padded = (sizes + tile - 1) // tile * tile
    pend = jnp.cumsum(padded)
    pstart, start, end = pend - padded, _excl_cumsum(sizes), jnp.cumsum(sizes)
    p = jnp.arange(slots, dtype=jnp.int32)
    grp = jnp.searchsorted(pend, p, side="right")  # group of padded slot p (g: past the last group)
    gc = jnp.minimum(grp, g - 1)
    off = p - pstart[gc]
    src = jnp.where((grp < g) & (off < sizes[gc]), start[gc] + off, m).astype(jnp.int32)  # slot → row (m: empty)
    r = jnp.arange(m, dtype=jnp.int32)
    rg = jnp.minimum(jnp.searchsorted(end, r, side="right"), g - 1)
    dst = jnp.where(r < end[-1], pstart[rg] + r - start[rg], slots).astype(jnp.int32)  # row → slot
    src, dst = _match_vma(src, xs), _match_vma(dst, xs)
    xt = permute(xs, src, dst).reshape(n_tiles, tile, d)
    te = jnp.minimum(grp[::tile], g - 1).astype(jnp.int32)
    used = (pend[-1] // tile).astype(jnp.int32)  # tiles that hold rows: the loops stop there
    # One varying type for all operands, cast outside the custom_vjp (the cast's transpose, a psum, stays outside).
    vma = frozenset().union(*(_vma(a) for a in (xt, te, used, wg, wu, wd)))
    xt, te, used, wg, wu, wd = (jax.lax.pcast(a, tuple(sorted(vma - _vma(a))), to="varying") if vma - _vma(a) else a
                                for a in (xt, te, used, wg, wu, wd))
    yt = _tiles_swiglu(xt, te, used, wg, wu, wd)
    return permute(yt.reshape(slots, -1), dst, src)


def _tile_loop(used: Array, body, init):
    """fori_loop over the used tiles, under a name `ssd-jax plan` recognises (its length depends on the routing)."""
    with jax.named_scope(TILES_SCOPE):
        return jax.lax.fori_loop(0, used, body, init)


@jax.custom_vjp
def _tiles_swiglu(xt: Array, te: Array, used: Array, wg: Array, wu: Array, wd: Array) -> Array:
    """y[t] = (silu(x[t] @ wg[e_t]) * (x[t] @ wu[e_t])) @ wd[e_t] for tiles t < used (zeros after). A custom VJP:
    autodiff of the loop would save each tile's slice of the weights, n_tiles × an expert's weights."""

    def body(t, y):
        x_t, e = xt[t], te[t]
        h = silu_mul(x_t @ wg[e], x_t @ wu[e])
        return jax.lax.dynamic_update_index_in_dim(y, (h @ wd[e]).astype(xt.dtype), t, 0)

    return _tile_loop(used, body, _zeros_like_vma(xt.shape[:2] + (wd.shape[-1],), xt.dtype, xt))


def _tiles_swiglu_fwd(xt, te, used, wg, wu, wd):
    return _tiles_swiglu(xt, te, used, wg, wu, wd), (xt, te, used, wg, wu, wd)


def _tiles_swiglu_bwd(res, dy):
    """Recompute each tile's activations; accumulate the weight gradients of its expert in an fp32 carry."""
    xt, te, used, wg, wu, wd = res
    f32 = jnp.float32

    def body(t, acc):
        dwg, dwu, dwd, dx = acc
        e = te[t]
        x_t, dy_t = xt[t].astype(f32), dy[t].astype(f32)
        ge, ue, de = wg[e].astype(f32), wu[e].astype(f32), wd[e].astype(f32)
        pre_g, up = x_t @ ge, x_t @ ue
        sig = jax.nn.sigmoid(pre_g)
        act = pre_g * sig
        dh = dy_t @ de.T
        d_up, d_act = dh * act, dh * up
        d_pre = d_act * sig * (1 + pre_g * (1 - sig))
        dwg, dwu = dwg.at[e].add(x_t.T @ d_pre), dwu.at[e].add(x_t.T @ d_up)
        dwd = dwd.at[e].add((act * up).T @ dy_t)
        dx = jax.lax.dynamic_update_index_in_dim(dx, (d_pre @ ge.T + d_up @ ue.T).astype(xt.dtype), t, 0)
        return dwg, dwu, dwd, dx

    # Every operand has one varying type (_expert_ffn_tiled casts them): the carries take it too.
    init = tuple(_zeros_like_vma(w.shape, f32, xt) for w in (wg, wu, wd)) + (_zeros_like_vma(xt.shape, xt.dtype, xt),)
    dwg, dwu, dwd, dx = _tile_loop(used, body, init)
    f0 = jax.dtypes.float0
    return (dx, np.zeros(te.shape, f0), np.zeros(used.shape, f0), dwg.astype(wg.dtype), dwu.astype(wu.dtype),
            dwd.astype(wd.dtype))


_tiles_swiglu.defvjp(_tiles_swiglu_fwd, _tiles_swiglu_bwd)


def _group_received(seg_start: Array, cnt: Array, rows: int) -> tuple[Array, Array, Array]:
    """Receiver side: sender i's rows sit at buffer rows [seg_start[i], …), sorted by local expert with counts
    cnt[i] (ep, E_loc). Returns (order, inv, sizes): buffer → expert-major sorted rows (`order`, sentinel `rows` past
    the valid ones), its inverse (sentinel `rows` for padding rows) and the per-local-expert group sizes."""
    ep, el = cnt.shape
    buf_start = (seg_start[:, None] + _excl_cumsum(cnt, axis=1)).T.reshape(-1)  # group (e, i), expert-major
    cnt_t = cnt.T.reshape(-1)
    sorted_end = jnp.cumsum(cnt_t)
    q = jnp.arange(rows, dtype=jnp.int32)
    g = jnp.searchsorted(sorted_end, q, side="right")  # which (e, i) group sorted row q belongs to
    gc = jnp.minimum(g, ep * el - 1)
    src = buf_start[gc] + q - (sorted_end - cnt_t)[gc]
    order = jnp.where(g < ep * el, src, rows).astype(jnp.int32)
    inv = jnp.full((rows,), rows, jnp.int32).at[order].set(q, mode="drop")  # sentinel entries are dropped
    return order, _match_vma(inv, order), jnp.sum(cnt, axis=0).astype(jnp.int32)


# --------------------------------------------------------------------------------------------------------------------
# ragged all-to-all, and its CPU stand-in


def ragged_all_to_all_allgather(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *, axis_name):
    """`jax.lax.ragged_all_to_all` (same arguments and result) built from all_gather + masking, for XLA:CPU, which
    cannot compile the ragged-all-to-all HLO. It moves ep× the data (every rank gathers every operand), so it is for
    CPU tests only: it lets CI check the offset arithmetic of the ragged dispatch. Receiver r writes sender i's slice
    operand_i[input_offsets_i[r] : +send_sizes_i[r]] at output_offsets_i[r]; recv_sizes is implied and unused."""
    del recv_sizes
    r = jax.lax.axis_index(axis_name)
    ops = jax.lax.all_gather(operand, axis_name)  # (ep, n_in, …)
    io, ss, oo = (jax.lax.all_gather(a, axis_name)[:, r] for a in (input_offsets, send_sizes, output_offsets))
    ep, n_in = ops.shape[:2]
    p = jnp.arange(output.shape[0], dtype=io.dtype)[None, :]
    match = (p >= oo[:, None]) & (p < (oo + ss)[:, None])  # (ep, n_out): at most one sender per output row
    src = jnp.arange(ep, dtype=io.dtype)[:, None] * n_in + io[:, None] + p - oo[:, None]
    src = jnp.sum(jnp.where(match, src, 0), axis=0)
    got = jnp.take(ops.reshape(ep * n_in, *ops.shape[2:]), src, axis=0)
    has = jnp.any(match, axis=0).reshape(-1, *([1] * (output.ndim - 1)))
    return jnp.where(has, got, output)


# --------------------------------------------------------------------------------------------------------------------
# the shard_map body


def _names(entry) -> tuple[str, ...]:
    return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


@dataclass(frozen=True)
class _Plan:
    top_k: int
    norm_topk_prob: bool
    token_axes: tuple[str, ...] = ()  # axes that split the tokens (psum of the stats)
    gather: tuple[tuple[str, str], ...] = ()  # (axis, all_gather `to`) over D, minor axis first
    f_axes: tuple[str, ...] = ()  # axes that split F: the down projection is a partial sum over them
    expert_axis: str | None = None  # axis that splits the experts
    ep: int = 1
    a2a: bool = False  # the expert axis also splits the tokens: exchange rows with all-to-all
    dispatch: str = "padded"  # padded | ragged | ragged_allgather (CPU stand-in)
    capacity_factor: float = 0.0
    gemm: str = "ragged_dot"  # ragged_dot | tiled (the grouped-GEMM form, see _expert_ffn_tiled)


def _gather_d(w: Array, axis: int, plan: _Plan) -> Array:
    """All-gather an expert weight's hidden dim. `varying` over a token axis (backward: reduce-scatter of the
    per-shard gradients), `invarying` over an axis the tokens are replicated on (backward: slice)."""
    for name, to in plan.gather:
        w = jax.lax.all_gather(w, name, axis=axis, tiled=True, to=to)
    return w


def _body(x, router_w, wg, wu, wd, valid, *, plan: _Plan):
    b, t, d = x.shape
    n, k = b * t, plan.top_k
    m = n * k
    e = router_w.shape[1]
    x2 = x.reshape(n, d)
    logits, weights, idx = route(x2, router_w, k, plan.norm_topk_prob)
    wg, wu = _gather_d(wg, 1, plan), _gather_d(wu, 1, plan)
    wd = _gather_d(wd, 2, plan)
    el = wg.shape[0]  # local experts
    flat_e = idx.reshape(-1).astype(jnp.int32)
    reduce_axes = plan.f_axes
    dropped = jnp.zeros((), jnp.float32)

    if not plan.a2a:
        # Local experts only; with the experts split over a token-replicated axis, the others' rows are masked
        # here and the partial outputs summed over that axis.
        lo = jax.lax.axis_index(plan.expert_axis) * el if plan.expert_axis else 0
        le = flat_e - lo
        local = (le >= 0) & (le < el)
        key = jnp.where(local, le, el)
        order = _match_vma(jnp.argsort(key, stable=True).astype(jnp.int32), key)
        inv = jnp.where(local, _inverse(order), m)
        order = jnp.where(jnp.arange(m) < jnp.sum(local), order, m)
        sizes = jnp.bincount(key, length=el + 1)[:el].astype(jnp.int32)
        ys = _expert_ffn(permute(x2, order, inv, k), sizes, wg, wu, wd, plan.gemm)
        y_flat = permute(ys, inv, order)
        if plan.expert_axis:
            reduce_axes = reduce_axes + (plan.expert_axis,)
    else:
        ax, ep = plan.expert_axis, plan.ep
        dest = flat_e // el
        if plan.capacity_factor > 0:
            # At most `cap` rows from each sender to each owner; the earliest (token, choice) assignments win.
            cap = min(m, max(1, math.ceil(plan.capacity_factor * m / ep)))
            onehot = jax.nn.one_hot(dest, ep, dtype=jnp.int32)
            pos = jnp.take_along_axis(jnp.cumsum(onehot, axis=0), dest[:, None], axis=1)[:, 0] - 1
            keep = pos < cap
            v = jnp.ones((n,), bool) if valid is None else valid.reshape(n)
            dropped = jnp.sum((~keep) & jnp.repeat(v, k)).astype(jnp.float32)
        else:
            cap, keep = m, jnp.ones((m,), bool)
        key = jnp.where(keep, flat_e, e)  # dropped rows sort last and are never sent
        order = _match_vma(jnp.argsort(key, stable=True).astype(jnp.int32), key)
        inv = _inverse(order)
        counts = jnp.bincount(key, length=e + 1)[:e].astype(jnp.int32)  # kept rows per expert
        all_counts = jax.lax.all_gather(counts, ax)  # (ep senders, E)
        r = jax.lax.axis_index(ax)
        send = jnp.sum(counts.reshape(ep, el), axis=1)  # rows to each owner
        in_off = _excl_cumsum(send)  # where they start in my sorted rows
        per_pair = jnp.sum(all_counts.reshape(ep, ep, el), axis=2)  # [sender, owner]
        cnt = jax.lax.dynamic_slice_in_dim(all_counts, r * el, el, axis=1)  # (ep senders, my experts)
        recv = per_pair[:, r]

        if plan.dispatch == "padded":
            # (ep·cap, D) buffer, owner j's rows in block j; a row's slot is its rank within its owner's segment.
            rows = ep * cap
            slot = jnp.where(keep, dest * cap + inv - in_off[dest], rows).astype(jnp.int32)
            jj, cc = jnp.arange(rows) // cap, jnp.arange(rows) % cap
            src = jnp.where(cc < send[jj], order[jnp.minimum(in_off[jj] + cc, m - 1)], m).astype(jnp.int32)
            buf = jax.lax.all_to_all(permute(x2, src, slot, k), ax, 0, 0, tiled=True)
            seg_start = jnp.arange(ep, dtype=jnp.int32) * cap
        else:
            # Receive buffer for the worst case (every sender's `cap` rows to me); senders write contiguously.
            rows = ep * cap
            a2a = jax.lax.ragged_all_to_all if plan.dispatch == "ragged" else ragged_all_to_all_allgather
            xs = permute(x2, order, inv, k)
            out_off = _excl_cumsum(per_pair, axis=0)[r]  # where my rows land on each owner
            seg_start = _excl_cumsum(recv)  # where each sender's rows land here
            buf = a2a(xs, _zeros_like_vma((rows, d), x.dtype, xs), in_off, send, out_off, recv, axis_name=ax)

        order2, inv2, sizes = _group_received(seg_start, cnt, rows)
        ys = permute(_expert_ffn(permute(buf, order2, inv2), sizes, wg, wu, wd, plan.gemm, m), inv2, order2)

        if plan.dispatch == "padded":
            back = jax.lax.all_to_all(ys, ax, 0, 0, tiled=True)
            y_flat = permute(back, slot, src)
        else:
            back_off = _excl_cumsum(per_pair, axis=1)[:, r]  # where my results land on each sender
            back = a2a(ys, _zeros_like_vma((m, d), x.dtype, ys), seg_start, recv, back_off, send, axis_name=ax)
            y_flat = permute(back, inv, order)  # dropped rows were never written: zeros

    y = jnp.sum(y_flat.reshape(n, k, d) * weights[..., None], axis=1)
    if reduce_axes:
        y = jax.lax.psum(y, reduce_axes)
    stats = moe_stats(logits, idx, _valid2(valid, n), dropped)
    if plan.token_axes:
        stats = MoEStats(*(jax.lax.psum(s, plan.token_axes) for s in stats))
    return y.reshape(b, t, d), stats


# --------------------------------------------------------------------------------------------------------------------
# entry point


def moe_sharded(x, router_w, wg, wu, wd, *, top_k, norm_topk_prob, mesh=None, dispatch="auto",
                capacity_factor=0.0, grouped_gemm="auto", valid=None) -> tuple[Array, MoEStats]:
    """Expert-parallel MoE under `jax.shard_map` (see the module docstring); without a mesh, or on a one-device mesh,
    the same local code without collectives.

    dispatch: "ragged" (`ragged_all_to_all`: sends exactly the routed rows, into a receive buffer of ep·C rows; on
    CPU an all_gather stand-in with the same contract), "padded" (`all_to_all` of an (ep·C, D) buffer each way: ep·C
    rows move whatever the routing), "auto" (ragged on GPU/TPU, padded on CPU; the platform of the mesh's devices).
    C, rows per (sender, owner) pair: N_loc·k when capacity_factor == 0 (the worst case: nothing is dropped, but the
    padded buffers are ep× the routed rows), else ceil(capacity_factor · N_loc·k / ep). Assignments past C (the
    latest tokens of that sender→owner pair) contribute zero and are counted in MoEStats.dropped; both dispatches drop
    the same ones. Capacity only applies to the expert-parallel exchange: without one (no mesh, experts not split,
    or tokens replicated over `expert`) nothing is dropped.
    grouped_gemm: "ragged_dot" (`jax.lax.ragged_dot`: TPU's grouped matmul; on CPU and on GPU at XLA's defaults a
    dense masked product, see configure_grouped_gemm), "tiled" (a loop over one-expert row tiles, _expert_ffn_tiled),
    "auto" (ragged_dot on TPU, tiled on CPU and GPU: XLA:GPU expands every ragged_dot of the step densely, and its
    cuDNN grouped GEMM, where a cuDNN ≥ 9.22 allows it, covers only the forward-shaped products, never the weight
    gradient; tests/test_gpu_target.py reads it from the compiled program).
    valid (B, T) bool marks real tokens for the stats only; padding tokens are routed (and use capacity) as in HF."""
    if grouped_gemm not in GROUPED_GEMMS:
        raise ValueError(f"grouped_gemm {grouped_gemm!r}: expected {' | '.join(GROUPED_GEMMS)}")
    if dispatch not in ("auto", "padded", "ragged"):
        raise ValueError(f"dispatch {dispatch!r}: expected auto | padded | ragged")
    cpu = on_cpu(mesh)
    if dispatch == "auto":
        dispatch = "padded" if cpu else "ragged"
    elif dispatch == "ragged" and cpu:
        dispatch = "ragged_allgather"
    gemm = ("ragged_dot" if platform(mesh) == "tpu" else "tiled") if grouped_gemm == "auto" else grouped_gemm
    kw = dict(top_k=top_k, norm_topk_prob=norm_topk_prob, gemm=gemm)
    if mesh is None or mesh.size == 1:
        return _body(x, router_w, wg, wu, wd, valid, plan=_Plan(**kw))

    specs = {name: param_spec(path, arr.shape, mesh)
             for (name, path), arr in zip(_PATHS.items(), (router_w, wg, wu, wd))}
    e_axes, d_axes, f_axes = (_names(s) for s in tuple(specs["gate"]) + (None,) * (3 - len(specs["gate"])))
    if (e_axes, f_axes, d_axes) != tuple(_names(s) for s in tuple(specs["down"]) + (None,) * (3 - len(specs["down"]))):
        raise NotImplementedError(f"experts_gate {specs['gate']} and experts_down {specs['down']} disagree")
    if len(e_axes) > 1 or any(_names(s) for s in specs["router"]):
        raise NotImplementedError(f"expert dim over {e_axes}, router {specs['router']}: unsupported layout")
    toks = batch_axes(mesh, x.shape[0])
    if set(f_axes) & set(toks):
        raise NotImplementedError(f"F split over token axes {f_axes}")
    ex = e_axes[0] if e_axes else None
    plan = _Plan(
        **kw,
        token_axes=toks,
        gather=tuple((a, "varying" if a in toks else "invarying") for a in reversed(d_axes)),
        f_axes=f_axes,
        expert_axis=ex,
        ep=mesh.shape[ex] if ex else 1,
        a2a=ex is not None and ex in toks,
        dispatch=dispatch,
        capacity_factor=float(capacity_factor),
    )
    tok = P(toks or None, None, None)
    if valid is None:
        valid = jnp.ones(x.shape[:2], bool)
    fn = jax.shard_map(
        lambda *a: _body(*a, plan=plan),
        mesh=mesh,
        in_specs=(tok, specs["router"], specs["gate"], specs["up"], specs["down"], P(toks or None, None)),
        out_specs=(tok, MoEStats(P(), P(), P(), P())),
    )
    return fn(x, router_w, wg, wu, wd, valid)


# --------------------------------------------------------------------------------------------------------------------
# grouped-GEMM backend


_CUDNN_FLAG = "--xla_gpu_experimental_use_ragged_dot_fusion=true"


def configure_grouped_gemm(kind: str = "xla") -> None:
    """Pick the GPU kernel behind `jax.lax.ragged_dot`. Why: at XLA defaults on GPU, the RaggedDotRewriter expands
    every ragged_dot into a dense dot over a masked (G, M, K) broadcast of the lhs, i.e. G× the useful FLOPs (128×
    for Qwen3-30B-A3B) — the grouped GEMM is only real with one of:

      "xla"           XLA default (the dense expansion on GPU; on TPU and CPU this choice is fine);
      "cudnn"         XLA_FLAGS += --xla_gpu_experimental_use_ragged_dot_fusion=true (cuDNN grouped GEMM; the flag is
                      read when the backend starts, so call this before the first JAX computation);
      "pallas_triton" jax config `jax_ragged_dot_use_gpu_pallas_triton_lowering` (JAX's Pallas-Triton kernel).

    Not verified here (no GPU): a GPU check should assert that the compiled HLO holds no dense (G, M, K) dot and time
    the layer against its FLOP count."""
    if kind not in ("xla", "cudnn", "pallas_triton"):
        raise ValueError(f"grouped gemm {kind!r}: expected xla | cudnn | pallas_triton")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_CUDNN_FLAG.split("=")[0])]
    if kind == "cudnn":
        flags.append(_CUDNN_FLAG)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    jax.config.update("jax_ragged_dot_use_gpu_pallas_triton_lowering", kind == "pallas_triton")

"""Temperature → top-k → top-p truncation in exactly vLLM's order; the one function the sampler, the baselines and
the fork/lock analysis all use.

vLLM's sampler (v1 `Sampler` + `apply_top_k_top_p`):
  1. greedy when T < 1e-5: argmax of the raw logits (first index on ties);
  2. logits / T;
  3. top-k on the tempered logits: sort ascending, the k-th largest value is the threshold, every token *below* it
     is removed — tokens tied with the k-th value all survive (more than k may remain);
  4. top-p within the survivors: softmax over them, cumulative sum in ascending order, remove the tokens whose
     cumulative mass is ≤ 1 − p, but never the largest one (at least one token is kept). Tied values are ordered by
     token id (stable sort), so at a top-p boundary that splits ties the lower ids go first;
  5. sample from the softmax of what is left (renormalised).
top_k ≤ 0 or ≥ vocab disables top-k; top_p ≥ 1 disables top-p. No penalties, no min-p.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssd_jax.sampling.types import GREEDY_EPS


def _rows(x, lead: tuple[int, ...], dtype):
    """A scalar or an array over the leading axes `lead`, flattened to one value per row."""
    return jnp.broadcast_to(jnp.asarray(x, dtype), lead).reshape(-1)


FAST_K = 64  # top-k settings up to this use the partial-sort path


def _rows_params(lead, temperature, top_k, top_p):
    return _rows(temperature, lead, jnp.float32), _rows(top_k, lead, jnp.int32), _rows(top_p, lead, jnp.float32)


def _top_p_sorted(xs, keep_sorted, p):
    """Apply top-p to rows sorted ascending (stable): drop the low tail whose mass is <= 1 - p, keep the last."""
    probs = jax.nn.softmax(jnp.where(keep_sorted, xs, -jnp.inf), axis=-1)
    cum = jnp.cumsum(probs, axis=-1)
    drop = (cum <= (1.0 - p)[:, None]) & (p < 1.0)[:, None]
    drop = drop.at[:, -1].set(False)
    return keep_sorted & ~drop


def _keep_full(tempered, k, p):
    """Exact path: one stable ascending sort of the whole vocabulary (any top_k, any ties)."""
    b, v = tempered.shape
    order = jnp.argsort(tempered, axis=-1, stable=True)  # ascending, ties by token id
    xs = jnp.take_along_axis(tempered, order, axis=-1)
    k_on = (k > 0) & (k < v)
    kth = jnp.take_along_axis(xs, jnp.clip(v - k, 0, v - 1)[:, None], axis=-1)
    keep_sorted = _top_p_sorted(xs, jnp.where(k_on[:, None], xs >= kth, True), p)
    return jnp.zeros_like(keep_sorted).at[jnp.arange(b)[:, None], order].set(keep_sorted)


def _keep_fast(tempered, k, p):
    """Same result via `lax.top_k(FAST_K)` when every row has 0 < top_k <= FAST_K and no token tied with the
    k-th value lies outside the candidates (checked by the caller): only FAST_K values are sorted."""
    b, v = tempered.shape
    vals, idx = jax.lax.top_k(tempered, FAST_K)  # descending
    kth = jnp.take_along_axis(vals, (k - 1)[:, None], axis=-1)
    order = jnp.lexsort((idx, vals), axis=-1)  # ascending by value, ties by token id (the full path's order)
    xs = jnp.take_along_axis(vals, order, axis=-1)
    ids = jnp.take_along_axis(idx, order, axis=-1)
    keep_sorted = _top_p_sorted(xs, xs >= kth, p)
    return jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], ids].set(keep_sorted)


def truncate(logits: jax.Array, temperature, top_k, top_p) -> tuple[jax.Array, jax.Array]:
    """(tempered logits, keep mask), both (..., V). Parameters are scalars or per-row arrays over the leading axes.

    Greedy rows (T < 1e-5) keep exactly the argmax of the raw logits. A full-vocabulary sort is the reference
    path; when every row uses a small top-k (the paper's settings: 20) a partial top-k sort gives the identical
    kept set (ties at the k-th value included: if any fall outside the candidates the full sort runs instead)."""
    shape = logits.shape
    v = shape[-1]
    x = logits.reshape(-1, v).astype(jnp.float32)
    t, k, p = _rows_params(shape[:-1], temperature, top_k, top_p)
    greedy = t < GREEDY_EPS
    tempered = x / jnp.where(greedy, 1.0, t)[:, None]
    argmax = jax.nn.one_hot(jnp.argmax(x, axis=-1), v, dtype=bool)
    if v > FAST_K:
        small_k = jnp.all(greedy | ((k > 0) & (k <= FAST_K)))
        kk = jnp.clip(k, 1, FAST_K)
        kth = jnp.take_along_axis(jax.lax.top_k(tempered, FAST_K)[0], (kk - 1)[:, None], axis=-1)
        ties_inside = jnp.all(greedy[:, None] | (jnp.sum(tempered >= kth, axis=-1, keepdims=True)
                                                  <= FAST_K))
        keep = jax.lax.cond(jnp.all(greedy), lambda: argmax,
                            lambda: jax.lax.cond(small_k & ties_inside, lambda: _keep_fast(tempered, kk, p),
                                                 lambda: _keep_full(tempered, k, p)))
    else:
        keep = _keep_full(tempered, k, p)
    keep = jnp.where(greedy[:, None], argmax, keep)
    return tempered.reshape(shape), keep.reshape(shape)


def truncated_logprobs(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """Log-probabilities of the distribution actually sampled from: −inf outside the kept set, renormalised."""
    tempered, keep = truncate(logits, temperature, top_k, top_p)
    return jax.nn.log_softmax(jnp.where(keep, tempered, -jnp.inf), axis=-1)


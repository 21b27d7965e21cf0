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
import jax.extend.random as jax_random
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


def _keep_fast_sorted(vals, idx, k, p):
    """Keep mask over the FAST_K candidates `lax.top_k` returned (values `vals`, token ids `idx`, in its order)."""
    kth = jnp.take_along_axis(vals, (k - 1)[:, None], axis=-1)
    order = jnp.lexsort((idx, vals), axis=-1)  # ascending by value, ties by token id (the full path's order)
    xs = jnp.take_along_axis(vals, order, axis=-1)
    keep_sorted = _top_p_sorted(xs, xs >= kth, p)
    return jnp.zeros_like(keep_sorted).at[jnp.arange(vals.shape[0])[:, None], order].set(keep_sorted)


def _prepare(logits: jax.Array, temperature, top_k, top_p):
    """Rows of (raw fp32 logits, tempered logits, greedy, top_k, top_p, top) where `top` is None when V <= FAST_K,
    else ((vals, ids) of `lax.top_k(tempered, FAST_K)`, whether the partial-sort path over them is exact: every row
    has 0 < top_k <= FAST_K and no token tied with the k-th value lies outside the candidates)."""
    v = logits.shape[-1]
    x = logits.reshape(-1, v).astype(jnp.float32)
    t, k, p = _rows_params(logits.shape[:-1], temperature, top_k, top_p)
    greedy = t < GREEDY_EPS
    tempered = x / jnp.where(greedy, 1.0, t)[:, None]
    if v <= FAST_K:
        return x, tempered, greedy, k, p, None
    vals, ids = jax.lax.top_k(tempered, FAST_K)  # descending
    small_k = jnp.all(greedy | ((k > 0) & (k <= FAST_K)))
    kth = jnp.take_along_axis(vals, (jnp.clip(k, 1, FAST_K) - 1)[:, None], axis=-1)
    ties_inside = jnp.all(greedy[:, None] | (jnp.sum(tempered >= kth, axis=-1, keepdims=True) <= FAST_K))
    return x, tempered, greedy, k, p, ((vals, ids), small_k & ties_inside)


def truncate(logits: jax.Array, temperature, top_k, top_p) -> tuple[jax.Array, jax.Array]:
    """(tempered logits, keep mask), both (..., V). Parameters are scalars or per-row arrays over the leading axes.

    Greedy rows (T < 1e-5) keep exactly the argmax of the raw logits. A full-vocabulary sort is the reference
    path; when every row uses a small top-k (the paper's settings: 20) a partial top-k sort gives the identical
    kept set (ties at the k-th value included: if any fall outside the candidates the full sort runs instead)."""
    shape, v = logits.shape, logits.shape[-1]
    x, tempered, greedy, k, p, top = _prepare(logits, temperature, top_k, top_p)
    argmax = jax.nn.one_hot(jnp.argmax(x, axis=-1), v, dtype=bool)
    if top is not None:
        (vals, ids), fast = top
        rows = jnp.arange(x.shape[0])[:, None]

        def keep_fast():  # the candidates' mask scattered back to vocabulary order
            return jnp.zeros(x.shape, bool).at[rows, ids].set(_keep_fast_sorted(vals, ids, jnp.clip(k, 1, FAST_K), p))

        keep = jax.lax.cond(jnp.all(greedy), lambda: argmax,
                            lambda: jax.lax.cond(fast, keep_fast, lambda: _keep_full(tempered, k, p)))
    else:
        keep = _keep_full(tempered, k, p)
    keep = jnp.where(greedy[:, None], argmax, keep)
    return tempered.reshape(shape), keep.reshape(shape)


def _gumbel(keys: jax.Array, ids: jax.Array) -> jax.Array:
    """Gumbel noise (N, C) for token ids (N, C) under one raw PRNG key per row (N, 2): a counter-based hash of
    (key, token id), so a token draws the same noise whether 64 candidates or the whole vocabulary are scored."""
    ids = ids.astype(jnp.uint32)
    # threefry_2x32 hashes the pairs (first half, second half) of its counts: (id, 0) for each token, so a token's
    # bits depend on its id alone, not on its position or on how many tokens are scored.
    bits = jax.vmap(jax_random.threefry_2x32)(keys, jnp.concatenate([ids, jnp.zeros_like(ids)], axis=-1))
    bits = bits[:, : ids.shape[-1]]
    u = ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))  # uniform on (0, 1), never 0 or 1
    return -jnp.log(-jnp.log(u))


def _draw(values: jax.Array, ids: jax.Array, keep: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gumbel-max over the kept candidates: (token id, its log-probability under the renormalised kept set)."""
    lp = jax.nn.log_softmax(jnp.where(keep, values, -jnp.inf), axis=-1)
    pick = jnp.argmax(jnp.where(keep, lp + _gumbel(keys, ids), -jnp.inf), axis=-1)
    at = pick[:, None]
    return jnp.take_along_axis(ids, at, axis=-1)[:, 0], jnp.take_along_axis(lp, at, axis=-1)[:, 0]


def sample(logits: jax.Array, temperature, top_k, top_p, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One token per row of `logits` (N, V) from the truncated distribution, and its log-probability under it.

    `keys` (N, 2) are raw PRNG keys, one per row. Same distribution as a categorical draw from
    `truncated_logprobs`, by the Gumbel-max trick with noise hashed from (key, token id): on the partial-sort path
    only the FAST_K candidates draw noise, where a categorical would draw it for all V tokens (44 of a 262 ms
    decode step at 32 rows × 49,152), and the full path draws the same noise for the same tokens, so a row's token
    does not depend on which path its batch took. Greedy rows return the argmax of the raw logits (log-prob 0)."""
    n, v = logits.shape
    x, tempered, greedy, k, p, top = _prepare(logits, temperature, top_k, top_p)
    keys = jnp.asarray(keys, jnp.uint32).reshape(n, 2)

    def full_path():
        ids = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (n, v))
        tok, lp = _draw(tempered, ids, _keep_full(tempered, k, p), keys)
        return jnp.where(greedy, jnp.argmax(x, axis=-1).astype(jnp.int32), tok.astype(jnp.int32)), lp

    if top is None:
        tok, lp = full_path()
    else:
        (vals, ids), fast = top

        def fast_path():
            tok, lp = _draw(vals, ids, _keep_fast_sorted(vals, ids, jnp.clip(k, 1, FAST_K), p), keys)
            # A greedy row's tempered logits are its raw ones (divided by 1), and top_k puts the lowest id first
            # among ties, as argmax does: its first candidate is the argmax, without another vocabulary pass.
            return jnp.where(greedy, ids[:, 0], tok).astype(jnp.int32), lp

        tok, lp = jax.lax.cond(fast, fast_path, full_path)
    return tok, jnp.where(greedy, 0.0, lp)


def truncated_logprobs(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """Log-probabilities of the distribution actually sampled from: −inf outside the kept set, renormalised."""
    tempered, keep = truncate(logits, temperature, top_k, top_p)
    return jax.nn.log_softmax(jnp.where(keep, tempered, -jnp.inf), axis=-1)


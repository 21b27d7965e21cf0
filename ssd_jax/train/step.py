"""The jitted SFT step: token-weighted cross-entropy over unmasked tokens, accumulated over micro-batches.

Loss = Σ w·CE / Σ w over the whole global batch (not a mean of per-micro-batch means), so gradient accumulation
gives exactly the gradient of one big batch. The LM head and softmax run chunk by chunk under `jax.checkpoint`:
the (batch × seq × vocab) logits are never materialised, which is what makes 150k-vocab × 64k-token rows fit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


def chunked_cross_entropy(hidden, head, targets, weights, chunk: int):
    """Σ w·(logsumexp(z) − z[target]) and Σ w, with z = hidden @ head computed `chunk` tokens at a time in fp32."""
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    t = targets.reshape(-1)
    w = weights.reshape(-1).astype(jnp.float32)
    n = h.shape[0]
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        t = jnp.pad(t, (0, pad))
        w = jnp.pad(w, (0, pad))
    h = h.reshape(-1, chunk, d)
    t = t.reshape(-1, chunk)
    w = w.reshape(-1, chunk)

    @jax.checkpoint
    def one(h_c, t_c, w_c):
        z = jnp.einsum("nd,dv->nv", h_c, head, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(z, axis=-1)
        zt = jnp.take_along_axis(z, t_c[:, None], axis=-1)[:, 0]
        return jnp.sum(w_c * (lse - zt))

    def body(acc, xs):
        return acc + one(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t, w))
    return total, jnp.sum(w)


def loss_sums(model, batch: dict, chunk: int):
    """(Σ w·CE, Σ w) of one micro-batch."""
    out = model(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"], return_hidden=True)
    return chunked_cross_entropy(out.logits, model.head_kernel(), batch["targets"], batch["weights"], chunk)


def make_train_step(chunk: int, batch_sharding=None):
    """step(model, optimizer, batch) → metrics; batch arrays are (accum, micro, seq). Updates model in place."""

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, optimizer, batch):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def micro_loss(p, mb):
            s, w = loss_sums(nnx.merge(graphdef, p, rest), mb, chunk)
            return s, w

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

        def body(carry, mb):
            g_acc, s_acc, w_acc = carry
            if batch_sharding is not None:
                mb = {k: jax.lax.with_sharding_constraint(v, batch_sharding) for k, v in mb.items()}
            (s, w), g = grad_fn(params, mb)
            g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
            return (g_acc, s_acc + s, w_acc + w), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (g_sum, s_sum, w_sum), _ = jax.lax.scan(body, init, batch)
        denom = jnp.maximum(w_sum, 1.0)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), g_sum, params)
        grad_norm = optax.tree.norm(grads)
        optimizer.update(model, grads)
        return {"loss": s_sum / denom, "grad_norm": grad_norm, "loss_tokens": w_sum}

    return step


@functools.partial(nnx.jit, static_argnames=("chunk",))
def eval_loss(model, batch: dict, chunk: int = 2048):
    """Token-weighted mean CE of one (batch, seq) batch, no update (validation, tests)."""
    s, w = loss_sums(model, batch, chunk)
    return s / jnp.maximum(w, 1.0)

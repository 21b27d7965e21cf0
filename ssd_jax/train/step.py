"""The jitted SFT step: token-weighted cross-entropy over unmasked tokens, accumulated over micro-batches.

Loss = Σ w·CE / Σ w over the whole global batch (not a mean of per-micro-batch means), so gradient accumulation
gives exactly the gradient of one big batch. The LM head and softmax run chunk by chunk, their gradients in the
same pass (`_ce_sum`): the (batch × seq × vocab) logits are never materialised, which is what makes 150k-vocab ×
64k-token rows fit.

On a mesh, the chunks run along the sequence with every row's batch sharding kept (slicing the sharded batch
axis instead would make the partitioner gather all hidden states onto every device), the LM head is gathered once
per step, and the gradient accumulator is pinned to the parameters' shardings.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ssd_jax.models.moe import load_balancing_loss
from ssd_jax.sharding import constrain_batch, fit_spec, tree_shardings



def chunked_cross_entropy(hidden, head, targets, weights, chunk: int, mesh=None):
    """Σ w·(logsumexp(z) − z[target]) and Σ w, with z = hidden @ head in fp32, `chunk` sequence positions of
    every row at a time. hidden (B, T, D), head (D, V), targets/weights (B, T). Differentiable in hidden and head
    (see `_ce_sum`)."""
    b, t, d = hidden.shape
    chunk = max(1, min(chunk, t))
    pad = (-t) % chunk
    w = weights.astype(jnp.float32)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        w = jnp.pad(w, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    # (n_chunks, B, chunk, …): the scan walks the unsharded chunk axis; B keeps its sharding.
    h = constrain_batch(hidden.reshape(b, n, chunk, d).swapaxes(0, 1), mesh, axis=1)
    tt = constrain_batch(targets.reshape(b, n, chunk).swapaxes(0, 1), mesh, axis=1)
    ww = constrain_batch(w.reshape(b, n, chunk).swapaxes(0, 1), mesh, axis=1)
    if mesh is not None:
        # Gathered over fsdp once here, not once per chunk; the vocabulary stays split over `tensor`.
        head = jax.lax.with_sharding_constraint(head, NamedSharding(mesh, fit_spec(P(None, "tensor"), head.shape, mesh)))
    return _ce_sum(h, head, tt, ww), jnp.sum(w)


def _chunk_terms(h_c, head, t_c, w_c):
    """A chunk's exp(z − max z) and its row sums (the softmax's parts; z = the fp32 logits), and Σ w·(lse −
    z[target]) with lse = log Σ exp(z − max z) + max z, as `jax.nn.logsumexp`.

    The exponentials are one array that the loss and the softmax gradient share: computing exp(z − lse) again for
    the gradient, as written from logsumexp, cost one more exp pass over (chunk, V), and XLA:CPU runs an exp fused
    into a reduction at half the speed of a standalone one (SmolLM2's 2048 × 49,152 chunk: 437 → 238 ms)."""
    z = jnp.einsum("bcd,dv->bcv", h_c, head, preferred_element_type=jnp.float32)
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    lse = (jnp.log(s) + m)[..., 0]
    zt = jnp.take_along_axis(z, t_c[..., None], axis=-1)[..., 0]
    return e, s, jnp.sum(w_c * (lse - zt))


@jax.custom_vjp
def _ce_sum(h, head, targets, weights):
    """Σ over chunks of Σ w·CE; h (n, B, chunk, D), targets/weights (n, B, chunk).

    Under differentiation the forward also computes the gradients (softmax − one-hot, times w, through the head)
    chunk by chunk while the chunk's logits are at hand, and the backward only scales them by the incoming
    cotangent: three vocabulary-sized GEMMs per chunk (logits, ∂hidden, ∂head) and one softmax. Autodiff of a
    checkpointed chunk computed the logits twice (forward and recompute): 4 GEMMs, the LM head's being the
    largest of a small model's step."""
    def body(total, xs):
        return total + _chunk_terms(xs[0], head, xs[1], xs[2])[2], None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, targets, weights))[0]


def _ce_sum_fwd(h, head, targets, weights):
    dt = h.dtype

    def body(carry, xs):
        total, d_head = carry
        h_c, t_c, w_c = xs
        e, s_row, s = _chunk_terms(h_c, head, t_c, w_c)
        w_c = w_c[..., None]
        dz = e * (w_c / s_row)  # w · softmax
        dz = jnp.where(jnp.arange(e.shape[-1]) == t_c[..., None], dz - w_c, dz).astype(dt)
        d_h = jnp.einsum("bcv,dv->bcd", dz, head, preferred_element_type=jnp.float32).astype(dt)
        d_head = d_head + jnp.einsum("bcd,bcv->dv", h_c, dz, preferred_element_type=jnp.float32)
        return (total + s, d_head), d_h

    init = (jnp.zeros((), jnp.float32), jnp.zeros(head.shape, jnp.float32))
    (total, d_head), d_h = jax.lax.scan(body, init, (h, targets, weights))
    return total, (d_h, d_head.astype(head.dtype))


def _ce_sum_bwd(res, g):
    d_h, d_head = res
    return (g * d_h).astype(d_h.dtype), (g * d_head).astype(d_head.dtype), None, None


_ce_sum.defvjp(_ce_sum_fwd, _ce_sum_bwd)


def _forward_loss(model, batch: dict, chunk: int):
    """(Σ w·CE, Σ w, MoE stats summed over layers or None) of one micro-batch."""
    out = model(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"], return_hidden=True)
    s, w = chunked_cross_entropy(out.last_hidden, model.head_kernel(), batch["targets"], batch["weights"], chunk,
                                 model.mesh)
    return s, w, out.moe_stats


def loss_sums(model, batch: dict, chunk: int):
    """(Σ w·CE, Σ w) of one micro-batch."""
    return _forward_loss(model, batch, chunk)[:2]


def accumulate_grads(model, batch: dict, chunk: int, mesh=None, moe_aux_loss_coef: float = 0.0):
    """(gradients, metrics) of the objective over a global batch of (accum, micro, seq) arrays; traced inside the
    train step (and by the parity tests, which compare these gradients with PyTorch's).

    Objective: Σ w·CE / Σ w over the global batch (the denominator comes from the batch's weights before the
    micro-batch loop, so each micro-batch's gradient is already final and the accumulator is their plain sum), plus
    `moe_aux_loss_coef` × the mean over micro-batches of the load-balancing loss of each (HF's
    `router_aux_loss_coef`; 0 = the paper's plain cross-entropy)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pin = (lambda tree: tree) if mesh is None else functools.partial(
        jax.lax.with_sharding_constraint, shardings=tree_shardings(params, mesh))
    accum = batch["weights"].shape[0]
    denom = jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)
    num_experts = model.cfg.moe.num_experts if model.cfg.moe else 0

    def micro_objective(p, mb):
        s, w, stats = _forward_loss(nnx.merge(graphdef, p, rest), mb, chunk)
        aux = jnp.zeros((), jnp.float32) if stats is None else load_balancing_loss(stats, num_experts)
        dropped = jnp.zeros((), jnp.float32) if stats is None else stats.dropped
        objective = s / denom + (moe_aux_loss_coef / accum) * aux if moe_aux_loss_coef else s / denom
        return objective, (s, w, aux, dropped)

    grad_fn = jax.grad(micro_objective, has_aux=True)

    def body(carry, mb):
        g_acc, sums = carry
        mb = {k: constrain_batch(v, mesh) for k, v in mb.items()}
        g, terms = grad_fn(params, mb)
        g_acc = pin(jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g))
        return (g_acc, tuple(a + b for a, b in zip(sums, terms))), None

    zeros = pin(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
    (g_sum, (s_sum, w_sum, aux_sum, dropped)), _ = jax.lax.scan(
        body, (zeros, (jnp.zeros((), jnp.float32),) * 4), batch)
    grads = pin(jax.tree.map(lambda g, p: g.astype(p.dtype), g_sum, params))
    metrics = {"loss": s_sum / denom, "grad_norm": optax.tree.norm(grads), "loss_tokens": w_sum}
    if num_experts:
        metrics |= {"moe_aux_loss": aux_sum / accum, "moe_dropped": dropped}
    return grads, metrics


def make_train_step(chunk: int, mesh=None, moe_aux_loss_coef: float = 0.0):
    """step(model, optimizer, batch) → metrics; batch arrays are (accum, micro, seq). Updates model in place."""

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, optimizer, batch):
        grads, metrics = accumulate_grads(model, batch, chunk, mesh, moe_aux_loss_coef)
        optimizer.update(model, grads)
        return metrics

    return step

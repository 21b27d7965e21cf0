"""JAX decoders vs transformers in fp32 on tiny random models covering every switch, padded both ways."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import parity
from ssd_jax.models import hf, padded_positions
from tests import tiny
from tests.hlo import jaxpr_dots

NAMES = list(tiny.CONFIGS)


def _cases():
    for name in NAMES:
        for side in ("left", "right"):
            yield name, side, "ragged"
    yield "qwen3_moe", "left", "dense"
    yield "qwen3_moe_mixed", "right", "dense"


@pytest.mark.parametrize("name,side,moe_impl", list(_cases()))
def test_logits_and_hidden_states_match_transformers(tiny_dir, name, side, moe_impl):
    d = tiny_dir(name)
    model = hf.load(d, moe_impl=moe_impl)
    ref = parity.load_hf_reference(d)
    ids, mask = parity.random_batch(model.cfg.vocab_size, lengths=(13, 5, 9, 1), seed=1, padding_side=side)
    hf_logits, hf_hidden = parity.hf_forward(ref, ids, mask)
    jax_logits, jax_hidden = parity.jax_forward(model, ids, mask)
    m = parity.compare(hf_logits, jax_logits, mask, hf_hidden, jax_hidden)
    assert m["max_abs_logit_diff"] <= 1e-4, m
    assert m["top1_agreement"] == 1.0, m
    assert len(m["layer_max_abs"]) == len(m["layer_rel"]) == model.cfg.num_layers + 1
    assert max(m["layer_max_abs"]) <= 1e-4 and max(m["layer_rel"]) <= 1e-5, m
    # The logits are not degenerate: the test would notice a wrong model.
    assert np.std(hf_logits[mask.astype(bool)]) > 0.1


@pytest.mark.parametrize("name", ["llama3", "qwen3_moe_mixed"])
def test_blockwise_attention_model_matches_transformers(tiny_dir, name):
    """The flash-style attention inside the whole model (packed-free padded batch, tiles smaller than the rows)."""
    d = tiny_dir(name)
    model = hf.load(d, attention_impl="blockwise")
    ids, mask = parity.random_batch(model.cfg.vocab_size, lengths=(13, 5, 9, 1), seed=1, padding_side="left")
    hf_logits, _ = parity.hf_forward(parity.load_hf_reference(d), ids, mask)
    jax_logits, _ = parity.jax_forward(model, ids, mask)
    assert parity.compare(hf_logits, jax_logits, mask)["max_abs_logit_diff"] <= 1e-4


def test_a_wrong_layer_is_caught(tiny_dir):
    """Sanity of the comparison itself: swapping two layers' weights must break parity."""
    d = tiny_dir("qwen3_tied")
    model = hf.load(d)
    q = model.layers[0].attn.q_proj  # both layers, stacked
    q[...] = q[...][::-1]
    ids, mask = parity.random_batch(model.cfg.vocab_size, seed=2)
    hf_logits, _ = parity.hf_forward(parity.load_hf_reference(d), ids, mask)
    jax_logits, _ = parity.jax_forward(model, ids, mask)
    assert parity.compare(hf_logits, jax_logits, mask)["max_abs_logit_diff"] > 1e-2


@pytest.mark.parametrize("name,options", [
    ("llama3", {}),
    ("qwen3_moe", {}),
    ("qwen3_tied", {"attention_impl": "blockwise"}),
    ("qwen3_moe_mixed", {"scan_layers": False}),  # the sampler's list layout: one stack (and cache) per layer
])
def test_kv_cache_incremental_matches_full_forward(tiny_dir, name, options):
    """Prefill a left-padded batch, then feed one token at a time through the cache: same logits as one pass."""
    from flax import nnx

    model = hf.load(tiny_dir(name), **options)
    ids, mask = parity.random_batch(model.cfg.vocab_size, lengths=(12, 6, 9), seed=3, padding_side="left")
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    full = model(ids, positions=padded_positions(mask), segment_ids=mask).logits

    prefill = 7  # the rest arrives token by token
    pos = padded_positions(mask)

    @nnx.jit
    def step(m, tok, p, seg, cache):
        out = m(tok, positions=p, segment_ids=seg, cache=cache)
        return out.logits, out.cache

    cache = model.init_cache(ids.shape[0], 16)
    logits, cache = step(model, ids[:, :prefill], pos[:, :prefill], mask[:, :prefill], cache)
    got = [logits]
    for t in range(prefill, ids.shape[1]):
        logits, cache = step(model, ids[:, t : t + 1], pos[:, t : t + 1], mask[:, t : t + 1], cache)
        got.append(logits)
    got = jnp.concatenate(got, axis=1)
    valid = np.asarray(mask).astype(bool)
    assert int(cache.end) == ids.shape[1]
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(full)[valid], atol=1e-5, rtol=0)


def test_tied_embedding_is_one_parameter_with_summed_gradient(tiny_dir):
    """The tied LM head is the embedding itself: its gradient (input + output use) matches PyTorch's."""
    import jax
    import torch
    from flax import nnx

    d = tiny_dir("qwen3_tied")
    model = hf.load(d)
    assert not hasattr(model, "lm_head")
    ids, mask = parity.random_batch(model.cfg.vocab_size, lengths=(10, 10), seed=4, padding_side="right")

    def loss_fn(m):
        logits = m(jnp.asarray(ids)).logits[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids)[:, 1:, None], axis=-1))

    grads = nnx.grad(loss_fn)(model)
    ref = parity.load_hf_reference(d)
    assert ref.lm_head.weight is ref.model.embed_tokens.weight
    out = ref(input_ids=torch.as_tensor(ids, dtype=torch.long), labels=torch.as_tensor(ids, dtype=torch.long))
    out.loss.backward()
    want = ref.model.embed_tokens.weight.grad.numpy()
    got = np.asarray(grads.embed[...])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-4)
    # Both uses contribute: the gradient is not just the input-embedding rows of the seen tokens.
    unseen = np.setdiff1d(np.arange(model.cfg.vocab_size), ids)
    assert np.abs(got[unseen]).max() > 0


@pytest.mark.parametrize("name", ["llama_bias_tied", "qwen3_untied"])
def test_bf16_matmuls_take_bf16_operands_and_accumulate_in_fp32(tiny_dir, name):
    """Every projection, attention product and LM head of a bf16 dense decoder is a bf16 × bf16 → fp32 dot: the form
    XLA:CPU runs on AMX/AVX512-BF16 (a bf16 → bf16 dot is upcast and run as an fp32 GEMM), and what a GPU computes
    anyway. Checked on the traced programs, so it holds on any CPU. With a KV cache (as the sampler runs) the
    attention products take the cache's dtype, fp32 on CPU (see layers.KVCache); the projections stay bf16.
    (The MoE expert GEMMs are not covered: their CPU path is the test-size reference.)"""
    import jax
    from flax import nnx

    model = hf.load(tiny_dir(name), dtype="bfloat16", param_dtype="bfloat16")
    ids = jnp.ones((2, 4), jnp.int32)
    graphdef, state = nnx.split(model)

    def fwd(state, ids, cached):
        m = nnx.merge(graphdef, state)
        return m(ids, cache=m.init_cache(2, 8) if cached else None).logits

    cache_dtype = model.init_cache(1, 1).k[0].dtype
    for cached in (False, True):
        found = list(jaxpr_dots(jax.make_jaxpr(functools.partial(fwd, cached=cached))(state, ids).jaxpr))
        assert len(found) >= 6 * model.cfg.num_layers // 2  # the layers are scanned: each stack body traced once
        for eqn in found:
            attention = bool(eqn.params["dimension_numbers"][1][0])  # the products with batch dims
            want = cache_dtype if cached and attention else jnp.bfloat16
            ins = [v.aval.dtype for v in eqn.invars]
            assert ins == [want, want] and eqn.params["preferred_element_type"] == jnp.float32, str(eqn)[:300]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_projection_forms_agree(dtype):
    """`layers.project` for XLA:CPU (custom VJP over transposed residuals) and for a GPU/TPU program (plain dots,
    autodiff): the same products and gradients, three kernels sharing one input as the attention's q/k/v do."""
    import jax

    from ssd_jax.models import layers

    r = np.random.default_rng(1)
    dt = jnp.dtype(dtype)
    x = jnp.asarray(r.standard_normal((3, 40, 64)), dt)
    ws = tuple(jnp.asarray(0.1 * r.standard_normal((64, h, 16)), dt) for h in (6, 2, 2))

    def run(cpu):
        def loss(x, ws):
            ys = layers.project(x, ws, dt, cpu=cpu)
            return sum(jnp.sum(y.astype(jnp.float32) * jnp.sin(y.astype(jnp.float32))) for y in ys)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, ws)

    tol = 1e-6 if dtype == "float32" else 1e-2
    for a, b in zip(jax.tree.leaves(run(True)), jax.tree.leaves(run(False)), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b)))


@pytest.mark.parametrize("cpu", [True, False])
@pytest.mark.parametrize("dtype,bias", [("float32", True), ("float32", False), ("bfloat16", True)])
def test_swiglu_forms_equal_autodiff_of_the_reference(dtype, bias, cpu):
    """Both forms of the MLP (layers.swiglu): XLA:CPU's hand-written backward and the plain dots a GPU program takes
    give the reference's values and autodiff's gradients for x, the three kernels and the biases."""
    import jax

    from ssd_jax.models import layers

    n, d, f = 96, 64, 128
    r = np.random.default_rng(0)
    dt = jnp.dtype(dtype)
    x = jnp.asarray(r.standard_normal((n, d)), dt)
    ws = [jnp.asarray(0.1 * r.standard_normal(s), dt) for s in [(d, f), (d, f), (f, d)]]
    bs = (jnp.asarray(0.1 * r.standard_normal(f), dt), jnp.asarray(0.1 * r.standard_normal(f), dt)) if bias else None

    def ref(x, wg, wu, wd, bs):
        mm = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(dt)
        g, u = mm(x, wg), mm(x, wu)
        if bs is not None:
            g, u = g + bs[0], u + bs[1]
        return mm(jax.nn.silu(g) * u, wd)

    def grads(fn):
        loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * jnp.cos(a[0].astype(jnp.float32)))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))

    got, want = grads(functools.partial(layers.swiglu, cpu=cpu))(x, *ws, bs), grads(ref)(x, *ws, bs)
    tol = 1e-5 if dtype == "float32" else 2e-2
    for g_, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g_, w_ = np.asarray(g_, np.float32), np.asarray(w_, np.float32)
        assert np.max(np.abs(g_ - w_)) <= tol * np.max(np.abs(w_))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rope_matches_hf_forward_and_backward(dtype):
    """layers.apply_rope (tables from rope_tables) against transformers' apply_rotary_pos_emb with its rotary
    embedding's cos/sin, forward and gradient, on packed positions; and its hand-written backward equals autodiff of
    the same forward with no pad in it (autodiff's slice-and-pad backward is what XLA:CPU fused into a slow loop)."""
    import jax
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from ssd_jax.models import layers
    from ssd_jax.models.config import RopeConfig

    b, t, h, hd = 2, 12, 3, 16
    r = np.random.default_rng(0)
    dt, tdt = jnp.dtype(dtype), getattr(torch, dtype)
    pos = np.stack([np.r_[np.arange(7), np.arange(5)], np.arange(3, 3 + t)]).astype(np.int32)
    x = r.standard_normal((b, t, h, hd)).astype(np.float32)
    cot = r.standard_normal((b, t, h, hd)).astype(np.float32)
    inv = layers.rope_inv_freq(RopeConfig(theta=10000.0), hd)
    cos, sin = layers.rope_tables(jnp.asarray(pos), inv, dt)

    loss = lambda fn: lambda x: jnp.sum(fn(x).astype(jnp.float32) * cot)  # noqa: E731
    rope = jax.jit(lambda x: layers.apply_rope(x, cos, sin))
    got_y, got_dx = rope(jnp.asarray(x, dt)), jax.jit(jax.grad(loss(rope)))(jnp.asarray(x, dt))

    # HF: cos/sin (B, T, hd) from fp32 angles cast to the activations' dtype; q laid out (B, heads, T, hd).
    emb = torch.from_numpy(pos)[..., None].float() * torch.from_numpy(np.asarray(inv))
    emb = torch.cat([emb, emb], -1)
    xt = torch.from_numpy(x).to(tdt).transpose(1, 2).requires_grad_()
    yt, _ = apply_rotary_pos_emb(xt, xt, emb.cos().to(tdt), emb.sin().to(tdt))
    (yt.float() * torch.from_numpy(cot).transpose(1, 2)).sum().backward()
    want_y = yt.detach().transpose(1, 2).float().numpy()
    want_dx = xt.grad.transpose(1, 2).float().numpy()
    tol = 1e-6 if dtype == "float32" else 0.0  # bf16: the same ops rounded at the same places, so equal
    for got, want in ((got_y, want_y), (got_dx, want_dx)):
        assert np.max(np.abs(np.asarray(got, np.float32) - want)) <= tol * np.max(np.abs(want))

    plain = lambda x: x * cos + layers._rotate_half(x) * sin  # noqa: E731
    want_auto = jax.jit(jax.grad(loss(plain)))(jnp.asarray(x, dt))
    assert np.max(np.abs(np.asarray(got_dx, np.float32) - np.asarray(want_auto, np.float32))) <= tol * 10
    assert "pad" not in str(jax.make_jaxpr(jax.grad(loss(rope)))(jnp.asarray(x, dt)))
    assert "pad" in str(jax.make_jaxpr(jax.grad(loss(plain)))(jnp.asarray(x, dt)))  # the form it replaces


def test_save_dots_keeps_the_rotated_queries_and_keys_not_their_projections(tiny_dir, capsys):
    """Under `save_dots` a decoder layer's backward reads q and k after RoPE (kept, named `remat.ROTATED`) and v and
    the output projection's product; q's and k's projections are not kept, and the rotation is not recomputed from
    them (on CPU, XLA fused that recompute with the residual stack's slicing into a slow loop)."""
    import jax
    from flax import nnx

    from ssd_jax.models import layers, remat
    from ssd_jax.models.transformer import DecoderLayer

    cfg = hf.load(tiny_dir("llama_bias_tied")).cfg
    layer = DecoderLayer(cfg, False, nnx.Rngs(0))
    b, t = 2, 16
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, t, cfg.hidden_size)), jnp.float32)
    rope = layers.rope_tables(jnp.broadcast_to(jnp.arange(t), (b, t)), layers.rope_inv_freq(cfg.rope, cfg.head_dim),
                              jnp.float32)
    seg = jnp.ones((b, t), jnp.int32)
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(
        lambda x: jnp.sum(remat.remat(lambda x: layer(x, rope, seg)[0], "save_dots")(x)), x)
    out = capsys.readouterr().out
    rotated = [ln.split()[0] for ln in out.splitlines() if f"named '{remat.ROTATED}'" in ln]
    products = [ln.split()[0] for ln in out.splitlines() if f"named '{remat.PRODUCT}'" in ln]
    hd = cfg.head_dim
    assert sorted(rotated) == sorted([f"f32[{b},{t},{cfg.num_heads},{hd}]", f"f32[{b},{t},{cfg.num_kv_heads},{hd}]"])
    assert sorted(products) == sorted([f"f32[{b * t},{cfg.num_kv_heads * hd}]", f"f32[{b * t},{cfg.hidden_size}]"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_silu_mul_matches_torch_bit_for_bit(dtype):
    """activations.silu_mul against HF's `act_fn(gate) * up` in PyTorch: equal in both dtypes (bf16 included,
    where silu composed of bf16 ops rounds four more times and a third of the values differ)."""
    import torch

    from ssd_jax.models.activations import silu_mul

    r = np.random.default_rng(0)
    g, u = (3 * r.standard_normal((64, 96))).astype(np.float32), r.standard_normal((64, 96)).astype(np.float32)
    tdt = getattr(torch, dtype)
    want = (torch.nn.functional.silu(torch.from_numpy(g).to(tdt)) * torch.from_numpy(u).to(tdt)).float().numpy()
    got = np.asarray(silu_mul(jnp.asarray(g, dtype), jnp.asarray(u, dtype)), np.float32)
    tol = 1e-6 if dtype == "float32" else 0.0  # fp32: exp may differ in the last bit between libraries
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))

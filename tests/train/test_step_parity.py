"""The JAX SFT step against the PyTorch reference (fp32): one step's loss and gradients, a 20-step trajectory."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import parity, torch_reference as torch_ref
from ssd_jax.config import OptimConfig, SFTDataConfig
from ssd_jax.data import sft
from ssd_jax.errors import ConfigError
from ssd_jax.models import hf
from ssd_jax.train import optim, step as train_step
from tests.hlo import jaxpr_dots

OPT = OptimConfig(peak_lr=1e-3, floor_lr=1e-4, warmup_steps=5, total_steps=20, clip_norm=1.0)


def synthetic_examples(n=48, vocab=256, seed=0):
    """Token triples of varied length with the first third of each masked (a 'prompt')."""
    rng = np.random.RandomState(seed)
    out = []
    for length in rng.randint(4, 40, n):
        ids = rng.randint(0, vocab, length + 1).astype(np.int32)
        w = (np.arange(length) >= length // 3).astype(np.float32)
        out.append({"inputs": ids[:-1], "targets": ids[1:], "weights": w})
    return out


def packed_batches(steps, rows=4, seq_len=64, seed=0):
    it = iter(sft.batches_dataset(synthetic_examples(seed=seed), SFTDataConfig(seq_len=seq_len, packing_bins=4), rows))
    return [next(it) for _ in range(steps)]


def jax_run(model, batches, cfg=OPT, accum=1, chunk=40):
    opt = optim.create(model, cfg)
    step = train_step.make_train_step(chunk)
    losses = []
    for b in batches:
        bb = {k: jnp.asarray(v.reshape(accum, v.shape[0] // accum, -1)) for k, v in b.items()}
        losses.append(float(step(model, opt, bb)["loss"]))
    return losses


def test_schedule_formula():
    sched = optim.lr_schedule(OPT)
    for s in [0, 1, 4, 5, 6, 12, 19, 25]:
        assert abs(float(sched(s)) - optim.lr_at(OPT, s)) <= 1e-12 + 1e-6 * optim.lr_at(OPT, s)
    assert optim.lr_at(OPT, 0) == pytest.approx(OPT.peak_lr / 5)
    assert optim.lr_at(OPT, 4) == pytest.approx(OPT.peak_lr)
    assert optim.lr_at(OPT, 5) == pytest.approx(OPT.peak_lr)
    assert optim.lr_at(OPT, 20) == pytest.approx(OPT.floor_lr)


def test_megatron_warmup_matches_megatrons_scheduler():
    cfg = replace(OPT, warmup="megatron")
    sched = optim.lr_schedule(cfg)
    for step in range(cfg.total_steps + 3):  # `step` updates applied; Megatron's scheduler, as parity --train uses it
        ref = torch_ref.reference_lr(cfg, step)
        assert optim.lr_at(cfg, step) == pytest.approx(ref, rel=1e-12, abs=1e-18)
        assert abs(float(sched(step)) - ref) <= 1e-12 + 1e-6 * ref
    assert optim.lr_at(cfg, 0) == 0.0  # update 1 does not move the weights
    assert optim.lr_at(cfg, 1) == pytest.approx(OPT.peak_lr / 5) == optim.lr_at(OPT, 0)  # linear is one ahead
    with pytest.raises(ConfigError, match="optim.warmup='cosine': expected linear or megatron"):
        optim.lr_at(replace(OPT, warmup="cosine"), 0)


def test_decay_mask_skips_norms_and_biases(tiny_dir):
    model = hf.load(tiny_dir("llama_bias_tied"))
    mask = optim.decay_mask(nnx.state(model, nnx.Param), decay_norms_and_biases=False)
    assert mask["layers"][0]["attn"]["q_proj"].get_value() is True
    assert mask["layers"][0]["attn"]["q_bias"].get_value() is False
    assert mask["norm"]["scale"].get_value() is False
    assert mask["embed"].get_value() is True


@pytest.mark.parametrize("name", ["qwen3_tied", "llama_bias_tied", "qwen3_moe"])
def test_one_step_loss_and_gradients_match_pytorch(tiny_dir, name):
    d = tiny_dir(name)
    batch = packed_batches(1)[0]
    model = hf.load(d, moe_impl="dense" if "moe" in name else "ragged")

    def loss_fn(m):
        s, w = train_step.loss_sums(m, {k: jnp.asarray(v) for k, v in batch.items()}, 40)
        return s / w

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    ref = parity.load_hf_reference(d)
    ref_loss = torch_ref.loss_and_backward(ref, batch)
    assert abs(float(loss) - ref_loss) <= 1e-5 * ref_loss
    # Every HF parameter's gradient, mapped into HF layout by the exporter's own key map.
    ours = dict(hf.hf_tensors(_as_model(model, grads)))
    checked = 0
    for pname, p in ref.named_parameters():
        g_ref = p.grad.numpy()
        g = ours[pname] if pname in ours else _fused_experts(ours, pname, g_ref.shape[0])
        rel = np.linalg.norm(g - g_ref) / max(np.linalg.norm(g_ref), 1e-12)
        assert rel <= 1e-4, (pname, rel)
        checked += 1
    assert checked == len(list(ref.parameters()))


def test_moe_load_balancing_loss_matches_transformers(tiny_dir):
    """moe_aux_loss_coef > 0: the step's objective and every gradient equal HF's loss + router_aux_loss_coef ·
    aux_loss (output_router_logits=True, padding excluded through the attention mask)."""
    import torch

    coef = 0.05
    d = tiny_dir("qwen3_moe_mixed")
    batch = packed_batches(1)[0]
    model = hf.load(d)
    b = {k: jnp.asarray(v[None]) for k, v in batch.items()}
    g, metrics = nnx.jit(lambda m, b: train_step.accumulate_grads(m, b, 40, moe_aux_loss_coef=coef))(model, b)
    grads = dict(hf.hf_tensors(_as_model(model, g)))
    ref = parity.load_hf_reference(d)
    ids, tgt, w, mask = torch_ref.unpack(batch)
    out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_router_logits=True)
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), torch.tensor(tgt).reshape(-1),
                                           reduction="none")
    wt = torch.tensor(w).reshape(-1)
    loss = (ce * wt).sum() / wt.sum() + coef * out.aux_loss
    loss.backward(retain_graph=True)
    assert abs(float(metrics["moe_aux_loss"]) - out.aux_loss.item()) <= 1e-5 * out.aux_loss.item()
    for pname, p in ref.named_parameters():
        g_ref = p.grad.numpy()
        g = grads[pname] if pname in grads else _fused_experts(grads, pname, g_ref.shape[0])
        rel = np.linalg.norm(g - g_ref) / max(np.linalg.norm(g_ref), 1e-12)
        assert rel <= 1e-4, (pname, rel)
    # The loss reaches the router: without it, the router's gradient differs.
    ref.zero_grad()
    ((ce * wt).sum() / wt.sum()).backward()
    router = "model.layers.0.mlp.gate.weight"
    assert np.abs(ref.get_parameter(router).grad.numpy() - grads[router]).max() > 1e-6


def _fused_experts(tensors, pname, n_experts):
    """transformers 5 keeps experts fused in memory: gate_up_proj (E, 2F, D), down_proj (E, D, F)."""
    prefix = pname.rsplit(".", 1)[0]
    if pname.endswith("gate_up_proj"):
        return np.stack([np.concatenate([tensors[f"{prefix}.{e}.gate_proj.weight"],
                                         tensors[f"{prefix}.{e}.up_proj.weight"]]) for e in range(n_experts)])
    return np.stack([tensors[f"{prefix}.{e}.down_proj.weight"] for e in range(n_experts)])


def _as_model(model, grads):
    """A copy of `model` whose parameters are the gradients (to reuse the HF key map)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, grads, rest)


@pytest.mark.parametrize("name,accum", [("qwen3_tied", 1), ("llama3", 2)])
def test_twenty_step_trajectory_matches_pytorch(tiny_dir, name, accum):
    d = tiny_dir(name)
    batches = packed_batches(20)
    ours = jax_run(hf.load(d), batches, accum=accum)
    ref = torch_ref.train(parity.load_hf_reference(d), batches, OPT)
    rel = np.abs(np.array(ours) - np.array(ref)) / np.array(ref)
    assert rel.max() <= 1e-4, rel
    assert ref[-1] < ref[0] * 0.9  # it actually trained


def test_accumulation_equals_one_big_batch(tiny_dir):
    d = tiny_dir("qwen3_untied")
    batches = packed_batches(6)
    a = jax_run(hf.load(d), batches, accum=1)
    b = jax_run(hf.load(d), batches, accum=4)
    np.testing.assert_allclose(a, b, rtol=2e-6)


def test_bf16_compute_with_fp32_master_weights_trains(tiny_dir):
    d = tiny_dir("qwen3_tied")
    batches = packed_batches(10)
    model = hf.load(d, dtype="bfloat16", param_dtype="float32")
    losses = jax_run(model, batches)
    assert model.layers[0].attn.q_proj[...].dtype == jnp.float32
    ref = jax_run(hf.load(d), batches)
    assert np.all(np.abs(np.array(losses) - np.array(ref)) / np.array(ref) < 2e-2)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_gives_the_same_step(tiny_dir, policy):
    d = tiny_dir("llama3")
    batches = packed_batches(3)
    plain = jax_run(hf.load(d, remat="none"), batches)
    np.testing.assert_allclose(jax_run(hf.load(d, remat=policy), batches), plain, rtol=1e-6)


def test_chunked_cross_entropy_equals_full_logits(tiny_dir):
    model = hf.load(tiny_dir("llama3"))
    b = {k: jnp.asarray(v) for k, v in packed_batches(1)[0].items()}
    logits = model(b["inputs"], positions=b["positions"], segment_ids=b["segment_ids"]).logits
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
    full = float(jnp.sum(ce * b["weights"]) / jnp.sum(b["weights"]))
    for chunk in (1, 7, 64, 10_000):
        s, w = train_step.loss_sums(model, b, chunk)
        assert abs(float(s / w) - full) <= 1e-6 * full


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_fused_cross_entropy_gradients_equal_autodiff_of_the_full_logits(chunk):
    """`chunked_cross_entropy` computes its gradients in the forward pass (step._ce_sum); they must be autodiff's
    of Σ w·CE over full logits, for hidden states and head, with zero-weight tokens and a ragged last chunk."""
    r = np.random.default_rng(0)
    b, t, d, v = 3, 50, 16, 40
    hidden = jnp.asarray(r.standard_normal((b, t, d)), jnp.float32)
    head = jnp.asarray(r.standard_normal((d, v)), jnp.float32)
    targets = jnp.asarray(r.integers(0, v, (b, t)), jnp.int32)
    weights = jnp.asarray(r.random((b, t)) < 0.7, jnp.float32)

    def full(h, w):
        z = jnp.einsum("btd,dv->btv", h, w)
        ce = jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, targets[..., None], -1)[..., 0]
        return jnp.sum(weights * ce) / 7.0

    chunked = lambda h, w: train_step.chunked_cross_entropy(h, w, targets, weights, chunk)[0] / 7.0
    (lc, gc), (lf, gf) = (jax.value_and_grad(fn, argnums=(0, 1))(hidden, head) for fn in (chunked, full))
    np.testing.assert_allclose(lc, lf, rtol=1e-6)
    for a, b_ in zip(gc, gf):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(b_))))


def test_train_step_runs_three_vocabulary_gemms(tiny_dir):
    """The LM head's GEMMs are a small model's largest: the gradient program must hold exactly three (logits,
    ∂hidden, ∂head), not autodiff-through-remat's four (the logits twice; XLA:CPU kept both at SmolLM2's size)."""
    model = hf.load(tiny_dir("qwen3_untied"))
    batch = {k: jnp.asarray(v[None, :2]) for k, v in packed_batches(1, seq_len=40)[0].items()}
    jaxpr = jax.make_jaxpr(lambda m, b: train_step.accumulate_grads(m, b, 16))(model, batch).jaxpr
    vocab = model.cfg.vocab_size
    big = [e for e in jaxpr_dots(jaxpr) if any(vocab in v.aval.shape for v in (*e.invars, *e.outvars))]
    assert len(big) == 3, [str(e)[:200] for e in big]


@pytest.fixture(scope="module")
def bf16_step_hlo(tiny_dir):
    """(model, compiled HLO text) of the bf16-compute train step on CPU, compiled once for the tests below."""
    model = hf.load(tiny_dir("llama_bias_tied"), dtype="bfloat16", param_dtype="float32")
    opt = nnx.Optimizer(model, optim.make_optimizer(OPT), wrt=nnx.Param)
    batch = {k: jnp.asarray(v[None, :2]) for k, v in packed_batches(1, seq_len=40)[0].items()}
    return model, train_step.make_train_step(1000).lower(model, opt, batch).compile().as_text()


def test_bf16_train_step_runs_every_projection_as_a_canonical_bf16_product(bf16_step_hlo):
    """With bf16 compute on CPU, every 2-D product of the decoder layers in the compiled step, forward and backward,
    is bf16 × bf16 in canonical (M, K) × (K, N) form: the only form XLA:CPU gives YNNPACK's AMX/AVX512-BF16
    kernels (any other is upcast to an fp32 GEMM; layers.transposed_for_backward). The LM head's products are
    left out (their operands are the embedding and the vocabulary-sized softmax)."""
    import re

    model, hlo = bf16_step_hlo
    shapes = dict(re.findall(r"%([\w.\-]+) = (\w+\[[\d,]*\])", hlo))
    dots = re.findall(r"= \w+\[[\d,]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\), (lhs_contracting_dims=\{\d\}, "
                      r"rhs_contracting_dims=\{\d\})", hlo)  # 2-D products have no batch dims
    vocab = re.compile(rf"[\[,]{model.cfg.vocab_size}[\],]")
    layer_dots = [(shapes[a], shapes[b], dims) for a, b, dims in dots if not vocab.search(shapes[a] + shapes[b])]
    assert len(layer_dots) >= 9 * 2  # q, k, v, o, gate, up, down forward; their input and weight gradients
    bad = [d for d in layer_dots if not (d[0].startswith("bf16[") and d[1].startswith("bf16[")
                                         and d[2] == "lhs_contracting_dims={1}, rhs_contracting_dims={0}")]
    assert not bad, bad


def test_bf16_train_step_keeps_no_bf16_residual_stack(bf16_step_hlo):
    """What the layer scan keeps for the backward is stacked over layers in fp32 (models/remat.py): XLA:CPU upcasts
    a bf16 dynamic-update-slice, so each layer's write into a bf16 (layers, …) stack rewrote the whole stack."""
    import re

    model, hlo = bf16_step_hlo
    bf16_updates = re.findall(r"%[\w.\-]*dynamic-update-slice[\w.\-]* = (bf16\[[\d,]*\])", hlo)
    assert not bf16_updates, bf16_updates

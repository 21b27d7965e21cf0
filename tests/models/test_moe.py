"""Expert-parallel MoE (ssd_jax.models.moe) on 8 fake CPU devices against the single-device dense reference:
outputs, gradients, stats, capacity drops, the compiled collectives, and HF's load-balancing loss."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax.models import moe
from ssd_jax.sharding import MeshConfig, make_mesh, param_sharding
from tests.hlo import axis_groups, replica_groups

D, F = 32, 16
# LLVM -O0 halves XLA:CPU compile time here; the programs are tiny, so run time does not matter.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compile_(fn, *args, **kwargs):
    return jax.jit(fn).lower(*args, **kwargs).compile(compiler_options=FAST_COMPILE)


def make_inputs(b=8, t=32, e=16, seed=0):
    """Router ~N(0,1) on x ~N(0,1): logits of std ~√D, so top-k choices are far from ties. (numpy RNG: eager
    jax.random compiles a kernel per shape.)"""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: rng.standard_normal(shape, np.float32) * np.float32(scale)  # noqa: E731
    x, router = normal(b, t, D), normal(D, e)
    wg, wu = normal(e, D, F, scale=D**-0.5), normal(e, D, F, scale=D**-0.5)
    wd, ct = normal(e, F, D, scale=F**-0.5), normal(b, t, D)
    valid = np.ones((b, t), bool)
    valid[min(1, b - 1), 20:] = valid[b - 1, 5:] = False  # padding rows: routed, but not counted in the stats
    return tuple(jnp.asarray(a) for a in (x, router, wg, wu, wd, ct, valid))


def numpy_stats(x, router, valid, k):
    logits = np.asarray(x, np.float64).reshape(-1, D) @ np.asarray(router, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    v = np.asarray(valid).reshape(-1)
    counts = np.bincount(idx[v].reshape(-1), minlength=router.shape[1])
    return counts, (probs * v[:, None]).sum(0), v.sum(), idx


def loss_and_grads(impl, e, **kw):
    """jit of (loss, (y, stats)), grads wrt x, router, wg, wu, wd; the loss includes the load-balancing term so that
    the router-probability sums' psum is differentiated too."""

    def loss(x, router, wg, wu, wd, ct, valid):
        y, st = impl(x, router, wg, wu, wd, valid=valid, **kw)
        return jnp.sum(y * ct) + 0.1 * moe.load_balancing_loss(st, e), (y, st)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True)


def placed(args, mesh):
    """Weights where the model keeps them, so that the compiled program holds no resharding of its inputs."""
    x, router, wg, wu, wd, ct, valid = args
    put = lambda a, path: jax.device_put(a, param_sharding(path, a.shape, mesh))  # noqa: E731
    return (x, put(router, "l.mlp.router"), put(wg, "l.mlp.experts_gate"), put(wu, "l.mlp.experts_up"),
            put(wd, "l.mlp.experts_down"), ct, valid)


@functools.lru_cache(maxsize=None)
def reference(b, e, k, norm):
    args = make_inputs(b=b, e=e)
    fn = compile_(loss_and_grads(moe.moe_dense, e, top_k=k, norm_topk_prob=norm), *args)
    return args, jax.device_get(fn(*args))


@functools.lru_cache(maxsize=None)
def compiled_sharded(mesh_axes, b, e, k, norm, dispatch, grouped_gemm="auto"):
    mesh = make_mesh(MeshConfig(*mesh_axes))
    args = placed(make_inputs(b=b, e=e), mesh)
    fn = loss_and_grads(moe.moe_sharded, e, top_k=k, norm_topk_prob=norm, mesh=mesh, dispatch=dispatch,
                        grouped_gemm=grouped_gemm)
    return args, compile_(fn, *args)


CASES = [
    # (data, fsdp, tensor, expert), batch, experts, top-k, norm_topk_prob, dispatch
    ((1, 1, 1, 8), 8, 16, 2, True, "padded"),
    ((1, 1, 1, 8), 8, 8, 3, False, "ragged"),
    ((1, 2, 1, 4), 8, 16, 2, True, "ragged"),
    ((1, 2, 1, 4), 8, 8, 3, False, "padded"),
    ((1, 1, 2, 4), 8, 8, 3, False, "ragged"),
    ((1, 2, 2, 2), 8, 16, 2, True, "auto"),
    # batch 1: tokens replicated everywhere; experts split over `expert` (local experts + psum), weights gathered
    # over fsdp as an invariant all-gather
    ((1, 2, 1, 4), 1, 16, 2, True, "padded"),
    # no expert axis (phase-1 layout): weights gathered over fsdp, tokens split over data×fsdp
    ((2, 4, 1, 1), 8, 8, 3, False, "padded"),
]
# On CPU the grouped GEMM is the tiled loop ("auto"); these run the ragged_dot form GPU/TPU use on the same layouts.
RAGGED_DOT_CASES = [c + ("ragged_dot",) for c in (CASES[1], CASES[3])]


@pytest.mark.parametrize("mesh_axes,b,e,k,norm,dispatch,gemm", [c + ("auto",) for c in CASES] + RAGGED_DOT_CASES)
def test_sharded_matches_dense(mesh_axes, b, e, k, norm, dispatch, gemm):
    assert jax.device_count() == 8
    (x, router, *_, valid), ((_, (y_ref, st_ref)), g_ref) = reference(b, e, k, norm)
    args, fn = compiled_sharded(mesh_axes, b, e, k, norm, dispatch, gemm)
    (_, (y, st)), g = jax.device_get(fn(*args))
    assert np.abs(y - y_ref).max() <= 1e-5
    for name, a, r in zip(("x", "router", "wg", "wu", "wd"), g, g_ref):
        assert np.abs(a - r).max() <= 1e-4, name
    counts, prob_sums, tokens, _ = numpy_stats(x, router, valid, k)
    for s in (st, st_ref):
        np.testing.assert_array_equal(s.expert_counts, counts)
        np.testing.assert_allclose(s.router_prob_sums, prob_sums, atol=1e-4, rtol=1e-5)
        assert s.tokens == tokens and s.dropped == 0


def test_local_paths_and_ragged_global_match_dense():
    (x, router, wg, wu, wd, ct, valid), ((_, (y_ref, _)), g_ref) = reference(8, 16, 2, True)
    kw = dict(top_k=2, norm_topk_prob=True)
    args = (x, router, wg, wu, wd, ct, valid)
    (_, (y, _)), g = compile_(loss_and_grads(moe.moe_ragged_global, 16, **kw), *args)(*args)
    assert np.abs(y - y_ref).max() <= 1e-5
    for a, r in zip(g, g_ref):
        assert np.abs(a - r).max() <= 1e-4
    for mesh in (None, make_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1])):
        fn = compile_(functools.partial(moe.moe_sharded, mesh=mesh, **kw), x, router, wg, wu, wd, valid=valid)
        y, st = fn(x, router, wg, wu, wd, valid=valid)
        assert np.abs(y - y_ref).max() <= 1e-5 and st.dropped == 0


@pytest.mark.parametrize("tile", [1, 4, None])
def test_tiled_grouped_gemm_equals_ragged_dot(tile):
    """Empty groups, a one-row group and unused rows past sum(sizes) (which give zeros): same outputs and
    gradients as ragged_dot, whatever the tile."""
    k = jax.random.split(jax.random.key(0), 4)
    m, d, f = 50, 16, 24
    xs = jax.random.normal(k[0], (m, d))
    w = (jax.random.normal(k[1], (6, d, f)), jax.random.normal(k[2], (6, d, f)), jax.random.normal(k[3], (6, f, d)))
    sizes = jnp.array([7, 0, 13, 1, 9, 12], jnp.int32)  # 42 of 50 rows
    ref = lambda xs, *w: moe._expert_ffn(xs, sizes, *w, "ragged_dot")  # noqa: E731
    tiled = jax.jit(lambda xs, *w: moe._expert_ffn_tiled(xs, sizes, *w, tile))
    y, y_ref = tiled(xs, *w), ref(xs, *w)
    # Relative: outputs reach |y| ≈ 180, where fp32's spacing is 1.5e-5, and the two GEMMs sum in different orders
    # (an absolute 1e-5 passed or failed by CPU, AVX-512 or AVX2).
    assert np.abs(y - y_ref).max() <= 1e-6 * np.abs(y_ref).max() and not np.any(y[42:])
    loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))  # noqa: E731
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 2, 3))(xs, *w)
    g = jax.jit(jax.grad(loss(tiled), argnums=(0, 1, 2, 3)))(xs, *w)
    for a, r in zip(g, g_ref):
        assert np.abs(a - r).max() <= 1e-4 * np.abs(r).max()


# ---------------------------------------------------------------------------------------------------------------------
# compiled collectives


def test_hlo_expert_parallel_uses_all_to_all_and_never_gathers_experts():
    """fsdp2×expert4, forward+backward: the rows cross `expert` by all-to-all; the only all-gather over `expert` is
    the int32 histogram; the expert weights are all-gathered over `fsdp` only, keeping E/4 experts."""
    mesh_axes, e = (1, 2, 1, 4), 8
    _, fn = compiled_sharded(mesh_axes, 8, e, 3, False, "padded")
    mesh = make_mesh(MeshConfig(*mesh_axes))
    expert_groups, fsdp_groups = axis_groups(mesh, "expert"), axis_groups(mesh, "fsdp")
    lines = [ln for ln in fn.as_text().splitlines() if re.search(r" (all-to-all|all-gather)\(", ln)]
    seen = {"a2a": 0, "hist": 0, "weights": 0}
    for ln in lines:
        groups = replica_groups(ln)
        assert groups is not None, f"unparsed replica groups: {ln[:300]}"
        groups = {frozenset(g) for g in groups}
        if " all-to-all(" in ln:
            assert groups == expert_groups, ln[:300]
            seen["a2a"] += 1
            continue
        result = ln.split("=", 1)[1].split(" all-gather(")[0]  # one shape, or a tuple of combined gathers
        for dtype, shape in re.findall(r"(\w+)\[([\d,]*)\]", result):
            shape = tuple(int(v) for v in shape.split(",") if v)
            if groups == expert_groups:
                assert dtype.startswith("s") and shape == (4, e), f"all-gather over expert: {ln[:300]}"
                seen["hist"] += 1
            else:
                assert groups == fsdp_groups and dtype == "f32", ln[:300]
                assert shape in ((e // 4, D, F), (e // 4, F, D)), ln[:300]  # E/4 local experts, full hidden dim
                seen["weights"] += 1
    assert seen["a2a"] >= 4 and seen["hist"] >= 1 and seen["weights"] == 3, seen  # 2 forward + 2 transposed


def test_ragged_all_to_all_standin_follows_the_documented_contract():
    """The example of jax.lax.ragged_all_to_all's docstring, through the CPU stand-in, on a 2-device axis."""
    mesh = make_mesh(MeshConfig(fsdp=1, expert=2), devices=jax.devices()[:2])
    per_rank = {  # operand, output, input_offsets, send_sizes, output_offsets, recv_sizes
        0: ([1, 2, 2], [0, 0, 0, 0], [0, 1], [1, 2], [0, 0], [1, 1]),
        1: ([3, 4, 0], [0, 0, 0, 0], [0, 1], [1, 1], [1, 2], [2, 1]),
    }
    args = [jnp.asarray(np.concatenate([per_rank[r][i] for r in (0, 1)]), jnp.float32 if i < 2 else jnp.int32)
            for i in range(6)]
    spec = jax.sharding.PartitionSpec("expert")
    fn = jax.shard_map(functools.partial(moe.ragged_all_to_all_allgather, axis_name="expert"), mesh=mesh,
                       in_specs=(spec,) * 6, out_specs=spec)
    np.testing.assert_array_equal(compile_(fn, *args)(*args), [1, 3, 0, 0, 2, 2, 4, 0])


# ---------------------------------------------------------------------------------------------------------------------
# capacity


@functools.partial(jax.jit, static_argnames="k")
def route_ref(x, router, k):
    return moe.route(x.reshape(-1, D), router, k, False)[1:]


@functools.partial(jax.jit, static_argnames="k")
def dense_ref(x, router, wg, wu, wd, k):
    return moe.moe_dense(x, router, wg, wu, wd, top_k=k, norm_topk_prob=False)[0]


@pytest.mark.parametrize("dispatch", ["padded", "ragged"])
def test_capacity_drops_latest_assignments(dispatch):
    """data2×expert4, 16 experts, top-2, capacity 0.5: at most ceil(0.5·16/4) = 2 rows per (sender, owner) pair;
    the dropped (token, choice) pairs contribute zero, everything else equals the dense result."""
    cf, e, k, ep, ntok = 0.5, 16, 2, 4, 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, expert=4))
    x, router, wg, wu, wd, *_ = make_inputs(b=8, t=ntok, e=e, seed=3)
    valid = np.ones((8, ntok), bool)
    valid[2, 5:] = valid[6, 1:] = False  # padding assignments still take capacity but are not counted
    fn = compile_(functools.partial(moe.moe_sharded, top_k=k, norm_topk_prob=False, mesh=mesh, dispatch=dispatch,
                                    capacity_factor=cf), x, router, wg, wu, wd, valid=valid)
    y, st = jax.device_get(fn(x, router, wg, wu, wd, valid=valid))
    # numpy: every expert on every token, then keep the first `cap` assignments per (block, owner) in flat order
    x2 = np.asarray(x, np.float64).reshape(-1, D)
    w, idx = jax.device_get(route_ref(x, router, k=k))
    wg, wu, wd = (np.asarray(a, np.float64) for a in (wg, wu, wd))
    h = np.einsum("nd,edf->nef", x2, wg)
    out = np.einsum("nef,efd->ned", h / (1 + np.exp(-h)) * np.einsum("nd,edf->nef", x2, wu), wd)
    cap = math.ceil(cf * ntok * k / ep)
    keep = np.zeros(idx.shape, bool)
    for blk in range(8):  # token blocks of the (data, expert) shards, `ntok` tokens each
        dest = idx[blk * ntok:(blk + 1) * ntok].reshape(-1) // (e // ep)
        pos = np.array([np.sum(dest[:i] == dest[i]) for i in range(dest.size)])
        keep[blk * ntok:(blk + 1) * ntok] = (pos < cap).reshape(ntok, k)
    y_ref = np.einsum("nk,nkd->nd", w * keep, out[np.arange(len(x2))[:, None], idx])
    dropped = np.sum(~keep & np.asarray(valid).reshape(-1, 1))
    assert dropped > 0 and st.dropped == dropped
    assert np.abs(y.reshape(-1, D) - y_ref).max() <= 1e-5
    full = keep.all(1)  # tokens with no dropped choice: the plain MoE output
    y_dense = dense_ref(x, router, wg, wu, wd, k=k)
    assert full.sum() > 0 and np.abs(y.reshape(-1, D)[full] - np.asarray(y_dense).reshape(-1, D)[full]).max() <= 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# load balancing loss


@pytest.mark.parametrize("masked", [False, True])
def test_load_balancing_loss_matches_transformers(masked):
    torch = pytest.importorskip("torch")
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    e, k, b, t, layers = 8, 2, 4, 16, 3
    dense = jax.jit(functools.partial(moe.moe_dense, top_k=k, norm_topk_prob=True))
    route_logits = jax.jit(lambda x, router: moe.route(x.reshape(-1, D), router, k, True)[0])
    mask = np.ones((b, t), bool)
    if masked:
        mask[0, 10:] = mask[2, 3:] = False
    logits, total = [], None
    for layer in range(layers):
        x, router, wg, wu, wd, *_ = make_inputs(b=b, t=t, e=e, seed=10 + layer)
        _, st = dense(x, router, wg, wu, wd, valid=jnp.asarray(mask) if masked else None)
        st = jax.device_get(st)
        total = st if total is None else jax.tree.map(np.add, total, st)  # HF concatenates the layers
        logits.append(torch.from_numpy(np.array(route_logits(x, router))))
    ref = load_balancing_loss_func(tuple(logits), e, k, torch.from_numpy(mask) if masked else None)
    assert abs(float(moe.load_balancing_loss(total, e)) - float(ref)) <= 1e-6


def test_configure_grouped_gemm(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    try:
        moe.configure_grouped_gemm("cudnn")
        assert "--xla_gpu_experimental_use_ragged_dot_fusion=true" in moe.os.environ["XLA_FLAGS"]
        moe.configure_grouped_gemm("pallas_triton")
        assert jax.config.jax_ragged_dot_use_gpu_pallas_triton_lowering
        assert "ragged_dot_fusion" not in moe.os.environ["XLA_FLAGS"]
        with pytest.raises(ValueError):
            moe.configure_grouped_gemm("cublas")
    finally:
        moe.configure_grouped_gemm("xla")
    assert not jax.config.jax_ragged_dot_use_gpu_pallas_triton_lowering
    assert moe.os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"

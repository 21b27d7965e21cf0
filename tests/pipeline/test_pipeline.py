"""`ssd-jax run` and `ssd-jax baselines` end to end on a tiny model: the run folder, round chaining, skip on rerun."""

import json
import os
import stat
import time

import pytest
import yaml

from ssd_jax.cli import main
from tests import tiny
from tests.data.test_problems import lcb_row


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    model = tiny.save_tiny_chat_model("qwen3_tied", root / "model")
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Print {i} plus one."}) + "\n" for i in range(8)))
    lcb = root / "lcb"
    lcb.mkdir()
    (lcb / "test.jsonl").write_text("".join(json.dumps(lcb_row(q, "2025-03-01", "[]", difficulty=d)) + "\n"
                                            for q, d in [("e1", "easy"), ("m1", "medium")]))
    small = {"batch_size": 4, "max_prompt_len": 1024, "progress": False}
    cfg = {
        "name": "tiny", "rounds": 2, "model": {"path": str(model)}, "mesh": {"fsdp": 2, "tensor": 4},
        "sample": {"problems": {"kind": "jsonl", "path": str(pool)},
                   "decode": {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "max_tokens": 24}, **small},
        "filter": {"preset": "released"},
        "train": {"data": {"seq_len": 1024, "packing_bins": 4}, "optim": {"warmup_steps": 1, "total_steps": 2,
                  "peak_lr": 1e-3, "floor_lr": 1e-4}, "global_batch": 2, "checkpoint_every": 1,
                  "export_dtype": "float32", "progress": False, "tensorboard": False},
        "eval": {"problems": {"kind": "lcb", "path": str(lcb)}, "decode": {"preset": "greedy", "n": 2,
                 "max_tokens": 12}, "ks": [1, 2], **small},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def test_run_two_rounds_then_rerun_skips(setup, capsys):
    root, cfg = setup
    out = root / "run"
    old_mask = os.umask(0o022)  # what a shared cluster's users run with: teammates must read the run
    try:
        assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}"]) == 0
    finally:
        os.umask(old_mask)
    modes = {p.relative_to(out): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")] if not p.is_symlink()}
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o755 if (out / p).is_dir() else 0o644)}
    assert not wrong, wrong  # every file 0644, every folder 0755
    man = json.loads((out / "manifest.json").read_text())
    stages = man["stages"]
    assert {k for k, v in stages.items() if v["status"] == "done"} == {
        "base-eval", "round-1/sample", "round-1/filter", "round-1/train", "round-1/eval",
        "round-2/sample", "round-2/filter", "round-2/train", "round-2/eval", "round-1/analyze", "round-2/analyze"}
    assert man["versions"]["jax"] and man["git_commit"]
    for name, st in stages.items():  # every stage's own peak memory: present and plausible
        mem = st["memory"]
        assert mem["scope"] in ("stage", "child process") and 0.05 < mem["peak_rss_gb"] < 24, (name, mem)
    printed = capsys.readouterr().out
    assert "peak memory per stage" in printed
    for r in (1, 2):
        for f in ("samples.jsonl", "filtered.jsonl", "verdicts.jsonl", "filter_stats.json", "train/export/config.json",
                  "eval/metrics.json", "eval/graded.jsonl", "eval/lcb_output.json"):
            assert (out / f"round-{r}" / f).exists(), (r, f)
    # Fork/lock analysis of each round's model against the starting one, on the base model's held-out responses,
    # labelled by the sampling truncation; the report links every chart and page it names.
    fl = json.loads((out / "round-2" / "analysis" / "forklock.json").read_text())
    assert fl["student"] == str(out / "round-2" / "train" / "export") and fl["base"].endswith("model")
    assert fl["samples"] == str(out / "base-eval" / "samples.jsonl")
    assert fl["config"]["label"] == {"temperature": 1.0, "top_k": 20, "top_p": 0.9}
    assert stages["round-2/analyze"]["positions"] == fl["labels"]["positions"] > 0
    report = (out / "report.md").read_text()
    assert "| base | pass@1" in report and "| round 2 | pass@1" in report and "fork/lock" in report
    # each pass@k row says how it was sampled (the greedy preset here, 12 tokens) and the commit it ran at
    base_row = next(line for line in report.splitlines() if line.startswith("| base |"))
    assert "12 tokens (greedy)" in base_row and "cut at max_tokens" in base_row
    assert f"commit {man['git_commit']}" in report
    # each pass@k row says how it was sampled (base: greedy preset here, 12 tokens) and the commit it ran at
    assert "| T 0, top-k 0, top-p 1, 12 tokens (greedy)" in report or "(greedy)" in report
    assert f"commit {man['git_commit']}" in report
    # App. C.5's statistic per round: the share of samples with an extractable code block, each extraction rule
    blocks = man["stages"]["round-1/filter"]["code_block"]
    assert blocks == json.loads((out / "round-1" / "filter_stats.json").read_text())["code_block"]
    assert f"mlssd {blocks['mlssd']['share']:.1%}" in report and "extractable code block (App. C.5)" in report
    # Passes over the data that global_batch × total_steps implies, packed: in the manifest, the report, the output.
    passes = stages["round-1/train"]["passes"]
    assert passes["rows_trained"] == 2 * 2 and passes["passes"] == pytest.approx(4 / passes["rows_per_pass"])
    assert f"{passes['passes']:.2f} passes over the data" in report
    assert f"after {passes['passes']:.2f} passes over the data" in printed
    import re

    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) >= 8 and all((out / link).exists() for link in links), links
    r2 = [json.loads(x) for x in (out / "round-2" / "samples.jsonl").read_text().splitlines()]
    assert r2[0]["model"] == str(out / "round-1" / "train" / "export") and r2[0]["round"] == 2
    stats = json.loads((out / "round-1" / "filter_stats.json").read_text())
    assert stats["rules"]["shortest_fraction"] == 0.1  # the released preset
    metrics = json.loads((out / "round-2" / "eval" / "metrics.json").read_text())
    assert metrics["model"] == str(out / "round-2" / "train" / "export") and metrics["n_samples_per_problem"] == 2
    # Rerun: every stage is complete, nothing is redone.
    before = {k: v["time"] for k, v in stages.items()}
    t = time.time()
    assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}"]) == 0
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert {k: v["time"] for k, v in after.items() if k != "base-eval"} == \
        {k: v for k, v in before.items() if k != "base-eval"}
    assert time.time() - t < 60


def test_baselines_table(setup, capsys):
    root, cfg = setup
    ev = yaml.safe_load(cfg.read_text())["eval"]
    ev["model"] = {"path": yaml.safe_load(cfg.read_text())["model"]["path"]}
    ev["decode"] = {"n": 1, "max_tokens": 6}
    ev["mesh"] = {"fsdp": 2, "tensor": 4}  # this test process has 8 fake devices
    path = root / "eval.yaml"
    path.write_text(yaml.safe_dump(ev))
    out = root / "baselines"
    capsys.readouterr()
    assert main(["baselines", "--config", str(path), "--model-preset", "qwen3-4b-instruct-2507", "--temps", "0.5",
                 "--ssd-model", ev["model"]["path"], "--out", str(out), "--set", "ks=[1]"]) == 0
    rows = json.loads((out / "baselines.json").read_text())
    assert [r["setting"] for r in rows] == [
        "base @ base-eval (Table 4)", "base @ T=0.5, eval truncation",
        "base @ training truncation (T=1.6, k=20, p=0.8)",
        "base @ matched T_eff=1.76 (T_train×T_eval), eval truncation", "SSD @ eval (Table 3)"]
    assert rows[1]["decode"]["temperature"] == 0.5 and rows[1]["decode"]["top_k"] == 20
    assert rows[3]["decode"]["temperature"] == pytest.approx(1.76)
    table = (out / "baselines.md").read_text()
    assert table.count("\n") == 2 + len(rows) and "easy pass@1" in table


def test_stages_in_their_own_processes(setup):
    """stage_processes: always (what `auto` picks when a stage runs vLLM): each JAX stage is `ssd-jax <stage>` in
    a child process that exits before the next starts, with its config kept beside its outputs; the run folder is
    the same as in one process."""
    root, cfg = setup
    out = root / "run-children"
    assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}", "--set", "rounds=1",
                 "--set", "stage_processes=always", "--set", "train.hbm_fraction=0.8"]) == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    # the train stage's process took its memory share from the config before its backend started
    summary = json.loads((out / "round-1" / "train" / "train_summary.json").read_text())
    assert summary["device_memory"] == {"hbm_fraction": "0.8", "set_before_backend": True}
    assert all(v["status"] == "done" for v in stages.values()) and len(stages) == 6  # … and round-1/analyze
    assert stages["round-1/train"]["passes"]["rows_trained"] == 4  # read back from the child's train_summary.json
    for f in ("base-eval.yaml", "round-1/sample.yaml", "round-1/train.yaml", "round-1/eval.yaml",
              "round-1/train/export/config.json", "round-1/eval/metrics.json"):
        assert (out / f).exists(), f
    assert stages["round-1/eval"]["overall"] == json.loads(
        (out / "round-1" / "eval" / "metrics.json").read_text())["metrics"]["overall"]


def test_auto_separates_stages_only_for_vllm():
    from ssd_jax.config import RunConfig, from_dict
    from ssd_jax.pipeline import separate_processes

    assert not separate_processes(RunConfig())
    assert separate_processes(from_dict(RunConfig, {"sample": {"backend": "vllm"}}))
    assert separate_processes(from_dict(RunConfig, {"eval": {"backend": "vllm"}}))
    assert not separate_processes(from_dict(RunConfig, {"eval": {"backend": "vllm"}, "stage_processes": "never"}))


@pytest.mark.parametrize("protocol", ["best_on_eval", "best_on_heldout"])
def test_checkpoint_selection(setup, protocol, capsys):
    """Each saved checkpoint is exported and evaluated (on the eval set, or on held-out problems); the best by
    pass@1 (ties: the later step) becomes the round's model, and the manifest and summary say which."""
    root, cfg = setup
    out = root / f"run-{protocol}"
    extra = ["--set", f"select.protocol={protocol}", "--set", "rounds=1", "--set", "eval_base=false",
             "--set", "train.keep_checkpoints=10"]
    if protocol == "best_on_heldout":
        extra += ["--set", f"select.heldout={{kind: lcb, path: {root / 'lcb'}}}"]
    assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}", *extra]) == 0
    sel = json.loads((out / "manifest.json").read_text())["stages"]["round-1/select"]
    assert sel["protocol"] == protocol and set(sel["scores"]) == {"1", "2"}  # steps 1 and 2 were saved
    best = max(int(s) for s, v in sel["scores"].items() if v == max(sel["scores"].values()))
    assert sel["step"] == best
    assert sel["model"] == str(out / "round-1" / "train" / ("export" if best == 2 else "export-step-1"))
    assert (out / "round-1" / "train" / "export-step-1" / "config.json").exists()
    for step in (1, 2):
        assert (out / "round-1" / "select" / f"step-{step}" / "metrics.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"][0]["checkpoint"] == best and summary["rounds"][0]["model"] == sel["model"]
    metrics = json.loads((out / "round-1" / "eval" / "metrics.json").read_text())
    assert metrics["model"] == sel["model"]


def test_checkpoint_selection_needs_the_checkpoints_kept(setup, cli):
    root, cfg = setup
    code, err = cli(["run", "--config", str(cfg), "--set", f"out_dir={root / 'run-bad'}",
                     "--set", "select.protocol=best_on_eval", "--set", "train.keep_checkpoints=1"])
    assert code == 2 and "keep_checkpoints" in err


def test_a_run_whose_checkpoints_cannot_fit_on_the_disk_is_refused_before_any_stage(setup, capsys):
    """A million checkpoints kept of the tiny model need more than any disk here holds: refused at once, naming the
    sizes and what to change (the disk's real free space, read from the OS)."""
    root, cfg = setup
    out = root / "disk"
    t0 = time.monotonic()
    assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}", "--set", "train.optim.total_steps=1000000",
                 "--set", "train.keep_checkpoints=1000000"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 10 and not (out / "manifest.json").exists()
    assert f"{out}: the run's checkpoints and exports need about" in err and "1000000 checkpoints" in err
    assert "lower train.keep_checkpoints or put out_dir on a larger disk" in err


def test_a_missing_dataset_is_refused_before_any_stage(setup, capsys):
    root, cfg = setup
    out = root / "missing"
    t0 = time.monotonic()
    assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}", "--set", "sample.problems.kind=rstar",
                 "--set", "sample.problems.path=data/no-such/seed_sft"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 10
    assert "sample.problems.path 'data/no-such/seed_sft': does not exist" in err
    assert "microsoft/rStar-Coder" in err and "ssd-jax data download rstar-coder --to data/no-such" in err  # where the config looks
    assert not (out / "manifest.json").exists()
    assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}", "--set", "eval.problems.path=nowhere/lcb"]) == 2
    err = capsys.readouterr().err
    assert "eval.problems.path 'nowhere/lcb'" in err and "ssd-jax data download livecodebench" in err


def test_a_failed_stage_is_recorded_as_failed_with_its_error(setup, capsys):
    root, cfg = setup
    out = root / "fails"
    # every SFT example longer than seq_len and dropped: the train stage has nothing to train on
    assert main(["run", "--config", str(cfg), "--set", f"out_dir={out}", "--set", "rounds=1", "--set", "eval_base=false",
                 "--set", "train.data.seq_len=4", "--set", "train.data.too_long=drop"]) == 2
    assert "no SFT example is usable" in capsys.readouterr().err
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["round-1/sample"]["status"] == stages["round-1/filter"]["status"] == "done"
    assert stages["round-1/train"]["status"] == "failed"
    assert stages["round-1/train"]["error"].startswith("UserError: no SFT example is usable")

"""`ssd-jax train` end to end on a tiny model with a real (tiny) tokenizer: SIGKILL + resume, mesh change, export."""

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from ssd_jax import parity
from ssd_jax.cli import main
from tests import tiny

TOTAL = 24


def sft_records(n=40):
    """Chat examples whose responses are real Python functions (CPython's textwrap/json sources)."""
    import json as json_mod
    import textwrap

    funcs = [obj for mod in (textwrap, json_mod.decoder, json_mod.encoder) for _, obj in inspect.getmembers(mod)
             if inspect.isfunction(obj) and obj.__module__ == mod.__name__]
    recs = []
    for i in range(n):
        f = funcs[i % len(funcs)]
        src = inspect.getsource(f)[: 60 + 7 * (i % 13)]
        recs.append({"messages": [{"role": "user", "content": f"Implement {f.__name__}."},
                                  {"role": "assistant", "content": src}], "problem_id": f"p{i}"})
    return recs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = tiny.save_tiny_chat_model("qwen3_tied", root / "model")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_records()))
    cfg = {
        "model": {"path": str(model)},
        "data": {"train_file": str(data), "seq_len": 128, "packing_bins": 8},
        "optim": {"peak_lr": 3e-3, "floor_lr": 3e-4, "warmup_steps": 3, "total_steps": TOTAL},
        "global_batch": 4, "micro_batch": 2, "checkpoint_every": 3, "keep_checkpoints": 100,
        "export_dtype": "float32", "progress": False, "tensorboard": False,
        "mesh": {"fsdp": 1},
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def run_cli(config, out_dir, *extra, devices=1, wait=True):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "ssd_jax.cli", "train", "--config", str(config), "--set", f"out_dir={out_dir}", *extra]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return out


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def finished_steps(run_dir):
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.fixture(scope="module")
def reference_run(setup):
    root, cfg = setup
    run_cli(cfg, root / "A")
    return root / "A"


def test_sigkill_then_resume_gives_the_same_losses_and_examples(setup, reference_run):
    root, cfg = setup
    b = root / "B"
    p = run_cli(cfg, b, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not [s for s in finished_steps(b) if s >= 6]:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (b / "train_summary.json").exists(), "the run finished before it could be killed"
    killed_at = max(finished_steps(b))
    assert 6 <= killed_at < TOTAL
    out = run_cli(cfg, b)
    assert f"resumed from step {killed_at}" in out
    summary = json.loads((b / "train_summary.json").read_text())
    assert summary["resumed_from"] == killed_at
    a, m = metrics(reference_run), metrics(b)
    assert [r["step"] for r in m] == list(range(1, TOTAL + 1))
    for ra, rb in zip(a, m):
        assert ra["batch_crc32"] == rb["batch_crc32"], ra["step"]
        assert abs(ra["loss"] - rb["loss"]) <= 1e-6 * ra["loss"], (ra["step"], ra["loss"], rb["loss"])
    assert a[-1]["loss"] < a[0]["loss"] * 0.9


def test_summary_and_data_stats_report_passes_over_the_data(reference_run):
    summary = json.loads((reference_run / "train_summary.json").read_text())
    # `ssd-jax train` set JAX's device-memory share (train.hbm_fraction) before its backend started
    assert summary["device_memory"] == {"hbm_fraction": "0.9", "set_before_backend": True}
    passes = summary["passes"]
    assert passes == json.loads((reference_run / "data_stats.json").read_text())["passes"]
    assert passes["examples"] == 40 and passes["packing"] and passes["rows_trained"] == 4 * TOTAL
    assert passes["passes"] == pytest.approx(4 * TOTAL / passes["rows_per_pass"])
    assert 1 <= passes["rows_per_pass"] <= 40 and passes["seq_len"] == 128


def test_resume_onto_another_mesh_shape(setup, reference_run):
    root, cfg = setup
    c = root / "C"
    shutil.copytree(reference_run, c)
    for s in finished_steps(c):
        if s > 12:
            shutil.rmtree(c / "checkpoints" / str(s))
    shutil.rmtree(c / "export")
    (c / "train_summary.json").unlink()
    out = run_cli(cfg, c, "--set", "mesh.fsdp=2", "--set", "mesh.tensor=2", "--set", "mesh.data=1", devices=4)
    assert "resumed from step 12" in out
    summary = json.loads((c / "train_summary.json").read_text())
    assert summary["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2, "expert": 1}
    assert [r["step"] for r in metrics(c)] == list(range(1, TOTAL + 1))
    for ra, rc in zip(metrics(reference_run)[12:], metrics(c)[12:]):
        assert ra["batch_crc32"] == rc["batch_crc32"]
        assert abs(ra["loss"] - rc["loss"]) <= 1e-5 * ra["loss"], (ra["step"], ra["loss"], rc["loss"])


def test_export_loads_in_transformers_with_matching_logits(reference_run, setup):
    root, _ = setup
    export = reference_run / "export"
    report = parity.run_parity(export, prompts=["def add(a, b):", "Implement dedent."], chat=True,
                               tolerance={"max_abs_logit_diff": 1e-4, "min_top1_agreement": 1.0})
    assert report.passed, report.summary()
    from ssd_jax.models import hf

    before, after = hf.Checkpoint(root / "model"), hf.Checkpoint(export)
    assert not np.array_equal(before.get("model.embed_tokens.weight"), after.get("model.embed_tokens.weight"))
    assert (export / "tokenizer.json").exists() and (export / "chat_template.jinja").exists()
    stats = json.loads((reference_run / "data_stats.json").read_text())
    assert stats["examples"] == 40 and stats["kept"] == 40


def test_export_command_for_an_intermediate_step(reference_run, tmp_path, capsys):
    assert main(["export", "--run", str(reference_run), "--step", "9", "--out", str(tmp_path / "s9"),
                 "--dtype", "float32"]) == 0
    report = parity.run_parity(tmp_path / "s9", tolerance={"max_abs_logit_diff": 1e-4, "min_top1_agreement": 1.0})
    assert report.passed
    assert main(["export", "--run", str(reference_run), "--step", "10", "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint for step 10" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "nothing")]) == 2
    assert "not a training run folder" in capsys.readouterr().err



def test_bad_config_key_and_values(setup, tmp_path, cli):
    _, cfg = setup
    code, err = cli(["train", "--config", str(cfg), "--set", "optim.peak_learning_rate=1"])
    assert code == 2 and "--set optim: unknown key 'peak_learning_rate'" in err  # the --set value's fault
    code, err = cli(["train", "--config", str(cfg), "--set", "data.too_long=explode"])
    assert code == 2 and "data.too_long: 'explode' is not one of 'truncate' | 'drop'" in err
    code, err = cli(["train", "--config", str(cfg), "--set", "global_batch=3"])
    assert code == 2 and "multiple of micro_batch=2" in err
    code, err = cli(["train", "--config", str(cfg), "--set", "model.dtype=bfloat16",
                     "--set", "model.scan_layers=false"])
    assert code == 2 and "model.scan_layers=false with model.dtype=bfloat16 does not train on XLA:CPU" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: x\n")
    code, err = cli(["train", "--config", str(bad)])
    assert code == 2 and "not valid YAML" in err and str(bad) in err


def test_empty_dataset_and_missing_model(setup, tmp_path, cli):
    _, cfg = setup
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    in_process = ["--set", "mesh.tensor=8"]  # this test process has 8 fake devices
    code, err = cli(["train", "--config", str(cfg), "--set", f"data.train_file={empty}",
                              "--set", f"out_dir={tmp_path / 'o'}", *in_process])
    assert code == 2 and "no SFT examples" in err
    code, err = cli(["train", "--config", str(cfg), "--set", f"model.path={tmp_path / 'nomodel'}",
                              "--set", f"out_dir={tmp_path / 'o2'}", *in_process])
    assert code == 2 and "nomodel" in err


def test_batch_unit_samples_packs_each_step_and_the_export_records_the_prompt_format(setup, capsys):
    """batch_unit samples: every step holds global_batch samples in micro_batch rows only as long as they need;
    the SFT data's prompt format reaches the export, and `ssd-jax eval` under another format refuses it."""
    root, cfg = setup
    data = root / "sft-paper.jsonl"
    data.write_text("".join(json.dumps({**r, "prompt_format": "paper"}) + "\n" for r in sft_records()))
    out = root / "S"
    run_cli(cfg, out, "--set", f"data.train_file={data}", "--set", "batch_unit=samples", "--set", "global_batch=5",
            "--set", "data.row_quantum=16", "--set", "data.seq_len=512", "--set", "optim.total_steps=4",
            "--set", "optim.warmup_steps=1")
    m = metrics(out)
    assert [r["samples"] for r in m] == [5] * 4
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["passes"]["samples_trained"] == 20 and summary["passes"]["passes"] == pytest.approx(20 / 40)
    # one micro-step of 2 rows, each a multiple of 16 tokens and far shorter than seq_len 512
    lengths = [int(k.split("x")[2]) for k in summary["step_shapes"]]
    assert sum(summary["step_shapes"].values()) == 4 and all(k.startswith("1x2x") for k in summary["step_shapes"])
    assert all(n % 16 == 0 and n < 512 for n in lengths)
    assert all(r["tokens"] / r["packing_efficiency"] <= 2 * max(lengths) for r in m)
    assert json.loads((out / "data_stats.json").read_text())["prompt_format"] == "paper"
    assert json.loads((out / "export" / "ssd_jax.json").read_text())["prompt_format"] == "paper"
    # data made under another format than the one the config asks for: refused before any work
    assert main(["train", "--config", str(cfg), "--set", f"out_dir={root / 'T'}", "--set", f"data.train_file={data}",
                 "--set", "data.prompt_format=released", "--set", "mesh.fsdp=-1", "--set", "global_batch=8",
                 "--set", "micro_batch=8"]) == 2
    assert "prompt format 'paper', this run uses 'released'" in capsys.readouterr().err
    assert not (root / "T" / "config.yaml").exists()  # (the folder holds only the run lock)
    base = ["eval", "--set", f"model.path={out / 'export'}", "--set", "problems.limit=1", "--set", "decode.n=1",
            "--set", "decode.max_tokens=2", "--set", "ks=[1]", "--set", "progress=false", "--set", "bootstrap=0"]
    assert main(base + ["--set", f"out_dir={root / 'E1'}", "--set", "prompt.format=released"]) == 2
    err = capsys.readouterr().err
    assert "was made under prompt format 'paper', this run uses 'released'" in err and "allow_other_format" in err
    assert [p.name for p in (root / "E1").iterdir()] == [".ssd-jax.lock"]
    assert main(base + ["--set", f"out_dir={root / 'E2'}", "--set", "prompt.format=released",
                        "--set", "prompt.allow_other_format=true"]) == 0
    assert main(base + ["--set", f"out_dir={root / 'E3'}", "--set", "prompt.format=paper"]) == 0

"""`ssd-jax sweep` end to end: the bundled SmolLM2-135M and an SSD export of it (one real training step) over
T_eval 0.4, 0.8, 1.2 on HumanEval/0-7, one eval per point, the 2 × 3 grid drawn."""

import json
import os
import subprocess
import sys
from pathlib import Path

TEMPS = [0.4, 0.8, 1.2]


def main(argv: list[str]) -> int:
    """The CLI in a process of one CPU device (the test session simulates 8, which only slows a 135M sampler)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", "ssd_jax.cli", *argv], env=env, capture_output=True, text=True,
                       timeout=900)
    main.err = p.stderr
    return p.returncode


def test_sweep_evaluates_every_model_at_every_temperature(tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Write add{i}(a, b)."},
        {"role": "assistant", "content": f"```python\ndef add{i}(a, b):\n    return a + b\n```"}]}) + "\n"
        for i in range(8)))
    export = tmp_path / "train" / "export"
    assert main(["train", "--set", "model.path=bundled:smollm2-135m", "--set", f"data.train_file={sft}",
                 "--set", "data.seq_len=128", "--set", "global_batch=8", "--set", "micro_batch=8",
                 "--set", "optim.total_steps=1", "--set", "optim.warmup_steps=0", "--set", "mesh.fsdp=-1",
                 "--set", f"out_dir={tmp_path / 'train'}", "--set", "progress=false",
                 "--set", "tensorboard=false"]) == 0, main.err[-2000:]
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "base=bundled:smollm2-135m", "--model", f"T_train 0.9={export}",
            "--temps", ",".join(map(str, TEMPS)), "--out", str(out), "--set", "problems.limit=8",
            "--set", "decode.n=1", "--set", "decode.max_tokens=48", "--set", "decode.top_k=20",
            "--set", "decode.top_p=0.95", "--set", "ks=[1]", "--set", "progress=false", "--set", "bootstrap=0"]
    assert main(argv) == 0, main.err[-2000:]
    doc = json.loads((out / "sweep.json").read_text())
    assert list(doc["models"]) == ["base", "T_train 0.9"] and doc["temperatures"] == TEMPS
    assert doc["models"]["T_train 0.9"]["trained"]["train_run"] == str(tmp_path / "train")
    for label, m in doc["models"].items():
        assert list(m["points"]) == ["0.4", "0.8", "1.2"]
        for t, point in m["points"].items():
            metrics = json.loads((Path(point["dir"]) / "metrics.json").read_text())
            assert metrics["model"] == m["path"] and metrics["metrics"]["n_problems"] == 8
            # T_eval from the grid, the truncation from the config: one eval per point
            assert (metrics["decode"]["temperature"], metrics["decode"]["top_k"], metrics["decode"]["top_p"]) == \
                (float(t), 20, 0.95)
            assert point["pass@1"] == metrics["metrics"]["overall"]["pass@1"]
    table = (out / "sweep.md").read_text()
    assert "| base |" in table and "| T_train 0.9 |" in table and "T_eval 1.2" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun finds every point done: nothing sampled again
    samples = {p: p.stat().st_mtime_ns for p in out.rglob("samples.jsonl")}
    assert len(samples) == 6 and main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("samples.jsonl")} == samples
    assert main(["sweep", "--model", "nolabel", "--temps", "0.4", "--out", str(tmp_path / "bad")]) == 2
    assert "expected LABEL=PATH" in main.err

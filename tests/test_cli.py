"""The `ssd-jax` entry point: parity report and exit codes, conversion round trip through orbax."""

import json
import subprocess
import sys

import numpy as np

from ssd_jax.cli import main
from ssd_jax.models import hf


def test_parity_command_writes_report(tiny_dir, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["parity", "--hf", str(tiny_dir("qwen3_moe")), "--padding", "right", "--out", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["passed"] and r["max_abs_logit_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    assert [x["label"] for x in r["layers"]] == ["embeddings", "layer 0", "layer 1 + final norm"]
    assert "PASS" in capsys.readouterr().out


def test_parity_over_tolerance_exits_1(tiny_dir, capsys):
    assert main(["parity", "--hf", str(tiny_dir("llama3")), "--max-abs", "1e-12"]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_convert_hf_orbax_hf(tiny_dir, tmp_path):
    src = tiny_dir("llama_bias_tied")
    assert main(["convert", str(src), str(tmp_path / "ck")]) == 0
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "hf")]) == 0
    a, b = hf.Checkpoint(src), hf.Checkpoint(tmp_path / "hf")
    assert sorted(a.keys()) == sorted(b.keys())
    assert all(np.array_equal(a.get(k), b.get(k)) for k in a.keys())


def test_console_script_exit_code(tmp_path):
    """The installed entry point maps a user error to exit 2 with one line on stderr."""
    p = subprocess.run([sys.executable, "-m", "ssd_jax.cli", "parity", "--hf", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing'}: model directory does not exist"


def test_version_and_every_command_help_opens_with_its_description(capsys):
    import pytest

    from ssd_jax.cli import build_parser

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("ssd-jax 0.")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    listed = {a.dest: a.help for a in sub._choices_actions}
    assert {"eval", "sweep", "toy", "plan", "run", "parity"} <= set(listed)
    for name, line in listed.items():
        assert line and sub.choices[name].description == line, name

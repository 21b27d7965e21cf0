"""`ssd-jax data download`: offline it exits 2 naming the dataset; the layout it leaves is what the loaders read."""

import json

import pytest

from ssd_jax.cli import main
from ssd_jax.config import ProblemSource
from ssd_jax.data.download import DATASETS, check_layout
from ssd_jax.errors import UserError
from ssd_jax.sampling.stage import load_problems
from tests.data.test_problems import lcb_row


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_offline_download_is_one_clear_error(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as every test and the demo run
    assert main(["data", "download", name, "--to", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and DATASETS[name].repo in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "d").exists()  # nothing half-written


def test_the_layout_check_accepts_what_the_loaders_read(tmp_path):
    lcb = tmp_path / "code_generation_lite"
    lcb.mkdir()
    with pytest.raises(UserError, match="no test\\*.jsonl files"):
        check_layout("livecodebench", lcb)
    (lcb / "test.jsonl").write_text(json.dumps(lcb_row("q1", "2025-03-01", "[]")) + "\n")
    assert check_layout("livecodebench", lcb) == lcb
    probs, _ = load_problems(ProblemSource(kind="lcb", path=str(check_layout("livecodebench", lcb))))
    assert [p.id for p in probs] == ["lcb/q1"]
    rstar = tmp_path / "rStar-Coder"
    (rstar / "seed_sft").mkdir(parents=True)
    with pytest.raises(UserError, match="seed_sft"):
        check_layout("rstar-coder", rstar)
    (rstar / "seed_sft" / "part-0.jsonl").write_text(json.dumps({"question_id": "a", "question": "Q",
                                                                  "is_passed": True}) + "\n")
    assert check_layout("rstar-coder", rstar) == rstar / "seed_sft"  # what the paper configs' problems.path names
    probs, _ = load_problems(ProblemSource(kind="rstar", path=str(rstar / "seed_sft")))
    assert len(probs) == 1

"""Every shipped config file loads and validates against its dataclass."""

from pathlib import Path

import pytest

from ssd_jax.config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_train_configs_load(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.model.path and cfg.data.train_file
    assert 0 <= cfg.optim.warmup_steps <= cfg.optim.total_steps


def test_paper_instruct_recipe():
    cfg = load_config(TrainConfig, CONFIGS / "train" / "paper-instruct.yaml")
    o = cfg.optim
    assert (o.peak_lr, o.floor_lr, o.warmup_steps, o.total_steps) == (5e-6, 1e-6, 250, 2500)
    assert (o.b1, o.b2, o.weight_decay) == (0.9, 0.95, 0.1)
    assert (cfg.global_batch, cfg.data.seq_len, cfg.checkpoint_every) == (32, 65536, 250)

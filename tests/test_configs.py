"""Every shipped config file loads and validates against its dataclass."""

from pathlib import Path

import numpy as np
import pytest

from ssd_jax.config import TrainConfig, load_config
from ssd_jax.data import sft
from ssd_jax.data.prompts import DEFAULT_SYSTEM

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
    assert (cfg.batch_unit, cfg.micro_batch) == ("samples", 8)


@pytest.mark.parametrize("name", ["paper-instruct", "paper-thinking"])
def test_paper_train_configs_warm_up_as_megatron(name):
    assert load_config(TrainConfig, CONFIGS / "train" / f"{name}.yaml").optim.warmup == "megatron"
    assert TrainConfig().optim.warmup == "linear"  # the library default stays as it was


# ---------------------------------------------------------------------------------------------------------------
# The paper's run configs, one per seed model: checked against the paper's tables typed in here again.

from ssd_jax.config import RunConfig  # noqa: E402
from ssd_jax.models import hf  # noqa: E402
from ssd_jax.presets import preset  # noqa: E402

# model file: (HF id, Table 3 train T/k/p, Table 3 eval T/k/p, Table 4 base T/k/p, thinking, published size)
PAPER = {
    "qwen3-30b-a3b-instruct-2507": ("Qwen/Qwen3-30B-A3B-Instruct-2507", (1.6, 20, 0.8), (0.9, 20, 0.8),
                                    (0.7, 20, 0.8), False, 30.5e9),
    "qwen3-30b-a3b-thinking-2507": ("Qwen/Qwen3-30B-A3B-Thinking-2507", (1.2, 20, 0.95), (0.7, 20, 0.95),
                                    (0.6, 20, 0.95), True, 30.5e9),
    "qwen3-4b-instruct-2507": ("Qwen/Qwen3-4B-Instruct-2507", (1.6, 20, 0.8), (1.1, 20, 0.8), (0.7, 20, 0.8),
                               False, 4.0e9),
    "qwen3-4b-thinking-2507": ("Qwen/Qwen3-4B-Thinking-2507", (1.1, 20, 0.95), (0.7, 20, 0.95), (0.6, 20, 0.95),
                               True, 4.0e9),
    "llama-3.1-8b-instruct": ("meta-llama/Llama-3.1-8B-Instruct", (0.8, 20, 0.8), (0.7, 20, 0.8), (0.9, 0, 0.8),
                              False, 8.0e9),
}


def _tkp(decode) -> tuple:
    t = preset(decode.preset)
    return (decode.temperature or t.temperature, decode.top_k if decode.top_k is not None else t.top_k,
            decode.top_p or t.top_p)


def test_a_config_ships_for_every_seed_model():
    shipped = {p.stem for p in CONFIGS.glob("*.yaml")} - {"smollm2-135m-humaneval"}
    assert shipped == set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_run_config(name):
    hub, train_tkp, eval_tkp, base_tkp, thinking, size = PAPER[name]
    cfg = load_config(RunConfig, CONFIGS / f"{name}.yaml")
    assert cfg.model.path == hub and cfg.name == name
    # Decoding: Table 3 for SSD data and the SSD model's evaluation, Table 4 for the base model.
    assert _tkp(cfg.sample.decode) == train_tkp and cfg.sample.decode.n == 1
    assert _tkp(cfg.eval.decode) == eval_tkp and cfg.eval.decode.n == 10 and cfg.eval.ks == [1, 5]
    assert cfg.eval_base and _tkp(cfg.base_eval_decode) == base_tkp and cfg.base_eval_decode.n == 10
    # Token limits: ml-ssd generates 65,536 and its README's n=10 evaluation call reads 65,536, for every model.
    assert cfg.sample.decode.max_tokens == 65536
    assert cfg.eval.decode.max_tokens == cfg.base_eval_decode.max_tokens == 65536
    # Data and protocol: rStar-Coder seed_sft in, LiveCodeBench v6 out; the paper's filter.
    assert cfg.sample.problems.kind == "rstar" and cfg.eval.problems.kind == "lcb"
    # where `ssd-jax data download` puts them, read relative to the config file (not the working directory)
    root = CONFIGS.parent
    assert (cfg.sample.problems.path, cfg.eval.problems.path) == \
        (str(root / "data/rStar-Coder/seed_sft"), str(root / "data/code_generation_lite"))
    assert cfg.eval.problems.window == "v6" and cfg.filter.preset == "paper"
    assert cfg.eval.grader.mode == "mlssd" and cfg.eval.grader.resolved_extraction() == "mlssd"  # the paper's
    assert cfg.eval.grader.timeout_s == 6.0
    assert cfg.sample.problems.dedup == "statement"  # the paper's exact-statement de-duplication
    # vLLM on the GPUs, in processes of its own, every request at once; the round's model is its last checkpoint.
    assert cfg.sample.backend == cfg.eval.backend == "vllm" and cfg.stage_processes == "auto"
    assert cfg.sample.vllm.tensor_parallel_size == 1 and cfg.select.protocol == "final"
    assert cfg.sample.vllm.replicas == cfg.eval.vllm.replicas == 8  # one engine per GPU of the 8
    # SFT (paper §3.1, App. C.1): the instruct or thinking schedule.
    o, t = cfg.train.optim, cfg.train
    assert (o.peak_lr, o.floor_lr, o.b1, o.b2, o.weight_decay) == (5e-6, 1e-6, 0.9, 0.95, 0.1)
    assert (o.warmup_steps, o.total_steps, t.checkpoint_every) == ((50, 300, 50) if thinking else (250, 2500, 250))
    assert o.warmup == "megatron"  # the paper's trainer, Megatron-LM: update 1 at lr 0
    # "global batch 32" read as 32 samples a step, packed into one row per device as long as they need
    assert (t.batch_unit, t.global_batch, t.micro_batch) == ("samples", 32, 8)
    assert (t.data.seq_len, t.moe_aux_loss_coef) == (65536, 0.0)
    # one prompt format for generation and evaluation: the paper's (chat template + system message, .j2 text)
    assert cfg.prompt_format == cfg.sample.prompt.format == cfg.eval.prompt.format == "paper"
    assert (cfg.sample.prompt.mode, cfg.sample.prompt.template, cfg.sample.prompt.system_message) == \
        (cfg.eval.prompt.mode, cfg.eval.prompt.template, cfg.eval.prompt.system_message) == \
        ("chat", "train", DEFAULT_SYSTEM)
    # The architecture plans from the shipped config.json (no weights): the published size.
    mcfg = hf.model_config(CONFIGS / "hf" / hub.split("/")[1])
    assert mcfg.num_params() == pytest.approx(size, rel=0.02)
    assert (mcfg.moe is not None) == ("a3b" in name)
    assert cfg.mesh.expert == (-1 if mcfg.moe else 1)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_steps_hold_32_samples_with_little_padding(name):
    """A synthetic set of ~4k-token samples (3,000–5,200 tokens, the instruct models' typical response) through
    the config's own batching: each step holds global_batch samples and pads at most 10%."""
    cfg = load_config(RunConfig, CONFIGS / f"{name}.yaml").train
    rng = np.random.default_rng(0)
    examples = [{k: np.zeros(n, np.float32 if k == "weights" else np.int32) for k in sft.FEATURES}
                for n in rng.integers(3000, 5200, 400)]
    steps = iter(sft.sample_batches(examples, cfg.data, cfg.global_batch))
    for _ in range(40):
        rows = sft.pack_step([examples[i] for i in next(steps)], cfg.micro_batch, cfg.data.seq_len,
                             cfg.data.row_quantum)
        real = int((rows["segment_ids"] > 0).sum())
        assert int(rows["segment_ids"].max(axis=-1).sum()) == cfg.global_batch == 32
        assert rows["inputs"].shape[0] == cfg.micro_batch and 1 - real / rows["inputs"].size <= 0.10


def test_the_base_model_is_evaluated_at_its_table_4_setting_by_default():
    from ssd_jax.config import from_dict
    from ssd_jax.pipeline import base_eval_decode

    paper = from_dict(RunConfig, {"eval": {"decode": {"preset": "qwen3-4b-instruct-2507/eval", "max_tokens": 99}}})
    d = base_eval_decode(paper)
    assert (d.preset, _tkp(d), d.max_tokens) == ("qwen3-4b-instruct-2507/base-eval", (0.7, 20, 0.8), 99)
    explicit = from_dict(RunConfig, {"eval": {"decode": {"temperature": 0.5, "top_k": 5, "top_p": 0.9}}})
    assert base_eval_decode(explicit) == explicit.eval.decode  # no paper preset named: the eval setting
    chosen = from_dict(RunConfig, {"eval": {"decode": {"preset": "qwen3-4b-instruct-2507/eval"}},
                                   "base_eval_decode": {"preset": "greedy"}})
    assert base_eval_decode(chosen).preset == "greedy"


def test_input_paths_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
    """A config names its data the same from any working directory; outputs and `--set` values stay relative to
    the working directory; hub ids and bundled models are names, not paths."""
    d = tmp_path / "cfgs"
    (d / "local-model").mkdir(parents=True)
    f = d / "run.yaml"
    f.write_text("out_dir: runs/x\n"
                 "model: {path: local-model}\n"
                 "sample: {problems: {kind: rstar, path: ../data/seed_sft, decontaminate_against: lcb.jsonl}}\n"
                 "eval: {problems: {kind: lcb, path: ~/lcb}}\n"
                 "select: {protocol: best_on_heldout, heldout: {kind: jsonl, path: held.jsonl}}\n")
    monkeypatch.chdir(tmp_path / "cfgs" / "local-model")
    cfg = load_config(RunConfig, f)
    assert cfg.model.path == str(d / "local-model") and cfg.out_dir == "runs/x"
    assert cfg.sample.problems.path == str(tmp_path / "data/seed_sft")
    assert cfg.sample.problems.decontaminate_against == str(d / "lcb.jsonl")
    assert cfg.eval.problems.path == str(Path("~/lcb").expanduser())
    assert cfg.select.heldout.path == str(d / "held.jsonl")
    cfg = load_config(RunConfig, f, ["sample.problems.path=here/seed_sft", "model.path=Qwen/Qwen3-4B"])
    assert (cfg.sample.problems.path, cfg.model.path) == ("here/seed_sft", "Qwen/Qwen3-4B")
    for name in ("Qwen/Qwen3-4B", "bundled:smollm2-135m"):  # names stay names
        f.write_text(f"model: {{path: {name}}}\n")
        assert load_config(RunConfig, f).model.path == name
    t = d / "train.yaml"
    t.write_text("data: {train_file: ../runs/r/filtered.jsonl}\n")
    assert load_config(TrainConfig, t).data.train_file == str(tmp_path / "runs/r/filtered.jsonl")


def test_a_bad_set_value_is_blamed_on_set_not_the_file(tmp_path):
    from ssd_jax.errors import ConfigError

    f = tmp_path / "run.yaml"
    f.write_text("train: {optim: {peak_lr: 1.0e-5}}\n")
    with pytest.raises(ConfigError, match=r"^--set train\.optim\.peak_lr: expected a number, got 'abc'$"):
        load_config(RunConfig, f, ["train.optim.peak_lr=abc"])
    with pytest.raises(ConfigError, match=r"^--set train\.optim: unknown key 'peek_lr'"):
        load_config(RunConfig, f, ["train.optim.peek_lr=1"])
    with pytest.raises(ConfigError, match=r"e\.g\. sample\.decode\.temperature=…"):  # a key the run config has
        load_config(RunConfig, f, ["peak_lr"])
    with pytest.raises(ConfigError, match=r"e\.g\. optim\.peak_lr=…"):
        load_config(TrainConfig, None, ["peak_lr"])
    f.write_text("train: {optim: {peak_lr: abc}}\n")  # the file's own fault stays the file's
    with pytest.raises(ConfigError, match=rf"^{f}\.train\.optim\.peak_lr: expected a number"):
        load_config(RunConfig, f, ["train.optim.b1=0.9"])


def test_a_dumped_config_loads_back_the_same_from_its_own_folder(tmp_path, monkeypatch):
    """The stage YAMLs `ssd-jax run` writes beside its outputs (and each run's config.yaml) are read back by child
    processes: a relative path from --set or from a relative out_dir must still mean the working directory's."""
    from ssd_jax.config import dump_yaml
    from ssd_jax.pipeline import round_configs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/m").mkdir(parents=True)  # a local folder (an org/name without one is a hub id, kept)
    cfg = load_config(RunConfig, None, ["out_dir=runs/x", "sample.problems.path=data/pool.jsonl",
                                        "model.path=models/m", "eval.problems.path=/abs/lcb"])
    rc = round_configs(cfg, Path(cfg.out_dir), 1, cfg.model.path)
    assert rc.train.data.train_file == "runs/x/round-1/filtered.jsonl"  # relative, as derived
    (tmp_path / "runs/x/round-1").mkdir(parents=True)
    dump_yaml(rc.train, tmp_path / "runs/x/round-1/train.yaml")
    dump_yaml(cfg, tmp_path / "runs/x/config.yaml")
    back = load_config(TrainConfig, tmp_path / "runs/x/round-1/train.yaml")
    assert back.data.train_file == str(tmp_path / "runs/x/round-1/filtered.jsonl")
    assert back.model.path == str(tmp_path / "models/m")
    run = load_config(RunConfig, tmp_path / "runs/x/config.yaml")
    assert (run.sample.problems.path, run.eval.problems.path) == (str(tmp_path / "data/pool.jsonl"), "/abs/lcb")
    assert run.out_dir == "runs/x"  # an output: still the working directory's

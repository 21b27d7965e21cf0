"""`ssd-jax train`: the SFT run, from an HF checkpoint and SFT JSONL to an exported HF directory.

Run folder (`out_dir`): config.yaml (resolved), data_stats.json, metrics.jsonl (+ tb/ for TensorBoard),
checkpoints/ (orbax, every `checkpoint_every` steps, last `keep_checkpoints` kept), export/ (HF, at the end),
train_summary.json. Rerunning the same command after a kill resumes from the last checkpoint with the same data
order; rerunning a finished run only re-exports if export/ is missing.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssd_jax import bundled, distributed, faults
from ssd_jax.config import TrainConfig, dump_yaml
from ssd_jax.data import sft
from ssd_jax.data.prompts import check_trained_format, recorded_format
from ssd_jax.errors import ConfigError
from ssd_jax.io_utils import JsonlLog, atomic_write_text
from ssd_jax.memory import process_peak, reserve_device_memory, return_freed_memory
from ssd_jax.models import hf
from ssd_jax.sharding import AXES, BATCH_AXES, make_mesh, on_cpu
from ssd_jax.train import optim
from ssd_jax.train.checkpoint import TrainCheckpointer
from ssd_jax.train.flops import device_peak_flops, flops_per_token
from ssd_jax.train.step import make_train_step

def validate(cfg: TrainConfig, n_devices: int, platform: str) -> int:
    """Check the combinations a YAML schema cannot, for a program over `n_devices` of `platform` (the devices it
    is compiled for, `sharding.platform`); return the accumulation count."""
    micro = cfg.micro_batch or cfg.global_batch
    if cfg.batch_unit == "samples":
        if cfg.global_batch < 1 or not cfg.micro_batch:
            raise ConfigError(f"batch_unit samples: global_batch ({cfg.global_batch}) samples per step need "
                              f"micro_batch (rows per micro-step, ≥ 1; here {cfg.micro_batch})")
        if cfg.data.row_quantum < 1:
            raise ConfigError(f"data.row_quantum={cfg.data.row_quantum}: expected at least 1")
    elif cfg.global_batch < 1 or micro < 1 or cfg.global_batch % micro:
        raise ConfigError(f"global_batch={cfg.global_batch} must be a positive multiple of micro_batch={micro}")
    if cfg.data.seq_len < 2:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len}: expected at least 2")
    if not 0.0 < cfg.hbm_fraction <= 1.0:
        raise ConfigError(f"hbm_fraction={cfg.hbm_fraction}: expected a share of device memory in (0, 1]")
    o = cfg.optim
    if o.total_steps < 1 or not 0 <= o.warmup_steps <= o.total_steps:
        raise ConfigError(f"optim: need 0 <= warmup_steps ({o.warmup_steps}) <= total_steps ({o.total_steps}), total >= 1")
    if not cfg.model.path:
        raise ConfigError("model.path: required (an HF directory or bundled:smollm2-135m)")
    if not cfg.data.train_file:
        raise ConfigError("data.train_file: required (SFT JSONL of {\"messages\": [...]})")
    if cfg.model.dtype == "bfloat16" and cfg.model.scan_layers is False and platform == "cpu":
        # Unscanned, XLA folds the layers' saved transposes back into their bf16 products, and XLA:CPU's dot
        # runtime rejects what is left (`DotThunk: BF16 x BF16 = F32`) at the first step.
        raise ConfigError("model.scan_layers=false with model.dtype=bfloat16 does not train on XLA:CPU (its dot "
                          "runtime rejects the unscanned bf16 backward); leave scan_layers null or true, or use "
                          "dtype float32")
    shape = dict(zip(AXES, cfg.mesh.shape(n_devices)))
    batch_ways = math.prod(shape[a] for a in BATCH_AXES)
    if micro % batch_ways:
        raise ConfigError(f"micro_batch={micro} must be divisible by mesh {'×'.join(BATCH_AXES)} = {batch_ways}")
    # samples: one micro-step of seq_len rows is the step's largest usual shape (more only when a step's samples
    # do not fit in it)
    return 1 if cfg.batch_unit == "samples" else cfg.global_batch // micro


class MetricsLog:
    """metrics.jsonl (one record per step, each fsynced; rewound to the resumed step) + optional TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int, tensorboard: bool):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.log = JsonlLog(out_dir / "metrics.jsonl", key=lambda r: r["step"], what="metrics record")
        self.log.rewind(lambda r: r["step"] <= resume_step)
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1)
            except ImportError:
                self.tb = None

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.log.append([rec])
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])

    def close(self) -> None:
        if self.enabled and self.tb is not None:
            self.tb.close()


def _global_array(host: np.ndarray, sharding) -> jax.Array:
    """Every process builds the same global batch (deterministic stream) and contributes its addressable shards:
    correct on one host and on many, without a cross-host gather of data."""
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _async_checkpointing(cfg: TrainConfig, mesh) -> bool:
    """See TrainConfig.async_checkpointing."""
    if cfg.async_checkpointing is not None:
        return cfg.async_checkpointing
    return not on_cpu(mesh)


def model_provenance(run: Path, step: int, prompt_format: str | None) -> dict:
    """What an exported model says about how it was trained (hf.PROVENANCE): eval checks its prompt format."""
    return {"train_run": str(run), "step": step, "prompt_format": prompt_format}


def train(cfg: TrainConfig) -> dict:
    device_memory = reserve_device_memory(cfg.hbm_fraction)  # before jax.device_count() starts the backend
    accum = validate(cfg, jax.device_count(), jax.devices()[0].platform)
    micro = cfg.micro_batch or cfg.global_batch
    model_dir = bundled.resolve_model(cfg.model.path)
    hf.read_hf_config(model_dir)  # fail on a bad model before any work
    records = sft.read_sft_jsonl(cfg.data.train_file)
    prompt_format = recorded_format(records, f"{cfg.data.train_file}: its records")
    if cfg.data.prompt_format is not None:
        check_trained_format(prompt_format, cfg.data.prompt_format, cfg.data.train_file,
                             "set data.prompt_format: null to train on it anyway")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = distributed.is_writer()
    if writer:
        dump_yaml(cfg, out / "config.yaml")

    # Data: tokenise once (counts what was cut), then a deterministic grain stream of packed batches.
    tokenizer = hf.load_tokenizer(model_dir)
    examples, stats = sft.tokenize_dataset(records, tokenizer, cfg.data)
    passes = sft.data_passes(examples, cfg.data, cfg.global_batch, cfg.optim.total_steps, cfg.batch_unit)
    if writer:
        atomic_write_text(out / "data_stats.json", json.dumps({**stats.to_dict(), "passes": passes,
                                                               "prompt_format": prompt_format}, indent=2) + "\n")
        print(sft.describe_passes(passes), flush=True)

    mesh = make_mesh(cfg.mesh)
    model = hf.load_model(cfg.model, mesh, "train")
    optimizer = optim.create(model, cfg.optim, mesh)

    ckpt = TrainCheckpointer(out / "checkpoints", every=cfg.checkpoint_every, keep=cfg.keep_checkpoints,
                             async_save=_async_checkpointing(cfg, mesh))
    by_samples = cfg.batch_unit == "samples"
    data_it = iter(sft.sample_batches(examples, cfg.data, cfg.global_batch) if by_samples
                   else sft.batches_dataset(examples, cfg.data, cfg.global_batch))
    start = ckpt.latest_step() or 0
    if start:
        data_state, meta = ckpt.restore(start, model, optimizer)
        data_it.set_state(data_state)
        print(f"resumed from step {start} ({ckpt.dir})")

    in_sharding = NamedSharding(mesh, P(None, BATCH_AXES, None))
    step_fn = make_train_step(cfg.chunk_tokens, mesh, cfg.moe_aux_loss_coef)
    log = MetricsLog(out, start, cfg.tensorboard)
    fpt = flops_per_token(model.cfg, cfg.data.seq_len)
    peak = device_peak_flops(cfg.peak_tflops)
    progress = None
    if cfg.progress and jax.process_index() == 0:
        from tqdm import tqdm

        progress = tqdm(total=cfg.optim.total_steps, initial=start, desc="train", unit="step")

    last = None
    shapes: dict[str, int] = {}  # steps per batch shape (accum × micro × row length) this process ran
    try:
        for step in range(start, cfg.optim.total_steps):
            t0 = time.perf_counter()
            rows = next(data_it)
            if by_samples:  # a step's own row length (and, rarely, more micro-steps): the step compiles per shape
                rows = sft.pack_step([examples[i] for i in rows], micro, cfg.data.seq_len, cfg.data.row_quantum)
            accum = len(rows["inputs"]) // micro
            shape = f"{accum}x{micro}x{rows['inputs'].shape[-1]}"
            shapes[shape] = shapes.get(shape, 0) + 1
            digest = zlib.crc32(np.ascontiguousarray(rows["inputs"]).tobytes())
            batch = {k: _global_array(v.reshape(accum, micro, -1), in_sharding) for k, v in rows.items()}
            m = jax.device_get(step_fn(model, optimizer, batch))
            dt = time.perf_counter() - t0
            tokens = int((rows["segment_ids"] > 0).sum())
            last = {
                "step": step + 1,
                "loss": float(m["loss"]),
                "lr": optim.lr_at(cfg.optim, step),
                "grad_norm": float(m["grad_norm"]),
                "loss_tokens": int(m["loss_tokens"]),
                "tokens": tokens,
                "samples": int(rows["segment_ids"].max(axis=-1).sum()),  # segments are numbered 1… in each row
                "packing_efficiency": tokens / rows["segment_ids"].size,
                "step_time_s": dt,
                "tokens_per_s": tokens / dt,
                "mfu": (fpt * tokens / dt / (peak * jax.device_count())) if peak else None,
                "batch_crc32": digest,
            }
            last |= {k: float(m[k]) for k in ("moe_aux_loss", "moe_dropped") if k in m}
            if not math.isfinite(last["loss"]):
                raise FloatingPointError(f"step {step + 1}: loss is {last['loss']}")
            faults.point("train.step")
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.optim.total_steps:
                log.write(last)
            if ckpt.save(step + 1, model, optimizer, data_it.get_state(), {"seed": cfg.seed, "step": step + 1},
                         force=step + 1 == cfg.optim.total_steps):
                return_freed_memory()  # else what the save freed stays resident under the next step's peak
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
    finally:
        if progress is not None:
            progress.close()
        log.close()
        ckpt.close()

    export = out / "export"
    if not (export / "config.json").exists():
        hf.save(model, export, dtype=cfg.export_dtype, source_dir=model_dir,
                provenance=model_provenance(out, cfg.optim.total_steps, prompt_format))
    summary = {"steps": cfg.optim.total_steps, "resumed_from": start, "final": last, "export": str(export),
               "data": stats.to_dict(), "passes": passes, "accumulation": accum, "step_shapes": shapes, "device_memory": device_memory,
               "devices": jax.device_count(),
               "mesh": dict(mesh.shape), "memory": process_peak()}
    if writer:
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary

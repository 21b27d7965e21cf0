"""`ssd-jax plan`: will this run fit its mesh, and how fast could it go, before anyone rents the GPUs.

The model is built from `config.json` alone (abstract arrays, no weights). The real train step (micro-batch scan,
forward, backward, AdamW) at the config's real shapes is lowered and compiled, with the config's mesh axes,
dtypes, remat, attention and MoE options, by XLA's GPU compiler for N GPUs of the named kind (deviceless: the CUDA
plugin compiles for a target description, ssd_jax/gpu_targets; no GPU is needed). Every kernel and lowering choice
follows those devices, so the program is the one a GPU run would execute. Per device it reports what XLA says the
program needs (`compiled.memory_analysis()`), the FLOPs and the collective traffic read from the compiled HLO
(every loop iteration counted: ssd_jax/hlo.py), the kernels it calls, the step time and MFU these imply at the
device's peak, and a fit verdict against its HBM. The sampling stage is planned by arithmetic (weights + KV cache).

What a deviceless GPU compile cannot know: XLA does not autotune without a device, so GEMM tilings are its
heuristic defaults, not an autotuned run's; sorts use XLA's own kernel (gpu_targets.DEVICELESS_OPTIONS); loops whose length depends on the data (blockwise
attention over live tiles, the MoE's tiled grouped GEMM) are counted at estimated trip counts; the attention
kernels' FLOPs are estimated from their operands (hlo.KERNEL_MATMULS).

`--simulate-cpu` compiles for N simulated CPU devices instead: an estimate that needs no CUDA plugin. XLA:CPU
computes bf16 in fp32 (temp bytes and collective payloads up to 2× a GPU's), takes the CPU forms of every choice
(einsum/blockwise attention, the padded expert exchange, fp32 storage of bf16 residuals: models/remat.py) and
writes reduce-scatters as all-reduces.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ssd_jax import gpu_targets
from ssd_jax.config import (RunConfig, TrainConfig, apply_overrides, from_dict, load_yaml, relative_to_file,
                            to_dict)
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.train.flops import PEAK_FLOPS

HF_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hf"
GB = 1e9


@dataclass(frozen=True)
class DeviceKind:
    name: str
    hbm_bytes: float
    peak_flops: float  # dense bf16 FLOP/s
    link_bytes_per_s: float  # one direction, per device (NVLink / ICI)
    gpu_target: str | None = None  # the gpu_targets description XLA's GPU compiler compiles for (None: CPU only)


# GPU memory as XLA's target descriptions give it (ssd_jax/gpu_targets); peak FLOP/s and links from public spec
# sheets: B200 as in DGX B200 (NVLink 5 1.8 TB/s both directions), H200 and H100 SXM (NVLink 4 900 GB/s both
# directions), TPU v5p (95 GB HBM, 4,800 Gbps ICI per chip).
DEVICE_KINDS = {
    "b200": DeviceKind("NVIDIA B200", gpu_targets.device_memory("b200"), PEAK_FLOPS["B200"], 900 * GB, "b200"),
    "h200": DeviceKind("NVIDIA H200", gpu_targets.device_memory("h200"), PEAK_FLOPS["H200"], 450 * GB, "h200"),
    "h100": DeviceKind("NVIDIA H100 80GB", gpu_targets.device_memory("h100"), PEAK_FLOPS["H100"], 450 * GB, "h100"),
    "tpu-v5p": DeviceKind("TPU v5p", 95 * GB, PEAK_FLOPS["TPU v5p"], 600 * GB),
}


def use_simulated_devices(n: int) -> None:
    """Make JAX see `n` CPU devices. Must run before JAX initialises a backend (the CLI calls it first thing);
    afterwards it only checks that enough devices exist."""
    import jax

    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass  # a backend is already up: use what it has
    have = len(jax.devices("cpu"))
    if have < n:
        raise UserError(f"--devices {n}: this process already has {have} CPU devices (set "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts)")


def load_plan_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunConfig:
    """A run config (configs/<model>.yaml), or a train config, which becomes the train section of a run."""
    data = load_yaml(path)
    cls = RunConfig if {"train", "sample", "eval", "rounds"} & set(data) else TrainConfig
    data = apply_overrides(relative_to_file(cls, data, path), list(overrides))
    if cls is RunConfig:
        return from_dict(RunConfig, data, str(path))
    train = from_dict(TrainConfig, data, str(path))
    return RunConfig(model=train.model, mesh=train.mesh, train=train)


def hf_config_dir(model_path: str, override: str | None = None) -> Path:
    """Where config.json comes from: --hf-config, a local model directory, or the copy shipped under configs/hf/."""
    candidates = [Path(override)] if override else [Path(model_path), HF_CONFIGS / Path(model_path).name]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise UserError(f"model.path {model_path!r}: no config.json in {' or '.join(str(c) for c in candidates)} "
                    f"(pass --hf-config DIR)")


def _shard_bytes(tree) -> float:
    import jax

    total = 0.0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def _placed(node, mesh, params: set[str]):
    """Give every abstract array of an NNX object the sharding of the parameter its path ends in (the parameters
    themselves, and the optimizer moments that follow them); anything else (step counters) replicated."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ssd_jax.sharding import param_spec

    flat = []
    for path, var in nnx.to_flat_state(nnx.state(node)):
        a = var.get_value()
        names = [str(p) for p in path]
        owner = next((".".join(names[i:]) for i in range(len(names)) if ".".join(names[i:]) in params), None)
        spec = param_spec(owner, a.shape, mesh) if owner else P()
        flat.append((path, var.replace(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec)))))
    nnx.update(node, nnx.from_flat_state(flat))
    return node


def _loop_trips(mcfg, mesh, micro: int, seq: int) -> dict[str, float]:
    """Trip counts for the loops whose length depends on data, as the compiled program cannot know them:
    - blockwise attention: a query tile of a causal row of n KV tiles visits (n + 1) / 2 of them on average (one
      segment per row; packed segments skip more, so this is an upper estimate);
    - the MoE's tiled grouped GEMM: the tiles of the rows a device receives under even routing (its N_loc·k
      routed rows, each local expert's group padded to whole tiles: half a tile per group on average)."""
    from ssd_jax.models import attention, moe
    from ssd_jax.sharding import BATCH_AXES

    trips = {attention.LIVE_TILES_SCOPE: (-(-seq // min(attention.TILE, seq)) + 1) / 2}
    if mcfg.moe:
        ep = mesh.shape["expert"]
        groups = mcfg.moe.num_experts // ep
        rows = micro * seq // math.prod(mesh.shape[a] for a in BATCH_AXES) * mcfg.moe.top_k
        trips[moe.TILES_SCOPE] = rows / moe.tile_rows(rows, groups) + groups / 2
    return trips


def target_devices(kind: DeviceKind, n: int, simulate_cpu: bool) -> list:
    """The devices a plan compiles for: `n` of the kind's GPU description (XLA's GPU compiler, deviceless), or `n`
    simulated CPU devices (`simulate_cpu`, or a kind without a GPU description)."""
    if kind.gpu_target and not simulate_cpu:
        return list(gpu_targets.devices(kind.gpu_target, n))
    import jax

    use_simulated_devices(n)
    return jax.devices("cpu")[:n]


def compiled_for(devices: list, n: int) -> dict[str, Any]:
    """What a plan's figures rest on: XLA's GPU compiler for a described GPU, or XLA:CPU on simulated devices."""
    d = devices[0]
    if d.platform == "cpu":
        return {"compiler": "XLA:CPU", "devices": f"{n} simulated CPU devices", "evidence": "simulated on CPU devices "
                "(an estimate: bf16 computed and moved as fp32, CPU kernels and collectives)"}
    return {"compiler": "XLA:GPU (deviceless)", "devices": f"{n} × {d.device_kind}",
            "evidence": f"compiled for a GPU target ({d.device_kind} description, ssd_jax/gpu_targets)"}


@dataclass
class CompiledStep:
    """The real train step, lowered and compiled over a mesh of the devices it is planned for."""

    compiled: Any  # jax.stages.Compiled: .as_text() is the program after every pass, .memory_analysis() its bytes
    mesh: Any
    model_cfg: Any  # models.config.ModelConfig
    accum: int
    micro: int
    seq: int
    params: Any  # abstract parameter and optimizer states, with their shardings
    opt_state: Any
    batch: dict
    compile_s: float


def compile_train_step(cfg: TrainConfig, model_dir: Path, devices: list) -> CompiledStep:
    """Lower and compile `cfg`'s train step (micro-batch scan, forward, backward, AdamW) at its real shapes for a
    mesh over `devices`, from config.json alone (abstract arrays, no weights)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ssd_jax.models import hf
    from ssd_jax.sharding import BATCH_AXES, make_mesh, path_str
    from ssd_jax.train import optim
    from ssd_jax.train.loop import validate
    from ssd_jax.train.step import make_train_step

    checked = replace(cfg, model=replace(cfg.model, path=str(model_dir)), data=replace(cfg.data, train_file="-"))
    accum = validate(checked, len(devices), devices[0].platform)
    micro, seq = cfg.micro_batch or cfg.global_batch, cfg.data.seq_len
    mesh = make_mesh(cfg.mesh, devices=devices)

    def build():
        model = hf.load_model(checked.model, mesh, "train", weights=False)
        return model, optim.create(model, cfg.optim, mesh)

    model, opt = nnx.eval_shape(build)
    params = {path_str(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    model, opt = _placed(model, mesh, params), _placed(opt, mesh, params)
    rows = NamedSharding(mesh, P(None, BATCH_AXES, None))
    batch = {k: jax.ShapeDtypeStruct((accum, micro, seq), jnp.float32 if k == "weights" else jnp.int32, sharding=rows)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    step = make_train_step(cfg.chunk_tokens, mesh, cfg.moe_aux_loss_coef)
    t0 = time.perf_counter()
    compiled = step.lower(model, opt, batch).compile(compiler_options=gpu_targets.compiler_options(devices))
    return CompiledStep(compiled, mesh, model.cfg, accum, micro, seq, nnx.state(model, nnx.Param), nnx.state(opt),
                        batch, time.perf_counter() - t0)


def plan_train(cfg: TrainConfig, model_dir: Path, devices: int, kind: DeviceKind,
               simulate_cpu: bool = False) -> dict[str, Any]:
    """Compile the real train step for `devices` devices of `kind` (see `target_devices`) and read what it needs
    and does from the compiled program."""
    import jax
    import jax.numpy as jnp

    from ssd_jax import hlo
    from ssd_jax.train.flops import flops_per_token

    target = target_devices(kind, devices, simulate_cpu)
    c = compile_train_step(cfg, model_dir, target)
    mcfg, mesh, micro, seq, accum, compile_s = c.model_cfg, c.mesh, c.micro, c.seq, c.accum, c.compile_s
    mem = c.compiled.memory_analysis()
    stats = hlo.program_stats(c.compiled.as_text(), devices, loop_trips=_loop_trips(mcfg, mesh, micro, seq))
    params = c.params
    p_bytes, o_bytes, b_bytes = _shard_bytes(params), _shard_bytes(c.opt_state), _shard_bytes(c.batch)
    peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    tokens = accum * micro * seq  # batch_unit samples: the step's largest usual shape (rows as long as seq_len)
    model_flops = flops_per_token(mcfg, seq) * tokens / devices
    compute_s = stats.flops / kind.peak_flops
    comm_s = stats.traffic_bytes / kind.link_bytes_per_s
    step_s = compute_s + comm_s
    return {
        "model": {"architecture": mcfg.architecture, "params": mcfg.num_params(), "layers": mcfg.num_layers,
                  "experts": mcfg.moe.num_experts if mcfg.moe else 0},
        "mesh": dict(mesh.shape),
        "shapes": {"batch_unit": cfg.batch_unit, "global_batch": cfg.global_batch, "micro_batch": micro,
                   "accumulation": accum, "seq_len": seq,
                   "tokens_per_step": tokens},
        "options": {"dtype": mcfg.dtype, "param_dtype": mcfg.param_dtype, "remat": mcfg.remat,
                    "attention_impl": mcfg.attention_impl,
                    **({"moe_impl": mcfg.moe.impl, "moe_dispatch": mcfg.moe.dispatch,
                        "moe_capacity_factor": mcfg.moe.capacity_factor,
                        "moe_grouped_gemm": mcfg.moe.grouped_gemm} if mcfg.moe else {})},
        "memory_per_device": {
            "parameters": p_bytes, "optimizer": o_bytes, "batch": b_bytes,
            "gradients_fp32_in_temp": _shard_bytes(jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=a.sharding), params)),
            "arguments": float(mem.argument_size_in_bytes), "temp": float(mem.temp_size_in_bytes),
            "outputs": float(mem.output_size_in_bytes), "aliased": float(mem.alias_size_in_bytes),
            "peak": float(peak),
        },
        "flops_per_device": stats.flops,
        "data_dependent_loops": stats.unknown_loops,
        "data_dependent_loop_trips": _loop_trips(mcfg, mesh, micro, seq),
        "model_flops_per_device": model_flops,
        "collectives": {k: dataclasses.asdict(v) for k, v in sorted(stats.collectives.items())},
        "time": {"compute_s": compute_s, "collectives_s": comm_s, "step_s": step_s,
                 "mfu": model_flops / (step_s * kind.peak_flops) if step_s else None},
        "kernels": {"custom_calls": dict(sorted(stats.kernels.items())), "fusions": dict(sorted(stats.fusions.items())),
                    "estimated_kernel_flops": stats.kernel_flops},
        "compiled_for": compiled_for(target, devices),
        "fits": peak <= cfg.hbm_fraction * kind.hbm_bytes,
        "compile_s": compile_s,
    }


def plan_sampling(cfg: RunConfig, model_dir: Path, kind: DeviceKind, devices: int) -> dict[str, Any]:
    """Weights and KV cache of the sampling and evaluation stages per engine (vLLM: `vllm.tensor_parallel_size`
    devices at `vllm.gpu_memory_utilization`; the JAX sampler: one device, `batch_size` full-length rows), and
    whether the stage's engines (vLLM: `replicas` × `tensor_parallel_size` GPUs) find that many devices."""
    from ssd_jax.models import hf

    mcfg = hf.model_config(model_dir)
    kv_dtype_bytes = 2  # bf16 cache (vLLM serves the bf16 export; the JAX sampler at bf16 compute)
    kv_per_token = mcfg.num_layers * 2 * mcfg.num_kv_heads * mcfg.head_dim * kv_dtype_bytes
    weights = mcfg.num_params() * 2
    out = {"weights_bf16": float(weights), "kv_bytes_per_token": float(kv_per_token), "stages": {}}
    for name, stage in (("sample", cfg.sample), ("eval", cfg.eval)):
        vllm = stage.backend == "vllm"
        gpus = stage.vllm.tensor_parallel_size if vllm else 1  # one engine's devices
        budget = (stage.vllm.gpu_memory_utilization if vllm else cfg.train.hbm_fraction) * kind.hbm_bytes * gpus
        seq = stage.vllm.max_model_len if vllm and stage.vllm.max_model_len else stage.max_prompt_len + \
            stage.decode.max_tokens
        per_seq = kv_per_token * seq
        concurrent = max(0.0, (budget - weights) // per_seq)
        need = weights + (per_seq if vllm else per_seq * stage.batch_size)
        engines = stage.vllm.replicas if vllm else 1
        out["stages"][name] = {
            "backend": stage.backend, "devices_per_engine": gpus, "engines": engines,
            "devices_needed": engines * gpus, "max_seq_tokens": seq,
            "kv_bytes_per_sequence": float(per_seq), "full_length_sequences_that_fit": int(concurrent),
            "batch_size": stage.batch_size, "bytes_needed": float(need),
            "fits": need <= budget and engines * gpus <= devices,
        }
    out["fits"] = all(s["fits"] for s in out["stages"].values())
    return out


def alternatives(cfg: TrainConfig, train: dict, hbm_bytes: float) -> list[tuple[str, float]]:
    """Settings near `cfg` that should need less memory, with the peak arithmetic expects for each (the compiled
    peak's activations scale with the rows a micro-step holds; full remat keeps about one residual per layer of the
    temp that save_dots or none keep), nearest to fitting first: (a --set override, estimated peak bytes)."""
    m = train["memory_per_device"]
    fixed = m["peak"] - m["temp"]  # parameters, optimizer state, batch: what a smaller micro-step does not shrink
    micro = train["shapes"]["micro_batch"]
    from ssd_jax.sharding import BATCH_AXES

    ways = math.prod(train["mesh"][a] for a in BATCH_AXES)
    out = []
    m_try = micro
    while m_try // 2 >= ways and (m_try // 2) % ways == 0:
        m_try //= 2
        out.append((f"train.micro_batch={m_try}", fixed + m["temp"] * m_try / micro))
    if cfg.model.remat != "full":
        out.append(("model.remat=full", fixed + m["temp"] / 3))  # a rough third: one residual kept of ~3 per layer
    limit = cfg.hbm_fraction * hbm_bytes
    return sorted(out, key=lambda a: (a[1] > limit, -a[1] if a[1] <= limit else a[1]))


def _refit(cfg: RunConfig, devices: int, kind: DeviceKind, model_dir: Path, simulate_cpu: bool,
           train_cfg: TrainConfig, train: dict) -> list[dict]:
    """When the train step does not fit: compile up to three of `alternatives` (nearest first) and report each
    one's compiled peak, stopping at the first that fits."""
    from ssd_jax.pipeline import round_configs

    tried = []
    for override, estimate in alternatives(train_cfg, train, kind.hbm_bytes)[:3]:
        # the override on the run config (its model section is every stage's), then what training is given
        alt_cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), [override]), "plan alternative")
        alt_train = round_configs(alt_cfg, Path(alt_cfg.out_dir), 1, alt_cfg.model.path).train
        t = plan_train(alt_train, model_dir, devices, kind, simulate_cpu)
        tried.append({"set": override, "estimated_peak": estimate, "compiled_peak": t["memory_per_device"]["peak"],
                      "fits": t["fits"], "step_s": t["time"]["step_s"]})
        if t["fits"]:
            break
    return tried


def plan(cfg: RunConfig, devices: int = 8, device_kind: str | None = None, hf_config: str | None = None,
         hbm_gb: float | None = None, simulate_cpu: bool = False, suggest: bool = True) -> dict:
    """The whole report (JSON-ready): the train step compiled for `devices` of `device_kind` (default b200) by
    XLA's GPU compiler (or, `simulate_cpu`, for as many simulated CPU devices); `hbm_gb` judges against that much
    memory instead of the kind's. When the step does not fit (and `suggest`), the nearest settings that should are
    compiled too (at most three) and reported with their peaks."""
    from ssd_jax.pipeline import round_configs

    kind_source = "--device-kind" if device_kind else "the default (--device-kind to choose)"
    device_kind = device_kind or "b200"
    if device_kind not in DEVICE_KINDS:
        raise ConfigError(f"--device-kind {device_kind!r}: expected one of {', '.join(DEVICE_KINDS)}")
    kind = DEVICE_KINDS[device_kind]
    if hbm_gb is not None:
        if hbm_gb <= 0:
            raise ConfigError(f"--hbm-gb {hbm_gb}: expected a positive number of GB")
        kind = replace(kind, hbm_bytes=hbm_gb * GB)
    model_dir = hf_config_dir(cfg.model.path, hf_config)
    train_cfg = round_configs(cfg, Path(cfg.out_dir), 1, cfg.model.path).train  # what the run's training is given
    train = plan_train(train_cfg, model_dir, devices, kind, simulate_cpu)
    report = {"config": cfg.name, "model_path": cfg.model.path, "hf_config": str(model_dir), "devices": devices,
              "device_kind": device_kind, "device_kind_source": kind_source,
              "device": dataclasses.asdict(kind), "usable_hbm_fraction": train_cfg.hbm_fraction,
              "train": train, "sampling": plan_sampling(cfg, model_dir, kind, devices),
              "total_train_s": train["time"]["step_s"] * train_cfg.optim.total_steps,
              "total_steps": train_cfg.optim.total_steps}
    report["alternatives"] = [] if train["fits"] or not suggest else _refit(cfg, devices, kind, model_dir,
                                                                            simulate_cpu, train_cfg, train)
    report["fits"] = train["fits"] and report["sampling"]["fits"]
    return report


def _trips(trips: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in trips.items())


def _step_line(sh: dict) -> str:
    """What one planned step holds, in the config's batch unit."""
    if sh.get("batch_unit") == "samples":
        return (f"train step: {sh['global_batch']} samples packed into {sh['micro_batch']} rows of ≤ {sh['seq_len']} "
                f"tokens (planned at the full {sh['seq_len']}: one micro-step)")
    return (f"train step: global batch {sh['global_batch']} × {sh['seq_len']} tokens = {sh['accumulation']} "
            f"micro-steps of {sh['micro_batch']} rows")


def _gib(x: float) -> str:
    return f"{x / 2**30:,.1f} GiB"


def format_report(r: dict) -> str:
    t, s, k = r["train"], r["sampling"], r["device"]
    m, c = t["memory_per_device"], t["compiled_for"]
    hbm = k["hbm_bytes"]
    gpu = c["compiler"] != "XLA:CPU"
    lines = [
        f"plan: {r['config']} — {r['model_path']} ({t['model']['architecture']}, {t['model']['params']:,} params)",
        f"judged for {r['devices']} × {k['name']} ({hbm / GB:.0f} GB HBM, {k['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
        f"{k['link_bytes_per_s'] / GB:.0f} GB/s link; {r['device_kind']} from {r.get('device_kind_source', '?')})",
        f"compiled by {c['compiler']} for {c['devices']} in {t['compile_s']:.0f} s, mesh {t['mesh']}: "
        f"{c['evidence']}",
        _step_line(t["shapes"]) + f"; options {t['options']}",
        "",
        "per device                      bytes",
        f"  parameters                    {_gib(m['parameters'])}",
        f"  optimizer state               {_gib(m['optimizer'])}",
        f"  batch                         {_gib(m['batch'])}",
        f"  gradients (fp32, in temp)     {_gib(m['gradients_fp32_in_temp'])}",
        f"  temp (XLA)                    {_gib(m['temp'])}",
        f"  peak = args + temp + out − aliased   {_gib(m['peak'])}   of {_gib(hbm)} "
        f"({m['peak'] / hbm:.0%}; train.hbm_fraction {r['usable_hbm_fraction']:.0%})",
        "",
        f"FLOPs per device per step       {t['flops_per_device']:.3e} (compiled dots incl. remat recompute; loops "
        f"of data-dependent length {t['data_dependent_loops']} at {_trips(t['data_dependent_loop_trips'])} trips)",
        f"model FLOPs per device per step {t['model_flops_per_device']:.3e} (6·N_active + causal attention)",
        "collectives per device per step (ring traffic" + ("):" if gpu else
                                                          "; XLA:CPU moves bf16 tensors as fp32: up to 2× a GPU's):"),
    ]
    for kind_name, col in t["collectives"].items():
        lines.append(f"  {kind_name:<20} {col['count']:>8.0f} ×   {_gib(col['traffic_bytes']):>14}")
    kernels = t["kernels"]
    calls = ", ".join(f"{n} ×{v:.0f}" for n, v in kernels["custom_calls"].items()) or "none"
    fusions = ", ".join(f"{n} ×{v:.0f}" for n, v in kernels["fusions"].items()) or "none"
    lines += [f"kernels per step: custom calls {calls}; fusions {fusions}"
              + (f" (attention kernels' FLOPs estimated from their operands: {kernels['estimated_kernel_flops']:.3e})"
                 if kernels["estimated_kernel_flops"] else "")]
    tm = t["time"]
    lines += [
        f"implied step time {tm['step_s']:.2f} s = compute at peak {tm['compute_s']:.2f} s + collectives at link "
        f"bandwidth {tm['collectives_s']:.2f} s (no overlap); MFU at that time {tm['mfu']:.1%} (remat and "
        f"exposed collectives are what keeps it under 100%)",
        f"{r['total_steps']:,} steps × {tm['step_s']:.2f} s ≈ {r['total_train_s'] / 3600:.1f} h of training per round "
        f"at that step time (a lower bound: sampling, evaluation and checkpoints come on top)",
        f"train fits: {'yes' if t['fits'] else 'NO'}",
        *[f"  instead: --set {a['set']}: compiled peak {_gib(a['compiled_peak'])} of {_gib(hbm)} "
          f"({a['compiled_peak'] / hbm:.0%}; arithmetic expected {_gib(a['estimated_peak'])}) → "
          f"{'fits' if a['fits'] else 'does not fit'}" for a in r.get("alternatives", [])],
        "",
        f"sampling: weights {_gib(s['weights_bf16'])} bf16, KV {s['kv_bytes_per_token'] / 2**10:.0f} KiB per token",
    ]
    for name, st in s["stages"].items():
        short = st["devices_needed"] > r["devices"]
        fewer = r["devices"] // st["devices_per_engine"]
        lines.append(f"  {name:<6} {st['backend']:<5} {st['max_seq_tokens']:>7} tokens/seq: KV "
                     f"{_gib(st['kv_bytes_per_sequence'])} per sequence, {st['full_length_sequences_that_fit']} "
                     f"full-length sequences fit per engine of {st['devices_per_engine']} device(s); "
                     f"{st['engines']} engine(s) need {st['devices_needed']} of {r['devices']} devices; fits: "
                     f"{'yes' if st['fits'] else 'NO'}")
        if short and fewer:
            lines.append(f"    instead: --set {name}.vllm.replicas={fewer}: {fewer} engine(s) of "
                         f"{st['devices_per_engine']} device(s) → fits")
    lines.append(f"verdict: {'FITS' if r['fits'] else 'DOES NOT FIT'}")
    return "\n".join(lines)


def write_report(report: dict, path: str | os.PathLike) -> None:
    from ssd_jax.io_utils import atomic_write_text

    atomic_write_text(Path(path), json.dumps(report, indent=2) + "\n")

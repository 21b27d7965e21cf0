"""Programs compiled by XLA's GPU compiler for a described 8 × H100 (deviceless: ssd_jax/gpu_targets), read from
their HLO: the kernels, collectives and dtypes a GPU run would get, and the choice-by-target rule beside the same
config compiled for simulated CPU devices in this one process. Needs the `gpu-aot` extra (scripts/_setup.sh
installs it; a missing plugin fails here, it does not skip)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssd_jax import gpu_targets, hlo
from ssd_jax.config import TrainConfig, from_dict
from ssd_jax.models import attention as A
from ssd_jax.models import hf, moe
from ssd_jax.plan import compile_train_step
from ssd_jax.sharding import make_mesh
from tests.hlo import axis_groups, replica_groups

H100 = "h100"


def gpu(n=8):
    return list(gpu_targets.devices(H100, n))


def cpu(n=8):
    return jax.devices("cpu")[:n]


def train_cfg(d, mesh, **model) -> TrainConfig:
    return from_dict(TrainConfig, {
        "model": {"path": str(d), "dtype": "bfloat16", **model}, "mesh": mesh,
        "data": {"seq_len": 64, "train_file": "-"}, "global_batch": 16, "micro_batch": 8, "chunk_tokens": 32})


_compiled = {}


def step_text(tiny_dir, name, devices, mesh, **model):
    """The compiled train step's HLO text (cached: each program compiles once per session)."""
    key = (name, devices[0].platform, repr(mesh), tuple(sorted(model.items())))
    if key not in _compiled:
        c = compile_train_step(train_cfg(tiny_dir(name), mesh, **model), tiny_dir(name), devices)
        _compiled[key] = c.compiled.as_text()
    return _compiled[key]


def instructions(text, op):
    return [i for c in hlo.parse_module(text)[0].values() for i in c if i.op == op]


def op_name(ins) -> str:
    m = re.search(r'op_name="([^"]*)"', ins.attrs)
    return m.group(1) if m else ""


# ---------------------------------------------------------------------------------------------------- the rule


def test_the_installed_plugin_makes_no_process_probe_cuda():
    """No NVIDIA driver here: a bare `import jax` with the CUDA plugin installed calls cuInit and logs its failure;
    a process that imports ssd_jax first stays on the CPU without probing, and the plugin still gives topologies."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    probe = "import jax; print(jax.devices()[0].platform)"
    bare = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    ours = subprocess.run([sys.executable, "-c", "import ssd_jax, os; from ssd_jax import gpu_targets; " + probe
                           + "; print(os.environ['JAX_PLATFORMS'], len(gpu_targets.devices('b200', 8)))"],
                          env=env, capture_output=True, text=True)
    assert "cuInit" in bare.stderr
    assert ours.returncode == 0 and ours.stdout.split() == ["cpu", "cpu", "8"] and "cuInit" not in ours.stderr




def test_choices_follow_the_devices_compiled_for_not_the_default_backend(tiny_dir):
    """One config, one process (JAX's default backend is the CPU throughout): compiled for simulated CPU devices it
    takes the CPU forms (einsum attention, fp32 storage of the bf16 layer residuals, the padded expert exchange,
    fp32 KV cache); compiled for an H100 description the GPU forms (Pallas-Triton attention, bf16 residuals, the
    ragged all-to-all, bf16 cache)."""
    assert jax.default_backend() == "cpu"
    mesh = {"fsdp": 2, "expert": 4}
    on_cpu, on_gpu = (step_text(tiny_dir, "qwen3_moe", devs, mesh, remat="full") for devs in (cpu(), gpu()))
    residual = "[2,1,64,64]"  # the layer scan's stack of layer inputs: (layers, rows per device, T, D)
    assert f"f32{residual}" in on_cpu and f"bf16{residual}" not in on_cpu
    assert f"bf16{residual}" in on_gpu and f"f32{residual}" not in on_gpu
    cpu_stats, gpu_stats = hlo.program_stats(on_cpu, 8), hlo.program_stats(on_gpu, 8)
    attention = {k for k in cpu_stats.kernels | gpu_stats.kernels if "mha" in k}
    assert not attention & set(cpu_stats.kernels)
    assert {"triton:mha_forward", "triton:mha_backward"} <= attention & set(gpu_stats.kernels)
    assert "ragged-all-to-all" in gpu_stats.collectives and "ragged-all-to-all" not in cpu_stats.collectives
    gpu_a2a = gpu_stats.collectives.get("all-to-all", hlo.CollectiveTotals()).payload_bytes
    assert cpu_stats.collectives["all-to-all"].payload_bytes > 10 * gpu_a2a  # the padded exchange of token rows

    spec = train_cfg(tiny_dir("qwen3_moe"), mesh).model
    for devs, want in ((cpu(), jnp.float32), (gpu(), jnp.bfloat16)):
        model = nnx.eval_shape(lambda: hf.load_model(spec, make_mesh(from_dict(TrainConfig, {"mesh": mesh}).mesh,
                                                                       devs), "sample", weights=False))
        assert jax.eval_shape(lambda: model.init_cache(1, 8)).k[0].dtype == want


# ------------------------------------------------------------------------------------ what the GPU program holds


@pytest.mark.parametrize("dispatch", ["auto", "padded"])
def test_expert_parallel_exchange_is_the_ragged_all_to_all(tiny_dir, dispatch):
    """auto on GPU: the rows move by ragged-all-to-all (dispatch and combine, forward, remat recompute and
    backward: 6 per MoE layer and micro-step) and no all-to-all carries token rows; `padded` shows the check can
    fail."""
    text = step_text(tiny_dir, "qwen3_moe", gpu(), {"fsdp": 2, "expert": 4}, remat="full", moe_dispatch=dispatch)
    stats = hlo.program_stats(text, 8)
    d = hf.model_config(tiny_dir("qwen3_moe")).hidden_size
    row_exchanges = [i for op in ("all-to-all", "all-to-all-done") for i in instructions(text, op)
                     if i.shapes[0][1][-1:] == (d,)]
    if dispatch == "auto":
        assert stats.collectives["ragged-all-to-all"].count == 6 * 2 * 2
        assert not row_exchanges
        mesh = make_mesh(from_dict(TrainConfig, {"mesh": {"fsdp": 2, "expert": 4}}).mesh, gpu())
        groups = {frozenset(g) for i in instructions(text, "ragged-all-to-all-start")
                  for g in replica_groups(i.attrs)}
        assert groups == axis_groups(mesh, "expert")  # within the expert groups, never across fsdp
    else:
        assert "ragged-all-to-all" not in stats.collectives and row_exchanges


@pytest.mark.parametrize("gemm", ["auto", "ragged_dot"])
def test_grouped_gemm_has_no_dense_expansion(tiny_dir, gemm):
    """auto on GPU (the tiled grouped GEMM): every expert product, forward and both backward forms, is one
    (tile × D)·(D × F)-sized dot per row tile of one expert (2·tile·D·F FLOPs, no group axis); `ragged_dot` shows
    what XLA:GPU makes of jax.lax.ragged_dot: dots over every group's copy of the rows, G× the work."""
    cfg = hf.model_config(tiny_dir("qwen3_moe"))
    d, f, groups = cfg.hidden_size, cfg.moe.intermediate_size, cfg.moe.num_experts // 4
    rows = 8 * 64 // 8 * cfg.moe.top_k  # routed rows per device and micro-step
    text = step_text(tiny_dir, "qwen3_moe", gpu(), {"fsdp": 2, "expert": 4}, remat="full", moe_grouped_gemm=gemm)
    flops = {}  # expert dots (by name) -> FLOPs per execution
    for instrs in hlo.parse_module(text)[0].values():
        symbols = {i.name: i for i in instrs}
        flops |= {i.name: hlo.dot_flops(i, symbols) for i in instrs
                  if i.op == "dot" and re.search(f"{moe.TILES_SCOPE}|ragged_dot", op_name(i))}
    assert flops
    if gemm == "auto":
        one = 2.0 * moe.tile_rows(rows, groups) * d * f  # one (tile × D)·(D × F) product
        assert set(flops.values()) <= {one, 2 * one}, flops  # XLA may merge the gate and up products
    else:
        assert max(flops.values()) >= groups * 2.0 * rows * d * f, flops


def test_fsdp_gradients_leave_as_reduce_scatter(tiny_dir):
    """Every layer weight's gradient leaves the micro-step by reduce-scatter (bf16, the compute dtype), not by
    all-reduce: its payload covers the layers' gradients of both micro-steps."""
    d = tiny_dir("qwen3_untied")
    text = step_text(tiny_dir, "qwen3_untied", gpu(), {"fsdp": 8})
    stats = hlo.program_stats(text, 8)
    model = nnx.eval_shape(lambda: hf.load_model(train_cfg(d, {}).model, None, "train", weights=False))
    shapes = [v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
              if p[0] == "layers" and v.ndim >= 3]  # (layers, …) weight stacks
    layer_params = sum(int(np.prod(s)) for s in shapes)
    assert stats.collectives["reduce-scatter"].payload_bytes == 2 * layer_params * 2  # bf16, both micro-steps
    weight_sizes = {int(np.prod(s[1:])) // k for s in shapes for k in (1, 8)}
    assert not [i for i in instructions(text, "all-reduce-done") if int(np.prod(i.shapes[0][1])) in weight_sizes]


PALLAS = {"triton:mha_forward", "triton:mha_preprocess_backward", "triton:mha_backward"}


@pytest.mark.parametrize("impl,kernels", [("auto", PALLAS), ("pallas", PALLAS), ("blockwise", set())])
def test_attention_is_the_kernel_the_config_names(tiny_dir, impl, kernels):
    text = step_text(tiny_dir, "qwen3_untied", gpu(), {"fsdp": 8}, attention_impl=impl)
    assert {k for k in hlo.program_stats(text, 8).kernels if "mha" in k or "fmha" in k} == kernels


def test_bf16_activations_are_bf16(tiny_dir):
    """With bf16 compute every GEMM of the GPU step takes bf16 operands (projections, LM head, both backward
    forms); the only fp32 dots are none."""
    text = step_text(tiny_dir, "qwen3_untied", gpu(), {"fsdp": 8})
    comps, _, _ = hlo.parse_module(text)
    dtypes = set()
    for instrs in comps.values():
        symbols = {i.name: i for i in instrs}
        for i in instrs:
            if i.op == "dot":
                dtypes |= {symbols[o].shapes[0][0] for o in i.operands[:2] if o in symbols}
    assert dtypes == {"bf16"}, dtypes


def test_cudnn_attention_compiles_to_the_fused_kernels(monkeypatch):
    """`attention_impl: cudnn` compiled for the H100 description: cuDNN's fused forward and backward. JAX's own
    Python-side probes of a local GPU's cuDNN version and compute capability are answered for the described one."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 92800)
    monkeypatch.setattr(cudnn, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(cudnn, "is_cuda_compute_capability_equal", lambda capability: False)
    mesh = Mesh(np.array(gpu(1)), ("x",))
    s = lambda shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, P()))  # noqa: E731
    b, t, h, kv, hd = 2, 256, 8, 2, 64
    loss = lambda q, k, v, seg: A.cudnn_attention(q, k, v, seg, max_segments=8).astype(jnp.float32).sum()  # noqa: E731
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    stats = hlo.program_stats(grad.lower(s((b, t, h, hd)), s((b, t, kv, hd)), s((b, t, kv, hd)),
                                         s((b, t), jnp.int32)).compile().as_text(), 1)
    assert stats.kernels == {"__cudnn$fmhaSoftmax": 1, "__cudnn$fmhaSoftmaxBackward": 1}
    assert stats.flops == 7 * 2 * b * h * t * t * hd / 2  # 2 products forward, 5 backward, causal


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pallas_attention_fits_the_gpus_shared_memory_at_head_dim_128(dtype):
    """At the kernel's default tiles an fp32 head_dim-128 forward asks for 262,656 bytes of shared memory, more
    than an H100 gives a block (232,448): XLA refused the whole program. `pallas_blocks` halves the KV tile."""
    mesh = Mesh(np.array(gpu(1)), ("x",))
    s = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, P()))  # noqa: E731
    dt = jnp.dtype(dtype)
    loss = lambda q, k, v, seg: A.pallas_attention(q, k, v, seg).astype(jnp.float32).sum()  # noqa: E731
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    text = grad.lower(s((1, 512, 8, 128), dt), s((1, 512, 2, 128), dt), s((1, 512, 2, 128), dt),
                      s((1, 512), jnp.int32)).compile().as_text()
    assert {"triton:mha_forward", "triton:mha_backward"} <= set(hlo.program_stats(text, 1).kernels)


# ---------------------------------------------------------------------------- hlo.py's GPU forms, counted exactly


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gemm_flops_are_counted_in_whatever_form_xla_picks(dtype):
    """A GEMM compiled for the GPU is a dot inside a Triton fusion or a cuBLAS custom call: 2·M·N·K either way."""
    mesh = Mesh(np.array(gpu(1)), ("x",))
    s = lambda shape: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=NamedSharding(mesh, P()))  # noqa: E731
    text = jax.jit(lambda a, b: a @ b).lower(s((1024, 512)), s((512, 256))).compile().as_text()
    assert hlo.program_stats(text, 1).flops == 2 * 1024 * 512 * 256


@pytest.mark.parametrize("kind,fn,payload", [
    ("all-gather", lambda x: jax.lax.all_gather(x, "x", tiled=True), 8 * 1024 * 64 * 2),
    ("all-reduce", lambda x: jax.lax.psum(x, "x"), 1024 * 64 * 2),
    ("reduce-scatter", lambda x: jax.lax.psum_scatter(x, "x", tiled=True), 1024 * 64 * 2),
    ("all-to-all", lambda x: jax.lax.all_to_all(x, "x", 0, 0, tiled=True), 1024 * 64 * 2),
])
def test_collectives_are_counted_once_with_their_bytes(kind, fn, payload):
    """Each collective, sync or as an async start/done pair, is one execution with the analytic payload (per
    device: a (1024, 64) bf16 shard over 8 GPUs)."""
    mesh = Mesh(np.array(gpu()), ("x",))
    sm = jax.shard_map(fn, mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    x = jax.ShapeDtypeStruct((8 * 1024, 64), jnp.bfloat16, sharding=NamedSharding(mesh, P("x")))
    stats = hlo.program_stats(jax.jit(sm).lower(x).compile().as_text(), 8)
    assert {k: (c.count, c.payload_bytes) for k, c in stats.collectives.items()} == {kind: (1, payload)}


def test_a_large_sort_compiles_deviceless_only_with_the_deviceless_options():
    """XLA:GPU runs a large sort (the MoE's argsort over routed rows) with CUB, whose scratch it sizes on a device:
    without one the compile fails; `gpu_targets.compiler_options` (what plan compiles with) takes XLA's own sort."""
    devs = gpu(1)
    mesh = Mesh(np.array(devs), ("x",))
    x = jax.ShapeDtypeStruct((1 << 20,), jnp.int32, sharding=NamedSharding(mesh, P()))
    lowered = jax.jit(lambda a: jnp.argsort(a, stable=True)).lower(x)
    assert gpu_targets.compiler_options(devs) == gpu_targets.DEVICELESS_OPTIONS
    assert gpu_targets.compiler_options(cpu(1)) == {}
    lowered.compile(compiler_options=gpu_targets.compiler_options(devs))
    with pytest.raises(Exception, match="cudaErrorInvalidDevice"):
        lowered.compile()


@pytest.mark.parametrize("devices,fix", [(4, "sample.vllm.replicas=4"), (2, "train.micro_batch=4")])
def test_plan_offers_the_setting_that_fits_qwen3_4b(devices, fix):
    """The paper's Qwen3-4B config on fewer H100s than its 8: on 4 the train step fits but its 8 vLLM engines do
    not find a GPU each; on 2, 8 rows of 65,536 tokens a micro-step (4 per device) do not fit and `plan` compiles
    the nearest alternatives until one does. Each is printed as the --set that fixes it."""
    from pathlib import Path

    from ssd_jax import plan

    cfg = plan.load_plan_config(Path(__file__).resolve().parents[1] / "configs" / "qwen3-4b-instruct-2507.yaml")
    r = plan.plan(cfg, devices=devices, device_kind=H100)
    assert not r["fits"] and r["device_kind_source"] == "--device-kind"
    assert r["train"]["fits"] == (devices == 4)
    printed = plan.format_report(r)
    assert f"instead: --set {fix}" in printed
    if devices == 2:
        assert r["alternatives"][-1] == {**r["alternatives"][-1], "set": fix, "fits": True}


def test_the_lm_head_gradient_leaves_the_paper_steps_in_one_reduction():
    """Qwen3-30B-A3B's paper step compiled for 8 × B200: the [hidden × vocab] head gradient is reduced once per
    step, outside every loop (the CE chunks and the layer scan), not once per chunk."""
    from pathlib import Path

    from ssd_jax import plan
    from ssd_jax.pipeline import round_configs

    cfg = plan.load_plan_config(Path(__file__).resolve().parents[1] / "configs" / "qwen3-30b-a3b-instruct-2507.yaml")
    tc = round_configs(cfg, Path(cfg.out_dir), 1, cfg.model.path).train
    c = compile_train_step(tc, plan.hf_config_dir(cfg.model.path), list(gpu_targets.devices("b200", 8)))
    comps, order, entry = hlo.parse_module(c.compiled.as_text())
    mult = hlo.multiplicities(comps, order, entry)
    d, v = c.model_cfg.hidden_size, c.model_cfg.vocab_size
    head_shapes = {tuple(sorted(s)) for k in (1, 2, 4, 8) for s in ((d, v // k), (d // k, v))}
    found = [(name, ins.op) for name, body in comps.items() for ins in body
             if ins.op.startswith(("all-reduce", "reduce-scatter")) and not ins.op.endswith("-done")
             and any(tuple(sorted(s)) in head_shapes for _, s in ins.shapes)]
    assert 1 <= len(found) <= 2, found
    assert all(name == entry and mult[name] == 1 for name, _ in found), found  # in the step's body, no loop

"""The scale checks that need a GPU, as one prepared script (run by scripts/gpu_check.sh on a lent device).

Sections (each prints one JSON line `{"section": …}` and never stops the others):
  parity   bf16 and fp32 logits of a random-init SmolLM2-135M-shaped Llama vs transformers on the same device
           (real weights cannot travel to the device machine: 64 MiB limit), through `ssd_jax.parity`.
  moe      a Qwen3-MoE-shaped train step per grouped-GEMM lowering (xla default | cudnn | pallas_triton, one
           subprocess each, since XLA reads its flags at start): does the compiled HLO hold a dense
           [experts × rows × features] dot (XLA's RaggedDotRewriter), and the step time.
  mfu      bf16 SFT step (fp32 master weights, AdamW) of a random-init Qwen3-0.6B-shaped dense model per
           `attention_impl`, and of a small MoE: tokens/s and model FLOPs utilisation at the device's bf16 peak.

`--tiny` shrinks every model so the whole script runs on CPU in a few minutes (that is how it is tested here).
Usage: python benchmarks/gpu_check.py [--tiny] [--sections parity,moe,mfu] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

GEMMS = ("xla", "cudnn", "pallas_triton")


def emit(section: str, **fields) -> None:
    print(json.dumps({"section": section, **fields}), flush=True)


# ---------------------------------------------------------------------------------------------------- models


def dense_config(tiny: bool, attention: str = "auto"):
    """Qwen3-0.6B's shape (28 layers, d 1024, 16 q / 8 kv heads of 128, MLP 3072, vocab 151,936, tied)."""
    from ssd_jax.models.config import ModelConfig, RopeConfig

    if tiny:
        shape = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16)
    else:
        shape = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                     num_kv_heads=8, head_dim=128)
    return ModelConfig(architecture="Qwen3ForCausalLM", rms_norm_eps=1e-6, rope=RopeConfig(theta=1e6),
                       tie_word_embeddings=True, qk_norm=True, dtype="bfloat16", param_dtype="float32",
                       remat="full", attention_impl=attention, **shape)


def moe_config(tiny: bool, impl: str = "sharded"):
    """A Qwen3-30B-A3B layer shape (d 2048, 128 experts of 768, top-8, 32 q / 4 kv heads) at 4 layers."""
    from ssd_jax.models.config import ModelConfig, MoEConfig, RopeConfig

    if tiny:
        shape = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16)
        moe = MoEConfig(num_experts=8, top_k=2, intermediate_size=32, norm_topk_prob=True, sparse_layers=(True,) * 2,
                        impl=impl)
    else:
        shape = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_layers=4, num_heads=32,
                     num_kv_heads=4, head_dim=128)
        moe = MoEConfig(num_experts=128, top_k=8, intermediate_size=768, norm_topk_prob=True,
                        sparse_layers=(True,) * 4, impl=impl)
    return ModelConfig(architecture="Qwen3MoeForCausalLM", rms_norm_eps=1e-6, rope=RopeConfig(theta=1e6),
                       tie_word_embeddings=False, qk_norm=True, dtype="bfloat16", param_dtype="float32",
                       remat="full", moe=moe, **shape)


def train_step_timing(cfg, rows: int, seq: int, steps: int) -> dict:
    """Compile the real SFT step for random-init `cfg` and time `steps` steps after one warm-up."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ssd_jax.config import OptimConfig
    from ssd_jax.models.transformer import CausalLM
    from ssd_jax.train import optim
    from ssd_jax.train.flops import device_peak_flops, flops_per_token
    from ssd_jax.train.step import make_train_step

    model = CausalLM(cfg, nnx.Rngs(0))
    opt = optim.create(model, OptimConfig(total_steps=100, warmup_steps=1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (1, rows, seq + 1)).astype(np.int32)
    seg = np.ones((1, rows, seq), np.int32)
    seg[:, :, seq // 2:] = 2  # two packed documents per row: segment ids must be honoured
    pos = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)]).astype(np.int32)
    batch = {"inputs": jnp.asarray(tokens[..., :-1]), "targets": jnp.asarray(tokens[..., 1:]),
             "weights": jnp.ones((1, rows, seq), jnp.float32), "segment_ids": jnp.asarray(seg),
             "positions": jnp.asarray(np.broadcast_to(pos, (1, rows, seq)))}
    step = make_train_step(chunk=min(seq, 2048))
    t0 = time.perf_counter()
    compiled = step.lower(model, opt, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    jax.block_until_ready(step(model, opt, batch))
    t0 = time.perf_counter()
    for _ in range(steps):
        m = step(model, opt, batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    kind = jax.devices()[0].device_kind
    peak = device_peak_flops()
    flops = flops_per_token(cfg, seq) * rows * seq
    return {"device": kind, "rows": rows, "seq": seq, "compile_s": round(compile_s, 2), "step_s": round(dt, 4),
            "tokens_per_s": round(rows * seq / dt, 1), "model_tflops": round(flops / dt / 1e12, 2),
            "mfu": round(flops / dt / peak, 4) if peak else None, "loss": float(m["loss"]),
            "temp_gib": round(getattr(mem, "temp_size_in_bytes", 0) / 2**30, 3), "_hlo": hlo}


def dense_expert_dots(hlo: str, cfg, rows_routed: int) -> list[str]:
    """HLO dots whose result has the full expert count and all routed rows: the dense masked expansion."""
    e = cfg.moe.num_experts
    hits = []
    for line in hlo.splitlines():
        if " dot(" not in line and "convolution(" not in line:
            continue
        result = line.split("=", 1)[1] if "=" in line else line
        m = re.search(r"\w+\[([\d,]+)\]", result)
        if m:
            dims = [int(v) for v in m.group(1).split(",")]
            if e in dims and rows_routed in dims:
                hits.append(line.strip()[:200])
    return hits


# -------------------------------------------------------------------------------------------------- sections


def section_parity(tiny: bool) -> None:
    import torch
    import transformers

    from ssd_jax import parity

    shape = (dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2) if tiny else
             dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3))
    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
                                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        transformers.LlamaForCausalLM(cfg).save_pretrained(d)
        for dtype in ("bfloat16", "float32"):
            r = parity.run_parity(d, dtype=dtype)
            emit("parity", model="SmolLM2-135M shape, random init", dtype=dtype, passed=r.passed,
                 max_abs_logit_diff=r.max_abs_logit_diff, mean_kl=r.mean_kl, top1=r.top1_agreement,
                 tolerance=r.tolerance)


def section_moe(tiny: bool, steps: int) -> None:
    for gemm in GEMMS:
        cmd = [sys.executable, __file__, "--sections", "moe_one", "--gemm", gemm, "--steps", str(steps)]
        out = subprocess.run(cmd + (["--tiny"] if tiny else []), capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            emit("moe", gemm=gemm, error=(out.stderr or out.stdout)[-1500:])
        for ln in lines:
            print(ln, flush=True)


def section_moe_one(tiny: bool, gemm: str, steps: int) -> None:
    from ssd_jax.models import moe

    moe.configure_grouped_gemm(gemm)  # before the backend starts (XLA flags)
    cfg = moe_config(tiny)
    rows, seq = (2, 64) if tiny else (4, 2048)
    res = train_step_timing(cfg, rows, seq, steps)
    hits = dense_expert_dots(res.pop("_hlo"), cfg, rows * seq * cfg.moe.top_k)
    emit("moe", gemm=gemm, dense_expert_dots=len(hits), example=hits[:2], **res)


def section_mfu(tiny: bool, steps: int) -> None:
    import jax

    rows, seq = (2, 64) if tiny else (8, 2048)
    impls = ["einsum", "blockwise"] + (["pallas", "cudnn"] if jax.default_backend() == "gpu" else [])
    for impl in impls:
        try:
            res = train_step_timing(dense_config(tiny, impl), rows, seq, steps)
            res.pop("_hlo")
            emit("mfu", model="Qwen3-0.6B shape" if not tiny else "tiny dense", attention_impl=impl, **res)
        except Exception as e:  # one impl failing must not hide the others
            emit("mfu", attention_impl=impl, error=f"{type(e).__name__}: {e}"[:1500])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--sections", default="parity,moe,mfu")
    ap.add_argument("--gemm", default="xla", choices=GEMMS)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    for name in args.sections.split(","):
        try:
            if name == "parity":
                section_parity(args.tiny)
            elif name == "moe":
                section_moe(args.tiny, args.steps)
            elif name == "moe_one":
                section_moe_one(args.tiny, args.gemm, args.steps)
            elif name == "mfu":
                section_mfu(args.tiny, args.steps)
            else:
                emit(name, error="unknown section")
        except Exception:
            emit(name, error=traceback.format_exc()[-2000:])


if __name__ == "__main__":
    main()

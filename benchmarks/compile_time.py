"""Compile time of a deep model's SFT train step: stacked layers under `lax.scan` vs a list of layers, side by side.

The model is tiny in width (so compile, not FLOPs, dominates) but has the layer count of Qwen3-30B-A3B (48). The
train step is the real one (`make_train_step`: micro-batch scan, value_and_grad, chunked CE, AdamW), with full
remat, so the list program holds three copies of every layer (forward, recompute, backward). The two variants
alternate in rounds so machine noise hits both alike; each round is a fresh trace + lower + XLA compile (no
cache). Usage: python benchmarks/compile_time.py [--layers 48] [--rounds 3] [--moe]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "")
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from ssd_jax.config import OptimConfig  # noqa: E402
from ssd_jax.models.config import ModelConfig, MoEConfig, RopeConfig  # noqa: E402
from ssd_jax.models.transformer import CausalLM  # noqa: E402
from ssd_jax.train import optim  # noqa: E402
from ssd_jax.train.step import make_train_step  # noqa: E402


def model_config(layers: int, moe: bool, scan: bool) -> ModelConfig:
    return ModelConfig(
        architecture="Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM", vocab_size=256, hidden_size=64,
        intermediate_size=128, num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6,
        rope=RopeConfig(theta=10000.0), tie_word_embeddings=False, qk_norm=True, remat="full", scan_layers=scan,
        moe=MoEConfig(num_experts=8, top_k=2, intermediate_size=32, norm_topk_prob=True,
                      sparse_layers=(True,) * layers) if moe else None,
    )


def compile_seconds(cfg: ModelConfig, rows: int = 4, seq: int = 64) -> float:
    model = CausalLM(cfg, nnx.Rngs(0))
    opt = optim.create(model, OptimConfig(total_steps=10, warmup_steps=1))
    step = make_train_step(chunk=seq)
    batch = {k: jnp.zeros((1, rows, seq), jnp.float32 if k == "weights" else jnp.int32)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    t0 = time.perf_counter()
    step.lower(model, opt, batch).compile()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--moe", action="store_true", help="every layer a routed MoE (8 experts, top-2)")
    args = ap.parse_args()
    times = {"scan": [], "list": []}
    for _ in range(args.rounds):
        for name in times:
            times[name].append(compile_seconds(model_config(args.layers, args.moe, scan=name == "scan")))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"jax {jax.__version__}, backend {jax.default_backend()}")
    print(f"model: {args.layers} layers, {'MoE 8x top-2' if args.moe else 'dense'}, d=64; train step with "
          f"full remat; {args.rounds} rounds, medians")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:10s} compile s  median {med[name]:7.2f}   rounds {', '.join(f'{x:.2f}' for x in v)}")
    print(f"ratio list / scan: {med['list'] / med['scan']:.1f}x")


if __name__ == "__main__":
    main()

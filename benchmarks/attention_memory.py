"""Attention temporary memory: einsum (dense T×S scores) vs blockwise (FlashAttention-2 in JAX), compile only.

One row (segment ids are a runtime input, so the figures hold for any packing) at Qwen3-30B-A3B attention
shapes (32 query heads, 4 kv heads, head_dim 128), bf16 q/k/v with fp32 softmax. Each variant is lowered from
ShapeDtypeStructs and compiled (never run) for the forward and for forward+backward (grad of a sum w.r.t.
q, k, v); XLA's `memory_analysis().temp_size_in_bytes` is printed side by side with the ratio einsum/blockwise.
Temp bytes exclude the arguments and outputs (q/k/v/out/grads).
On CPU, XLA has no bf16 dot: it converts the bf16 operands to fp32 and hoists that conversion of the whole q/k/v
out of the tile loops, so most of the bf16 blockwise figure is those fp32 copies (see its buffer assignment);
`--dtype float32` shows the tile working set alone. GPU/TPU compute bf16 dots natively.
Usage: python benchmarks/attention_memory.py [--seq 16384] [--heads 32] [--kv-heads 4] [--head-dim 128]
       [--block 512] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

from ssd_jax.models.attention import attend


def compiled_temp_bytes(impl: str, backward: bool, args: argparse.Namespace) -> tuple[int, float]:
    """Compile attention (or its grad) for abstract inputs; return (temp bytes, compile seconds)."""
    dt = jnp.dtype(args.dtype)
    q = jax.ShapeDtypeStruct((1, args.seq, args.heads, args.head_dim), dt)
    kv = jax.ShapeDtypeStruct((1, args.seq, args.kv_heads, args.head_dim), dt)
    seg = jax.ShapeDtypeStruct((1, args.seq), jnp.int32)

    def forward(q, k, v, seg):
        return attend(q, k, v, seg, seg, 0, impl=impl, block_q=args.block, block_kv=args.block)

    def loss(q, k, v, seg):
        return forward(q, k, v, seg).astype(jnp.float32).sum()

    fn = jax.grad(loss, argnums=(0, 1, 2)) if backward else forward
    t0 = time.perf_counter()
    compiled = jax.jit(fn).trace(q, kv, kv, seg).lower().compile()
    return compiled.memory_analysis().temp_size_in_bytes, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()

    print("command:", "python " + " ".join(sys.argv))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"jax {jax.__version__} backend={jax.default_backend()}"
    )
    print(
        f"shapes: B=1 T=S={args.seq} H={args.heads} K={args.kv_heads} hd={args.head_dim} {args.dtype} "
        f"(fp32 scores/softmax), blockwise tiles {args.block}x{args.block}"
    )
    gib = 1024**3
    print(f"{'pass':<18}{'einsum GiB':>12}{'blockwise GiB':>15}{'einsum/blockwise':>18}{'compile s (e / b)':>20}")
    for backward in (False, True):
        e, te = compiled_temp_bytes("einsum", backward, args)
        b, tb = compiled_temp_bytes("blockwise", backward, args)
        name = "forward+backward" if backward else "forward"
        print(f"{name:<18}{e / gib:>12.3f}{b / gib:>15.3f}{e / b:>18.1f}{f'{te:.1f} / {tb:.1f}':>20}")
        print(f"{'  (bytes)':<18}{e:>12}{b:>15}")


if __name__ == "__main__":
    main()

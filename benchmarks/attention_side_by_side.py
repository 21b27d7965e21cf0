"""One layer's causal self-attention, forward + backward: ssd-jax's einsum path against PyTorch's SDPA, side by side.

The attention core only (no projections): q (B, T, H, hd), k/v (B, T, K, hd) with GQA, fp32, loss sum(out · q).
ssd-jax runs `attention.einsum_attention` (the CPU training path: causal query blocks, custom VJP) and, for
reference, the same softmax over all keys at once (`_grouped_attention`, the pre-blocking form); torch runs
`scaled_dot_product_attention(is_causal=True, enable_gqa=True)`. Rounds alternate; medians, the ratio last.
Defaults are SmolLM2-135M's heads at the SFT benchmark's 4 × 512.
Usage: python benchmarks/attention_side_by_side.py [--batch 4] [--seq 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ssd_jax.models import attention as A


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    b, t = args.batch, args.seq
    rng = np.random.default_rng(0)
    q_np = rng.standard_normal((b, t, args.heads, args.head_dim), np.float32)
    k_np, v_np = (rng.standard_normal((b, t, args.kv_heads, args.head_dim), np.float32) for _ in range(2))
    q, k, v = map(jnp.asarray, (q_np, k_np, v_np))
    seg = jnp.ones((b, t), jnp.int32)

    def unblocked(q, k, v, qs, ks, start):
        mask = A.attention_mask(qs, ks, jnp.arange(t), jnp.arange(t))
        return A._grouped_attention(q, [(jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3)), mask)])

    def jax_step(fn):
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, seg, seg, 0) * q), argnums=(0, 1, 2)))
        return lambda: jax.block_until_ready(grad(q, k, v))

    tq, tk, tv = (torch.from_numpy(x).transpose(1, 2).contiguous().requires_grad_(True) for x in (q_np, k_np, v_np))

    def torch_step():
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)
        (out * tq).sum().backward()

    runs = {"ssd-jax (causal blocks)": jax_step(A.einsum_attention), "ssd-jax (all keys)": jax_step(unblocked),
            "torch sdpa": torch_step}
    for fn in runs.values():
        fn()  # compile / warm up
    ms = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            ms[name].append((time.perf_counter() - t0) * 1e3)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, jax {jax.__version__}, torch {torch.__version__}")
    print(f"attention fwd+bwd, fp32, B {b}, T {t}, heads {args.heads}/{args.kv_heads}, head_dim {args.head_dim}, "
          f"median of {args.rounds}")
    med = {name: statistics.median(v) for name, v in ms.items()}
    for name, m in med.items():
        print(f"{name:26s} {m:8.1f} ms")
    ratio = med["torch sdpa"] / med["ssd-jax (causal blocks)"]
    print(f"ratio torch / ssd-jax (speed of ssd-jax relative to torch): {ratio:.3f}")


if __name__ == "__main__":
    main()

"""Model FLOPs per trained token and device peaks: the MFU that the trainer logs and the benchmarks report."""

from __future__ import annotations

import jax

# Dense bf16 peak per device (FLOP/s).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "B200": 2250e12, "A100": 312e12, "TPU v5p": 459e12,
              "TPU v5 lite": 197e12, "TPU v4": 275e12, "TPU v6": 918e12}


def flops_per_token(mcfg, seq_len: int) -> float:
    """6·N_active (matmul params incl. LM head) + 6·L·(heads·head_dim)·seq for causal attention, per trained token.

    Attention: QKᵀ and PV are 2·2·heads·head_dim FLOPs per (query, key) pair forward, ×3 with the backward; a
    causal row has seq/2 keys per query on average (PaLM's 12·L·H·hd·seq counts every pair, and reads as > 100%
    MFU for a kernel that skips the masked half at 65,536 tokens)."""
    d, L = mcfg.hidden_size, mcfg.num_layers
    attn = d * mcfg.head_dim * (2 * mcfg.num_heads + 2 * mcfg.num_kv_heads)
    if mcfg.moe:
        n_sparse = sum(mcfg.moe.sparse_layers)
        mlp = (L - n_sparse) * 3 * d * mcfg.intermediate_size + n_sparse * (
            mcfg.moe.top_k * 3 * d * mcfg.moe.intermediate_size + d * mcfg.moe.num_experts)
    else:
        mlp = L * 3 * d * mcfg.intermediate_size
    n_active = L * attn + mlp + d * mcfg.vocab_size
    return 6.0 * n_active + 6.0 * L * mcfg.num_heads * mcfg.head_dim * seq_len


def device_peak_flops(peak_tflops: float = 0.0) -> float | None:
    """`peak_tflops` when set (> 0), else the table's entry for this device kind, else None (MFU unknown)."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)

"""SFT step throughput side by side: ssd-jax's train step vs HF transformers + torch AdamW, same model and batch.

Both take full steps (forward, cross-entropy, backward, clip at 1.0, AdamW) on the same random batch, in one process,
alternating rounds (torch, jax, torch, jax, …); each round warms up once and times `--steps` steps. `--dtype bfloat16`
is bf16 compute with fp32 parameters on both sides (JAX `dtype=bfloat16, param_dtype=float32`; torch autocast).
Medians over rounds, the ratio last.

    python benchmarks/train_side_by_side.py [--model DIR] [--batch 4] [--seq 512] [--rounds 3] [--steps 3]
        [--dtype float32|bfloat16] [--set remat=none --set attention_impl=blockwise]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def torch_round(a, state, ids):
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    if "m" not in state:
        m = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
        m.train()
        state["m"] = m
        state["opt"] = torch.optim.AdamW(m.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
    m, opt = state["m"], state["opt"]
    x = torch.from_numpy(ids[0]).long()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bfloat16"):
            out = m(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    return time.perf_counter() - t0


def jax_round(a, state, ids):
    import jax

    from ssd_jax.config import OptimConfig
    from ssd_jax.models import hf
    from ssd_jax.train import optim
    from ssd_jax.train.step import make_train_step

    if "m" not in state:
        options = dict(kv.split("=", 1) for kv in a.set)
        model = hf.load(a.model, dtype=a.dtype, param_dtype="float32", **options)
        state["m"] = model
        # optim.create, as `ssd-jax train` does: it commits the step counters, so the step compiles once (a bare
        # nnx.Optimizer's uncommitted counters recompile the step on its second call, inside the timed steps).
        state["opt"] = optim.create(model, OptimConfig(warmup_steps=2, total_steps=10**6))
        state["step"] = make_train_step(2048)
    model, opt, step_fn = state["m"], state["opt"], state["step"]
    # HF shifts labels inside the model; here targets are the next tokens and the last position has no target.
    targets = np.roll(ids, -1, axis=-1)
    weights = np.ones_like(ids, np.float32)
    weights[..., -1] = 0.0
    batch = {"inputs": ids, "targets": targets, "weights": weights, "segment_ids": np.ones_like(ids),
             "positions": np.broadcast_to(np.arange(ids.shape[-1], dtype=np.int32), ids.shape).copy()}
    batch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    jax.block_until_ready(step_fn(model, opt, batch))  # warm-up (compiles in the first round)
    compiles = len(_COMPILES)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        metrics = step_fn(model, opt, batch)
    jax.block_until_ready(metrics)
    dt = time.perf_counter() - t0
    if len(_COMPILES) != compiles:
        raise SystemExit(f"the JAX step compiled {len(_COMPILES) - compiles}x inside the timed steps")
    return dt


_COMPILES: list[float] = []


def _count_compiles(event: str, seconds: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="HF directory (default: the bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="JAX model run option (remat, attention_impl, scan_layers)")
    a = ap.parse_args()
    from ssd_jax.bundled import resolve_model

    a.model = str(resolve_model(a.model or "bundled:smollm2-135m"))
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_count_compiles)
    from ssd_jax.models.hf import model_config

    vocab = model_config(a.model).vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, (1, a.batch, a.seq)).astype(np.int32)
    tokens = a.batch * a.seq * a.steps
    rates: dict[str, list[float]] = {"torch": [], "jax": []}
    state: dict[str, dict] = {"torch": {}, "jax": {}}
    for r in range(a.rounds):
        for name, fn in (("torch", torch_round), ("jax", jax_round)):
            rates[name].append(tokens / fn(a, state[name], ids))
            print(json.dumps({"round": r, "framework": name, "tokens_per_s": round(rates[name][-1], 1)}), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({"batch": a.batch, "seq": a.seq, "dtype": a.dtype, "jax_options": a.set,
                      "torch_tokens_per_s": round(med["torch"], 1), "jax_tokens_per_s": round(med["jax"], 1),
                      "jax_over_torch": round(med["jax"] / med["torch"], 3)}))


if __name__ == "__main__":
    main()

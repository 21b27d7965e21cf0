"""Peak host memory, ssd-jax vs PyTorch/HF, on the same work: each measurement runs in a fresh process and reports
that process's own RSS high-water mark (kernel rusage), so nothing one framework left behind counts for the other.

  python benchmarks/memory_side_by_side.py [--model DIR] [--work sft|sample|all]

Work (SmolLM2-135M-Instruct by default, fp32):
  sft     3 SFT steps at batch 4 × 512 tokens, AdamW (β 0.9/0.95, wd 0.1), clip 1.0
          ssd-jax: the real train step (`make_train_step`, chunked CE) | PyTorch: HF model + torch.optim.AdamW
  sample  32 chat prompts × 256 new tokens, T 1.0 / top-k 20 / top-p 0.8, EOS ignored
          ssd-jax: JaxSampler | HF: `generate`
Prints one JSON line per measurement and the ratios (ssd-jax / PyTorch) last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SFT_BATCH, SFT_SEQ, SFT_STEPS = 4, 512, 3
N_PROMPTS, NEW_TOKENS = 32, 256


def _sft_torch(model_dir: str) -> None:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(2)
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, m.config.vocab_size, (SFT_BATCH, SFT_SEQ))).long()
    for _ in range(SFT_STEPS):
        m(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _sft_jax(model_dir: str) -> None:
    import jax
    import numpy as np
    from flax import nnx

    from ssd_jax.config import OptimConfig
    from ssd_jax.models import hf
    from ssd_jax.train import optim
    from ssd_jax.train.step import make_train_step

    model = hf.load(model_dir, dtype="float32", param_dtype="float32")
    opt = nnx.Optimizer(model, optim.make_optimizer(OptimConfig(warmup_steps=2, total_steps=100)), wrt=nnx.Param)
    step = make_train_step(2048)
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (1, SFT_BATCH, SFT_SEQ)).astype(np.int32)
    batch = {"inputs": ids, "targets": np.roll(ids, -1, axis=-1), "weights": np.ones_like(ids, np.float32),
             "segment_ids": np.ones_like(ids),
             "positions": np.broadcast_to(np.arange(SFT_SEQ, dtype=np.int32), ids.shape).copy()}
    batch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    for _ in range(SFT_STEPS):
        jax.block_until_ready(step(model, opt, batch))


def _prompts(tok) -> list[str]:
    tasks = [f"Write a Python function for task number {i}: sort, search or parse something." for i in range(N_PROMPTS)]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in tasks]


def _sample_hf(model_dir: str) -> None:
    import torch
    import transformers

    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    enc = tok(_prompts(tok), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        m.generate(**enc, do_sample=True, temperature=1.0, top_k=20, top_p=0.8, max_new_tokens=NEW_TOKENS,
                   min_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id or tok.eos_token_id)


def _sample_jax(model_dir: str) -> None:
    from ssd_jax.models import hf
    from ssd_jax.sampling.jax_sampler import JaxSampler, SamplingParams

    tok = hf.load_tokenizer(model_dir)  # as the sample stage loads it (no torch import)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in _prompts(tok)]
    model = hf.load(model_dir, dtype="float32", scan_layers=False)  # as the sample stage decodes
    s = JaxSampler(model, tok, batch_size=N_PROMPTS, max_prompt_len=64, max_new_tokens=NEW_TOKENS, eos_token_ids=[])
    s.generate(ids, [SamplingParams(temperature=1.0, top_k=20, top_p=0.8, max_tokens=NEW_TOKENS, seed=0)] * N_PROMPTS)


WORK = {("sft", "jax"): _sft_jax, ("sft", "torch"): _sft_torch, ("sample", "jax"): _sample_jax,
        ("sample", "torch"): _sample_hf}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="HF directory (default: the bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--work", default="all", choices=["sft", "sample", "all"])
    ap.add_argument("--child", nargs=2, metavar=("WORK", "FRAMEWORK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        WORK[tuple(a.child)](a.model)
        return
    from ssd_jax.bundled import resolve_model
    from ssd_jax.memory import run_child

    model = str(resolve_model(a.model or "bundled:smollm2-135m"))
    peaks = {}
    for work in (["sft", "sample"] if a.work == "all" else [a.work]):
        for fw in ("torch", "jax"):
            rc, mem = run_child([sys.executable, os.path.abspath(__file__), "--model", model, "--child", work, fw])
            if rc != 0:
                raise SystemExit(f"{work}/{fw} failed (exit {rc})")
            peaks[(work, fw)] = mem["peak_rss_gb"]
            print(json.dumps({"work": work, "framework": "ssd-jax" if fw == "jax" else "pytorch",
                              "peak_rss_gb": mem["peak_rss_gb"], "seconds": mem["seconds"]}), flush=True)
    for work in sorted({w for w, _ in peaks}):
        print(json.dumps({"work": work, "ssd_jax_over_pytorch": round(peaks[(work, "jax")] / peaks[(work, "torch")], 3)}))


if __name__ == "__main__":
    main()

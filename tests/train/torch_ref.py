"""The PyTorch reference trainer for the parity tests: HF model + torch AdamW + the same schedule, mask and data.

Packed JAX rows are unpacked into one padded sequence per segment, so the reference never sees packing: if our
packing let attention cross segments, the losses would differ.
"""

from __future__ import annotations

import numpy as np
import torch

from ssd_jax.config import OptimConfig
from ssd_jax.train.optim import lr_at


def unpack(batch: dict) -> tuple[np.ndarray, ...]:
    seqs = []
    for r in range(batch["inputs"].shape[0]):
        seg = batch["segment_ids"][r]
        for sid in np.unique(seg[seg > 0]):
            sel = seg == sid
            seqs.append((batch["inputs"][r][sel], batch["targets"][r][sel], batch["weights"][r][sel]))
    n = max(len(s[0]) for s in seqs)
    ids = np.zeros((len(seqs), n), np.int64)
    tgt = np.zeros_like(ids)
    w = np.zeros((len(seqs), n), np.float32)
    mask = np.zeros_like(ids)
    for i, (a, t, ww) in enumerate(seqs):
        ids[i, : len(a)], tgt[i, : len(a)], w[i, : len(a)], mask[i, : len(a)] = a, t, ww, 1
    return ids, tgt, w, mask


def loss_and_backward(model, batch: dict) -> float:
    ids, tgt, w, mask = unpack(batch)
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(tgt).reshape(-1),
                                           reduction="none")
    wt = torch.tensor(w).reshape(-1)
    loss = (ce * wt).sum() / wt.sum()
    loss.backward()
    return loss.item()


def make_optimizer(model, cfg: OptimConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = not cfg.decay_norms_and_biases and (name.endswith("norm.weight") or name.endswith(".bias"))
        (no_decay if skip else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1.0, betas=(cfg.b1, cfg.b2), eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(cfg, s))
    return opt, sched


def train(model, batches: list[dict], cfg: OptimConfig) -> list[float]:
    opt, sched = make_optimizer(model, cfg)
    losses = []
    for b in batches:
        losses.append(loss_and_backward(model, b))
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
    return losses

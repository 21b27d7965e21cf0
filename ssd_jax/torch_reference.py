"""The PyTorch side of `ssd-jax parity --train` (and of the step-parity tests): the HF model, torch's AdamW and a
learning-rate schedule written from Megatron-LM's documented semantics, fed the rows our packer made.

Nothing here calls ssd-jax's own trainer or schedule: a porting bug on our side (a warm-up shifted by a step, a
wrong β₂) shows up as a difference instead of being copied into the reference. Packed rows are unpacked into one
padded sequence per segment, so the reference never sees packing: if ours let attention cross segments, the
losses would differ.
"""

from __future__ import annotations

import math

import numpy as np

from ssd_jax.config import OptimConfig


def reference_lr(cfg: OptimConfig, updates_done: int) -> float:
    """The learning rate of the update after `updates_done` updates. megatron: Megatron-LM's
    OptimizerParamScheduler (linear from init_lr 0, so its first update runs at lr 0, then cosine to min_lr);
    linear: update k of the warm-up at k/warmup of the peak. Both hold the floor past total_steps."""
    n, w = updates_done, cfg.warmup_steps
    if cfg.warmup == "linear":
        if n < w:
            return cfg.peak_lr * (n + 1) / w
    elif w > 0 and n <= w:
        return cfg.peak_lr * n / w
    if n > cfg.total_steps:
        return cfg.floor_lr
    ratio = (n - w) / max(cfg.total_steps - w, 1)
    return cfg.floor_lr + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (cfg.peak_lr - cfg.floor_lr)


def unpack(batch: dict) -> tuple[np.ndarray, ...]:
    """Packed (B, T) rows → one right-padded sequence per segment: ids, targets, weights, attention mask."""
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
    """Σ w·CE / Σ w over the batch's real tokens, backpropagated into the model's .grad."""
    import torch

    ids, tgt, w, mask = unpack(batch)
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    # CE as logsumexp(z − z[target]): on a confident token `cross_entropy`'s logsumexp(z) − z[target] cancels two
    # numbers near max z, and alone put SmolLM2's fp32 loss 8e-6 (relative) off the float64 value; this form
    # stays within 1e-7 of it, as ours does.
    z = logits.float().reshape(-1, logits.shape[-1])
    zt = z.gather(1, torch.tensor(tgt).reshape(-1, 1))
    ce = torch.logsumexp(z - zt, dim=-1)
    wt = torch.tensor(w).reshape(-1)
    loss = (ce * wt).sum() / wt.sum()
    loss.backward()
    return loss.item()


def make_optimizer(model, cfg: OptimConfig):
    """torch AdamW; norm weights and biases in a group without weight decay unless `decay_norms_and_biases`."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = not cfg.decay_norms_and_biases and (name.endswith("norm.weight") or name.endswith(".bias"))
        (no_decay if skip else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=reference_lr(cfg, 0), betas=(cfg.b1, cfg.b2), eps=cfg.eps)


class BF16Compute:
    """A bf16 copy of an fp32 model for the forward and backward, the fp32 model as master weights the optimizer
    updates: what `model.dtype: bfloat16, param_dtype: float32` does in ssd-jax (activations in bf16 too, which
    torch.autocast would keep in fp32)."""

    def __init__(self, master):
        import copy

        import torch

        self.master = master
        self.compute = copy.deepcopy(master).to(torch.bfloat16)

    def forward_backward(self, batch: dict) -> float:
        import torch

        with torch.no_grad():
            for c, m in zip(self.compute.parameters(), self.master.parameters()):
                c.copy_(m)
        self.compute.zero_grad()
        loss = loss_and_backward(self.compute, batch)
        for c, m in zip(self.compute.parameters(), self.master.parameters()):
            m.grad = c.grad.float()
        return loss


def train_step(model, opt, batch: dict, cfg: OptimConfig, updates_done: int, bf16: BF16Compute | None = None,
               keep_grads: bool = False) -> dict:
    """One SFT update of `model` (fp32; with `bf16`, computed by its bf16 copy): loss, pre-clip gradient norm,
    learning rate, ‖Δw‖; with `keep_grads` the (pre-clip) gradients by HF parameter name."""
    import torch

    lr = reference_lr(cfg, updates_done)
    for g in opt.param_groups:
        g["lr"] = lr
    loss = bf16.forward_backward(batch) if bf16 is not None else loss_and_backward(model, batch)
    params = [p for p in model.parameters()]
    grads = {n: p.grad.detach().float().numpy().copy() for n, p in model.named_parameters()} if keep_grads else None
    if cfg.clip_norm:
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm))
    else:
        gnorm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)))
    before = [p.detach().clone() for p in params]
    opt.step()
    opt.zero_grad()
    update = math.sqrt(sum(float(((p.detach().double() - b.double()) ** 2).sum()) for p, b in zip(params, before)))
    return {"loss": loss, "grad_norm": gnorm, "lr": lr, "update_norm": update, "grads": grads}


def train(model, batches: list[dict], cfg: OptimConfig) -> list[float]:
    """The losses of `len(batches)` updates."""
    opt = make_optimizer(model, cfg)
    return [train_step(model, opt, b, cfg, i)["loss"] for i, b in enumerate(batches)]

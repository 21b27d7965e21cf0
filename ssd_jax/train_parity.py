"""`ssd-jax parity --train`: N steps of our real SFT step (packing, prompt mask, chunked CE, AdamW, warm-up +
cosine, clipping) on a checkpoint, beside HF transformers + torch AdamW (`torch_reference`) fed the same rows.

Per step both sides report the loss, the pre-clip gradient norm, the learning rate and ‖Δw‖; after the first and
the last step, the gradients and the weights are compared per parameter group (embedding, each layer's attention /
MLP / router / each expert, norms, head), in HF's names and layout through the exporter's key map. The verdict
names the first quantity over tolerance, in step order. In bf16 (both: bf16 compute over fp32 master weights)
both sides are measured against torch in fp32, and JAX must stay within k× torch's own error.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssd_jax import parity
from ssd_jax.config import ModelSpec, OptimConfig, SFTDataConfig
from ssd_jax.errors import ToleranceError, UserError
from ssd_jax.io_utils import atomic_write_text

# The paper's SFT recipe (§3.1, App. C.1: AdamW β 0.9/0.95, weight decay 0.1, clip 1.0, peak 5e-6 cosine to 1e-6,
# Megatron warm-up), over a warm-up short enough that N steps reach the peak and decay again.
def paper_optim(steps: int) -> OptimConfig:
    return OptimConfig(peak_lr=5e-6, floor_lr=1e-6, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0,
                       warmup="megatron", warmup_steps=max(1, steps // 5), total_steps=steps)


TOLERANCE = {
    # relative differences: loss and lr per step; gradient and update norms per step; per-group gradients and
    # weights (‖Δ‖ over ‖reference‖ for gradients, over the reference's own movement for weights: Adam's
    # normalised step turns fp32 noise in a near-zero gradient element into a full-size step of either sign, so
    # a group of small gradients, a MoE router's, moves ~1% apart after a few steps without any bug)
    "float32": {"loss": 1e-5, "grad_norm": 1e-4, "lr": 1e-6, "update_norm": 1e-3, "group_grad": 1e-3,
                "group_weight": 5e-2},
    "bfloat16": {"budget_factor": 1.5, "lr": 1e-6},
}


@dataclass
class TrainParityReport:
    model: str
    dtype: str
    steps: int
    rows: int
    seq_len: int
    data: str
    optim: dict
    per_step: list[dict]  # {"step", "jax": {...}, "torch": {...}, "rel": {...}} (+ "torch32" in bf16)
    groups: dict  # "1" / "N": [{"group", "grad_rel", "weight_rel"}]
    tolerance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    diverged_at: str | None = None
    passed: bool = False

    def summary(self) -> str:
        head = (f"{self.model} [{self.dtype}, {self.steps} steps × {self.rows} rows × {self.seq_len} tokens, "
                f"data: {self.data}, peak lr {self.optim['peak_lr']:g}]\n")
        lines = [f"  {'step':>4} {'lr (JAX)':>10} {'loss JAX':>12} {'loss torch':>12} {'Δloss':>9} "
                 f"{'‖g‖ JAX':>10} {'Δ‖g‖':>9} {'‖Δw‖ JAX':>10} {'Δ‖Δw‖':>9}"]
        for r in self.per_step:
            j, t, d = r["jax"], r["torch"], r["rel"]
            lines.append(f"  {r['step']:>4} {j['lr']:>10.3e} {j['loss']:>12.7f} {t['loss']:>12.7f} "
                         f"{d['loss']:>9.1e} {j['grad_norm']:>10.4e} {d['grad_norm']:>9.1e} "
                         f"{j['update_norm']:>10.4e} {d['update_norm']:>9.1e}")
        for r in self.per_step:
            if "grad_rel_to_fp32" in r:
                g = r["grad_rel_to_fp32"]
                lines.append(f"  step {r['step']}: gradient off torch-fp32's by {g['jax']:.2e} (JAX-bf16) and "
                             f"{g['torch']:.2e} (torch-bf16); loss by {r['rel_to_fp32']['jax']['loss']:.2e} and "
                             f"{r['rel_to_fp32']['torch']['loss']:.2e}")
        for when, rows in self.groups.items():
            worst = sorted(rows, key=lambda g: -g["grad_rel"])[:3]
            lines.append(f"  after step {when}: largest per-group gradient differences " +
                         ", ".join(f"{g['group']} {g['grad_rel']:.1e}" for g in worst))
        for n in self.notes:
            lines.append(f"  note: {n}")
        where = f" (diverged at {self.diverged_at})" if self.diverged_at else ""
        lines.append(f"  tolerance {self.tolerance}: {'PASS' if self.passed else 'FAIL' + where}")
        return head + "\n".join(lines)


def param_group(name: str) -> str:
    """An HF parameter name → its group: embedding, head, final norm, layer i attention / MLP / router / norms /
    expert e."""
    if name.startswith("lm_head"):
        return "head"
    if "embed_tokens" in name:
        return "embedding"
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    if not m:
        return "final norm" if "norm" in name else name
    i, rest = m.groups()
    if "experts." in rest:
        e = re.search(r"experts\.(\d+)\.", rest)
        return f"layer {i} expert {e.group(1)}" if e else f"layer {i} experts"
    if rest.startswith("mlp.gate.") or "router" in rest:
        return f"layer {i} router"
    if rest.startswith("self_attn.") and "norm" not in rest:
        return f"layer {i} attention"
    if "norm" in rest:
        return f"layer {i} norms"
    return f"layer {i} mlp"


def _split_fused_experts(name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    """transformers 5 keeps a layer's experts fused (gate_up_proj (E, 2F, D), down_proj (E, D, F)); per expert in
    the exporter's per-expert names."""
    prefix = name.rsplit(".", 1)[0]
    out = {}
    for e in range(value.shape[0]):
        if name.endswith("gate_up_proj"):
            f = value.shape[1] // 2
            out[f"{prefix}.{e}.gate_proj.weight"] = value[e, :f]
            out[f"{prefix}.{e}.up_proj.weight"] = value[e, f:]
        else:
            out[f"{prefix}.{e}.down_proj.weight"] = value[e]
    return out


def torch_tensors(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in named.items():
        out.update(_split_fused_experts(k, v) if k.endswith(("experts.gate_up_proj", "experts.down_proj")) else {k: v})
    return out


def group_differences(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                      start: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Per group ‖ours − ref‖ / ‖ref‖, or / ‖ref − start‖ (the reference's own movement, for weights)."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    missing = sorted(set(ref) - set(ours))
    if missing:
        raise UserError(f"parity --train: JAX has no tensor for HF parameter {missing[0]}")
    for k, r in ref.items():
        g = param_group(k)
        d = ours[k].astype(np.float64) - r.astype(np.float64)
        s = r.astype(np.float64) - (start[k] if start is not None else 0.0)
        num[g] = num.get(g, 0.0) + float(np.sum(d * d))
        den[g] = den.get(g, 0.0) + float(np.sum(s * s))
    return [{"group": g, "rel": math.sqrt(num[g]) / max(math.sqrt(den[g]), 1e-30) if den[g] else
             (0.0 if num[g] == 0 else math.inf)} for g in num]


def total_difference(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """‖ours − ref‖ / ‖ref‖ over every tensor at once."""
    num = sum(float(np.sum((ours[k].astype(np.float64) - r.astype(np.float64)) ** 2)) for k, r in ref.items())
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref.values())
    return math.sqrt(num) / max(math.sqrt(den), 1e-30)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30) if a != b else 0.0


def greedy_records(ref, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """SFT records of `prompts` with the reference model's own greedy answers (the built-in data), generated as
    one left-padded batch."""
    import torch

    msgs = [[{"role": "user", "content": p}] for p in prompts]
    seqs = [list(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)
                 ["input_ids"]) for m in msgs]
    ids, mask = parity.pad(seqs, "left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = ref.generate(torch.tensor(np.where(mask, ids, pad_id), dtype=torch.long),
                           attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=pad_id)
    answers = tokenizer.batch_decode(out[:, ids.shape[1]:].tolist(), skip_special_tokens=True)
    return [{"messages": m + [{"role": "assistant", "content": a}]} for m, a in zip(msgs, answers)]


def random_examples(vocab: int, n: int = 64, seed: int = 0, max_len: int = 200) -> list[dict]:
    """Token examples of varied length, the first third of each masked as a prompt (a model without tokenizer)."""
    rng = np.random.RandomState(seed)
    out = []
    for length in rng.randint(8, max_len, n):
        ids = rng.randint(0, vocab, length + 1).astype(np.int32)
        out.append({"inputs": ids[:-1], "targets": ids[1:],
                    "weights": (np.arange(length) >= length // 3).astype(np.float32)})
    return out


def make_batches(d: Path, ref, data: str | None, steps: int, rows: int, seq_len: int) -> tuple[list[dict], str]:
    """`steps` batches of `rows` packed rows from our packer, and a word on where the examples came from."""
    from ssd_jax.data import sft

    cfg = SFTDataConfig(seq_len=seq_len, packing_bins=8)
    tokenizer = parity.maybe_tokenizer(d)
    if data:
        if tokenizer is None:
            raise UserError(f"--data {data}: {d} has no tokenizer to encode it")
        examples, _ = sft.tokenize_dataset(sft.read_sft_jsonl(data), tokenizer, cfg)
        where = str(data)
    elif tokenizer is not None:
        template = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
        records = greedy_records(ref, tokenizer, parity.DEFAULT_PROMPTS, max_new_tokens=160)
        examples, _ = sft.tokenize_dataset(records, tokenizer, replace(cfg, template=template))
        where = f"{len(records)} built-in prompts with the model's greedy answers"
    else:
        examples = random_examples(ref.config.vocab_size, max_len=min(200, seq_len))
        where = "random token rows (no tokenizer)"
    it = iter(sft.batches_dataset(examples, cfg, rows))
    return [next(it) for _ in range(steps)], where


def _jax_step(chunk: int, mesh=None):
    from ssd_jax.train import step as train_step

    @nnx.jit
    def step(model, optimizer, batch):
        before = nnx.state(model, nnx.Param)
        before = jax.tree.map(jnp.copy, before)
        grads, metrics = train_step.accumulate_grads(model, batch, chunk, mesh)
        optimizer.update(model, grads)
        after = nnx.state(model, nnx.Param)
        delta = jax.tree.map(lambda a, b: (a.astype(jnp.float32) - b.astype(jnp.float32)), after, before)
        return metrics["loss"], metrics["grad_norm"], optax.tree.norm(delta), grads

    return step


def _jax_tensors(model, tree=None) -> dict[str, np.ndarray]:
    from ssd_jax.models import hf

    if tree is not None:
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        model = nnx.merge(graphdef, tree, rest)
    return {k: np.asarray(v, np.float32) for k, v in hf.hf_tensors(model)}


def _torch_named(ref) -> dict[str, np.ndarray]:
    return torch_tensors({n: p.detach().float().numpy().copy() for n, p in ref.named_parameters()})


def run_train_parity(model_path: str, *, data: str | None = None, steps: int = 10, rows: int = 4,
                     seq_len: int = 512, dtype: str = "float32", optim: OptimConfig | None = None,
                     chunk: int = 512, tolerance: dict | None = None) -> TrainParityReport:
    from ssd_jax import bundled, torch_reference as tr
    from ssd_jax.models import hf
    from ssd_jax.train import optim as jax_optim

    if dtype not in TOLERANCE:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(TOLERANCE)}")
    if steps < 1 or rows < 1 or seq_len < 8:
        raise UserError(f"parity --train: --steps {steps}, --rows {rows}, --seq-len {seq_len}: expected ≥ 1, ≥ 1, ≥ 8")
    ocfg = optim or paper_optim(steps)
    tol = {**TOLERANCE[dtype], **(tolerance or {})}
    d = bundled.resolve_model(model_path)
    ref32 = parity.load_hf_reference(d, "float32")
    ref32.train()
    batches, where = make_batches(d, ref32, data, steps, rows, seq_len)

    # Torch in fp32 (the reference in both dtypes), then bf16 compute over fp32 masters for the bf16 budget.
    sides = {"torch": (ref32, False)}
    if dtype == "bfloat16":
        ref_bf16 = parity.load_hf_reference(d, "float32")
        ref_bf16.train()
        sides = {"torch32": (ref32, False), "torch": (ref_bf16, True)}
    torch_runs: dict[str, list[dict]] = {}
    torch_snap: dict[str, dict] = {}
    w0 = _torch_named(ref32)
    for side, (ref, bf16) in sides.items():
        opt = tr.make_optimizer(ref, ocfg)
        compute = tr.BF16Compute(ref) if bf16 else None
        torch_runs[side] = []
        for i, b in enumerate(batches):
            keep = i in (0, steps - 1)
            r = tr.train_step(ref, opt, b, ocfg, i, bf16=compute, keep_grads=keep)
            if keep:
                torch_snap[f"{side}/{i + 1}"] = {"grads": torch_tensors(r.pop("grads")), "weights": _torch_named(ref)}
            r.pop("grads", None)
            torch_runs[side].append(r)

    model = hf.load_model(ModelSpec(path=str(d), dtype=dtype, param_dtype="float32", remat="none"), None, "train")
    opt = jax_optim.create(model, ocfg)
    sched = jax_optim.lr_schedule(ocfg)
    step = _jax_step(chunk)
    per_step, groups = [], {}
    with jax.default_matmul_precision("highest"):
        for i, b in enumerate(batches):
            loss, gnorm, unorm, grads = step(model, opt, {k: jnp.asarray(v[None]) for k, v in b.items()})
            ours = {"loss": float(loss), "grad_norm": float(gnorm), "lr": float(sched(i)), "update_norm": float(unorm)}
            row = {"step": i + 1, "jax": ours, "torch": _plain(torch_runs["torch"][i]),
                   "rel": {k: _rel(ours[k], torch_runs["torch"][i][k]) for k in ours}}
            if dtype == "bfloat16":
                t32 = torch_runs["torch32"][i]
                row["torch32"] = _plain(t32)
                row["rel_to_fp32"] = {"jax": {k: _rel(ours[k], t32[k]) for k in ours},
                                      "torch": {k: _rel(torch_runs["torch"][i][k], t32[k]) for k in ours}}
            per_step.append(row)
            if i in (0, steps - 1):
                ref_side = "torch32" if dtype == "bfloat16" else "torch"
                snap = torch_snap[f"{ref_side}/{i + 1}"]
                ours_g = _jax_tensors(model, grads)
                g = group_differences(ours_g, snap["grads"])
                if dtype == "bfloat16":  # the whole gradient's distance from torch-fp32's, ours and torch-bf16's
                    row["grad_rel_to_fp32"] = {"jax": total_difference(ours_g, snap["grads"]),
                                               "torch": total_difference(torch_snap[f"torch/{i + 1}"]["grads"],
                                                                         snap["grads"])}
                w = group_differences(_jax_tensors(model), snap["weights"], start=w0)
                wrel = {x["group"]: x["rel"] for x in w}
                groups[str(i + 1)] = [{"group": x["group"], "grad_rel": x["rel"], "weight_rel": wrel[x["group"]]}
                                      for x in g]
    notes = []
    if dtype == "bfloat16" and jax.devices()[0].platform == "cpu":
        notes.append("XLA:CPU computes bf16 in fp32, so JAX's error here is mostly the bf16 rounding of its "
                     "inputs; the budget's real use is on a GPU")
    report = TrainParityReport(model=model_path, dtype=dtype, steps=steps, rows=rows, seq_len=seq_len, data=where,
                               optim=asdict(ocfg), per_step=per_step, groups=groups, tolerance=tol, notes=notes)
    report.diverged_at = first_divergence(report)
    report.passed = report.diverged_at is None
    return report


def _plain(r: dict) -> dict:
    return {k: float(v) for k, v in r.items() if k != "grads"}


def first_divergence(r: TrainParityReport) -> str | None:
    """The first quantity over tolerance, in step order: the learning rate, the loss, the gradient norm, the
    per-group gradients (after step 1 and N), the update norm, the per-group weights."""
    t = r.tolerance
    for row in r.per_step:
        s = row["step"]
        if row["rel"]["lr"] > t["lr"]:
            return f"step {s}: learning rate {row['jax']['lr']:.6g} vs torch {row['torch']['lr']:.6g}"
        if r.dtype == "bfloat16":
            # Judged on the loss (with a floor of bf16's own resolution, 2^-8: one scalar's error is one draw) and
            # on the whole gradient after steps 1 and N (millions of elements: a stable measure); the gradient and
            # update norms are single draws too, reported, not judged.
            k = t["budget_factor"]
            ours, theirs = row["rel_to_fp32"]["jax"]["loss"], row["rel_to_fp32"]["torch"]["loss"]
            if ours > k * max(theirs, 2.0 ** -8):
                return f"step {s}: loss off torch-fp32 by {ours:.2e}, over {k}× torch-bf16's {theirs:.2e}"
            g = row.get("grad_rel_to_fp32")
            if g and g["jax"] > k * g["torch"]:
                return (f"step {s}: gradient off torch-fp32's by {g['jax']:.2e}, over {k}× torch-bf16's "
                        f"{g['torch']:.2e}")
            continue
        for q in ("loss", "grad_norm"):
            if row["rel"][q] > t[q]:
                return f"step {s}: {q} relative difference {row['rel'][q]:.2e} > {t[q]:g}"
        groups = r.groups.get(str(s), [])
        bad = next((g for g in groups if g["grad_rel"] > t["group_grad"]), None)
        if bad:
            return f"step {s}: gradient of {bad['group']} relative difference {bad['grad_rel']:.2e} > {t['group_grad']:g}"
        if row["rel"]["update_norm"] > t["update_norm"]:
            return f"step {s}: update norm relative difference {row['rel']['update_norm']:.2e} > {t['update_norm']:g}"
        bad = next((g for g in groups if g["weight_rel"] > t["group_weight"]), None)
        if bad:
            return (f"step {s}: weights of {bad['group']} differ by {bad['weight_rel']:.2e} of their movement "
                    f"> {t['group_weight']:g}")
    return None


def write_outputs(report: TrainParityReport, out: str | os.PathLike) -> list[str]:
    """The JSON report and, beside it, a PNG: loss and gradient-norm curves of both sides, per-group gradient
    differences after the last step."""
    from ssd_jax.figures import new_figure, save_figure

    out = Path(out)
    atomic_write_text(out, json.dumps(asdict(report), indent=2) + "\n")
    steps = [r["step"] for r in report.per_step]
    fig, ax = new_figure(3, figsize=(15, 4.5), dpi=110)
    for side, style in (("jax", "-o"), ("torch", "--x")):
        ax[0].plot(steps, [r[side]["loss"] for r in report.per_step], style, label=side)
        ax[1].plot(steps, [r[side]["grad_norm"] for r in report.per_step], style, label=side)
    ax[0].set(title="loss", xlabel="step")
    ax[1].set(title="gradient norm (before clipping)", xlabel="step")
    last = report.groups[str(report.steps)]
    ax[2].bar(range(len(last)), [max(g["grad_rel"], 1e-12) for g in last])
    ax[2].set_yscale("log")
    ax[2].set_xticks(range(len(last)), [g["group"] for g in last], rotation=90, fontsize=5)
    ax[2].set(title=f"per-group ‖Δgrad‖/‖grad‖ after step {report.steps}")
    for a in ax[:2]:
        a.legend()
    png = out.with_suffix(".png")
    save_figure(fig, png)
    return [str(out), str(png)]


def enforce(report: TrainParityReport) -> None:
    if not report.passed:
        raise ToleranceError(f"training parity over tolerance: diverged at {report.diverged_at}")

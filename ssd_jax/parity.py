"""JAX vs the PyTorch/HF reference on the same padded token batch.

Reports max/mean |Δlogit|, per-layer hidden-state max |Δ| (HF's `hidden_states` convention), KL(HF‖JAX) and top-1
agreement, over real (non-padding) positions only. The HF side runs eager attention, the plain-math reference.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssd_jax.errors import ToleranceError, UserError
from ssd_jax.io_utils import atomic_write_text, json_problem
from ssd_jax.models import moe, padded_positions
from ssd_jax.models.layers import rope_inv_freq, rope_tables

# Real coding prompts: what SSD's models see. Mixed lengths so that the batch is really padded.
DEFAULT_PROMPTS = [
    "Write a Python function `fib(n)` that returns the n-th Fibonacci number.",
    "def is_palindrome(s: str) -> bool:\n    \"\"\"Return True if s reads the same backwards.\"\"\"\n",
    "You are given an array of integers. Print the length of the longest strictly increasing subsequence.",
    "Explain what a binary search does, then implement it in Python.",
    "import sys\n\ndef main():\n    n = int(sys.stdin.readline())\n",
    "Given a string s, return the number of distinct substrings of s.",
    "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n",
    "Read two integers a and b from standard input and print a + b.",
]

DEFAULT_TOLERANCE = {
    # max_layer_rel: ‖Δh‖/‖h‖ of each layer's output, so a porting bug is named where it starts (a norm epsilon
    # 10× off moves SmolLM2's first layer by ~1e-2; fp32 noise is ~1e-6).
    "float32": {"max_abs_logit_diff": 1e-3, "min_top1_agreement": 1.0, "max_layer_rel": 1e-4,
                "min_router_agreement": 0.999},
    # bf16 rounding differs between XLA and PyTorch kernels; judge by the distributions, not raw logits, and by
    # the error budget (`bf16_budget`): JAX-bf16 against torch-fp32 within k× torch-bf16's own error.
    "bfloat16": {"max_mean_kl": 1e-2, "min_top1_agreement": 0.95, "budget_factor": 1.5,
                 "min_router_agreement": 0.9},
}


@dataclass
class ParityReport:
    model: str
    dtype: str
    padding_side: str
    n_sequences: int
    n_tokens: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    # one row per hidden state (HF's `hidden_states`: embeddings, each layer's output, the last with the final
    # norm): {"label", "max_abs", "rel"}; rel = ‖Δh‖₂/‖h‖₂ over real positions (a max-normalised value hides a
    # flat absolute error under the few huge activations of late layers)
    layers: list[dict]
    max_kl: float
    mean_kl: float
    top1_agreement: float
    tolerance: dict = field(default_factory=dict)
    # bf16 only: the same metrics of JAX-bf16 and of torch-bf16, each against torch-fp32, and the verdict
    bf16_budget: dict | None = None
    # MoE only, per MoE layer: {"label", "topk_agreement" (share of real tokens whose top-k expert set is HF's),
    # "max_router_logit_diff", "max_topk_weight_diff"}
    routers: list[dict] | None = None
    diverged_at: str | None = None  # the first layer (or "logits") over tolerance
    passed: bool = False

    def check(self) -> "ParityReport":
        t = self.tolerance
        fails = []
        first = next((r["label"] for r in self.layers if r["rel"] > t.get("max_layer_rel", math.inf)), None)
        if first:
            fails.append(first)
        bad = next((r["label"] for r in self.routers or () if r["topk_agreement"] < t.get("min_router_agreement", 0)),
                   None)
        if bad:
            fails.append(f"{bad} router")
        if self.max_abs_logit_diff > t.get("max_abs_logit_diff", math.inf) or \
                self.mean_kl > t.get("max_mean_kl", math.inf) or \
                self.top1_agreement < t.get("min_top1_agreement", -math.inf):
            fails.append("logits")
        if self.bf16_budget is not None and not self.bf16_budget["passed"]:
            fails.append(self.bf16_budget["diverged_at"])
        self.diverged_at = fails[0] if fails else None
        self.passed = not fails
        return self

    def summary(self) -> str:
        rows = "\n".join(f"    {r['label']:<28} {r['max_abs']:>10.3e} {r['rel']:>10.3e}" for r in self.layers)
        text = (
            f"{self.model} [{self.dtype}, {self.padding_side}-padded, {self.n_sequences} seqs, {self.n_tokens} tokens]\n"
            f"  max |Δlogit| {self.max_abs_logit_diff:.3e}   mean |Δlogit| {self.mean_abs_logit_diff:.3e}\n"
            f"  KL(HF‖JAX) max {self.max_kl:.3e} mean {self.mean_kl:.3e}   top-1 agreement {self.top1_agreement:.2%}\n"
            f"  hidden states, JAX vs HF:\n    {'':<28} {'max |Δ|':>10} {'‖Δ‖/‖h‖':>10}\n{rows}\n"
        )
        if self.routers:
            text += f"  MoE routing, JAX vs HF:\n    {'':<28} {'top-k set':>10} {'max Δlogit':>10} {'max Δweight':>11}\n"
            text += "".join(f"    {r['label']:<28} {r['topk_agreement']:>10.2%} {r['max_router_logit_diff']:>10.3e} "
                            f"{r['max_topk_weight_diff']:>11.3e}\n" for r in self.routers)
        if self.bf16_budget is not None:
            text += budget_summary(self.bf16_budget)
        where = f" (diverged at {self.diverged_at})" if self.diverged_at else ""
        return text + f"  tolerance {self.tolerance}: {'PASS' if self.passed else 'FAIL' + where}"


def layer_labels(n: int) -> list[str]:
    """Names of HF's n hidden states: the embeddings, layers 0..n-3, and layer n-2's output after the final norm."""
    return ["embeddings", *(f"layer {i}" for i in range(n - 2)), f"layer {n - 2} + final norm"][:n]


def budget_summary(b: dict) -> str:
    rows = "\n".join(f"    {lab:<28} {j:>10.3e} {t:>10.3e}" for lab, j, t in
                     zip(b["labels"], b["jax"]["layer_rel"], b["torch"]["layer_rel"]))
    return (f"  bf16 error budget against torch-fp32 (JAX-bf16 must stay within {b['factor']}× torch-bf16's):\n"
            f"    {'':<28} {'JAX-bf16':>10} {'torch-bf16':>10}\n"
            f"    {'max |Δlogit|':<28} {b['jax']['max_abs_logit_diff']:>10.3e} {b['torch']['max_abs_logit_diff']:>10.3e}\n"
            f"    {'mean KL':<28} {b['jax']['mean_kl']:>10.3e} {b['torch']['mean_kl']:>10.3e}\n"
            f"    {'top-1 agreement':<28} {b['jax']['top1_agreement']:>10.2%} {b['torch']['top1_agreement']:>10.2%}\n"
            f"{rows}\n" + (f"    note: {b['note']}\n" if b.get("note") else "")
            + f"    budget: {'PASS' if b['passed'] else 'FAIL at ' + str(b['diverged_at'])}\n")


def bf16_budget(ours: dict, torchs: dict, factor: float, labels: list[str], note: str = "") -> dict:
    """Verdict of the bf16 error budget: JAX-bf16's distance from torch-fp32 (`ours`, `compare` output) within
    `factor`× torch-bf16's (`torchs`), per layer and at the logits. A floor of fp32 noise (1e-6 relative, 1e-4 on
    logits) keeps an exact torch-bf16 layer from demanding exactness."""
    diverged = None
    for lab, j, t in zip(labels, ours["layer_rel"], torchs["layer_rel"]):
        if j > factor * max(t, 1e-6):
            diverged = lab
            break
    if diverged is None and (ours["max_abs_logit_diff"] > factor * max(torchs["max_abs_logit_diff"], 1e-4)
                             or ours["mean_kl"] > factor * max(torchs["mean_kl"], 1e-10)):
        diverged = "logits"
    return {"factor": factor, "labels": labels, "jax": ours, "torch": torchs, "note": note,
            "passed": diverged is None, "diverged_at": diverged}


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a .jsonl file (field `prompt` or `question`) or a text file (one prompt per line)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: prompts file does not exist")
    prompts = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{i}: not valid JSON ({json_problem(e)})") from None
            text = obj.get("prompt", obj.get("question")) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{p}:{i}: expected an object with a string field 'prompt' or 'question'")
            prompts.append(text)
        else:
            prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise UserError(f"{p}: no prompts in file")
    return prompts


def encode(tokenizer, prompts: list[str], padding_side: str, chat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (B, T) and mask (B, T) with the given padding side; pad id 0 (never attended)."""
    seqs = []
    for text in prompts:
        if chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        seqs.append(list(ids))
    return pad(seqs, padding_side)


def pad(seqs: list[list[int]], padding_side: str) -> tuple[np.ndarray, np.ndarray]:
    t = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), t), np.int32)
    mask = np.zeros((len(seqs), t), np.int32)
    for i, s in enumerate(seqs):
        sl = slice(t - len(s), t) if padding_side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


def random_batch(vocab: int, lengths=(11, 7, 16, 3), seed: int = 0, padding_side: str = "left"):
    rng = np.random.RandomState(seed)
    return pad([list(rng.randint(0, vocab, n)) for n in lengths], padding_side)


def hf_forward(hf_model, ids: np.ndarray, mask: np.ndarray):
    import torch

    with torch.no_grad():
        out = hf_model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            position_ids=torch.as_tensor(np.array(padded_positions(jnp.asarray(mask))), dtype=torch.long),
            output_hidden_states=True,
        )
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


@nnx.jit(graph_updates=False)
def _forward_all(model, ids, mask):
    return model(ids, positions=padded_positions(mask), segment_ids=mask, output_hidden_states=True)


def jax_forward(model, ids: np.ndarray, mask: np.ndarray):
    # fp32 matmuls at full precision: on recent NVIDIA GPUs JAX's default for fp32 is TF32, which alone would
    # exceed the fp32 tolerance. (bf16 compute is unaffected.)
    with jax.default_matmul_precision("highest"):
        out = _forward_all(model, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(out.logits, np.float32), [np.asarray(h, np.float32) for h in out.hidden_states]


@nnx.jit
def _router_logits(layer, h, rope, segment_ids):
    """A MoE layer's router logits (B·T, E) from its input `h`, through its own attention and norms."""
    a, _ = layer.attn(layer.input_layernorm(h), rope, segment_ids)
    x = layer.post_attention_layernorm(h + a.astype(h.dtype))
    return moe.route(x.reshape(-1, x.shape[-1]).astype(layer.mlp.dtype), layer.mlp.router[...], 1, False)[0]


def router_comparison(model, ref, ids: np.ndarray, mask: np.ndarray, jax_hidden) -> list[dict]:
    """Per MoE layer: the share of real tokens routed to the same top-k experts as HF routes them, and the largest
    router-logit and top-k-weight differences. Each JAX layer routes its own input (our hidden state), so a
    difference is the layer's, not an upstream one's."""
    import torch

    cfg = model.cfg
    with torch.no_grad():
        out = ref(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask, dtype=torch.long),
                  position_ids=torch.as_tensor(np.array(padded_positions(jnp.asarray(mask))), dtype=torch.long),
                  output_router_logits=True)
    theirs = [r.float().numpy().reshape(-1, cfg.moe.num_experts) for r in out.router_logits]
    m = jnp.asarray(mask)
    rope = rope_tables(padded_positions(m), rope_inv_freq(cfg.rope, cfg.head_dim), cfg.dtype)
    valid = mask.reshape(-1).astype(bool)
    rows, g, k = [], 0, cfg.moe.top_k
    for stack, (sparse, n) in zip(model.layers, cfg.layer_stacks()):
        graphdef, state = nnx.split(stack)
        for j in range(n):
            if sparse:
                layer = nnx.merge(graphdef, jax.tree.map(lambda a, j=j: a[j], state))
                ours = np.asarray(_router_logits(layer, jnp.asarray(jax_hidden[g], cfg.dtype), rope, m), np.float32)
                rows.append(_route_difference(f"layer {g}", ours[valid], theirs[len(rows)][valid], k,
                                              cfg.moe.norm_topk_prob))
            g += 1
    return rows


def _route_difference(label: str, ours: np.ndarray, theirs: np.ndarray, k: int, norm: bool) -> dict:
    def topk(logits):
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        idx = np.sort(np.argsort(-p, axis=-1, kind="stable")[:, :k], axis=-1)
        w = np.take_along_axis(p, idx, -1)
        return idx, (w / w.sum(-1, keepdims=True) if norm else w)

    (ia, wa), (ib, wb) = topk(ours.astype(np.float64)), topk(theirs.astype(np.float64))
    same = np.all(ia == ib, axis=-1)
    return {"label": label, "topk_agreement": float(same.mean()),
            "max_router_logit_diff": float(np.abs(ours - theirs).max()),
            "max_topk_weight_diff": float(np.abs(wa - wb)[same].max()) if same.any() else float("nan")}


def compare(hf_logits, jax_logits, mask, hf_hidden=(), jax_hidden=()) -> dict:
    valid = mask.astype(bool)
    a, b = hf_logits[valid].astype(np.float64), jax_logits[valid].astype(np.float64)
    diff = np.abs(a - b)
    la = a - _logsumexp(a)
    lb = b - _logsumexp(b)
    kl = np.sum(np.exp(la) * (la - lb), axis=-1)
    return dict(
        n_tokens=int(valid.sum()),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        layer_max_abs=[float(np.abs(h[valid] - j[valid]).max()) for h, j in zip(hf_hidden, jax_hidden)],
        layer_rel=[float(np.linalg.norm((h[valid] - j[valid]).astype(np.float64))
                         / max(np.linalg.norm(h[valid].astype(np.float64)), 1e-30))
                   for h, j in zip(hf_hidden, jax_hidden)],
        max_kl=float(kl.max()),
        mean_kl=float(kl.mean()),
        top1_agreement=float(np.mean(a.argmax(-1) == b.argmax(-1))),
    )


def _logsumexp(x):
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def load_hf_reference(hf_dir: str | os.PathLike, dtype: str = "float32"):
    import torch
    import transformers

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar inside the report
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch_dtype,
                                                              attn_implementation="eager")
    return model.eval()


def run_parity(hf_dir: str | os.PathLike, *, dtype: str = "float32", prompts: list[str] | None = None,
               padding_side: str = "left", chat: bool = False, tolerance: dict | None = None,
               mesh=None) -> ParityReport:
    """Load `hf_dir` in both frameworks and compare them on one padded batch."""
    from ssd_jax import bundled
    from ssd_jax.config import ModelSpec
    from ssd_jax.models import hf as hf_io

    if dtype not in DEFAULT_TOLERANCE:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DEFAULT_TOLERANCE)}")
    d = bundled.resolve_model(str(hf_dir))  # the same directory for both frameworks and the tokenizer
    model = hf_io.load_model(ModelSpec(path=str(d), dtype=dtype), mesh, "score")
    ref = load_hf_reference(d, dtype)
    tokenizer = maybe_tokenizer(d)
    if tokenizer is not None:
        ids, mask = encode(tokenizer, prompts or DEFAULT_PROMPTS, padding_side, chat=chat)
    else:
        if prompts:
            raise UserError(f"{hf_dir}: has no tokenizer, so text prompts cannot be encoded")
        ids, mask = random_batch(model.cfg.vocab_size, padding_side=padding_side)
    hf_logits, hf_hidden = hf_forward(ref, ids, mask)
    jax_logits, jax_hidden = jax_forward(model, ids, mask)
    metrics = compare(hf_logits, jax_logits, mask, hf_hidden, jax_hidden)
    labels = layer_labels(len(hf_hidden))
    layers = [{"label": lab, "max_abs": a, "rel": r}
              for lab, a, r in zip(labels, metrics.pop("layer_max_abs"), metrics.pop("layer_rel"))]
    tolerance = tolerance or DEFAULT_TOLERANCE[dtype]
    budget = None
    if dtype == "bfloat16":  # both bf16 sides against torch in fp32
        ref32_logits, ref32_hidden = hf_forward(load_hf_reference(d, "float32"), ids, mask)
        budget = bf16_budget(compare(ref32_logits, jax_logits, mask, ref32_hidden, jax_hidden),
                             compare(ref32_logits, hf_logits, mask, ref32_hidden, hf_hidden),
                             tolerance.get("budget_factor", 1.5), labels, bf16_backend_note(model))
    routers = router_comparison(model, ref, ids, mask, jax_hidden) if model.cfg.moe else None
    report = ParityReport(model=str(hf_dir), dtype=dtype, padding_side=padding_side, n_sequences=len(ids),
                          layers=layers, tolerance=tolerance, bf16_budget=budget, routers=routers, **metrics)
    return report.check()


def bf16_backend_note(model) -> str:
    """Said beside a bf16 budget measured where XLA computes bf16 arithmetic in fp32 (its CPU backend)."""
    platform = next(iter(jax.tree.leaves(nnx.state(model, nnx.Param)))).devices().pop().platform
    return ("XLA:CPU computes bf16 in fp32, so JAX's error here is mostly the bf16 weights'; the budget's real use "
            "is on a GPU") if platform == "cpu" else ""


def maybe_tokenizer(hf_dir):
    if not any((Path(hf_dir) / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from ssd_jax.models.hf import load_tokenizer

    return load_tokenizer(hf_dir)


def write_outputs(report: ParityReport, path: str | os.PathLike) -> list[str]:
    atomic_write_text(path, json.dumps(asdict(report), indent=2) + "\n")
    return [str(path)]


def enforce(report: ParityReport) -> None:
    if not report.passed:
        raise ToleranceError(f"parity over tolerance: {report.tolerance}")

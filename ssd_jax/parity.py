"""JAX vs the PyTorch/HF reference on the same padded token batch.

Reports max/mean |Δlogit|, per-layer hidden-state max |Δ| (HF's `hidden_states` convention), KL(HF‖JAX) and top-1
agreement, over real (non-padding) positions only. The HF side runs eager attention, the plain-math reference.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssd_jax.errors import ToleranceError, UserError
from ssd_jax.io_utils import atomic_write_text, json_problem
from ssd_jax.models import padded_positions

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
    "float32": {"max_abs_logit_diff": 1e-3, "min_top1_agreement": 1.0},
    # bf16 rounding differs between XLA and PyTorch kernels; judge by the distributions, not raw logits.
    "bfloat16": {"max_mean_kl": 1e-2, "min_top1_agreement": 0.95},
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
    layer_max_abs_diff: list[float]
    layer_max_rel_diff: list[float]  # max |Δ| / max |h_HF| per layer: residual streams can be large
    max_kl: float
    mean_kl: float
    top1_agreement: float
    tolerance: dict = field(default_factory=dict)
    passed: bool = False

    def check(self) -> "ParityReport":
        t = self.tolerance
        ok = True
        if "max_abs_logit_diff" in t:
            ok &= self.max_abs_logit_diff <= t["max_abs_logit_diff"]
        if "max_mean_kl" in t:
            ok &= self.mean_kl <= t["max_mean_kl"]
        if "min_top1_agreement" in t:
            ok &= self.top1_agreement >= t["min_top1_agreement"]
        self.passed = bool(ok)
        return self

    def summary(self) -> str:
        layers = ", ".join(f"{x:.1e}" for x in self.layer_max_rel_diff)
        return (
            f"{self.model} [{self.dtype}, {self.padding_side}-padded, {self.n_sequences} seqs, {self.n_tokens} tokens]\n"
            f"  max |Δlogit| {self.max_abs_logit_diff:.3e}   mean |Δlogit| {self.mean_abs_logit_diff:.3e}\n"
            f"  KL(HF‖JAX) max {self.max_kl:.3e} mean {self.mean_kl:.3e}   top-1 agreement {self.top1_agreement:.2%}\n"
            f"  hidden-state max |Δ|/max|h| per layer: {layers}\n"
            f"  tolerance {self.tolerance}: {'PASS' if self.passed else 'FAIL'}"
        )


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
        layer_max_abs_diff=[float(np.abs(h[valid] - j[valid]).max()) for h, j in zip(hf_hidden, jax_hidden)],
        layer_max_rel_diff=[
            float(np.abs(h[valid] - j[valid]).max() / max(np.abs(h[valid]).max(), 1e-30))
            for h, j in zip(hf_hidden, jax_hidden)
        ],
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
    tokenizer = _maybe_tokenizer(d)
    if tokenizer is not None:
        ids, mask = encode(tokenizer, prompts or DEFAULT_PROMPTS, padding_side, chat=chat)
    else:
        if prompts:
            raise UserError(f"{hf_dir}: has no tokenizer, so text prompts cannot be encoded")
        ids, mask = random_batch(model.cfg.vocab_size, padding_side=padding_side)
    hf_logits, hf_hidden = hf_forward(ref, ids, mask)
    jax_logits, jax_hidden = jax_forward(model, ids, mask)
    metrics = compare(hf_logits, jax_logits, mask, hf_hidden, jax_hidden)
    report = ParityReport(model=str(hf_dir), dtype=dtype, padding_side=padding_side, n_sequences=len(ids),
                          tolerance=tolerance or DEFAULT_TOLERANCE[dtype], **metrics)
    return report.check()


def _maybe_tokenizer(hf_dir):
    if not any((Path(hf_dir) / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from ssd_jax.models.hf import load_tokenizer

    return load_tokenizer(hf_dir)


def write_report(report: ParityReport, path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(asdict(report), indent=2) + "\n")


def enforce(report: ParityReport) -> None:
    if not report.passed:
        raise ToleranceError(f"parity over tolerance: {report.tolerance}")

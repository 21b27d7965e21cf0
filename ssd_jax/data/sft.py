"""SFT examples → tokens with a loss mask → packed rows with segment ids → batches, as a grain pipeline.

Each example `{"messages": [..., {"role": "assistant", ...}]}` becomes next-token triples (inputs, targets,
weights), where `weights` is 1 on assistant tokens (or on everything with `mask_prompt: false`). Rows are packed
best-fit into `seq_len` slots; `segment_ids` (0 = padding) and per-segment `positions` make the model's attention
stay inside each example. Everything is deterministic given the seed, and the iterator state is a small JSON dict
that checkpoints save, so a resumed run sees exactly the examples it would have seen.

Examples longer than `seq_len` are truncated or dropped (config `too_long`), and counted in the stats.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
import grain
import grain.experimental as gx
import numpy as np

from ssd_jax.config import SFTDataConfig
from ssd_jax.data.problems import read_jsonl
from ssd_jax.errors import UserError

FEATURES = ("inputs", "targets", "weights")


@dataclass
class SFTStats:
    """What tokenisation did to the dataset (written next to the training metrics)."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_loss_tokens: int = 0
    template_prefix_mismatch: int = 0  # chat template did not render the prompt as a prefix of the full chat
    tokens: int = 0
    loss_tokens: int = 0
    max_len: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def read_sft_jsonl(path: str | os.PathLike) -> list[dict]:
    """SFT records from JSONL; a malformed line is reported with its number."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: SFT data file does not exist")
    records = []
    for i, rec in read_jsonl(p):
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{p}:{i}: expected an object with a non-empty list 'messages'")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise UserError(f"{p}:{i}: messages[{j}] must be an object with string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{p}:{i}: the last message must have role 'assistant' (the trained response)")
        records.append(rec)
    if not records:
        raise UserError(f"{p}: no SFT examples (the file is empty)")
    return records


def _ids(x) -> list[int]:
    if hasattr(x, "keys") and "input_ids" in x:
        x = x["input_ids"]
    return [int(t) for t in x]


def tokenize_example(tokenizer, messages: list[dict], template: str, mask_prompt: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """(token ids, loss mask over ids, prompt-was-a-prefix). The mask marks the assistant response tokens."""
    if template == "chat":
        prompt = _ids(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True))
        full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        n = len(prompt)
        prefix_ok = full[:n] == prompt
        if not prefix_ok:  # mask the longest common prefix only
            n = next((i for i, (a, b) in enumerate(zip(full, prompt)) if a != b), min(len(full), n))
        ids = full
    else:
        text = "".join(m["content"] for m in messages[:-1])
        prompt = _ids(tokenizer(text, add_special_tokens=True))
        eos = tokenizer.eos_token_id
        response = _ids(tokenizer(messages[-1]["content"], add_special_tokens=False)) + ([eos] if eos is not None else [])
        ids, n, prefix_ok = prompt + response, len(prompt), True
    mask = np.zeros(len(ids), bool)
    mask[n if mask_prompt else 0 :] = True
    return np.asarray(ids, np.int32), mask, prefix_ok


def tokenize_dataset(records: list[dict], tokenizer, cfg: SFTDataConfig) -> tuple[list[dict], SFTStats]:
    """Next-token triples for every example that fits, plus stats of what was cut or dropped."""
    stats = SFTStats(examples=len(records))
    out = []
    for rec in records:
        ids, mask, prefix_ok = tokenize_example(tokenizer, rec["messages"], cfg.template, cfg.mask_prompt)
        stats.template_prefix_mismatch += not prefix_ok
        inputs, targets, weights = ids[:-1], ids[1:], mask[1:].astype(np.float32)
        if len(inputs) > cfg.seq_len:
            if cfg.too_long == "drop":
                stats.dropped_too_long += 1
                continue
            stats.truncated += 1
            inputs, targets, weights = inputs[: cfg.seq_len], targets[: cfg.seq_len], weights[: cfg.seq_len]
        if weights.sum() == 0:
            stats.dropped_no_loss_tokens += 1
            continue
        out.append({"inputs": inputs, "targets": targets, "weights": weights})
        stats.tokens += len(inputs)
        stats.loss_tokens += int(weights.sum())
        stats.max_len = max(stats.max_len, len(inputs))
    stats.kept = len(out)
    if not out:
        raise UserError(f"no SFT example is usable (of {stats.examples}: {stats.dropped_too_long} longer than "
                        f"seq_len={cfg.seq_len}, {stats.dropped_no_loss_tokens} without response tokens)")
    return out, stats


def _pad_row(ex: dict, seq_len: int) -> dict:
    n = len(ex["inputs"])
    row = {k: np.zeros(seq_len, ex[k].dtype) for k in FEATURES}
    for k in FEATURES:
        row[k][:n] = ex[k]
    row["segment_ids"] = np.zeros(seq_len, np.int32)
    row["segment_ids"][:n] = 1
    row["positions"] = np.zeros(seq_len, np.int32)
    row["positions"][:n] = np.arange(n)
    return row


def _rename_packed(row: dict) -> dict:
    return {
        "inputs": row["inputs"],
        "targets": row["targets"],
        "weights": row["weights"],
        "segment_ids": row["inputs_segment_ids"].astype(np.int32),
        "positions": row["inputs_positions"].astype(np.int32),
    }


def rows_dataset(examples: list[dict], cfg: SFTDataConfig, epochs: int | None = None) -> grain.IterDataset:
    """Infinite (or `epochs`-long) stream of packed rows; each epoch reshuffled from the seed."""
    ds = grain.MapDataset.source(examples)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)  # before repeat: every epoch is a new permutation, no epoch leakage
    it = ds.repeat(epochs).to_iter_dataset()
    if cfg.packing:
        length = {k: cfg.seq_len for k in FEATURES}
        it = gx.BestFitPackIterDataset(it, length_struct=length, num_packing_bins=cfg.packing_bins, seed=cfg.seed,
                                       shuffle_bins=cfg.shuffle)
        return it.map(_rename_packed)
    return it.map(lambda ex: _pad_row(ex, cfg.seq_len))


def batches_dataset(examples: list[dict], cfg: SFTDataConfig, batch_rows: int,
                    epochs: int | None = None) -> grain.IterDataset:
    """Batches of `batch_rows` rows: dict of (batch_rows, seq_len) numpy arrays."""
    return rows_dataset(examples, cfg, epochs).batch(batch_rows, drop_remainder=True)


def sample_batches(examples: list[dict], cfg: SFTDataConfig, samples_per_step: int) -> grain.IterDataset:
    """Infinite stream of `samples_per_step` example indices per step (batch_unit samples), each epoch reshuffled
    from the seed; `pack_step` turns a step's examples into rows. A step may span two epochs (as rows do)."""
    ds = grain.MapDataset.range(len(examples))
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    return ds.repeat(None).to_iter_dataset().batch(samples_per_step, drop_remainder=True)


def _best_fit(lengths: list[int], n_rows: int, row_len: int) -> list[list[int]] | None:
    """Indices of `lengths` per row, placed longest first each into the fullest row it fits (best-fit
    decreasing); None when they do not fit in `n_rows` rows of `row_len`."""
    free = [row_len] * n_rows
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [r for r in range(n_rows) if free[r] >= lengths[i]]
        if not fits:
            return None
        r = min(fits, key=lambda r: free[r])
        free[r] -= lengths[i]
        rows[r].append(i)
    return rows


def _balanced(lengths: list[int], n_rows: int) -> list[list[int]]:
    """Indices of `lengths` per row, each longest-first into the least-filled row (LPT): the rows come out nearly
    equal, which is what a step whose row length is set by its fullest row wants."""
    load = [0] * n_rows
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(n_rows), key=lambda r: load[r])
        load[r] += lengths[i]
        rows[r].append(i)
    return rows


def step_layout(lengths: list[int], micro: int, seq_len: int, quantum: int) -> tuple[int, list[list[int]]]:
    """(row length, indices per row) for one step of samples (batch_unit samples): the fewest micro-steps of
    `micro` rows the samples fit in (rows of at most `seq_len`), each row as long as the fullest one needs, rounded
    up to a multiple of `quantum`."""
    accum = 1
    while True:
        n_rows = accum * micro
        rows = _balanced(lengths, n_rows)
        fullest = max(sum(lengths[i] for i in row) for row in rows)
        if fullest > seq_len:  # balanced rows overflow: a tighter packing may still fit
            rows = _best_fit(lengths, n_rows, seq_len)
            fullest = seq_len if rows is not None else None
        if fullest is not None:
            return min(-(-fullest // quantum) * quantum, seq_len), rows
        accum += 1


def pack_step(step_examples: list[dict], micro: int, seq_len: int, quantum: int) -> dict:
    """One step's examples densely packed (see `step_layout`): dict of (accum·micro, row length) arrays with
    per-example segment ids (0 = padding) and positions, as the packed rows of batch_unit rows."""
    row_len, layout = step_layout([len(ex["inputs"]) for ex in step_examples], micro, seq_len, quantum)
    out = {k: np.zeros((len(layout), row_len), np.float32 if k == "weights" else np.int32)
           for k in (*FEATURES, "segment_ids", "positions")}
    for r, idx in enumerate(layout):
        at = 0
        for seg, i in enumerate(idx, start=1):
            ex = step_examples[i]
            n = len(ex["inputs"])
            for k in FEATURES:
                out[k][r, at : at + n] = ex[k]
            out["segment_ids"][r, at : at + n] = seg
            out["positions"][r, at : at + n] = np.arange(n)
            at += n
    return out


def rows_per_epoch(examples: list[dict], cfg: SFTDataConfig) -> int:
    """Rows one pass over the examples fills: the trainer's own best-fit packer run over one epoch, or one row per
    example without packing."""
    if not cfg.packing:
        return len(examples)
    return sum(1 for _ in rows_dataset(examples, cfg, epochs=1))


def data_passes(examples: list[dict], cfg: SFTDataConfig, global_batch: int, total_steps: int,
                batch_unit: str = "rows") -> dict:
    """How many passes over the data `total_steps` optimizer steps of `global_batch` rows (or samples) make. With
    packing a row holds many examples, so the paper's "global batch 32" read as packed rows means many more passes
    than read as 32 samples (the paper does not say which); this number makes the choice visible."""
    if batch_unit == "samples":
        trained = global_batch * total_steps
        return {"batch_unit": "samples", "seq_len": cfg.seq_len, "examples": len(examples),
                "samples_trained": trained, "passes": trained / len(examples)}
    rows = rows_per_epoch(examples, cfg)
    trained = global_batch * total_steps
    return {"batch_unit": "rows", "packing": cfg.packing, "seq_len": cfg.seq_len, "examples": len(examples),
            "rows_per_pass": rows, "examples_per_row": len(examples) / rows, "rows_trained": trained,
            "passes": trained / rows}


def describe_passes(p: dict) -> str:
    """One line for the logs: examples → rows per pass, rows (or samples) trained → passes."""
    if p.get("batch_unit") == "samples":
        return (f"data: {p['examples']:,} examples; {p['samples_trained']:,} samples trained (packed per step, rows "
                f"≤ {p['seq_len']:,} tokens) = {p['passes']:.2f} passes over the data")
    per_row = f"{p['examples_per_row']:.1f} examples per packed row" if p["packing"] else "one example per row"
    return (f"data: {p['examples']:,} examples fill {p['rows_per_pass']:,} rows of {p['seq_len']:,} tokens per pass "
            f"({per_row}); {p['rows_trained']:,} rows trained = {p['passes']:.2f} passes over the data")


def packing_efficiency(examples: list[dict], cfg: SFTDataConfig) -> float:
    """Fraction of non-padding slots over one epoch of rows (the last, partly filled bins included)."""
    real = total = 0
    for row in rows_dataset(examples, cfg, epochs=1):
        real += int((row["segment_ids"] > 0).sum())
        total += row["segment_ids"].size
    return real / total

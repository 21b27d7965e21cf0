"""Step two of SSD: drop degenerate samples. Each rule is a switch and every drop is counted with its reason.

The sources disagree (the paper §2; apple/ml-ssd's data_generation/generate.py; TRL's SSDTrainer), so each
reading is a preset (presets.FILTER_PRESETS):
- `paper`: drop empty responses and single-line stubs. The paper never defines a stub, so `stub_rule` picks one
  of the three readings in circulation (each on the stripped response):
    no_newline  no newline at all (the broadest: a correct one-line program is a stub too; the default)
    trl_10      no newline and fewer than 10 characters (TRL's SSDTrainer)
    mlx_80      one non-blank line, shorter than 80 characters, no ``` fence anywhere (the MLX port of ml-ssd)
- `released` (ml-ssd `generate.py`): drop empty responses, then those shorter than the 10th-percentile length in
  characters (the cut-off is computed over the non-empty responses; ties at the cut-off are kept).
- `trl` (TRL's SSDTrainer): drop empty responses and those with no newline and fewer than 10 characters.
Options on top: a syntax check of the extracted code (tree-sitter by default; the verdict names the parser, since
tree-sitter, `compile()` and `ast.parse` disagree, see ssd_jax/code.py), requiring a fenced code block, and exact
de-duplication. Looping samples that hit the length cap are kept, as the authors did.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ssd_jax import faults
from ssd_jax.code import EXTRACTIONS, extract, extract_code, syntax_ok
from ssd_jax.config import FilterConfig
from ssd_jax.data.problems import read_jsonl
from ssd_jax.data.prompts import recorded_format
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.io_utils import atomic_write_text

REASONS = ("empty", "single_line_stub", "trl_short", "no_code_block", "syntax_error", "duplicate", "shortest_fraction")
STUB_RULES = ("no_newline", "trl_10", "mlx_80")


def is_stub(text: str, rule: str) -> bool:
    """Whether a response is a single-line stub under one reading (see the module docstring)."""
    t = text.strip()
    if rule == "no_newline":
        return "\n" not in t
    if rule == "trl_10":
        return "\n" not in t and len(t) < 10
    if rule == "mlx_80":
        lines = [line.strip() for line in t.splitlines() if line.strip()]
        return len(lines) == 1 and len(lines[0]) < 80 and "```" not in t
    raise ConfigError(f"stub_rule={rule!r}: expected one of {', '.join(STUB_RULES)}")


def _text(sample: dict, strip: bool) -> str:
    r = sample.get("response") or ""
    return r.strip() if strip else r


def filter_samples(samples: list[dict], cfg: FilterConfig) -> tuple[list[dict], dict]:
    """(verdicts: each sample plus `kept` and `reason`, stats). Rules run in REASONS order; the first hit names
    the reason. The preset is resolved here, so the stats record the rules that ran."""
    cfg = cfg.resolve()
    if not 0.0 <= cfg.shortest_fraction < 1.0:
        raise ConfigError(f"shortest_fraction={cfg.shortest_fraction}: expected 0 <= x < 1")
    if cfg.stub_rule not in STUB_RULES:
        raise ConfigError(f"stub_rule={cfg.stub_rule!r}: expected one of {', '.join(STUB_RULES)}")
    min_len = 0
    if cfg.shortest_fraction > 0:
        lengths = sorted(len(t) for t in (_text(s, True) for s in samples) if t)
        if lengths:
            min_len = lengths[min(int(len(lengths) * cfg.shortest_fraction), len(lengths) - 1)]
    seen: set[str] = set()
    counts = dict.fromkeys(REASONS, 0)
    out = []
    for s in samples:
        text = _text(s, cfg.strip)
        reason = None
        if cfg.drop_empty and not text.strip():
            reason = "empty"
        elif cfg.drop_single_line_stub and is_stub(text, cfg.stub_rule):
            reason = "single_line_stub"
        elif cfg.trl_min_chars and "\n" not in text and len(text) < cfg.trl_min_chars:
            reason = "trl_short"
        else:
            code = extract_code(text) if (cfg.syntax or cfg.require_code_block) else ""
            if cfg.require_code_block and not code:
                reason = "no_code_block"
            elif cfg.syntax and not syntax_ok(code or text, cfg.syntax_parser).ok:
                reason = "syntax_error"
            elif cfg.drop_duplicates and text in seen:
                reason = "duplicate"
            elif min_len and len(text.strip()) < min_len:
                reason = "shortest_fraction"
        if cfg.drop_duplicates and reason is None:
            seen.add(text)
        if reason:
            counts[reason] += 1
        out.append({**s, "kept": reason is None, "reason": reason})
    kept = sum(v["kept"] for v in out)
    stats = {"total": len(samples), "kept": kept, "dropped": sum(counts.values()), "by_reason": counts,
             "shortest_fraction_min_chars": min_len, "rules": asdict(cfg),
             "stub_rule": cfg.stub_rule if cfg.drop_single_line_stub else None,
             "syntax_parser": cfg.syntax_parser if cfg.syntax else None,
             "code_block": code_block_share(samples)}
    return out, stats


def code_block_share(samples: list[dict]) -> dict:
    """The paper's App. C.5 statistic: the share of samples whose response holds an extractable code block, under
    each extraction rule (they disagree on unusual fences: code.py), over every sample before filtering."""
    n = len(samples)
    found = {rule: sum(bool(extract(s.get("response") or "", rule)) for s in samples) for rule in EXTRACTIONS}
    return {"samples": n, **{rule: {"with_code_block": c, "share": c / n if n else float("nan")}
                             for rule, c in found.items()}}



def sft_records(verdicts: list[dict], strip: bool = True) -> list[dict]:
    """Kept samples as SFT examples: the prompt messages plus the (stripped) response as the assistant turn."""
    recs = []
    for v in verdicts:
        if not v["kept"]:
            continue
        msgs = v.get("messages") or [{"role": "user", "content": v.get("prompt", "")}]
        rec = {"messages": list(msgs) + [{"role": "assistant", "content": _text(v, strip)}],
               "problem_id": v["problem_id"]}
        if v.get("prompt_format"):
            rec["prompt_format"] = v["prompt_format"]
        recs.append(rec)
    return recs


def read_samples(path: str | os.PathLike) -> list[dict]:
    """Sample records, validated (a bad line names its number)."""
    out = []
    for i, rec in read_jsonl(path):
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{i}: expected a JSON object (a sample record)")
        for key in ("problem_id", "sample_idx", "response"):
            if key not in rec:
                raise UserError(f"{path}:{i}: missing field {key!r} (expected a sample record)")
        out.append(rec)
    return out


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def run_filter(samples_path: str | os.PathLike, out_path: str | os.PathLike, cfg: FilterConfig) -> dict:
    """samples.jsonl → filtered.jsonl (SFT examples) + verdicts.jsonl + filter_stats.json, each written atomically."""
    samples = read_samples(samples_path)
    if not samples:
        raise UserError(f"{samples_path}: no samples to filter")
    fmt = recorded_format(samples, f"{samples_path}: its samples")
    verdicts, stats = filter_samples(samples, cfg)
    stats["prompt_format"] = fmt
    out = Path(out_path)
    atomic_write_text(out.parent / "verdicts.jsonl", _jsonl(verdicts))
    faults.point("filter.verdicts")
    atomic_write_text(out, _jsonl(sft_records(verdicts, cfg.strip)))
    stats["samples"] = str(samples_path)
    atomic_write_text(out.parent / "filter_stats.json", json.dumps(stats, indent=2) + "\n")
    return stats

"""Fork/lock analysis (paper §4.2, Fig. 6): how SSD reshapes next-token distributions, for any two checkpoints.

Both models score the same responses, teacher-forced. At every response position the statistics are:
  (a) cumulative probability mass of the top 1–60 tokens (T = 1);
  (b) tokens surviving the evaluation truncation (temper → top-k → top-p, the samplers' one function) over a
      T_eval grid; (c) the entropy (nats) of what survives, renormalised; (d) that entropy at T_eval, binned by the
      position's top-20 probability mass (≥ 99.9, 99.5, 99.0, 98.0, 95.0 %, and below).
The paper gives no thresholds for its labels, so ours are operational and configurable: a position is a *lock*
when at most `lock_max` (2) tokens survive the frozen base model's training-time truncation, a *fork* when at
least `fork_min` (3) do. At locks we report the tail mass each model leaves outside the base's kept set
(1 − kept mass, T = 1), at forks the entropy of each model's distribution restricted to that set: SSD should cut
the first and keep the second.

Memory does not grow with the number of positions: each batch is reduced to sums inside one jitted function (the
LM head applied a sequence chunk at a time, as in the chunked loss), and only the first few responses keep
per-token values, for the HTML page. Candidates: with 0 < top-k ≤ FAST_K only the top `CANDIDATES` logits can
survive (vLLM keeps ties of the k-th value beyond rank k; a position where a tie would reach past the candidates is
counted in `inexact_positions`), otherwise the whole vocabulary is used.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import faults
from ssd_jax.config import AnalysisConfig, DecodeSpec, ModelSpec
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.io_utils import atomic_write_text, json_problem
from ssd_jax.sampling.truncation import FAST_K, truncated_logprobs
from ssd_jax.sampling.types import Truncation

RANKS = 60
TOP_MASS = 20
MASS_EDGES = (0.999, 0.995, 0.99, 0.98, 0.95)  # bin i holds masses in [edge i, edge i-1); the last bin < 0.95
CANDIDATES = 2 * FAST_K
LENGTH_MULTIPLE = 128  # sequences are padded to a multiple of this: few distinct shapes to compile
GROUPS = ("all", "lock", "fork")
MODELS = ("base", "student")


@dataclass(frozen=True)
class Settings:
    """The resolved numbers the jitted scoring closes over (from an `AnalysisConfig` and the two truncations)."""

    label: Truncation
    evaluate: Truncation
    temperatures: tuple[float, ...]
    lock_max: int = 2
    fork_min: int = 3
    chunk: int = 128

    @classmethod
    def of(cls, cfg: AnalysisConfig, label: Truncation, evaluate: Truncation) -> "Settings":
        return cls(label, evaluate, tuple(float(t) for t in cfg.temperatures), cfg.lock_max, cfg.fork_min, cfg.chunk)


def check(cfg: AnalysisConfig) -> None:
    if not 1 <= cfg.lock_max < cfg.fork_min:
        raise ConfigError(f"analysis: lock_max={cfg.lock_max}, fork_min={cfg.fork_min}: expected "
                          f"1 ≤ lock_max < fork_min")
    if not cfg.temperatures or min(cfg.temperatures) <= 0:
        raise ConfigError(f"analysis.temperatures {cfg.temperatures}: expected positive evaluation temperatures")
    for name in ("max_responses", "max_len", "batch_size", "block", "chunk", "html_responses"):
        if getattr(cfg, name) < (0 if name == "html_responses" else 1):
            raise ConfigError(f"analysis.{name}={getattr(cfg, name)}: expected a positive number")
    if cfg.block % cfg.chunk:
        raise ConfigError(f"analysis.block={cfg.block}: expected a multiple of analysis.chunk={cfg.chunk}")


# ---------------------------------------------------------------------------------------------------- statistics


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k` kept as a top-k: XLA:CPU rewrites a top_k whose values are then sliced into a sort of the whole
    row (1.4 s instead of 25 ms for 128 × 49k), which the barrier prevents."""
    return jax.lax.optimization_barrier(jax.lax.top_k(x, k))


def _candidates(z: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(candidate logits (N, R), their token ids, rows where a tie at the k-th value reaches past them)."""
    v = z.shape[-1]
    if 0 < top_k <= FAST_K and v > CANDIDATES:
        vals, ids = _top_k(z, CANDIDATES)
        inexact = vals[:, -1] >= vals[:, top_k - 1]
        return vals, ids, inexact
    ids = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), z.shape)
    return z, ids, jnp.zeros(z.shape[:1], bool)


def _entropy(lp: jax.Array) -> jax.Array:
    """Entropy (nats) of log-probabilities that are −inf outside the support."""
    return -jnp.sum(jnp.where(jnp.isfinite(lp), jnp.exp(lp) * lp, 0.0), axis=-1)


def _sweep(z: jax.Array, trunc: Truncation, temperatures: tuple[float, ...]):
    """Survivors and post-truncation entropy at each temperature: (N, G) each."""
    cand, _, inexact = _candidates(z, trunc.top_k)

    def one(t):
        lp = truncated_logprobs(cand, t, trunc.top_k, trunc.top_p)
        return jnp.isfinite(lp).sum(-1), _entropy(lp)

    surv, ent = jax.lax.map(one, jnp.asarray(temperatures, jnp.float32))
    return surv.T, ent.T, inexact


def _mass_bin(top_mass: jax.Array) -> jax.Array:
    """Index of the top-20-mass bin: 0 for ≥ 99.9 %, … , len(MASS_EDGES) for < 95 %."""
    return jnp.sum(top_mass[:, None] < jnp.asarray(MASS_EDGES, jnp.float32)[None, :], axis=-1)


def model_position_stats(z: jax.Array, cfg: Settings) -> dict:
    """Per-position statistics of one model's logits z (N, V) that do not depend on the other model."""
    logp = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
    r = min(RANKS, z.shape[-1])
    cum = jnp.cumsum(jnp.exp(_top_k(logp, r)[0]), axis=-1)
    if r < RANKS:  # fewer tokens than ranks: every later rank holds all the mass
        cum = jnp.concatenate([cum, jnp.broadcast_to(cum[:, -1:], (cum.shape[0], RANKS - r))], axis=-1)
    surv, ent, inexact = _sweep(z, cfg.evaluate, cfg.temperatures)
    cand, _, inexact_d = _candidates(z, cfg.evaluate.top_k)
    ent_d = _entropy(truncated_logprobs(cand, cfg.evaluate.temperature, cfg.evaluate.top_k, cfg.evaluate.top_p))
    top_mass = cum[:, TOP_MASS - 1]
    return {"cum": cum, "survivors": surv, "entropy": ent, "entropy_d": ent_d, "bin": _mass_bin(top_mass),
            "top_mass": top_mass, "logp": logp, "inexact": inexact | inexact_d}


def label_stats(z_base: jax.Array, logps: dict, cfg: Settings) -> dict:
    """The base model's training-time kept set K at each position (its size labels lock/fork), and for each model
    the mass it leaves outside K (tail) and the entropy of its distribution restricted to K (head)."""
    t = cfg.label
    cand, ids, inexact = _candidates(z_base, t.top_k)
    keep = jnp.isfinite(truncated_logprobs(cand, t.temperature, t.top_k, t.top_p))
    out = {"label_survivors": keep.sum(-1), "inexact": inexact}
    for name, logp in logps.items():
        lp = jnp.where(keep, jnp.take_along_axis(logp, ids, axis=-1), -jnp.inf)
        kept = jnp.exp(jax.nn.logsumexp(lp, axis=-1))
        out[f"tail_{name}"] = 1.0 - kept
        out[f"head_entropy_{name}"] = _entropy(lp - jnp.log(kept)[:, None])
    return out


def position_stats(z_base: jax.Array, z_student: jax.Array, cfg: Settings) -> dict:
    """Every per-position number for logits (N, V) of both models at the same positions."""
    per = {m: model_position_stats(z, cfg) for m, z in zip(MODELS, (z_base, z_student))}
    lab = label_stats(z_base, {m: per[m]["logp"] for m in MODELS}, cfg)
    return {"per_model": per, **lab}


def reduce_stats(st: dict, weights: jax.Array, cfg: Settings) -> dict:
    """Sums over positions (weights 0 drop a position) per group all/lock/fork: what the panels average."""
    w = weights.astype(jnp.float32)
    surv_l = st["label_survivors"]
    groups = jnp.stack([w, w * (surv_l <= cfg.lock_max), w * (surv_l >= cfg.fork_min)], axis=-1)  # (N, 3)
    n_bins = len(MASS_EDGES) + 1
    out = {"count": groups.sum(0), "inexact": jnp.sum(w * (st["inexact"] | st["per_model"]["base"]["inexact"]
                                                            | st["per_model"]["student"]["inexact"]))}
    for m in MODELS:
        s = st["per_model"][m]
        onehot = jax.nn.one_hot(s["bin"], n_bins, dtype=jnp.float32) * w[:, None]
        out[m] = {
            "cum": groups.T @ s["cum"],
            "survivors": groups.T @ s["survivors"].astype(jnp.float32),
            "entropy": groups.T @ s["entropy"],
            "bin_count": onehot.sum(0),
            "bin_entropy": onehot.T @ s["entropy_d"],
            "tail": groups.T @ st[f"tail_{m}"],
            "head_entropy": groups.T @ st[f"head_entropy_{m}"],
        }
    return out


# ------------------------------------------------------------------------------------------------- model scoring


def hidden_states(base, student, tokens, segment_ids):
    """Final normed hidden states (B, T, D) of both models, teacher-forced on the same tokens."""
    from ssd_jax.models.transformer import padded_positions

    positions = padded_positions(segment_ids)
    run = lambda m: m(tokens, positions=positions, segment_ids=segment_ids,  # noqa: E731
                      return_hidden=True).last_hidden
    return run(base), run(student)


def score_rows(h_base, h_student, head_base, head_student, weights, targets, cfg: Settings):
    """(sums, per-row label survivors and target probabilities) for a block of response positions: hidden states
    (N, D) of both models, the LM head applied `cfg.chunk` rows at a time so (N, V) logits never exist at once."""
    n = h_base.shape[0]
    c = min(cfg.chunk, n)
    split = lambda x: x.reshape((n // c, c) + x.shape[1:])  # noqa: E731

    def body(acc, xs):
        hb, hs, w, tg = xs
        zb = jnp.einsum("cd,dv->cv", hb, head_base, preferred_element_type=jnp.float32)
        zs = jnp.einsum("cd,dv->cv", hs, head_student, preferred_element_type=jnp.float32)
        st = position_stats(zb, zs, cfg)
        tok = {"label_survivors": st["label_survivors"]}
        for m in MODELS:
            lp = st["per_model"][m]["logp"]
            tok[f"p_target_{m}"] = jnp.exp(jnp.take_along_axis(lp, tg[:, None], axis=-1)[:, 0])
        return jax.tree.map(jnp.add, acc, reduce_stats(st, w, cfg)), tok

    v = head_base.shape[1]
    shapes = jax.eval_shape(lambda: reduce_stats(position_stats(jnp.zeros((1, v)), jnp.zeros((1, v)), cfg),
                                                 jnp.zeros(1), cfg))
    acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    sums, tok = jax.lax.scan(body, acc0, (split(h_base), split(h_student), split(weights), split(targets)))
    return sums, jax.tree.map(lambda x: x.reshape(n), tok)


# ------------------------------------------------------------------------------------------------- data


def read_responses(path: str | Path, limit: int) -> list[dict]:
    """Chat conversations ending in the response to score, from a samples JSONL (`messages` + `response`) or an
    SFT JSONL (`messages` ending with the assistant turn); the first `limit` that have a non-empty response."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such samples file")
    out = []
    with p.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{i}: not valid JSON ({json_problem(e)})") from None
            msgs = rec.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise UserError(f"{p}:{i}: expected a 'messages' list (a samples or SFT JSONL record)")
            if "response" in rec:
                msgs = list(msgs) + [{"role": "assistant", "content": rec["response"]}]
            if msgs[-1].get("role") != "assistant":
                raise UserError(f"{p}:{i}: the last message must be the assistant's response (or give 'response')")
            if not str(msgs[-1].get("content", "")).strip():
                continue
            out.append({"id": str(rec.get("problem_id", i)), "messages": msgs})
            if len(out) >= limit:
                break
    if not out:
        raise UserError(f"{p}: no non-empty responses to score")
    return out


def tokenize(records: list[dict], tokenizer, max_len: int) -> list[dict]:
    """Token ids and the response mask exactly as SFT sees them (chat template when the tokenizer has one)."""
    from ssd_jax.data.sft import tokenize_example

    template = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    out = []
    for rec in records:
        ids, mask, _ = tokenize_example(tokenizer, rec["messages"], template, mask_prompt=True)
        ids, mask = ids[: max_len + 1], mask[: max_len + 1]
        out.append({"id": rec["id"], "ids": ids, "mask": mask})
    return out


def _batch(items: list[dict], size: int, multiple: int) -> dict:
    """Pad to `size` rows and a length that is a multiple of `multiple` (few distinct shapes, few compiles)."""
    t = max(len(x["ids"]) - 1 for x in items)
    t = -(-t // multiple) * multiple
    arr = {k: np.zeros((size, t), np.int32) for k in ("tokens", "segment_ids", "targets")}
    arr["weights"] = np.zeros((size, t), np.float32)
    for i, x in enumerate(items):
        n = len(x["ids"]) - 1
        arr["tokens"][i, :n], arr["targets"][i, :n] = x["ids"][:-1], x["ids"][1:]
        arr["segment_ids"][i, :n] = 1
        arr["weights"][i, :n] = x["mask"][1:]
    return arr


# ------------------------------------------------------------------------------------------------- run


def _finalize(sums: dict, cfg: Settings) -> dict:
    """Averages over positions: every number the panels plot, plus the label summary."""
    count = np.asarray(sums["count"], np.float64)
    safe = np.maximum(count, 1.0)
    edges = [f"≥{100 * MASS_EDGES[0]:g}%"] + [f"{100 * lo:g}–{100 * hi:g}%" for hi, lo in
                                              zip(MASS_EDGES[:-1], MASS_EDGES[1:])] + [f"<{100 * MASS_EDGES[-1]:g}%"]
    panels = {"a": {"ranks": list(range(1, RANKS + 1))}, "b": {"temperatures": list(cfg.temperatures)},
              "c": {"temperatures": list(cfg.temperatures)},
              "d": {"bins": edges, "temperature": cfg.evaluate.temperature}}
    labels = {"lock": {"count": int(count[1]), "tail_mass": {}}, "fork": {"count": int(count[2]), "head_entropy": {}},
              "positions": int(count[0])}
    for m in MODELS:
        s = {k: np.asarray(v, np.float64) for k, v in sums[m].items()}
        per_group = lambda x: {g: (x[i] / safe[i]).tolist() for i, g in enumerate(GROUPS)}  # noqa: E731
        panels["a"][m] = per_group(s["cum"])
        panels["b"][m] = per_group(s["survivors"])
        panels["c"][m] = per_group(s["entropy"])
        panels["d"][m] = {"count": s["bin_count"].astype(int).tolist(),
                          "entropy": (s["bin_entropy"] / np.maximum(s["bin_count"], 1)).tolist()}
        labels["lock"]["tail_mass"][m] = float(s["tail"][1] / safe[1])
        labels["fork"]["head_entropy"][m] = float(s["head_entropy"][2] / safe[2])
    return {"panels": panels, "labels": labels, "inexact_positions": int(sums["inexact"])}


class _Blocks:
    """Response positions waiting to be scored, `block` rows at a time: every block has one shape (one compile),
    and only the first `keep` responses keep per-token values."""

    def __init__(self, step, heads, block: int, keep: int):
        self.step, self.heads, self.block, self.keep = step, heads, block, keep
        self.rows: list[tuple] = []  # (h_base, h_student, target, response index, position)
        self.sums = None
        self.tokens: dict[int, list[tuple]] = {}

    def add(self, h_b: np.ndarray, h_s: np.ndarray, arr: dict, first: int) -> None:
        for i, p in zip(*np.nonzero(arr["weights"] > 0)):
            self.rows.append((h_b[i, p], h_s[i, p], int(arr["targets"][i, p]), first + int(i), int(p)))
        while len(self.rows) >= self.block:
            self._score(self.rows[: self.block])
            self.rows = self.rows[self.block :]

    def finish(self):
        if self.rows:
            self._score(self.rows)
            self.rows = []
        return self.sums

    def _score(self, rows: list[tuple]) -> None:
        n, d = len(rows), rows[0][0].shape[0]
        h_b, h_s = np.zeros((self.block, d), np.float32), np.zeros((self.block, d), np.float32)
        targets, weights = np.zeros(self.block, np.int32), np.zeros(self.block, np.float32)
        h_b[:n], h_s[:n] = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
        targets[:n], weights[:n] = [r[2] for r in rows], 1.0
        sums, tok = self.step(h_b, h_s, *self.heads, weights, targets)
        self.sums = sums if self.sums is None else jax.tree.map(jnp.add, self.sums, sums)
        tok = jax.device_get(tok)
        for j, r in enumerate(rows):
            if r[3] < self.keep:
                self.tokens.setdefault(r[3], []).append((r[2], int(tok["label_survivors"][j]),
                                                         float(tok["p_target_base"][j]),
                                                         float(tok["p_target_student"][j])))


def resolve(cfg: AnalysisConfig, label: DecodeSpec | None = None, evaluate: DecodeSpec | None = None) -> Settings:
    """Settings from the config; `label`/`evaluate` are the defaults for a config that leaves them null."""
    check(cfg)
    spec = {"label": cfg.label or label, "evaluate": cfg.evaluate or evaluate}
    for name, value in spec.items():
        if value is None:
            raise ConfigError(f"analysis.{name}: required (a decode preset or temperature/top_k/top_p)")
    return Settings.of(cfg, spec["label"].resolve(), spec["evaluate"].resolve())


def analyze(base_dir: str, student_dir: str, samples: str, cfg: AnalysisConfig, settings: Settings) -> dict:
    """Score the responses of `samples` with both checkpoints; the result JSON (panels, labels, per-token values
    of the first `html_responses` responses, throughput)."""
    import functools

    from flax import nnx

    from ssd_jax.bundled import resolve_model
    from ssd_jax.models import hf
    from jax.sharding import NamedSharding

    from ssd_jax.sharding import batch_spec, make_mesh

    base_path, student_path = resolve_model(base_dir), resolve_model(student_dir)
    mesh = make_mesh(cfg.mesh, devices=jax.local_devices())
    mesh = mesh if mesh.size > 1 else None
    base, student = (hf.load_model(ModelSpec(path=str(p), dtype=cfg.dtype), mesh, "score")
                     for p in (base_path, student_path))
    if base.cfg.vocab_size != student.cfg.vocab_size:
        raise UserError(f"{student_path}: vocabulary {student.cfg.vocab_size} differs from the base model's "
                        f"{base.cfg.vocab_size} ({base_path}); the analysis compares the same tokens")
    tokenizer = hf.load_tokenizer(base_path)
    items = tokenize(read_responses(samples, cfg.max_responses), tokenizer, cfg.max_len)

    forward = nnx.jit(hidden_states, graph_updates=False)
    # The statistics run on one device with the LM heads gathered there (a vocabulary-sharded top-k trips an
    # XLA:CPU pass, and a block of rows is small next to the models' forward passes).
    one = jax.local_devices()[0]
    heads = tuple(jax.device_put(m.head_kernel(), one) for m in (base, student))
    blocks = _Blocks(jax.jit(functools.partial(score_rows, cfg=settings)), heads, cfg.block, cfg.html_responses)
    # Rows are split over the mesh's batch axes as far as the batch size divides (the rest replicated).
    put = (lambda x: jax.device_put(x, NamedSharding(mesh, batch_spec(mesh, x.shape)))) if mesh else jnp.asarray
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):
        for i in range(0, len(items), cfg.batch_size):
            arr = _batch(items[i : i + cfg.batch_size], cfg.batch_size, LENGTH_MULTIPLE)
            h_b, h_s = jax.device_get(forward(base, student, put(arr["tokens"]), put(arr["segment_ids"])))
            blocks.add(np.asarray(h_b, np.float32), np.asarray(h_s, np.float32), arr, i)
            faults.point("analysis.scored")
        sums = jax.device_get(blocks.finish())
    seconds = time.perf_counter() - t0
    result = _finalize(sums, settings)
    result.update(base=str(base_path), student=str(student_path), samples=str(samples), responses=len(items),
                  config={**asdict(cfg), "label": asdict(settings.label), "evaluate": asdict(settings.evaluate)},
                  tokens=_token_view(items, blocks.tokens, tokenizer, settings),
                  throughput={"seconds": seconds, "positions_per_s": result["labels"]["positions"] / seconds})
    return result


def _token_view(items: list[dict], tokens: dict[int, list[tuple]], tokenizer, cfg: Settings) -> list[dict]:
    """Per-token text, label and target probabilities of the first `html_responses` responses."""
    out = []
    for r in sorted(tokens):
        rows = []
        for target, n, p_b, p_s in tokens[r]:
            label = "lock" if n <= cfg.lock_max else "fork" if n >= cfg.fork_min else "other"
            rows.append({"text": tokenizer.decode([target]), "label": label, "survivors": n, "p_base": p_b,
                         "p_student": p_s})
        out.append({"id": items[r]["id"], "tokens": rows})
    return out


def write_outputs(result: dict, out: str | Path) -> dict[str, str]:
    """forklock.json (every plotted number), the four panel PNGs and forklock.html, in `out`."""
    from ssd_jax.analysis.page import write_page
    from ssd_jax.analysis.plots import plot_panels

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "forklock.json", json.dumps(result, indent=1) + "\n")
    panels = plot_panels(result, d)
    write_page(result, panels, d / "forklock.html")
    return {"json": str(d / "forklock.json"), "html": str(d / "forklock.html"), **panels}


def format_summary(result: dict) -> str:
    lab = result["labels"]
    lock, fork = lab["lock"], lab["fork"]
    return (f"{result['responses']} responses, {lab['positions']} positions "
            f"({result['throughput']['positions_per_s']:.1f}/s): {lock['count']} locks, {fork['count']} forks\n"
            f"locks: tail mass outside the base's kept set  base {lock['tail_mass']['base']:.4f} → "
            f"student {lock['tail_mass']['student']:.4f}\n"
            f"forks: entropy within the kept set (nats)      base {fork['head_entropy']['base']:.4f} → "
            f"student {fork['head_entropy']['student']:.4f}")

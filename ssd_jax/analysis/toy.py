"""The paper's toy model of the precision-exploration conflict (App. C.4), solved in closed form and by training.

A 16-token finite-state machine: a root state picks one of two symmetric paths (root token 0 → path a, token 1 →
path b; every other root token, including the most likely one, token 2, fails). Each path is one fork state then
three lock states; in both, token 0 is the one continuation that leads to success and any other token fails. The
appendix prints only the four largest probabilities of each state (Table 6, in token order):
  root .200 .190 .329 .126     fork .148 .280 .140 .144     lock .750 .055 .050 .037
and says the other tokens form a geometric tail holding the residual mass; it never prints the ratios. Its own
numbers pin them: the fork ratio is 0.5, the lock ratio about 0.75; the root ratio does not matter on the
evaluation grid (its tail never enters the top-p set). With these, evaluation at top-p 0.80 over
`linspace(0.1, 2.5, 500)` gives the paper's teacher optimum (8.32% at T 0.639) and student optimum (13.77% at
T 2.091). Both optima sit where one more token enters the top-p set, so the printed T depends on that grid.

SSD here: the student is the teacher tempered at T_train 0.9 and truncated at top-p 0.85 (closed form, since SFT
on infinitely many samples matches the sampling distribution); and, to check that the closed form is what
training converges to, a softmax policy (one logit row per state) fitted with the project's SFT loss
(`chunked_cross_entropy`, token-weighted CE) and AdamW on paths sampled from that truncated teacher. Every
truncation goes through `ssd_jax.sampling.truncation`, the function the samplers use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.errors import ConfigError
from ssd_jax.io_utils import atomic_write_text

PAPER = {"teacher": {"success": 0.0832, "temperature": 0.639}, "student": {"success": 0.1377, "temperature": 2.091}}
PRINTED = 4  # Table 6 prints the four largest probabilities of each state
# The appendix says V = 16 ("the remaining 12 tokens" after the four printed) and also "a 15-token tail".
READINGS = {16: "V=16: 4 printed + 12-token geometric tail", 19: "V=19: 4 printed + 15-token geometric tail"}


@dataclass(frozen=True)
class ToyConfig:
    """The toy FSM and its SSD setting. `vocab` 16 is the appendix's V; 19 is the other reading of its text
    ("a 15-token tail" after the four printed tokens), kept to show which reading reproduces the paper."""

    root: tuple[float, ...] = (0.200, 0.190, 0.329, 0.126)
    fork: tuple[float, ...] = (0.148, 0.280, 0.140, 0.144)
    lock: tuple[float, ...] = (0.750, 0.055, 0.050, 0.037)
    root_ratio: float = 0.5
    fork_ratio: float = 0.5
    lock_ratio: float = 0.75
    vocab: int = 16
    locks_per_path: int = 3
    t_train: float = 0.9
    p_train: float = 0.85
    p_eval: float = 0.80
    grid: tuple[float, float, int] = (0.1, 2.5, 500)

    def temperatures(self) -> np.ndarray:
        lo, hi, n = self.grid
        return np.linspace(lo, hi, int(n))

    def state_names(self) -> list[str]:
        path = lambda p: [f"fork_{p}"] + [f"lock_{p}{i + 1}" for i in range(self.locks_per_path)]  # noqa: E731
        return ["root"] + path("a") + path("b")


def state_distribution(top: tuple[float, ...], ratio: float, vocab: int) -> np.ndarray:
    """The printed leading probabilities, then a geometric tail (ratio `ratio`) holding the residual mass."""
    top_arr = np.asarray(top, np.float64)
    residual = 1.0 - top_arr.sum()
    if len(top_arr) != PRINTED or vocab <= PRINTED or residual <= 0 or not 0 < ratio < 1:
        raise ConfigError(f"toy state {top} (ratio {ratio}, vocab {vocab}): expected {PRINTED} leading "
                          f"probabilities summing below 1, vocab > {PRINTED} and 0 < ratio < 1")
    tail = ratio ** np.arange(vocab - len(top_arr))
    return np.concatenate([top_arr, tail / tail.sum() * residual])


def teacher(cfg: ToyConfig) -> np.ndarray:
    """(states, vocab) next-token distributions in `cfg.state_names()` order."""
    kinds = {"root": (cfg.root, cfg.root_ratio), "fork": (cfg.fork, cfg.fork_ratio), "lock": (cfg.lock, cfg.lock_ratio)}
    return np.stack([state_distribution(*kinds[name.split("_")[0]], cfg.vocab) for name in cfg.state_names()])


def truncated(probs: np.ndarray, temperatures, top_p: float) -> np.ndarray:
    """(G, S, V) distributions actually sampled from at each temperature (temper → top-p, renormalised)."""
    from ssd_jax.sampling.truncation import truncated_logprobs

    temps = np.atleast_1d(np.asarray(temperatures, np.float32))
    g, (s, v) = len(temps), probs.shape
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (g, s, v))
    lp = truncated_logprobs(logits, jnp.repeat(jnp.asarray(temps), s).reshape(g, s), 0, top_p)
    return np.exp(np.asarray(lp, np.float64))


def success_probability(dists: np.ndarray, cfg: ToyConfig) -> np.ndarray:
    """P(success) of (..., S, V) per-state distributions: root token 0 or 1 picks a path, then token 0 at its fork
    and at each of its locks."""
    n = 1 + cfg.locks_per_path
    total = 0.0
    for path, root_token in ((1, 0), (1 + n, 1)):
        total = total + dists[..., 0, root_token] * np.prod(dists[..., path : path + n, 0], axis=-1)
    return total


def curve(dists: np.ndarray, cfg: ToyConfig) -> np.ndarray:
    """Success probability at every evaluation temperature of the grid, evaluation top-p applied."""
    return success_probability(truncated(dists, cfg.temperatures(), cfg.p_eval), cfg)


def closed_form_student(cfg: ToyConfig) -> np.ndarray:
    """SFT's fixed point on infinitely many samples: the teacher's training-time sampling distribution."""
    return truncated(teacher(cfg), [cfg.t_train], cfg.p_train)[0]


def sample_paths(dists: np.ndarray, cfg: ToyConfig, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` sampled paths as (states, tokens, weights), each (n, 2 + locks): a path stops at the first failing
    token (weights 0 after it), exactly the responses SSD would train on in this world."""
    rng = np.random.default_rng(seed)
    length, per_path = 2 + cfg.locks_per_path, 1 + cfg.locks_per_path
    states = np.zeros((n, length), np.int32)
    tokens = np.zeros((n, length), np.int32)
    alive = np.ones(n, bool)
    weights = np.zeros((n, length), np.float32)
    cum = np.cumsum(dists, axis=-1)
    for t in range(length):
        if t == 1:
            states[:, 1] = np.where(tokens[:, 0] == 1, 1 + per_path, 1)
        elif t > 1:
            states[:, t] = states[:, t - 1] + 1
        u = rng.random(n)
        tok = np.minimum((u[:, None] > cum[states[:, t]]).sum(-1), cfg.vocab - 1)
        tokens[:, t] = tok
        weights[:, t] = alive
        alive &= (tok <= 1) if t == 0 else (tok == 0)
    return states, tokens, weights


def merge_paths(states: np.ndarray, tokens: np.ndarray, weights: np.ndarray):
    """Identical paths merged into one row whose weights are multiplied by its count: the token-weighted CE (and
    so every gradient) is unchanged, and a million sampled paths become a few dozen rows."""
    rows, counts = np.unique(np.concatenate([states, tokens, weights.astype(np.int32)], axis=1), axis=0,
                             return_counts=True)
    n = states.shape[1]
    return rows[:, :n], rows[:, n : 2 * n], rows[:, 2 * n :].astype(np.float32) * counts[:, None]


def fit_policy(states: np.ndarray, tokens: np.ndarray, weights: np.ndarray, cfg: ToyConfig, steps: int = 1500,
               lr: float = 0.5) -> np.ndarray:
    """A softmax policy (one logit row per state) fitted by full-batch AdamW on the SFT loss; (S, V) probabilities.

    The loss is the project's `chunked_cross_entropy` with one-hot state features as the hidden states and the
    logit table as the LM head: the same token-weighted CE that trains the real models. Tokens never sampled only
    lose mass as fast as their logits fall, so the schedule (cosine from `lr` to lr/100, Adam's β2 0.95) is long
    enough to push them far below the kept tokens: the closed form's limit, which a short run does not reach
    (a tail left at 1e-4 per token already costs points at high evaluation temperatures)."""
    import optax

    from ssd_jax.config import OptimConfig
    from ssd_jax.train.optim import make_optimizer
    from ssd_jax.train.step import chunked_cross_entropy

    states, tokens, weights = merge_paths(states, tokens, weights)
    n_states = len(cfg.state_names())
    hidden = jax.nn.one_hot(jnp.asarray(states), n_states, dtype=jnp.float32)
    targets, w = jnp.asarray(tokens), jnp.asarray(weights)
    opt = make_optimizer(OptimConfig(peak_lr=lr, floor_lr=lr / 100, warmup_steps=0, total_steps=steps,
                                     weight_decay=0.0, clip_norm=0.0, b2=0.95))

    def loss(table):
        s, total = chunked_cross_entropy(hidden, table, targets, w, chunk=hidden.shape[1])
        return s / total

    def step(carry, _):
        table, state = carry
        updates, state = opt.update(jax.grad(loss)(table), state, table)
        return (optax.apply_updates(table, updates), state), None

    table = jnp.zeros((n_states, cfg.vocab), jnp.float32)
    (table, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))((table, opt.init(table)))
    return np.asarray(jax.nn.softmax(table, axis=-1), np.float64)


def _best(c: np.ndarray, temps: np.ndarray) -> dict:
    i = int(np.argmax(c))
    return {"success": float(c[i]), "temperature": float(temps[i])}


@dataclass
class ToyResult:
    config: dict
    temperatures: list[float]
    curves: dict[str, list[float]]
    best: dict[str, dict]
    paper: dict = field(default_factory=lambda: PAPER)
    fitted_paths: int = 0
    readings: dict = field(default_factory=dict)  # closed-form optima under each reading of the tail's length

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def run_toy(cfg: ToyConfig, paths: int = 1_000_000, seed: int = 0, steps: int = 1500) -> ToyResult:
    """Teacher, closed-form student and (when `paths` > 0) a student fitted on sampled paths, over the grid."""
    temps = cfg.temperatures()
    curves = {"teacher": curve(teacher(cfg), cfg), "student": curve(closed_form_student(cfg), cfg)}
    if paths > 0:
        fitted = fit_policy(*sample_paths(closed_form_student(cfg), cfg, paths, seed), cfg, steps=steps)
        curves["fitted_student"] = curve(fitted, cfg)
    readings = {}
    for vocab, name in READINGS.items():
        alt = replace(cfg, vocab=vocab)
        readings[name] = {"teacher": _best(curve(teacher(alt), alt), temps),
                          "student": _best(curve(closed_form_student(alt), alt), temps)}
    return ToyResult(config=asdict(cfg), temperatures=temps.tolist(), curves={k: v.tolist() for k, v in curves.items()},
                     best={k: _best(v, temps) for k, v in curves.items()}, fitted_paths=paths, readings=readings)


def plot_toy(result: ToyResult, path: Path) -> None:
    """Success probability vs evaluation temperature (top-p fixed), each curve's optimum marked."""
    from ssd_jax.figures import new_figure, save_figure

    fig, ax = new_figure()
    styles = {"teacher": ("tab:blue", "-"), "student": ("tab:orange", "-"), "fitted_student": ("tab:green", "--")}
    for name, ys in result.curves.items():
        color, ls = styles.get(name, ("gray", ":"))
        b = result.best[name]
        ax.plot(result.temperatures, np.asarray(ys) * 100, ls, color=color,
                label=f"{name.replace('_', ' ')}: best {b['success'] * 100:.2f}% at T={b['temperature']:.3f}")
        ax.plot([b["temperature"]], [b["success"] * 100], "o", color=color)
    p = result.config["p_eval"]
    ax.set(xlabel=f"evaluation temperature (top-p {p:g})", ylabel="success probability (%)",
           title=f"Toy FSM (App. C.4): SSD at T_train {result.config['t_train']:g}, top-p {result.config['p_train']:g}")
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)


def write_toy(result: ToyResult, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "toy.json", result.to_json())
    plot_toy(result, out / "toy.png")
    return {"json": str(out / "toy.json"), "png": str(out / "toy.png")}


def sweep_top_p(cfg: ToyConfig, top_ps: list[float]) -> dict:
    """App. C.4's top-p sweep: the evaluation top-p varies (training stays at T_train, p_train), and each point
    reports the teacher's and the closed-form student's best success over the T_eval grid and their gap. Varying
    the evaluation top-p is the reading whose gaps span the paper's +1.4 … +5.4 pp (the training top-p's do not)."""
    if not top_ps or any(not 0.0 < p <= 1.0 for p in top_ps):
        raise ConfigError(f"--top-p {top_ps}: expected values in (0, 1]")
    temps = cfg.temperatures()
    points = []
    for p in top_ps:
        c = replace(cfg, p_eval=p)
        t, s = _best(curve(teacher(c), c), temps), _best(curve(closed_form_student(c), c), temps)
        points.append({"p_eval": p, "teacher": t, "student": s, "gap_pp": (s["success"] - t["success"]) * 100})
    return {"varies": "p_eval", "t_train": cfg.t_train, "p_train": cfg.p_train, "vocab": cfg.vocab,
            "paper_gap_pp": [1.4, 5.4], "points": points}


def write_top_p(sweep: dict, out: Path) -> dict[str, str]:
    """toy_top_p.json and toy_top_p.png (each top-p's best teacher and student success, the gap written above)."""
    from ssd_jax.figures import new_figure, save_figure

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "toy_top_p.json", json.dumps(sweep, indent=2) + "\n")
    fig, ax = new_figure()
    ps = [pt["p_eval"] for pt in sweep["points"]]
    x = np.arange(len(ps))
    for off, who, color in ((-0.2, "teacher", "tab:blue"), (0.2, "student", "tab:orange")):
        ax.bar(x + off, [pt[who]["success"] * 100 for pt in sweep["points"]], 0.4, color=color, label=who)
    for i, pt in enumerate(sweep["points"]):
        top = max(pt["teacher"]["success"], pt["student"]["success"]) * 100
        ax.annotate(f"{pt['gap_pp']:+.1f} pp", (x[i], top), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{p:g}" for p in ps])
    ax.set(xlabel="evaluation top-p", ylabel="best success over T_eval (%)",
           title=f"Toy FSM (App. C.4): SSD at T_train {sweep['t_train']:g}, top-p {sweep['p_train']:g}")
    ax.legend(loc="upper right", fontsize=8)
    save_figure(fig, out / "toy_top_p.png")
    return {"json": str(out / "toy_top_p.json"), "png": str(out / "toy_top_p.png")}


def format_top_p(sweep: dict) -> str:
    lines = [f"toy FSM, V={sweep['vocab']}: SSD at T_train {sweep['t_train']:g}, top-p {sweep['p_train']:g}; the "
             f"evaluation top-p varies (paper: gaps +{sweep['paper_gap_pp'][0]} … +{sweep['paper_gap_pp'][1]} pp)"]
    for pt in sweep["points"]:
        t, s = pt["teacher"], pt["student"]
        lines.append(f"  top-p {pt['p_eval']:<5g} teacher {t['success'] * 100:6.2f}% (T={t['temperature']:.3f})  "
                     f"student {s['success'] * 100:6.2f}% (T={s['temperature']:.3f})  gap {pt['gap_pp']:+.2f} pp")
    return "\n".join(lines)


def format_summary(result: ToyResult) -> str:
    lines = [f"toy FSM, V={result.config['vocab']}: best success over T_eval (top-p {result.config['p_eval']:g})"]
    for name, b in result.best.items():
        ref = result.paper.get(name)
        paper = f"   (paper {ref['success'] * 100:.2f}% at T={ref['temperature']:.3f})" if ref else ""
        lines.append(f"  {name:15s} {b['success'] * 100:6.2f}% at T={b['temperature']:.3f}{paper}")
    return "\n".join(lines)

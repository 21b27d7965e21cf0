"""Prompt text for a problem, in the two modes the sources disagree on (the paper §3.1 against
apple/ml-ssd's released generator):

- `chat` (the paper): the model's official chat template, a system message asking for a Python solution in a
  markdown block, the problem as the user turn. The paper does not print its system message; ours is
  `DEFAULT_SYSTEM` (set `system: null` for none, or your own text).
- `raw` (the released ml-ssd generator): the LiveCodeBench-style text sent to vLLM as a plain string, no template.

The problem text itself is LiveCodeBench's prompt format, in two variants that differ in small ways the released
code keeps: `train` = ml-ssd's generation templates (`data_generation/templates/*.j2`), `eval` = ml-ssd's
evaluation prompts (`evaluation/benchmark.py`, including its stray quote and unclosed starter-code fence).
`format` names one choice for both stages (generation and evaluation), so a model is evaluated in the context it
was trained in: `paper` = the chat template with DEFAULT_SYSTEM and the `.j2` text for both (the paper applies one
format to every query); `released` = exactly ml-ssd's pair (raw `.j2` text for generation, chat template without a
system message and `benchmark.py`'s text for evaluation); `custom` = the per-stage fields as written. The sample
records, the SFT data and the trained model carry the name; `ssd-jax eval` refuses a model trained under another.

How prompts are tokenised mirrors vLLM: a raw string gets the tokenizer's special tokens (BOS where it has one),
a chat-templated string does not (the template already wrote them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from ssd_jax.data.problems import Problem
from ssd_jax.errors import ConfigError, UserError

_HEAD = (
    "You will be given a question (problem specification) and will generate a correct Python program that matches "
    "the specification and passes all tests. You will NOT return anything except for the program.\n\n"
    "Question: {question}\n\n"
)
TRAIN_STDIN = _HEAD + (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the sample "
    "inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, it reads the "
    "inputs, runs the algorithm and writes output to STDOUT.\n\nThe final solution should be formatted as:\n"
    "```python\n# YOUR CODE HERE\n```"
)
# ml-ssd's stdin .j2 file ends with a newline after the closing fence (its function template does not). Its raw
# generation prompt keeps it; its SFT JSONL strips the prompt. TRAIN_STDIN is the stripped text (what SFT records and
# chat turns hold); raw generation adds this back unless `raw_stdin_newline` is off.
J2_STDIN_TAIL = "\n"
TRAIN_FUNCTION = _HEAD + (
    "You will use the following starter code to write the solution to the problem and enclose your code within "
    "delimiters.\n```python\n{starter_code}\n```"
)
EVAL_STDIN = _HEAD + (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the sample "
    "inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, it reads the "
    "inputs, runs the algorithm and writes output to STDOUT.\n```python\n  # YOUR CODE HERE\n```"
)
EVAL_FUNCTION = _HEAD + (
    "You will use the following starter code to write the solution to the problem and enclose your code within "
    "delimiters.\"\n```python\n{starter_code}\n"
)
HUMANEVAL = (
    "Complete the following Python function. Return the complete function (signature included) in one "
    "```python markdown block.\n\n```python\n{prompt}```"
)
DEFAULT_SYSTEM = (
    "You are an expert Python programmer. Solve the user's problem with a correct, efficient Python program and "
    "give the complete program in a single ```python markdown code block."
)


Stage = Literal["generation", "evaluation"]
# Each named format's per-stage settings (mode, template, system).
FORMATS: dict[str, dict[str, dict]] = {
    "paper": {"generation": {"mode": "chat", "template": "train", "system": "default"},
              "evaluation": {"mode": "chat", "template": "train", "system": "default"}},
    "released": {"generation": {"mode": "raw", "template": "train", "system": None},
                 "evaluation": {"mode": "chat", "template": "eval", "system": None}},
}


def expand_format(data: dict, stage: Stage, where: str) -> dict:
    """A `prompt:` section as written → with its format's settings filled in for `stage`; a setting written beside a
    named format must agree with it (one switch, no silent override)."""
    fmt = data.get("format", "custom")
    if fmt not in FORMATS:
        return data
    want = FORMATS[fmt][stage]
    for key, value in want.items():
        if key in data and data[key] != value:
            raise ConfigError(f"{where}.{key}: prompt format {fmt!r} sets {key} {value!r} for {stage} (here "
                              f"{data[key]!r}); drop {key}, or use format custom (a run config's prompt_format)")
    return {**data, **want}


def recorded_format(records: list[dict], what: str) -> str | None:
    """The prompt format (data/prompts.py) every record was made under; None when they do not say (made before
    formats were recorded, or by hand). Records of two formats cannot make one training set."""
    found = {r.get("prompt_format") for r in records} - {None}
    if len(found) > 1:
        raise UserError(f"{what} mix prompt formats {', '.join(sorted(found))}: one training set takes one format")
    return found.pop() if found else None


def check_trained_format(made: str | None, used: str, what: str, override: str) -> None:
    """Refuse a model or SFT data made under prompt format `made` where this run uses `used`: the model would be
    tested (or trained) in a context it was not trained in. `override` says how to go on anyway."""
    if made is not None and made != used:
        raise UserError(f"{what} was made under prompt format {made!r}, this run uses {used!r}; use the same "
                        f"prompt format, or {override}")


@dataclass
class PromptConfig:
    """How a problem becomes a prompt: the `prompt:` section of sample and eval configs."""

    format: Literal["custom", "paper", "released"] = "custom"  # see the module docstring
    # eval only: evaluate a model trained under another format (its ssd_jax.json says which) instead of refusing
    allow_other_format: bool = False
    mode: Literal["chat", "raw"] = "chat"
    template: Literal["train", "eval"] = "train"  # the two LiveCodeBench-style variants of ml-ssd
    system: str | None = "default"  # chat mode only: "default" = DEFAULT_SYSTEM; null = no system message
    # raw mode, train template: end the stdin prompt with the newline ml-ssd's .j2 file has (its generator sends it);
    # false = the stripped text. SFT records and chat turns always hold the stripped prompt, as ml-ssd's JSONL.
    raw_stdin_newline: bool = True

    @property
    def system_message(self) -> str | None:
        return DEFAULT_SYSTEM if self.system == "default" else self.system

    def record(self) -> dict:
        """The settings with the system message spelled out (what the sample manifest records)."""
        return {**asdict(self), "system": self.system_message}


def problem_text(problem: Problem, template: str = "train", mode: str = "chat") -> str:
    if problem.source == "humaneval":
        # raw mode = classic completion: the model continues the function; chat mode asks for the whole function.
        return problem.question if mode == "raw" else HUMANEVAL.format(prompt=problem.question)
    if problem.kind == "function":
        t = TRAIN_FUNCTION if template == "train" else EVAL_FUNCTION
        return t.replace("{question}", problem.question).replace("{starter_code}", problem.starter_code)
    t = TRAIN_STDIN if template == "train" else EVAL_STDIN
    return t.replace("{question}", problem.question)


def messages(problem: Problem, cfg: PromptConfig) -> list[dict]:
    """The conversation up to the assistant turn (what SFT records store before the response)."""
    user = {"role": "user", "content": problem_text(problem, cfg.template, cfg.mode)}
    if cfg.mode == "chat" and cfg.system_message:
        return [{"role": "system", "content": cfg.system_message}, user]
    return [user]


def raw_text(problem: Problem, cfg: PromptConfig) -> str:
    """The raw-mode prompt string: the user turn, plus the trailing newline of ml-ssd's stdin .j2 file for a train
    stdin prompt (byte-identical to what its generator sends)."""
    text = problem_text(problem, cfg.template, "raw")
    j2_stdin = cfg.template == "train" and problem.source != "humaneval" and problem.kind == "stdin"
    return text + J2_STDIN_TAIL if j2_stdin and cfg.raw_stdin_newline else text


def render(problem: Problem, cfg: PromptConfig, tokenizer) -> tuple[str, list[int]]:
    """(prompt string, prompt token ids) exactly as the sampler feeds them to the model."""
    if cfg.mode == "raw":
        text = raw_text(problem, cfg)
        return text, list(tokenizer(text, add_special_tokens=True)["input_ids"])
    msgs = messages(problem, cfg)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("prompt mode 'chat' needs a tokenizer with a chat template; use mode 'raw' for this model")
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])

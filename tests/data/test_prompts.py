"""Prompt strings, golden: the released code's LiveCodeBench-style templates, and how each mode is tokenised."""

import transformers

from ssd_jax.data import prompts
from ssd_jax.data.problems import Problem
from tests import tiny

STDIN = Problem("p", "rstar", "Print A+B.")
FUNC = Problem("f", "rstar", "Add.", starter_code="class Solution:\n    def add(self, a, b):")

GOLD_TRAIN_STDIN = (
    "You will be given a question (problem specification) and will generate a correct Python program that matches "
    "the specification and passes all tests. You will NOT return anything except for the program.\n\n"
    "Question: Print A+B.\n\n"
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the "
    "sample inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, it "
    "reads the inputs, runs the algorithm and writes output to STDOUT.\n\n"
    "The final solution should be formatted as:\n```python\n# YOUR CODE HERE\n```"
)
GOLD_TRAIN_FUNC = (
    "You will be given a question (problem specification) and will generate a correct Python program that matches "
    "the specification and passes all tests. You will NOT return anything except for the program.\n\n"
    "Question: Add.\n\n"
    "You will use the following starter code to write the solution to the problem and enclose your code within "
    "delimiters.\n```python\nclass Solution:\n    def add(self, a, b):\n```"
)


def test_train_templates_golden():
    assert prompts.problem_text(STDIN, "train") == GOLD_TRAIN_STDIN
    assert prompts.problem_text(FUNC, "train") == GOLD_TRAIN_FUNC


def test_eval_templates_keep_the_released_quirks():
    s = prompts.problem_text(STDIN, "eval")
    assert s.endswith("writes output to STDOUT.\n```python\n  # YOUR CODE HERE\n```")
    f = prompts.problem_text(FUNC, "eval")
    assert f.endswith('enclose your code within delimiters."\n```python\nclass Solution:\n    def add(self, a, b):\n')


def test_question_with_braces_is_not_formatted():
    p = Problem("b", "rstar", "Print {x} and {{y}}.")
    assert "Question: Print {x} and {{y}}.\n" in prompts.problem_text(p)


def test_chat_and_raw_rendering(tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny.save_tiny_tokenizer(tmp_path)))
    text, ids = prompts.render(STDIN, prompts.PromptConfig(mode="chat"), tok)
    assert text == ("<|im_start|>system\n" + prompts.DEFAULT_SYSTEM + "<|im_end|>\n<|im_start|>user\n"
                    + GOLD_TRAIN_STDIN + "<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(ids) == text
    text, ids = prompts.render(STDIN, prompts.PromptConfig(mode="chat", system=None), tok)
    assert text.startswith("<|im_start|>user\n")
    text, ids = prompts.render(STDIN, prompts.PromptConfig(mode="raw", raw_stdin_newline=False), tok)
    assert text == GOLD_TRAIN_STDIN and tok.decode(ids) == GOLD_TRAIN_STDIN
    msgs = prompts.messages(STDIN, prompts.PromptConfig(mode="raw"))
    assert msgs == [{"role": "user", "content": GOLD_TRAIN_STDIN}]


def test_raw_stdin_generation_prompt_ends_like_the_j2_file(tmp_path):
    """ml-ssd's data_generation/templates/self_distillation_prompt_stdin.j2 ends in "```\n" and its generator sends
    it unstripped; the function template ends in "```" (no newline); the SFT JSONL holds the stripped prompt."""
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny.save_tiny_tokenizer(tmp_path)))
    raw = prompts.PromptConfig(mode="raw")
    assert raw.raw_stdin_newline  # the released generator's bytes by default
    text, ids = prompts.render(STDIN, raw, tok)
    assert text == GOLD_TRAIN_STDIN + "\n" and tok.decode(ids) == text
    assert prompts.render(FUNC, raw, tok)[0] == GOLD_TRAIN_FUNC
    eval_raw = prompts.PromptConfig(mode="raw", template="eval")
    assert prompts.render(STDIN, eval_raw, tok)[0] == prompts.problem_text(STDIN, "eval")  # benchmark.py's, as is
    assert prompts.messages(STDIN, raw) == [{"role": "user", "content": GOLD_TRAIN_STDIN}]  # SFT: stripped
    chat = prompts.render(STDIN, prompts.PromptConfig(mode="chat", system=None), tok)[0]
    assert GOLD_TRAIN_STDIN + "<|im_end|>" in chat  # the chat turn holds the stripped prompt


def test_prompt_section_is_the_prompt_config():
    from ssd_jax.config import SampleConfig, from_dict

    assert from_dict(SampleConfig, {"prompt": {"mode": "raw"}}).prompt.raw_stdin_newline is True
    assert from_dict(SampleConfig, {"prompt": {"mode": "raw", "raw_stdin_newline": False}}).prompt.raw_stdin_newline \
        is False
    default = from_dict(SampleConfig, {"prompt": {"system": "default"}}).prompt
    assert default.system_message == prompts.DEFAULT_SYSTEM and default.record()["system"] == prompts.DEFAULT_SYSTEM


def test_a_prompt_format_names_both_stages_and_refuses_a_contradicting_setting():
    import pytest

    from ssd_jax.config import EvalConfig, RunConfig, SampleConfig, from_dict
    from ssd_jax.errors import ConfigError

    paper = from_dict(RunConfig, {"prompt_format": "paper"})
    for p in (paper.sample.prompt, paper.eval.prompt):  # one format for every query
        assert (p.format, p.mode, p.template, p.system_message) == ("paper", "chat", "train", prompts.DEFAULT_SYSTEM)
    rel = from_dict(RunConfig, {"prompt_format": "released"})
    assert (rel.sample.prompt.mode, rel.sample.prompt.template) == ("raw", "train")  # ml-ssd's generator
    assert (rel.eval.prompt.mode, rel.eval.prompt.template, rel.eval.prompt.system_message) == ("chat", "eval", None)
    # the standalone stages take the key too, each its own half
    assert from_dict(SampleConfig, {"prompt": {"format": "released"}}).prompt.mode == "raw"
    assert from_dict(EvalConfig, {"prompt": {"format": "released"}}).prompt.template == "eval"
    # a setting written beside a format must agree with it; agreeing ones (a dumped config) load back
    with pytest.raises(ConfigError, match=r"^r\.yaml\.eval\.prompt\.system: prompt format 'released' sets system "
                                          r"None for evaluation \(here 'default'\); drop system, or use format custom"):
        from_dict(RunConfig, {"prompt_format": "released", "eval": {"prompt": {"system": "default"}}}, "r.yaml")
    assert from_dict(EvalConfig, {"prompt": {"format": "paper", "mode": "chat"}}).prompt.format == "paper"
    with pytest.raises(ConfigError, match=r"sample\.prompt\.format: set by `ssd-jax run` from the top-level "
                                          r"`prompt_format`"):
        from_dict(RunConfig, {"sample": {"prompt": {"format": "paper"}}}, "r.yaml")
    custom = from_dict(RunConfig, {"sample": {"prompt": {"mode": "raw"}}})
    assert custom.prompt_format == custom.sample.prompt.format == "custom" and custom.sample.prompt.mode == "raw"


def test_recorded_formats_are_one_or_refused():
    import pytest

    from ssd_jax.errors import UserError

    assert prompts.recorded_format([{"prompt_format": "paper"}, {"prompt_format": "paper"}], "x") == "paper"
    assert prompts.recorded_format([{}, {}], "x") is None  # made before formats were recorded
    with pytest.raises(UserError, match="f.jsonl mix prompt formats paper, released"):
        prompts.recorded_format([{"prompt_format": "paper"}, {"prompt_format": "released"}], "f.jsonl")
    prompts.check_trained_format(None, "paper", "m", "x")  # a model ssd-jax did not train: nothing to check
    with pytest.raises(UserError, match="m was made under prompt format 'released', this run uses 'paper'; use "
                                        "the same prompt format, or set it"):
        prompts.check_trained_format("released", "paper", "m", "set it")

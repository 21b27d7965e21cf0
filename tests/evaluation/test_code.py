"""Code extraction (LiveCodeBench's last-two-fence-lines rule), syntax verdicts, HumanEval program assembly."""

import sys

import pytest

from ssd_jax.code import extract_code, humaneval_entry_point, humaneval_program, syntax_ok
from ssd_jax.errors import UserError


def test_extract_last_fenced_block():
    text = "Idea:\n```python\nx = 1\n```\nBetter:\n```python\nprint(2)\ny = 3\n```\nDone."
    assert extract_code(text) == "print(2)\ny = 3"


def test_extract_no_complete_block_is_empty():
    assert extract_code("no code at all") == ""
    assert extract_code("```python\nprint(1)\n") == ""  # cut off by the token limit: one fence only


def test_extract_odd_fences_takes_text_between_the_last_two():
    # LCB does not pair fences: a final unterminated block yields the prose between the last two fence lines.
    text = "```python\na = 1\n```\nprose line\n```python\nb = 2"
    assert extract_code(text) == "prose line"


def test_extract_counts_lines_containing_a_fence_anywhere():
    # lcb_runner/utils/extraction_utils.py tests `"```" in line`, not startswith.
    # A prose line mentioning ``` after the block becomes the last "fence": the block is lost.
    text = "```python\nprint(1)\n```\nUse ``` to fence code.\n"
    assert extract_code(text) == ""
    text2 = "Here: ```python\nprint(1)\n  ```  \n"
    assert extract_code(text2) == "print(1)"


def test_extract_keeps_indentation_and_carriage_returns():
    assert extract_code("```\n    x = 1\r\n```") == "    x = 1\r"


@pytest.mark.parametrize("parser", ["tree-sitter", "compile", "ast"])
def test_all_parsers_accept_valid_and_reject_broken(parser):
    assert syntax_ok("def f(x):\n    return x + 1\n", parser).ok
    bad = syntax_ok("def f(:\n    pass\n", parser)
    assert not bad.ok and bad.parser == parser and "line 1" in bad.error


def test_tree_sitter_accepts_python2_print_that_compile_rejects():
    assert syntax_ok('print "x"\n', "tree-sitter").ok
    assert not syntax_ok('print "x"\n', "compile").ok
    assert not syntax_ok('print "x"\n', "ast").ok


@pytest.mark.parametrize("src", ["type X = int\n", "def f[T](x: T) -> T:\n    return x\n"])
def test_tree_sitter_accepts_312_syntax_independent_of_the_interpreter(src):
    assert syntax_ok(src, "tree-sitter").ok
    # compile() follows the running interpreter: rejects before 3.12, accepts from 3.12.
    assert syntax_ok(src, "compile").ok == (sys.version_info >= (3, 12))


def test_ast_accepts_return_outside_function_compile_rejects():
    assert syntax_ok("return 1\n", "ast").ok
    v = syntax_ok("return 1\n", "compile")
    assert not v.ok and "outside function" in v.error
    assert syntax_ok("return 1\n", "tree-sitter").ok


def test_null_bytes_and_unknown_parser():
    assert not syntax_ok("x = 1\x00\n", "compile").ok
    with pytest.raises(UserError, match="tree-sitter, compile, ast"):
        syntax_ok("x = 1", "pylint")


PROMPT = ('from typing import List\n\n\ndef helper(x):\n    return x\n\n\n'
          'def add(a: int, b: int) -> int:\n    """Add."""\n')


def test_humaneval_body_completion_is_appended():
    assert humaneval_program(PROMPT, "    return a + b\n") == PROMPT + "    return a + b\n"
    assert humaneval_entry_point(PROMPT) == "add"


def test_humaneval_fenced_full_function_replaces_the_stub_keeping_imports_and_helpers():
    completion = "Sure:\n```python\ndef add(a, b):\n    return helper(a) + b\n```\n"
    prog = humaneval_program(PROMPT, completion)
    assert prog.startswith("from typing import List")
    assert "def helper(x)" in prog
    assert prog.count("def add(") == 1 and prog.rstrip().endswith("return helper(a) + b")
    ns = {}
    exec(prog, ns)
    assert ns["add"](2, 3) == 5


def test_humaneval_fenced_body_only_is_appended_to_prompt():
    prog = humaneval_program(PROMPT, "```python\n    return a + b\n```")
    assert prog == PROMPT + "    return a + b"
    ns = {}
    exec(prog, ns)
    assert ns["add"](1, 1) == 2


def test_humaneval_unfenced_full_function():
    prog = humaneval_program(PROMPT, "def add(a, b):\n    return a + b\n", entry_point="add")
    assert prog.count("def add(") == 1


# ml-ssd's extraction (grader.extraction: mlssd): regex, last complete block, None when there is none.
def test_mlssd_extraction_takes_the_last_complete_block():
    from ssd_jax.code import extract_code_mlssd

    assert extract_code_mlssd("a\n```python\nx = 1\n```\nb\n```py\nprint(2)\n```\n") == "print(2)\n"
    # a final block cut off by the token limit: the previous complete one (LCB's rule takes the prose)
    text = "```python\nprint(1)\n```\nLet me refine.\n```python\nprint(2"
    assert extract_code_mlssd(text) == "print(1)\n" and extract_code(text) == "Let me refine."


def test_mlssd_extraction_tags_and_missing_blocks():
    from ssd_jax.code import extract_code_mlssd

    assert extract_code_mlssd("no code") is None
    assert extract_code_mlssd("```python3\nprint(1)\n```") is None  # a digit in the tag opens nothing
    assert extract_code_mlssd("``` python\nprint(1)\n```") is None
    assert extract_code_mlssd("```\n```") == ""  # an empty block is code: the empty program
    # the closing fence of a ```python3 block opens a "block" of the prose after it
    assert extract_code_mlssd("```python3\nx\n```\nprose\n```python\ny\n```") == "prose\n"
    assert extract_code_mlssd("```python\nprint(1)\n</code>junk\n```") == "print(1)\n"
    assert extract_code_mlssd("```\n<code>print(1)```") == "print(1)"


def test_extract_dispatches_and_rejects_unknown_rules():
    from ssd_jax.code import extract
    from ssd_jax.errors import ConfigError

    assert extract("no code", "lcb") == "" and extract("no code", "mlssd") is None
    with pytest.raises(ConfigError, match="extraction 'x'"):
        extract("", "x")


def test_humaneval_program_uses_the_extraction_rule():
    text = "```python\n    return a + b\n```\nmore\n```python\n    return 0"
    assert humaneval_program(PROMPT, text, extraction="mlssd") == PROMPT + "    return a + b\n"
    assert humaneval_program(PROMPT, text) == PROMPT + "more"

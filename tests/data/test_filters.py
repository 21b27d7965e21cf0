"""Degeneracy filters: each rule and reason on crafted samples, the three presets, SFT output, the CLI."""

import json

import pytest

from ssd_jax.cli import main
from ssd_jax.code import extract, syntax_ok
from ssd_jax.config import FilterConfig
from ssd_jax.data.filters import filter_samples, sft_records
from ssd_jax.errors import ConfigError
from ssd_jax.presets import FILTER_PRESETS as PRESETS

GOOD = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```"


def s(i, response):
    return {"problem_id": f"p{i}", "sample_idx": 0, "response": response,
            "messages": [{"role": "user", "content": f"q{i}"}]}


def reasons(samples, **kw):
    verdicts, stats = filter_samples(samples, FilterConfig(**kw))
    return [v["reason"] for v in verdicts], stats


def test_paper_rules_empty_and_single_line_stub():
    got, stats = reasons([s(0, ""), s(1, "   \n "), s(2, "pass"), s(3, "```python print(1)```"), s(4, GOOD)],
                         **PRESETS["paper"])
    assert got == ["empty", "empty", "single_line_stub", "single_line_stub", None]
    assert stats["kept"] == 1 and stats["by_reason"]["empty"] == 2 and stats["by_reason"]["single_line_stub"] == 2


ONE_LINER = "print(sum(map(int, input().split())))"  # a correct one-line program, 38 characters
LONG_LINE = "x = [i * i for i in range(10)]; print(sum(x), max(x), min(x), len(x), sorted(x)[::-1], x[3:7])"
STUB_CASES = [  # response, and whether no_newline / trl_10 / mlx_80 call it a stub
    ("pass", (True, True, True)),
    ("ok\n\n  ", (True, True, True)),  # stripped first
    (ONE_LINER, (True, False, True)),
    ("```python print(1)```", (True, False, False)),  # a fence: not a stub for the MLX port
    (LONG_LINE, (True, False, False)),  # 80+ characters
    ("a\n\nb", (False, False, False)),
    (GOOD, (False, False, False)),
]


@pytest.mark.parametrize("rule", ["no_newline", "trl_10", "mlx_80"])
def test_stub_rules_are_the_three_readings(rule):
    j = ["no_newline", "trl_10", "mlx_80"].index(rule)
    assert len(LONG_LINE) >= 80
    got, stats = reasons([s(i, r) for i, (r, _) in enumerate(STUB_CASES)], **{**PRESETS["paper"], "stub_rule": rule})
    assert got == ["single_line_stub" if want[j] else None for _, want in STUB_CASES]
    assert stats["stub_rule"] == rule and stats["rules"]["stub_rule"] == rule


def test_paper_preset_keeps_the_no_newline_reading():
    assert FilterConfig().resolve().stub_rule == "no_newline" and PRESETS["paper"]["stub_rule"] == "no_newline"
    cfg = FilterConfig(preset="paper", stub_rule="mlx_80").resolve()
    assert cfg.stub_rule == "mlx_80" and cfg.drop_single_line_stub  # an explicit rule beats the preset's
    _, stats = reasons([s(0, GOOD)], **PRESETS["released"])
    assert stats["stub_rule"] is None  # no stub rule ran
    with pytest.raises(ConfigError, match="stub_rule='short': expected one of no_newline, trl_10, mlx_80"):
        reasons([s(0, GOOD)], stub_rule="short")


def test_released_shortest_ten_percent():
    samples = [s(i, "x\n" * (i + 1)) for i in range(20)] + [s(99, "")]
    got, stats = reasons(samples, **PRESETS["released"])
    # cut-off = the length at index int(20 * 0.1) = 2 of the sorted non-empty lengths (stripped: 1, 3, 5, ...)
    assert stats["shortest_fraction_min_chars"] == 5
    assert got[:3] == ["shortest_fraction", "shortest_fraction", None] and got[-1] == "empty"
    assert stats["kept"] == 18
    # single-line responses survive here: the released code has no stub rule
    assert reasons([s(0, "pass")] * 1, **PRESETS["released"])[0] == [None]


def test_trl_rule():
    got, _ = reasons([s(0, "short"), s(1, "a long single line answer"), s(2, "a\nb")], **PRESETS["trl"])
    assert got == ["trl_short", None, None]


def test_syntax_code_block_and_duplicates():
    bad = "```python\ndef f(:\n    pass\n```"
    noblock = "def g():\n    return 2"
    got, stats = reasons([s(0, GOOD), s(1, bad), s(2, noblock), s(3, GOOD), s(4, "text\nwith no code")],
                         syntax=True, drop_duplicates=True)
    assert got == [None, "syntax_error", None, "duplicate", "syntax_error"]
    assert stats["syntax_parser"] == "tree-sitter"
    got, _ = reasons([s(0, GOOD), s(2, noblock)], require_code_block=True)
    assert got == [None, "no_code_block"]


def test_parsers_disagree_and_the_verdict_names_which_judged():
    py2 = 'print "hello"\n'
    ret = "return 1\n"
    assert syntax_ok(ret, "tree-sitter").ok and syntax_ok(ret, "ast").ok and not syntax_ok(ret, "compile").ok
    assert syntax_ok(py2, "tree-sitter").ok != syntax_ok(py2, "compile").ok
    sample = [s(0, "```python\nreturn 1\n```\nok")]
    assert reasons(sample, syntax=True)[0] == [None]
    assert reasons(sample, syntax=True, syntax_parser="compile")[0] == ["syntax_error"]


def test_looping_sample_that_hit_the_cap_is_kept():
    loop = "```python\n" + "x = 1\n" * 500
    v, _ = filter_samples([{**s(0, loop), "finish_reason": "length"}], FilterConfig(**PRESETS["paper"]))
    assert v[0]["kept"]


def test_sft_records_strip_and_keep_messages():
    v, _ = filter_samples([s(0, "  \n" + GOOD + "\n\n"), s(1, "")], FilterConfig())
    (rec,) = sft_records(v)
    assert rec == {"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": GOOD}],
                   "problem_id": "p0"}


def test_preset_respects_explicit_fields():
    cfg = FilterConfig(preset="released", shortest_fraction=0.25).resolve()
    assert cfg.shortest_fraction == 0.25 and cfg.drop_single_line_stub is False


def test_filter_cli_writes_three_files_and_rejects_bad_input(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(x) + "\n" for x in [s(0, GOOD), s(1, "")]))
    out = tmp_path / "filtered.jsonl"
    assert main(["filter", "--samples", str(samples), "--out", str(out), "--preset", "paper"]) == 0
    assert len(out.read_text().splitlines()) == 1
    stats = json.loads((tmp_path / "filter_stats.json").read_text())
    assert stats["by_reason"]["empty"] == 1 and stats["kept"] == 1 and stats["stub_rule"] == "no_newline"
    assert main(["filter", "--samples", str(samples), "--out", str(out), "--preset", "paper",
                 "--set", "stub_rule=trl_10"]) == 0
    assert json.loads((tmp_path / "filter_stats.json").read_text())["stub_rule"] == "trl_10"
    assert len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == 2
    samples.write_text(json.dumps(s(0, GOOD)) + "\n" + '{"problem_id": "x"}\n')
    capsys.readouterr()
    assert main(["filter", "--samples", str(samples), "--out", str(out)]) == 2
    assert "samples.jsonl:2: missing field 'sample_idx'" in capsys.readouterr().err
    assert main(["filter", "--samples", str(samples), "--out", str(out), "--set", "colour=1"]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err


def test_filter_stats_count_code_blocks_and_carry_the_prompt_format(tmp_path, capsys):
    """App. C.5's statistic (samples with an extractable code block, under each extraction rule) and the samples'
    prompt format, which the SFT records keep for `train` and the model's export."""
    fenced, cut = "```python\nprint(1)\n```", "Here:\n```python\nprint(1)\n"  # the second: no closing fence
    recs = [{**s(i, text), "prompt_format": "paper"} for i, text in enumerate([fenced, cut, GOOD])]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "filtered.jsonl"
    assert main(["filter", "--samples", str(samples), "--out", str(out), "--set", "drop_single_line_stub=false"]) == 0
    stats = json.loads((tmp_path / "filter_stats.json").read_text())
    blocks = stats["code_block"]
    assert blocks["samples"] == 3 and stats["prompt_format"] == "paper"
    assert blocks["lcb"]["with_code_block"] == sum(bool(extract(r["response"], "lcb")) for r in recs)
    assert blocks["mlssd"]["with_code_block"] == sum(bool(extract(r["response"], "mlssd")) for r in recs)
    assert blocks["mlssd"]["share"] == pytest.approx(blocks["mlssd"]["with_code_block"] / 3)
    assert {json.loads(line)["prompt_format"] for line in out.read_text().splitlines()} == {"paper"}
    samples.write_text("".join(json.dumps({**r, "prompt_format": f}) + "\n" for r, f in zip(recs, ["paper",
                                                                                                "released"])))
    capsys.readouterr()
    assert main(["filter", "--samples", str(samples), "--out", str(tmp_path / "f2.jsonl")]) == 2
    assert "mix prompt formats paper, released" in capsys.readouterr().err
    assert not (tmp_path / "f2.jsonl").exists()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_configs(name):
    FilterConfig(**PRESETS[name])

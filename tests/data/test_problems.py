"""Problem loaders on small files written here: LiveCodeBench rows (with pickled private tests), rStar-Coder
seed_sft parquet, plain JSONL; decontamination; HumanEval from the installed package."""

import base64
import json
import pickle
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssd_jax.data import problems as P
from ssd_jax.errors import UserError


def lcb_row(qid, date, private, stdin=True, difficulty="easy"):
    tests = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin" if stdin else "functional"}]
    return {
        "question_title": f"T{qid}", "question_content": f"Add two numbers ({qid}).", "platform": "atcoder",
        "question_id": qid, "contest_id": "abc1", "contest_date": date, "starter_code": "" if stdin else
        "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
        "difficulty": difficulty, "public_test_cases": json.dumps(tests), "private_test_cases": private,
        "metadata": json.dumps({} if stdin else {"func_name": "add"}),
    }


def pickled(tests):
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


@pytest.fixture
def lcb_dir(tmp_path):
    priv = [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]
    rows1 = [lcb_row("a1", "2024-09-01T00:00:00", json.dumps(priv)),
             lcb_row("a2", "2025-03-10T00:00:00", pickled(priv), difficulty="hard")]
    rows2 = [lcb_row("b1", "2025-05-31T12:00:00", pickled(priv), stdin=False, difficulty="medium"),
             lcb_row("b2", "2025-06-02T00:00:00", "[]")]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows1))
    (tmp_path / "test2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows2))
    return tmp_path


def test_livecodebench_rows_windows_and_private_tests(lcb_dir):
    allp = P.load_livecodebench(lcb_dir)
    assert [p.id for p in allp] == ["lcb/a1", "lcb/a2", "lcb/b1", "lcb/b2"]
    a2 = allp[1]
    assert [(t.input, t.output) for t in a2.tests] == [("1 2\n", "3\n"), ("5 5\n", "10\n")]
    assert a2.difficulty == "hard" and a2.kind == "stdin" and a2.contest_date == "2025-03-10"
    b1 = allp[2]
    assert b1.kind == "function" and b1.func_name == "add" and b1.tests[0].testtype == "functional"
    v6 = P.load_livecodebench(lcb_dir, window="v6")
    assert [p.id for p in v6] == ["lcb/a2", "lcb/b1"]  # 2025-02-01 … 2025-05-31 inclusive
    assert [p.id for p in P.load_livecodebench(lcb_dir, release="release_v1")] == ["lcb/a1", "lcb/a2"]
    with pytest.raises(UserError, match="test3.jsonl: missing"):
        P.load_livecodebench(lcb_dir, release="release_v3")


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    (tmp_path / "test.jsonl").write_text(json.dumps(lcb_row("x", "2025-03-01", blob)) + "\n")
    with pytest.raises(UserError, match=r"test.jsonl:1: private_test_cases is neither JSON"):
        P.load_livecodebench(tmp_path)


def test_bad_lcb_line_is_named(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps(lcb_row("x", "2025-03-01", "[]")) + "\n{broken\n")
    with pytest.raises(UserError, match=r"test.jsonl:2: not valid JSON"):
        P.load_livecodebench(tmp_path)
    row = lcb_row("y", "2025-03-01", "[]")
    del row["public_test_cases"]
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"test.jsonl:1: missing field 'public_test_cases'"):
        P.load_livecodebench(tmp_path)


def test_rstar_seed_sft_filters_and_dedup(tmp_path):
    rows = [
        {"question_id": "q1", "question": "Sum  of\nA and B", "starter_code": "", "is_passed": True},
        {"question_id": "q1", "question": "Sum of A and B", "starter_code": "", "is_passed": True},  # same id
        {"question_id": "q2", "question": "sum of a and b", "starter_code": "", "is_passed": True},  # same text
        {"question_id": "q3", "question": "Reverse a list", "starter_code": "def f(xs):", "is_passed": False},
        {"question_id": "q4", "question": "   ", "starter_code": "", "is_passed": True},
        {"question_id": "q5", "question": "Sort it", "starter_code": "class Solution:", "is_passed": True},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-0.parquet")
    probs, rep = P.load_rstar_seed_sft(tmp_path)
    assert [p.id for p in probs] == ["rstar/q1", "rstar/q2", "rstar/q5"]
    assert (rep.rows, rep.passed_filter_dropped, rep.dedup_question_id_dropped, rep.empty_dropped, rep.kept) == \
        (6, 1, 1, 1, 3)
    assert probs[2].kind == "function" and probs[0].kind == "stdin"
    probs, rep = P.load_rstar_seed_sft(tmp_path, passed_only=False, dedup="both")
    assert [p.id for p in probs] == ["rstar/q1", "rstar/q3", "rstar/q5"]
    assert rep.dedup_statement_dropped == 1 and rep.dedup_question_id_dropped == 1
    probs, rep = P.load_rstar_seed_sft(tmp_path, passed_only=False, dedup="statement")
    assert len(probs) == 3 and rep.dedup_statement_dropped == 2


def test_decontamination(tmp_path):
    eval_set = [P.Problem("e1", "lcb", "Given N integers, print the maximum sum of a contiguous subarray of the "
                                        "array modulo one billion and seven, using fast input.")]
    pool = [P.Problem("p1", "rstar", "GIVEN N integers,   print the maximum sum of a contiguous subarray of the "
                                     "array modulo one billion and seven, using fast input."),
            P.Problem("p2", "rstar", "Intro text. Given N integers, print the maximum sum of a contiguous subarray "
                                     "of the array modulo something else entirely."),
            P.Problem("p3", "rstar", "Count vowels in a string.")]
    kept, n = P.decontaminate(pool, eval_set)
    assert [p.id for p in kept] == ["p3"] and n == 2


def test_jsonl_problems_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "x", "question": "q", "tests": [{"input": "1", "output": "1"}]}) + "\n")
    (p,) = P.load_jsonl(f)
    assert p.tests[0].testtype == "stdin" and p.source == "jsonl"
    f.write_text(json.dumps({"id": "x", "question": "q", "colour": "red"}) + "\n")
    with pytest.raises(UserError, match=r"p.jsonl:1: unknown field 'colour'"):
        P.load_jsonl(f)
    f.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UserError, match=r"p.jsonl:1: missing string field 'id'"):
        P.load_jsonl(f)
    f.write_text(json.dumps({"id": "x", "question": "q"}) + "\n" + json.dumps({"id": "x", "question": "r"}) + "\n")
    with pytest.raises(UserError, match="appears twice"):
        P.load_jsonl(f)


def test_humaneval_from_the_installed_package():
    probs = P.load_humaneval()
    assert len(probs) == 164 and probs[0].id == "HumanEval/0" and probs[0].entry_point == "has_close_elements"
    assert "def check(candidate)" in probs[0].check_code

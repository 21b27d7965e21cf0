"""Problem loaders on small files written here: LiveCodeBench rows (with pickled private tests), rStar-Coder
seed_sft parquet, plain JSONL; decontamination; HumanEval from the installed package."""

import base64
import hashlib
import json
import pickle
import warnings
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
    with pytest.warns(P.ProblemSetWarning):  # 2 problems, not the paper's 131
        v6 = P.load_livecodebench(lcb_dir, window="v6")
    assert [p.id for p in v6] == ["lcb/a2", "lcb/b1"]  # 2025-02-01 … 2025-05-31 inclusive
    assert [p.id for p in P.load_livecodebench(lcb_dir, release="release_v1")] == ["lcb/a1", "lcb/a2"]
    with pytest.raises(UserError, match="test3.jsonl: missing"):
        P.load_livecodebench(lcb_dir, release="release_v3")


def test_paper_windows_carry_their_counts_and_v5_ends_in_february():
    assert (P.LCB_WINDOWS["v6"].start, P.LCB_WINDOWS["v6"].end, P.LCB_WINDOWS["v6"].expected) == \
        ("2025-02-01", "2025-05-31", 131)
    assert (P.LCB_WINDOWS["v5"].start, P.LCB_WINDOWS["v5"].end, P.LCB_WINDOWS["v5"].expected) == \
        ("2024-08-01", "2025-02-28", 374)  # the paper: Aug 2024 – Feb 2025
    # the warning says which count the sources reproduce (v6: test6.jsonl's 175 less January's 44) and which not
    assert P.LCB_WINDOWS["v6"].source.startswith("reproduced by the sources") and "175" in P.LCB_WINDOWS["v6"].source
    assert P.LCB_WINDOWS["v5"].source.startswith("stated by the paper only") and "279" in P.LCB_WINDOWS["v5"].source


def test_v5_window_includes_february_2025(tmp_path):
    rows = [lcb_row(q, d, "[]") for q, d in [("jul", "2024-07-31T23:00:00"), ("aug", "2024-08-01T00:00:00"),
                                               ("feb", "2025-02-27T00:00:00"), ("feb28", "2025-02-28T18:00:00"),
                                               ("mar", "2025-03-01T00:00:00")]]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(P.ProblemSetWarning, match="paper's v5 has 374"):
        v5 = P.load_livecodebench(tmp_path, window="v5")
    assert [p.id for p in v5] == ["lcb/aug", "lcb/feb", "lcb/feb28"]


def test_a_paper_window_with_the_wrong_count_warns_loudly(lcb_dir, capsys, monkeypatch):
    with pytest.warns(P.ProblemSetWarning, match=r"window v6 .* holds 2 problems, but the paper's v6 has 131"):
        P.load_livecodebench(lcb_dir, window="v6")
    err = capsys.readouterr().err
    assert err.startswith("WARNING: ") and "the paper's v6 has 131 (reproduced by the sources" in err
    assert "release_v6" in err
    monkeypatch.setitem(P.LCB_WINDOWS, "v6", P.LcbWindow("2025-02-01", "2025-05-31", 2, "a test"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right count: silence
        assert len(P.load_livecodebench(lcb_dir, window="v6")) == 2
    assert capsys.readouterr().err == ""


def test_question_id_hash_names_the_set_not_its_order(lcb_dir):
    probs = P.load_livecodebench(lcb_dir)
    want = hashlib.sha256("a1\na2\nb1\nb2".encode()).hexdigest()
    assert P.question_ids_sha256(probs) == P.question_ids_sha256(probs[::-1]) == want
    assert P.question_ids_sha256(probs[:3]) != want


def test_lcb_loads_report_count_window_and_hash(lcb_dir):
    from ssd_jax.config import ProblemSource
    from ssd_jax.sampling.stage import describe_problem_set, load_problems

    with pytest.warns(P.ProblemSetWarning):
        probs, rep = load_problems(ProblemSource(kind="lcb", path=str(lcb_dir), window="v6", limit=1))
    assert (rep["problems"], rep["loaded"], rep["expected_problems"], rep["window"]) == (1, 2, 131, "v6")
    assert (rep["start_date"], rep["end_date"]) == ("2025-02-01", "2025-05-31")
    assert rep["question_ids_sha256"] == hashlib.sha256(b"a2").hexdigest()
    line = describe_problem_set(rep)
    assert "window v6 loaded 2 problems, WARNING: the paper's v6 has 131; 1 used" in line
    assert rep["question_ids_sha256"] in line
    _, rep = load_problems(ProblemSource(kind="lcb", path=str(lcb_dir)))
    assert rep["expected_problems"] is None and "loaded 4 problems; release all files" in describe_problem_set(rep)
    assert describe_problem_set({"kind": "humaneval", "problems": 164}) is None
    pool = lcb_dir / "pool.jsonl"  # not a test*.jsonl: the LCB loader ignores it
    pool.write_text(json.dumps({"id": "x", "question": "Count vowels."}) + "\n")
    _, rep = load_problems(ProblemSource(kind="jsonl", path=str(pool), decontaminate_against=str(lcb_dir)))
    assert rep["decontaminated_against"] == {"path": str(lcb_dir), "problems": 4, "question_ids_sha256":
                                             hashlib.sha256(b"a1\na2\nb1\nb2").hexdigest()}


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
    with pytest.raises(UserError, match=r"test.jsonl:2: not valid JSON \(Expecting property name enclosed in double "
                                         r"quotes at column 2\)"):
        P.load_livecodebench(tmp_path)
    (tmp_path / "test.jsonl").write_text('{"question_title": "a\tb"}\n')  # a raw tab inside a string
    with pytest.raises(UserError, match=r"test.jsonl:1: not valid JSON \(Invalid control character at column 22\)"):
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
    assert [p.id for p in probs] == ["rstar/q1", "rstar/q2", "rstar/q3", "rstar/q5"]  # q2 differs in case: kept
    assert rep.dedup_statement_dropped == 0 and rep.dedup_question_id_dropped == 1


def test_rstar_statement_dedup_is_exact_or_casefolded(tmp_path):
    rows = [
        {"question_id": "a", "question": "Sum  of\nA and B", "is_passed": True},
        {"question_id": "b", "question": " Sum of A\tand B\n", "is_passed": True},  # whitespace only: a duplicate
        {"question_id": "c", "question": "sum of a and b", "is_passed": True},  # case only: not for the paper
        {"question_id": "d", "question": "Sum of A and C", "is_passed": True},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-0.parquet")
    probs, rep = P.load_rstar_seed_sft(tmp_path, dedup="statement")
    assert [p.id for p in probs] == ["rstar/a", "rstar/c", "rstar/d"] and rep.dedup_statement_dropped == 1
    probs, rep = P.load_rstar_seed_sft(tmp_path, dedup="statement_casefold")
    assert [p.id for p in probs] == ["rstar/a", "rstar/d"] and rep.dedup_statement_dropped == 2
    with pytest.raises(UserError, match="dedup='text': expected one of question_id, statement, statement_casefold"):
        P.load_rstar_seed_sft(tmp_path, dedup="text")


def test_rstar_dedup_none_keeps_every_row_under_distinct_ids(tmp_path):
    rows = [{"question_id": "q1", "question": "Sum of A and B", "is_passed": True},
            {"question_id": "q2", "question": "Reverse a list", "is_passed": True},
            {"question_id": "q1", "question": "Sum of A and B", "is_passed": False},
            {"question_id": "q1", "question": "Sum of A and B (again)", "is_passed": True}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-0.parquet")
    probs, rep = P.load_rstar_seed_sft(tmp_path, passed_only=False, dedup="none")
    assert [p.id for p in probs] == ["rstar/q1", "rstar/q2", "rstar/q1~2", "rstar/q1~3"]
    assert rep.duplicate_ids_renamed == 2 and rep.kept == 4
    again, _ = P.load_rstar_seed_sft(tmp_path, passed_only=False, dedup="none")
    assert [p.id for p in again] == [p.id for p in probs]  # the same ids on every load: resume finds its samples
    # one id with two different statements under statement de-dup gets the same treatment
    probs, rep = P.load_rstar_seed_sft(tmp_path, passed_only=False, dedup="statement")
    assert [p.id for p in probs] == ["rstar/q1", "rstar/q2", "rstar/q1~2"] and rep.duplicate_ids_renamed == 1


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

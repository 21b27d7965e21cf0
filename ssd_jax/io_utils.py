"""Files that survive a kill: whole files are written to a temp sibling, fsynced and renamed (`atomic_write_*`);
whole folders are built beside their target and swapped in (`replace_dir`); append-only logs lose at most the line
being written (`JsonlLog`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path

from ssd_jax.errors import UserError


def umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status) where possible."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp sibling, fsync, rename over `path`: readers see the old file or the new one. The
    file gets the mode an ordinary write would (0666 less the umask; mkstemp's own is 0600, owner-only)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `out`, replacing any previous `out`.

    `out` is never partly written: it is the old folder until the rename and the new one after. A kill between the
    two renames leaves the old one as `.<name>.old-<pid>` beside a missing `out`, so a rerun rebuilds it."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class JsonlLog:
    """An append-only JSONL file of records with unique keys, the one format of every resumable stage's output.

    Opening it reads every complete line; a last line without its newline was torn by a kill and is cut off
    (with `repair`; only the file's one writer may repair). `append` writes, flushes and fsyncs before it
    returns, so what it returned from survives a kill. A line that is not a record, or a key seen twice, is one
    clear error naming the file and line: a resumed stage never appends to a file it does not understand."""

    def __init__(self, path: str | os.PathLike, key: Callable[[dict], Hashable], what: str = "record",
                 repair: bool = True):
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        self.done: set = set()
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = 0
        for line_no, line in enumerate(data.splitlines(keepends=True), 1):
            if not line.endswith(b"\n"):
                break  # torn by a kill
            try:
                rec = json.loads(line)
                k = key(rec)
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{self.path}:{line_no}: not a {what}; refusing to append to it") from None
            if k in self.done:
                raise UserError(f"{self.path}:{line_no}: {what} {k} appears twice")
            self.done.add(k)
            self.records.append(rec)
            good += len(line)
        if good != len(data) and repair:
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def rewind(self, keep: Callable[[dict], bool]) -> None:
        """Keep only the records `keep` accepts (a run resumed from an earlier step drops what came after it);
        the file is rewritten whole, atomically."""
        kept = [r for r in self.records if keep(r)]
        if len(kept) == len(self.records):
            return
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        self.records, self.done = kept, {self.key(r) for r in kept}

    def reorder(self, keys: list[Hashable]) -> None:
        """Rewrite the file whole (atomically) with its records in the order of `keys`, the ones `keys` lacks after
        them as they were: a stage that appends in completion order leaves its finished output in one canonical
        order, the same whether or not it was interrupted. No write when the order already holds."""
        rank = {k: i for i, k in enumerate(keys)}
        ordered = sorted(self.records, key=lambda r: rank.get(self.key(r), len(rank)))  # stable: unknowns keep order
        if [self.key(r) for r in ordered] == [self.key(r) for r in self.records]:
            return
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
        self.records = ordered

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(records)
        self.done.update(self.key(r) for r in records)


def cache_root() -> Path:
    """ssd-jax's one cache folder (bundled models, tokenizers, XLA's compiled programs): $SSD_JAX_CACHE, else
    $XDG_CACHE_HOME/ssd_jax, else ~/.cache/ssd_jax."""
    if os.environ.get("SSD_JAX_CACHE"):
        return Path(os.environ["SSD_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssd_jax"


def json_problem(e: json.JSONDecodeError) -> str:
    """What is wrong with a JSON line and where, for an error naming the file and line ("Invalid control
    character at column 12"; the exception's own `msg` stops at "at")."""
    return f"{e.msg.removesuffix(' at')} at column {e.colno}"

"""What an isolation layer is made of: the `Layer`, and what its barrier hides and binds back.

A layer is "bwrap" (bubblewrap's arguments, built once when the layer is chosen), "ns" (our bootstrap, `_boot.py`,
builds the namespaces from a plan of items made for each run's work dir) or "unsafe" (limits only). Both barriers
replace `/tmp` and the caller's home (credentials live there) by an empty tmpfs and bind the interpreter's own
directories back read-only, so a venv in /tmp or a pyenv under the home still imports.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from typing import Iterable, Literal

TMP_BYTES = 256 << 20  # the private /tmp of bwrap and namespaces
_FORCE_LEGACY_RO = False  # tests: build the read-only view the pre-5.12 way (remount by remount)


@dataclass(frozen=True)
class Layer:
    """One isolation layer (as `isolation.select_layer` chose it): how each program is started and confined."""

    kind: Literal["bwrap", "ns", "unsafe"]
    args: tuple[str, ...] = ()  # bwrap and its namespace flags (everything except the per-run binds)
    ns: Literal["host", "user"] | None = None  # namespaces: "user" = in a fresh user namespace
    userns: bool = False  # a fresh user namespace: RLIMIT_NPROC then counts only the sandbox's processes
    drop: tuple[int, int] | None = None  # (uid, gid) the bootstrap switches to inside; None = stay the caller
    capdrop: bool = False  # drop all capabilities (a user namespace's root cannot switch uid)

    def label(self, nproc_on: bool) -> str:
        """e.g. "bwrap+rlimits+nobody", "ns+userns+rlimits", "unsafe-rlimits(no-nproc)"."""
        head = {"bwrap": "bwrap+", "ns": "ns+userns+" if self.ns == "user" else "ns+", "unsafe": "unsafe-"}[self.kind]
        return head + ("rlimits" if nproc_on else "rlimits(no-nproc)") + "+nobody" * (self.drop is not None)

    def run_uid(self) -> int:
        """The host uid programs run as (the kernel never applies RLIMIT_NPROC to uid 0)."""
        return self.drop[0] if self.drop else os.geteuid()


def _interpreter_dirs(python: str) -> set[str]:
    return {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(python)))}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _home() -> str | None:
    home = os.path.realpath(os.path.expanduser("~"))
    return home if home not in ("/", "") and os.path.isdir(home) else None


def _rebind_under(root: str, python: str) -> list[str]:
    """bwrap: after `root` was replaced by an empty tmpfs, bind the interpreter's own directories under it back
    read-only (a venv in /tmp, a pyenv under the home), with world-readable mount points so "nobody" can import."""
    args: list[str] = []
    made: set[str] = set()
    dirs = sorted(p for p in _interpreter_dirs(python) if p.startswith(root.rstrip(os.sep) + os.sep))
    for p in dirs:
        if any(p.startswith(q + os.sep) for q in dirs):
            continue  # inside a directory bound already
        parts = os.path.relpath(p, root).split(os.sep)
        for i in range(1, len(parts)):
            d = os.path.join(root, *parts[:i])
            if d not in made:
                made.add(d)
                args += ["--perms", "0755", "--dir", d]
        args += ["--ro-bind", p, p]
    return args


def _hide_home(python: str) -> list[str]:
    """Hide the caller's home (credentials live there) but re-expose the interpreter if it lives under it."""
    home = _home()
    return ["--perms", "0755", "--tmpfs", home, *_rebind_under(home, python)] if home else []


def _blocking_ancestor(path: str) -> str | None:
    """The outermost directory above `path` that an unrelated user cannot traverse (no o+x); None if none."""
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        d = os.sep.join(parts[:i])
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return None
    return None


def _outermost(paths: Iterable[str]) -> list[str]:
    ps = sorted(set(paths))
    return [p for p in ps if not any(q != p and _under(p, q) for q in ps)]


def _ns_items(layer: Layer, work: str, python: str, legacy_ro: bool = False) -> list[str]:
    """The bootstrap's namespace plan: private /tmp, hidden home (and, when dropping to "nobody", every directory
    it could not traverse on the way to the interpreter), the interpreter bound back, a minimal /dev, the work dir."""
    hx = lambda p: p.encode().hex()  # noqa: E731
    tmp = os.path.realpath("/tmp")
    hides = [_home()] if _home() else []
    if layer.drop is not None:
        hides += [a for d in _interpreter_dirs(python) if (a := _blocking_ancestor(d))]
    hides = [h for h in _outermost(hides) if not _under(h, tmp)]
    roots = [tmp, *hides]
    binds = [d for d in _outermost(_interpreter_dirs(python)) if any(_under(d, r) for r in roots)]
    return [f"ns:{layer.ns}", f"tmp:{hx(tmp)}:{TMP_BYTES}", *(f"hide:{hx(h)}" for h in hides),
            *(f"bind:{hx(b)}" for b in binds), "dev:", f"work:{hx(work)}"] + (["rolegacy:"] if legacy_ro else [])


def _boot_items(layer: Layer, work: str, python: str) -> list[str]:
    """The bootstrap's items that build `layer`'s barrier around `work` (a fresh child's and a zygote's alike): the
    namespace plan, the capability drop, the switch to "nobody"."""
    items = _ns_items(layer, work, python, _FORCE_LEGACY_RO) if layer.kind == "ns" else []
    if layer.capdrop:
        items.append("capdrop:")
    if layer.drop is not None:
        items.append(f"setuid:{layer.drop[0]}:{layer.drop[1]}")
    return items

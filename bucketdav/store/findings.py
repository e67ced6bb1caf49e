"""What the store checker decides and reports, apart from the walk: pure functions of names,
modes and times, and the Report a check fills."""

from __future__ import annotations

import logging
import os
import random
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bucketdav.store.entries import Series

log = logging.getLogger(__name__)

EXAMPLES_PER_KIND = 20
SAMPLE_SIZE = 100
STAGING_GRACE = 3600.0
_LATEST = ".latest"
_BAD_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH

# Every kind of problem, in the order the report lists them.
KINDS = {
    "corrupt": "blobs whose content does not hash to their name",
    "misplaced": "entries not where the layout puts them, or of a kind the store never makes",
    "unlinked": "files in explode/ or replica/ that are not a link (or copy) of a blob",
    "symlink": "symlinks that dangle or lead outside where they belong",
    "latest": "latest links whose replica is missing",
    "source": "trees without their archive's blob; notes (decompressed/) that are wrong",
    "leftover": "leftovers of an interrupted write (staging/, temporary latest links)",
    "mode": "wrong permissions (blobs not 0444, world-writable, setuid/setgid/sticky)",
}


# -- pure decisions ----------------------------------------------------------------------


def blob_name_problem(parts: Sequence[str], digest_len: int) -> str | None:
    """Why the file at blob/<parts> is not where a blob of that name lives, or None."""
    if len(parts) != 3:
        return f"a file at depth {len(parts)} of blob/ (blobs are at blob/ab/cd/<digest>)"
    return digest_name_problem(parts, digest_len)


def digest_name_problem(parts: Sequence[str], digest_len: int) -> str | None:
    """Why <ab>/<cd>/<name> is not a lower-case digest in its own fan-out folders, or None."""
    first, second, name = parts
    if len(name) != digest_len or not is_lower_hex(name):
        return f"the name is not {digest_len} lower-case hex digits"
    if (first, second) != (name[:2], name[2:4]):
        return f"in the wrong fan-out folder (should be {name[:2]}/{name[2:4]}/)"
    return None


def is_lower_hex(text: str) -> bool:
    """True when `text` is non-empty and only 0-9a-f."""
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def mode_problem(mode: int, *, content: bool) -> str | None:
    """Why a mode is wrong: content files must be 0444; nothing world-writable or set-id."""
    perms = stat.S_IMODE(mode)
    if content and perms != 0o444:
        return f"mode {perms:04o}, content files are 0444"
    if perms & _BAD_BITS:
        return f"mode {perms:04o} is world-writable or setuid/setgid/sticky"
    return None


def repaired_mode(mode: int, *, content: bool) -> int:
    """The mode a repair gives: 0444 for content, else the same without the dangerous bits."""
    return 0o444 if content else stat.S_IMODE(mode) & ~_BAD_BITS


def staging_is_leftover(newest_mtime: float, now: float, grace: float = STAGING_GRACE) -> bool:
    """True when a staging entry has not changed for `grace` seconds: no upload is writing it."""
    return now - newest_mtime > grace


def inside(base: str, path: str) -> bool:
    """True when the normalised `path` is `base` or below it."""
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def latest_series(name: str, target: str, siblings: Sequence[str]) -> Series | None:
    """The replica series a `latest` link named `name` belongs to, or None if it is not one.

    A name may hold `.latest` more than once; the split whose stamped names match the link's
    target (or, for a dangling link, any sibling) wins.
    """
    candidates = []
    start = name.find(_LATEST)
    while start > 0:
        ext = name[start + len(_LATEST) :]
        if not ext or ext.startswith("."):
            candidates.append(Series(name[:start], ext))
        start = name.find(_LATEST, start + 1)
    for series in candidates:
        if series.parse(target) is not None:
            return series
    for series in candidates:
        if any(series.parse(s) is not None for s in siblings):
            return series
    return None


def newest_replica(series: Series, names: Sequence[str]) -> str | None:
    """The newest stamped name of `series` among `names`: latest stamp, then highest index."""
    best: tuple[str, int] | None = None
    found = None
    for name in names:
        key = series.parse(name)
        if key is not None and (best is None or key > best):
            best, found = key, name
    return found


def pick_sample(items: Sequence[str], size: int, rng: random.Random) -> set[str]:
    """Up to `size` of `items`, chosen at random."""
    return set(items) if len(items) <= size else set(rng.sample(list(items), size))


# -- the report --------------------------------------------------------------------------


@dataclass
class Report:
    """What a check found and did: counts, the first paths of each problem, repairs."""

    root: Path
    algorithm: str
    full: bool
    scanned: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    repaired: Counter[str] = field(default_factory=Counter)
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, kind: str, path: str, detail: str) -> None:
        """Record one problem of `kind` at `path` (relative to the store)."""
        self.problems[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES_PER_KIND:
            shown.append(f"{path}: {detail}")

    def fixed(self, kind: str, action: str) -> None:
        """Record that one problem of `kind` was repaired, and how."""
        self.repaired[kind] += 1
        if len(self.actions) < EXAMPLES_PER_KIND * len(KINDS):
            self.actions.append(action)
        log.info("repair: %s", action)

    @property
    def remaining(self) -> int:
        """Problems found and not repaired."""
        return sum(max(0, n - self.repaired[k]) for k, n in self.problems.items())

    @property
    def clean(self) -> bool:
        """True when the store has no problem left."""
        return self.remaining == 0

    def write(self, out: TextIO) -> None:
        """Print the report for a person."""
        mode = "full" if self.full else f"sampled, up to {SAMPLE_SIZE} blobs hashed"
        print(f"bucketdav check {self.root} ({self.algorithm}, {mode})", file=out)
        print("scanned: " + ", ".join(f"{n} {k}" for k, n in self.scanned.items()), file=out)
        for note in self.notes:
            print(f"note: {note}", file=out)
        for kind, text in KINDS.items():
            if self.problems[kind]:
                print(f"{kind}: {self.problems[kind]} {text}", file=out)
                for example in self.examples.get(kind, []):
                    print(f"  {example}", file=out)
                if self.problems[kind] > EXAMPLES_PER_KIND:
                    print(f"  ... and {self.problems[kind] - EXAMPLES_PER_KIND} more", file=out)
        for action in self.actions:
            print(f"repaired: {action}", file=out)
        if self.clean:
            print("clean" + (" after repairs" if self.repaired else ""), file=out)
        else:
            print(f"NOT CLEAN: {self.remaining} problems left", file=out)

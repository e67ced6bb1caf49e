"""Names of replica entries: `<stem>.<YYYYmmdd.HHMM>.<n><ext>` and their `latest` link.

An entry's age and order come from its name alone, so they survive copies and restores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

STAMP_FORMAT = "%Y%m%d.%H%M"
# The extension is what uploads.naming.split_suffix gives: one `.suffix`, or a compressed tar's.
_ENTRY_RE = re.compile(
    r"(?P<stem>.+)\.(?P<stamp>\d{8}\.\d{4})\.(?P<index>\d+)"
    r"(?P<ext>\.tar\.(?:gz|bz2|xz)|\.[^.]*)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Series:
    """The names of one upload's replicas in a folder: `<stem>.<stamp>.<n><ext>` and latest."""

    stem: str
    ext: str

    def stamped(self, stamp: str, index: int) -> str:
        """The replica name for `stamp` and index `index`."""
        return f"{self.stem}.{stamp}.{index}{self.ext}"

    @property
    def latest(self) -> str:
        """The name of the link to the newest replica."""
        return f"{self.stem}.latest{self.ext}"

    def parse(self, name: str) -> tuple[str, int] | None:
        """(stamp, index) when `name` is one of this series' replica names, else None."""
        pattern = rf"{re.escape(self.stem)}\.(\d{{8}}\.\d{{4}})\.(\d+){re.escape(self.ext)}"
        match = re.fullmatch(pattern, name)
        return (match.group(1), int(match.group(2))) if match else None


def stamp_of(moment: datetime) -> str:
    """The UTC minute of `moment` as it appears in replica names: `YYYYmmdd.HHMM`."""
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


def stamp_moment(stamp: str) -> datetime | None:
    """The UTC minute a `YYYYmmdd.HHMM` stamp names, or None when it is no real time."""
    try:
        return datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class Entry:
    """A replica entry's name read apart: its series, stamp, index and the time it names."""

    name: str
    series: Series
    stamp: str
    index: int
    moment: datetime

    @property
    def order(self) -> tuple[str, int]:
        """Newer entries sort later: by stamp, then by index."""
        return self.stamp, self.index


def parse_entry(name: str) -> Entry | None:
    """The entry `name` is (`<stem>.<YYYYmmdd.HHMM>.<n><ext>`), or None when it is not one.

    The stem takes as much as it can, so a stem that holds a stamp of its own is still read
    as the upload named it; a stamp that is no real time means the name is not an entry.
    """
    match = _ENTRY_RE.fullmatch(name)
    if match is None:
        return None
    moment = stamp_moment(match.group("stamp"))
    if moment is None or len(match.group("index")) > 9:
        return None
    series = Series(match.group("stem"), match.group("ext") or "")
    if series.parse(name) is None:
        return None
    return Entry(name, series, match.group("stamp"), int(match.group("index")), moment)

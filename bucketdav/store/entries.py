"""Names of replica entries: `<stem>.<YYYYmmdd.HHMM>.<n><ext>` and their `latest` link."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

STAMP_FORMAT = "%Y%m%d.%H%M"


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

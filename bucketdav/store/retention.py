"""Retention rules for replica folders, as pure decisions: which entries of a folder go, and why.

Each rule is a reason to keep: an entry goes only when a rule applies to its folder and no
rule keeps it. `keep_last` keeps the N newest entries of each name (stem and extension),
`keep_days` those younger than D days; age and order come from the entry's name. The entry
a `latest` link points at is always kept, and so is every name that is not an entry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bucketdav.store.entries import Entry, Series, parse_entry

DAY = 86400


@dataclass(frozen=True)
class Rules:
    """The retention rules for a folder; both unset means keep everything."""

    keep_last: int | None = None
    keep_days: int | None = None  # in seconds

    @property
    def active(self) -> bool:
        """True when at least one rule is set."""
        return self.keep_last is not None or self.keep_days is not None

    def why(self) -> str:
        """Why an entry these rules do not keep goes: "older than 30 days, keep last 10"."""
        reasons = []
        if self.keep_days is not None:
            reasons.append(f"older than {_span(self.keep_days)}")
        if self.keep_last is not None:
            reasons.append(f"keep last {self.keep_last}")
        return ", ".join(reasons)


# A template's folder pattern: a literal segment, or None for a segment a header fills.
Pattern = tuple[str | None, ...]


@dataclass(frozen=True)
class Policy:
    """Global rules, and the rules of templates that set their own, for matching folders."""

    default: Rules
    # Every current template's pattern, with its own rules (None: the global ones apply).
    templates: tuple[tuple[Pattern, Rules | None], ...] = ()

    @property
    def active(self) -> bool:
        """True when any folder can have an entry removed."""
        return self.default.active or any(r is not None and r.active for _, r in self.templates)

    def rules_for(self, segments: Sequence[str]) -> list[Rules]:
        """The rules that judge the folder `replica/<segments>`: one per template making it.

        A folder no template makes (a template since removed) gets the global rules. When
        several templates make it, each one's rules are a reason to keep.
        """
        found = [
            self.default if rules is None else rules
            for pattern, rules in self.templates
            if matches(pattern, segments)
        ]
        return found or [self.default]


def matches(pattern: Pattern, segments: Sequence[str]) -> bool:
    """True when the template with `pattern` makes the folder `replica/<segments>`."""
    return len(pattern) == len(segments) and all(
        literal is None or literal == segment
        for literal, segment in zip(pattern, segments, strict=True)
    )


def expired(
    names: Iterable[str],
    *,
    rules: Sequence[Rules],
    now: datetime,
    latest_targets: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """The entries among `names` that no rule keeps, each with why it goes, oldest first.

    `names` are a folder's file and tree-link entries (not its folders or other links);
    `latest_targets` are the names its `latest` links point at, which always stay.
    """
    if not rules or not all(r.active for r in rules):
        return []
    kept = set(latest_targets)
    series: dict[Series, list[Entry]] = defaultdict(list)
    for name in names:
        entry = parse_entry(name)
        if entry is not None:
            series[entry.series].append(entry)
    gone = []
    for entries in series.values():
        entries.sort(key=lambda e: e.order, reverse=True)
        for rank, entry in enumerate(entries):
            if entry.name in kept or any(_keeps(r, entry, rank, now) for r in rules):
                continue
            gone.append((entry, "; ".join(dict.fromkeys(r.why() for r in rules))))
    gone.sort(key=lambda item: (item[0].order, item[0].name))
    return [(entry.name, why) for entry, why in gone]


def _keeps(rules: Rules, entry: Entry, rank: int, now: datetime) -> bool:
    if rules.keep_last is not None and rank < rules.keep_last:
        return True
    return rules.keep_days is not None and now - entry.moment < timedelta(seconds=rules.keep_days)


def _span(seconds: int) -> str:
    if seconds % DAY == 0:
        days = seconds // DAY
        return f"{days} day" if days == 1 else f"{days} days"
    hours, rest = divmod(seconds, 3600)
    if not rest:
        return f"{hours} hours" if hours != 1 else "1 hour"
    return f"{seconds} seconds"

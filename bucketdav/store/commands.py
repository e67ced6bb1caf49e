"""`bucketdav gc` and `bucketdav rm`: run from the shell, print what went, set the exit status."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from bucketdav.settings import Settings
from bucketdav.store.blobs import Store
from bucketdav.store.collect import Collector
from bucketdav.store.expire import RefusedPath, Removed, parse_rm_path, remove_entries
from bucketdav.store.gcreport import Report

_RULES = (
    "BUCKETDAV_KEEP_LAST, BUCKETDAV_KEEP_DAYS, REPLICATE_<n>_KEEP_LAST/_KEEP_DAYS, "
    "BUCKETDAV_GC_UNREFERENCED_DAYS"
)


def store_of(settings: Settings) -> Store:
    """The store of the settings, as it is (never created, nor its staging cleared)."""
    return Store(
        settings.archive_dir, settings.checksum_type, min_free=settings.min_free, node=settings.node
    )


def run_gc(settings: Settings, *, dry_run: bool, as_json: bool, out: TextIO | None = None) -> int:
    """`bucketdav gc [--dry-run] [--json]`: 0 when the run ended (or had nothing to do)."""
    out = out or sys.stdout
    store = store_of(settings)
    collector = Collector(store, settings)
    if collector.has_rules and not store.root.is_dir():
        print(f"bucketdav: ARCHIVE_DIR={store.root} is not a directory", file=sys.stderr)
        return 2
    report = collector.run(dry_run=dry_run)
    if as_json:
        print(json.dumps(report.as_json()), file=out)
    else:
        write_report(report, out)
    if not report.success:
        print(f"bucketdav: {report.error}", file=sys.stderr)
        return 1
    return 0


def write_report(report: Report, out: TextIO) -> None:
    """What went (or would go), one path a line, then the totals."""
    if not report.rules:
        print(f"no retention or collection rule is set ({_RULES}); nothing to do", file=out)
        return
    verb = "would remove" if report.dry_run else "removed"
    for item in report.removed:
        print(f"{verb} {item.path}  {item.size} bytes  {item.why}", file=out)
    print(report.summary(), file=out)


def run_rm(
    settings: Settings, paths: list[str], *, as_json: bool = False, out: TextIO | None = None
) -> int:
    """`bucketdav rm PATH…`: remove replica entries; 0 when all went, 1 when any was refused."""
    out = out or sys.stdout
    store = store_of(settings)
    parsed = []
    problems = []
    for text in paths:
        try:
            parsed.append(parse_rm_path(text, archive_uri=settings.archive_uri))
        except RefusedPath as exc:
            problems.append(str(exc))
    removed: list[Removed] = []
    if not problems:
        removed, problems = remove_entries(store, parsed)
    if as_json:
        print(
            json.dumps(
                {"removed": [r.path for r in removed], "refused": problems, "count": len(removed)}
            ),
            file=out,
        )
    else:
        for item in removed:
            print(f"removed {item.path}", file=out)
    for problem in problems:
        print(f"bucketdav rm: {problem}", file=sys.stderr)
    if problems:
        print("bucketdav rm: nothing was removed", file=sys.stderr)
        return 1
    return 0

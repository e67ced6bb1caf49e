"""What one retention and collection run did: for people, for scripts, and for metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bucketdav.store.expire import Removed


@dataclass
class Report:
    """What one run removed (or, dry, would remove), how long it took, and whether it ended."""

    dry_run: bool
    removed: list[Removed] = field(default_factory=list)
    notes: int = 0
    skipped: int = 0
    seconds: float = 0.0
    success: bool = True
    error: str | None = None
    rules: bool = True

    def count(self, kind: str) -> int:
        """How many paths of `kind` ("entry", "tree", "blob") went."""
        return sum(1 for r in self.removed if r.kind == kind)

    @property
    def entries(self) -> int:
        """Replica entries removed."""
        return self.count("entry")

    @property
    def trees(self) -> int:
        """Trees removed."""
        return self.count("tree")

    @property
    def blobs(self) -> int:
        """Blobs removed."""
        return self.count("blob")

    @property
    def bytes_freed(self) -> int:
        """Bytes the removed paths held alone (a tree's files are its blobs', freed later)."""
        return sum(r.size for r in self.removed)

    def as_json(self) -> dict[str, Any]:
        """The report for scripts (`bucketdav gc --json`)."""
        return {
            "dry_run": self.dry_run,
            "removed": [
                {"path": r.path, "kind": r.kind, "bytes": r.size, "why": r.why}
                for r in self.removed
            ],
            "count": len(self.removed),
            "bytes": self.bytes_freed,
            "entries": self.entries,
            "trees": self.trees,
            "blobs": self.blobs,
            "notes": self.notes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "success": self.success,
            "error": self.error,
        }

    def summary(self) -> str:
        """One line: counts, bytes and time."""
        verb = "would remove" if self.dry_run else "removed"
        text = (
            f"{verb} {len(self.removed)} paths, {self.bytes_freed} bytes "
            f"({self.entries} replica entries, {self.trees} trees, {self.blobs} blobs) "
            f"in {self.seconds:.2f} s"
        )
        if self.skipped:
            text += f"; {self.skipped} left for the next run (in use or changed)"
        return text

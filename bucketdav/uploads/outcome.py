"""What one upload made: its blob, decompressed blob, tree and replicas (the pipeline's types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bucketdav.store.blobs import Blob
from bucketdav.store.holds import Holds


@dataclass(frozen=True)
class Tree:
    """An extracted archive: the digest of the tar or zip, its tree, and how many files."""

    digest: str
    path: Path
    files: int
    created: bool = False


@dataclass
class Outcome:
    """Everything one upload made; each later step fills its part."""

    blob: Blob
    filename: str
    decompressed: Blob | None = None
    archive: Tree | None = None
    replicas: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # What the upload relies on, kept from collection: taken by unpack() (the first step),
    # let go by replicate() (the last), or by whichever step fails.
    holds: Holds = field(default_factory=Holds, repr=False, compare=False)

    @property
    def final(self) -> Path:
        """What replicas point at: the tree of an archive, else the file's blob."""
        return self.archive.path if self.archive else self.blob.path

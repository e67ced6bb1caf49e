"""What an upload becomes once its blob is stored: decompressed blob, tree, replicas."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bucketdav.errors import UnsafeArchive
from bucketdav.settings import Settings
from bucketdav.store.blobs import Blob, Store
from bucketdav.uploads.archives.extract import unpack
from bucketdav.uploads.outcome import Outcome
from bucketdav.uploads.replicas import replicate

if TYPE_CHECKING:
    from bucketdav.observe.metrics import Metrics


def process(
    store: Store,
    settings: Settings,
    blob: Blob,
    *,
    filename: str,
    headers: Mapping[str, str],
    metrics: Metrics | None = None,
) -> Outcome:
    """Run the steps after storing the blob; `headers` are keyed by lower-case name.

    The upload's access-log line says what it made (api.py); `metrics` counts it.
    """
    outcome = Outcome(blob=blob, filename=filename)
    started = time.monotonic()
    try:
        unpack(
            store,
            outcome,
            max_bytes=settings.extract_max_bytes,
            max_files=settings.extract_max_files,
        )
    except UnsafeArchive:
        if metrics is not None:
            metrics.archive(time.monotonic() - started, refused=True)
        raise
    if metrics is not None and _unpacked(outcome):
        metrics.archive(time.monotonic() - started, refused=False)
    replicate(store, settings.replicate, headers, outcome)
    if metrics is not None:
        metrics.processed(outcome)
    return outcome


def _unpacked(outcome: Outcome) -> bool:
    """True when this upload made a new tree or decompressed blob (not found existing ones)."""
    made_tree = outcome.archive is not None and outcome.archive.created
    return made_tree or (outcome.decompressed is not None and outcome.decompressed.created)


def describe(
    outcome: Outcome, *, store: Store, base_url: str, archive_uri: str | None
) -> dict[str, Any]:
    """The upload response body: the earlier service's fields plus `url`."""

    def path_of(path: Path | None) -> str | None:
        if path is None:
            return None
        relative = store.relative(path)
        return f"{archive_uri.rstrip('/')}/{relative}" if archive_uri else relative

    def url_of(path: Path | None) -> str | None:
        if path is None:
            return None
        suffix = "/" if path.is_dir() else ""
        return f"{base_url.rstrip('/')}/{quote(store.relative(path))}{suffix}"

    decompressed = outcome.decompressed.path if outcome.decompressed else None
    archive = outcome.archive.path if outcome.archive else None
    replicas = outcome.replicas or None
    return {
        "code": 200,
        "status": "Success",
        "checksum": {
            "blob": outcome.blob.digest,
            "decompressed": outcome.decompressed and outcome.decompressed.digest,
            "archive": outcome.archive and outcome.archive.digest,
        },
        "path": {
            "blob": path_of(outcome.blob.path),
            "decompressed": path_of(decompressed),
            "archive": path_of(archive),
            "replicas": [path_of(p) for p in replicas] if replicas else None,
        },
        "url": {
            "blob": url_of(outcome.blob.path),
            "decompressed": url_of(decompressed),
            "archive": url_of(archive),
            "replicas": [url_of(p) for p in replicas] if replicas else None,
        },
        "size": outcome.blob.size,
        "algorithm": store.algorithm,
        "filename": outcome.filename,
        "files": outcome.archive.files if outcome.archive else None,
        "created": outcome.blob.created,
        "skipped": outcome.skipped,
    }

"""The one decision: may this identity use this method on this path, filing these replicas?

The API and WebDAV both ask here (through the middleware, and the upload handler once it
knows the replicas an upload would make), so the two sides can never disagree.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bucketdav.access.rules import Identity

# The environ keys the middleware fills: the identity's name (for logs; never a secret) and
# the Identity itself (for listings, and for the upload handler's replica check).
IDENTITY_KEY = "bucketdav.identity"
ACCESS_KEY = "bucketdav.access"
_SEGMENT = re.compile("[^/]+")


class Decision(enum.Enum):
    """What to do with a request."""

    ALLOW = "allow"
    # A folder above something readable: listed, showing only what leads there.
    LIST = "list"
    # No credentials, and they are needed: 401 with a Basic challenge.
    UNAUTHORIZED = "unauthorized"
    # A known identity without the right: 403.
    FORBIDDEN = "forbidden"


def decide(identity: Identity, method: str, path: str, replicas: Iterable[str] = ()) -> Decision:
    """The decision for `method` on the decoded URL `path`.

    `replicas` are the folders, relative to replica/, that an upload would file under.
    """
    root = path.lstrip("/").split("/", 1)[0]
    if root in ("healthz", "static"):
        # Health checks, and the style and scripts of every page (a 401 page too).
        return Decision.ALLOW
    if root == "metrics":
        allowed = any(grant.metrics for grant in identity.grants)
    elif root in ("config", "connect"):
        allowed = any(grant.anything for grant in identity.grants)
    elif root == "checksum":
        allowed = may_read(identity, "/blob/") or any(g.upload for g in identity.grants)
    elif root == "upload":
        allowed = may_upload(identity, replicas)
    elif may_read(identity, path):
        return Decision.ALLOW
    else:
        allowed = False
        # WebDAV clients send credentials only when asked: a mounted drive without them
        # would never see more than the way to what anyone may read.
        if on_the_way(identity, path) and (identity.known or method != "PROPFIND"):
            return Decision.LIST
    if allowed:
        return Decision.ALLOW
    return Decision.FORBIDDEN if identity.known else Decision.UNAUTHORIZED


def may_upload(identity: Identity, replicas: Iterable[str] = ()) -> bool:
    """True when one of the identity's grants allows uploads filed under all of `replicas`."""
    folders = [folder.strip("/") + "/" for folder in replicas]
    return any(
        grant.upload
        and (
            grant.replicas is None
            or all(any(f.startswith(p) for p in grant.replicas) for f in folders)
        )
        for grant in identity.grants
    )


def normal_path(path: str) -> str | None:
    """`path` as "/a/b/" (one slash between segments, one at each end), None if it climbs."""
    if "//" not in path and "/." not in path and path.startswith("/"):
        return path if path.endswith("/") else path + "/"
    # Not str.split: a path of 60,000 slashes would make a list of 60,000 empty strings.
    parts = _SEGMENT.findall(path)
    if any(part in (".", "..") for part in parts):
        return None
    return "/" + "".join(part + "/" for part in parts)


def may_read(identity: Identity, path: str) -> bool:
    """True when a read prefix of the identity covers `path` (as requested, links unresolved)."""
    if identity.reads_all:
        return True
    probe = normal_path(path)
    return probe is not None and any(probe.startswith(prefix) for prefix in identity.read)


def on_the_way(identity: Identity, path: str) -> bool:
    """True when `path` is a folder above one of the identity's read prefixes."""
    probe = normal_path(path)
    return probe is not None and any(
        prefix.startswith(probe) and prefix != probe for prefix in identity.read
    )


def sees(identity: Identity, path: str) -> bool:
    """True when a listing may show `path`: readable, or on the way to something readable."""
    return may_read(identity, path) or on_the_way(identity, path)


def _everything(path: str) -> bool:
    return True


def reader_of(environ: Mapping[str, Any]) -> Callable[[str], bool]:
    """`may_read(path)` for the request's identity (always True without access control)."""
    identity = environ.get(ACCESS_KEY)
    if identity is None or identity.reads_all:
        return _everything

    def readable(path: str) -> bool:
        return may_read(identity, path)

    return readable

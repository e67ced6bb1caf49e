"""Structured logs: request ids, the JSON formatter, and what an upload's access line says."""

from __future__ import annotations

import json
import logging
import random
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bucketdav.uploads.outcome import Outcome

# Environ keys: the request's id, who sent it (set by access control), what an upload made.
REQUEST_ID = "bucketdav.request_id"
IDENTITY = "bucketdav.identity"
UPLOAD = "bucketdav.upload"
MAX_REQUEST_ID = 200
# Visible ASCII but `"` and `\`: such an id goes into a text log line without escaping.
_SANE_ID = re.compile(rf"[!#-\[\]-~]{{1,{MAX_REQUEST_ID}}}")
# Query parameters whose values may be secrets; their values never reach a log line.
_SECRET_PARAM = re.compile(
    r"(?i)(^|&)([^=&]*(?:token|secret|passw|key|sig|auth|credential|session)[^=&]*)=[^&]*"
)


def request_id(environ: dict[str, Any]) -> str:
    """The client's X-Request-Id when it is a sane token, else a new random one."""
    sent = environ.get("HTTP_X_REQUEST_ID")
    if sent and _SANE_ID.fullmatch(sent):
        return sent
    # Not a secret, only unique: the Mersenne Twister costs a tenth of os.urandom's syscall.
    return f"{random.getrandbits(128):032x}"


def redact_query(query: str) -> str:
    """`query` with the values of parameters named like secrets (token, key, …) left out."""
    if "=" not in query:
        return query
    return _SECRET_PARAM.sub(r"\1\2=REDACTED", query)


def upload_facts(outcome: Outcome, algorithm: str, *, deployed: bool = False) -> dict[str, Any]:
    """What an upload's access line says: its checksum, size, what it made, if deployed."""
    made = []
    if outcome.blob.created:
        made.append("blob")
    if outcome.decompressed is not None and outcome.decompressed.created:
        made.append("decompressed")
    if outcome.archive is not None and outcome.archive.created:
        made.append("tree")
    return {
        "algorithm": algorithm,
        "checksum": outcome.blob.digest,
        "size": outcome.blob.size,
        "made": made,
        "decompressed": outcome.decompressed and outcome.decompressed.digest,
        "archive": outcome.archive and outcome.archive.digest,
        "files": outcome.archive.files if outcome.archive else None,
        "replicas": len(outcome.replicas),
        "deployed": deployed,
    }


def upload_text(facts: dict[str, Any]) -> str:
    """The facts of upload_facts() as `name=value` words for the text access line."""
    words = [
        f"{facts['algorithm']}={facts['checksum']}",
        f"size={facts['size']}",
        f"made={','.join(facts['made']) or '-'}",
    ]
    if facts["decompressed"]:
        words.append(f"decompressed={facts['decompressed']}")
    if facts["archive"]:
        words.append(f"archive={facts['archive']} files={facts['files']}")
    words.append(f"replicas={facts['replicas']}")
    if facts["deployed"]:
        words.append("deployed=true")
    return " ".join(words)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, and the message or the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if access is not None:
            fields.update(access)
        else:
            fields["message"] = record.getMessage()
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        # ASCII only: every control and line separator is escaped, so one record is one line.
        return json.dumps(fields)

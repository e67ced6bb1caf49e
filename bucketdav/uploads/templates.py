"""Replication templates such as `user/${Username}/${Topic}`: parsing and rendering."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from bucketdav.uploads.naming import MAX_SEGMENT_BYTES, NameError_, header_segment

_TOKEN_RE = re.compile(r"^\$\{([A-Za-z0-9][A-Za-z0-9_-]*)\}$")
_PLAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+=,-]*$")


class TemplateError(ValueError):
    """A template is malformed; the message names the bad segment."""


class TemplateSkipped(ValueError):
    """A template yields no replica for this upload; the message says why."""


@dataclass(frozen=True)
class Template:
    """A parsed template: each segment is a plain name or a header name (`is_header`)."""

    variable: str
    text: str
    segments: tuple[tuple[bool, str], ...]

    @property
    def headers(self) -> tuple[str, ...]:
        """The header names the template needs, as written."""
        return tuple(value for is_header, value in self.segments if is_header)


def parse_template(variable: str, text: str) -> Template:
    """Parse `text`; each `/`-separated segment is a plain name or exactly one `${Header}`."""
    segments = []
    for part in text.strip().split("/"):
        token = _TOKEN_RE.match(part)
        if token:
            segments.append((True, token.group(1)))
        elif part and _PLAIN_RE.match(part) and "$" not in part:
            if len(part.encode()) > MAX_SEGMENT_BYTES:
                raise TemplateError(
                    f"segment {part[:20]!r}... is longer than {MAX_SEGMENT_BYTES} bytes"
                )
            segments.append((False, part))
        else:
            shown = part or "(empty)"
            raise TemplateError(
                f"segment {shown!r} is neither a plain name nor one ${{Header-Name}} token"
            )
    if not any(is_header for is_header, _ in segments):
        raise TemplateError("needs at least one ${Header-Name} token")
    return Template(variable=variable, text=text.strip(), segments=tuple(segments))


def render_template(template: Template, headers: Mapping[str, str]) -> list[str]:
    """Return the path segments for these request headers, or raise TemplateSkipped.

    `headers` must be keyed by lower-case header name.
    """
    missing = [name for name in template.headers if _lookup(headers, name) is None]
    if missing:
        raise TemplateSkipped(f"missing header {', '.join(missing)}")
    out = []
    for is_header, value in template.segments:
        if not is_header:
            out.append(value)
            continue
        try:
            out.append(header_segment(_lookup(headers, value) or ""))
        except NameError_ as exc:
            raise TemplateSkipped(f"header {value}: {exc}") from None
    return out


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header `name`; `_` and `-` match each other, as WSGI cannot tell them apart."""
    key = name.lower()
    found = headers.get(key)
    return found if found is not None else headers.get(key.replace("_", "-"))

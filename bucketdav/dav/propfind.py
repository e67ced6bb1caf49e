"""PROPFIND for the common cases: parse the request body, render the multistatus answer."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from bucketdav.dav.lookup import Node, PublicTree, content_type

DAV = "DAV:"
OC = "http://owncloud.org/ns"
CHECKSUMS = f"{{{OC}}}checksums"
CHECKSUM = f"{{{OC}}}checksum"
# Props answered for allprop, in the order clients are used to.
ALLPROP = tuple(
    f"{{DAV:}}{name}"
    for name in (
        "resourcetype",
        "displayname",
        "getlastmodified",
        "creationdate",
        "getcontentlength",
        "getcontenttype",
        "getetag",
    )
)
KNOWN = frozenset((*ALLPROP, CHECKSUMS))
# Bytes one PROPFIND may hash to answer checksums of files that are not blobs.
HASH_BUDGET = 64 << 20
# Clients name a dozen or two; each named property is answered for every node listed.
MAX_NAMED_PROPS = 100
# The answer goes out in pieces of about this many characters, whatever its whole size.
# Each piece is held three times while it is sent (text, UTF-8, Cheroot's chunk framing),
# by every answer at once, and the allocator keeps that high-water mark: 16 answers of
# 64 KiB pieces kept ~6 MiB more after three soak rounds (bench/soak.py), no faster.
STREAM_BATCH = 16 << 10
_HEAD = f'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:" xmlns:oc="{OC}">'
_TAIL = "</D:multistatus>\n"
# Paths made only of these need no percent-encoding (most names in a store).
_SAFE_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_OK = "<D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
_NOT_FOUND = "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"
_COLLECTION = "<D:resourcetype><D:collection/></D:resourcetype>"
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


# Files of one upload share their modification second; formatting it once is cheaper.
_DATES: dict[int, str] = {}
_ISO_DATES: dict[int, str] = {}


class BadPropfind(ValueError):
    """The PROPFIND body is not a well-formed DAV:propfind request."""


@dataclass(frozen=True)
class PropRequest:
    """What a PROPFIND asks for: allprop, propname, or a list of names in Clark notation."""

    mode: str
    names: tuple[str, ...] = ()


def parse_propfind(body: bytes) -> PropRequest:
    """Parse a PROPFIND body (empty means allprop); raise BadPropfind when it is malformed."""
    if not body.strip():
        return PropRequest("allprop")
    try:
        root = fromstring(body)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise BadPropfind(f"the PROPFIND body is not well-formed XML: {exc}") from None
    if root.tag != "{DAV:}propfind":
        raise BadPropfind("the PROPFIND body must be a DAV:propfind element")
    modes = [
        child for child in root if child.tag in ("{DAV:}allprop", "{DAV:}propname", "{DAV:}prop")
    ]
    if len(modes) != 1:
        raise BadPropfind("DAV:propfind needs exactly one of allprop, propname or prop")
    choice: Element = modes[0]
    if choice.tag == "{DAV:}allprop":
        return PropRequest("allprop")
    if choice.tag == "{DAV:}propname":
        return PropRequest("propname")
    names = tuple(dict.fromkeys(child.tag for child in choice if isinstance(child.tag, str)))
    if len(names) > MAX_NAMED_PROPS:
        raise BadPropfind(
            f"a PROPFIND may name at most {MAX_NAMED_PROPS} properties; this one names {len(names)}"
        )
    return PropRequest("prop", names)


def http_date(seconds: float) -> str:
    """An RFC 1123 date in GMT, independent of the locale."""
    whole = int(seconds)
    text = _DATES.get(whole)
    if text is None:
        if len(_DATES) > 4096:
            _DATES.clear()
        text = _DATES[whole] = _format_date(whole)
    return text


def iso_date(seconds: float) -> str:
    """An RFC 3339 date in UTC."""
    whole = int(seconds)
    text = _ISO_DATES.get(whole)
    if text is None:
        if len(_ISO_DATES) > 4096:
            _ISO_DATES.clear()
        text = _ISO_DATES[whole] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(whole))
    return text


def _format_date(seconds: int) -> str:
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def href_of(node: Node) -> str:
    """The percent-encoded href of a node; folders end with a slash."""
    path = node.path if _SAFE_PATH.fullmatch(node.path) else quote(node.path, safe="/")
    return path + "/" if node.is_dir and not path.endswith("/") else path


class Renderer:
    """Renders multistatus responses for one store's tree."""

    def __init__(self, tree: PublicTree) -> None:
        self.tree = tree
        self.algorithm = tree.algorithm.upper()
        self._getters = {
            "{DAV:}resourcetype": self._resourcetype,
            "{DAV:}displayname": self._displayname,
            "{DAV:}getlastmodified": self._getlastmodified,
            "{DAV:}creationdate": self._creationdate,
            "{DAV:}getcontentlength": self._getcontentlength,
            "{DAV:}getcontenttype": self._getcontenttype,
            "{DAV:}getetag": self._getetag,
            CHECKSUMS: self._checksums,
        }

    def multistatus(self, nodes: Iterable[Node], request: PropRequest) -> Iterator[bytes]:
        """The 207 body for `nodes` answering `request`, rendered one node at a time.

        Pieces of about STREAM_BATCH characters are yielded, so memory stays the same
        however many nodes and named properties the answer has.
        """
        render = self._propnames if request.mode == "propname" else self._props(request)
        parts = [_HEAD]
        size = len(_HEAD)
        for node in nodes:
            text = render(node)
            parts.append(text)
            size += len(text)
            if size >= STREAM_BATCH:
                yield "".join(parts).encode("utf-8")
                parts, size = [], 0
        parts.append(_TAIL)
        yield "".join(parts).encode("utf-8")

    def _props(self, request: PropRequest) -> Callable[[Node], str]:
        """A function rendering one node's response element for `request` (allprop or prop)."""
        budget = [HASH_BUDGET]
        names = ALLPROP if request.mode == "allprop" else request.names
        strict = request.mode == "prop"
        # One getter per asked name, looked up once per request rather than per node.
        getters = [(self._getters.get(name), _empty_element(name)) for name in names]

        def render(node: Node) -> str:
            found = []
            missing = []
            for getter, empty in getters:
                value = getter(node, budget) if getter is not None else None
                if value is not None:
                    found.append(value)
                elif strict:
                    missing.append(empty)
            text = f"<D:response><D:href>{href_of(node)}</D:href>"
            if found:
                text += f"<D:propstat><D:prop>{''.join(found)}</D:prop>{_OK}"
            if missing:
                text += f"<D:propstat><D:prop>{''.join(missing)}</D:prop>{_NOT_FOUND}"
            return text + "</D:response>"

        return render

    def _propnames(self, node: Node) -> str:
        names = ALLPROP[:4] if node.is_dir else (*ALLPROP, CHECKSUMS)
        return (
            f"<D:response><D:href>{href_of(node)}</D:href><D:propstat><D:prop>"
            f"{''.join(_empty_element(name) for name in names)}</D:prop>"
            "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
        )

    def _resourcetype(self, node: Node, budget: list[int]) -> str:
        return _COLLECTION if node.is_dir else "<D:resourcetype/>"

    def _displayname(self, node: Node, budget: list[int]) -> str:
        return f"<D:displayname>{node.name.translate(_XML_ESCAPES)}</D:displayname>"

    def _getlastmodified(self, node: Node, budget: list[int]) -> str:
        return f"<D:getlastmodified>{http_date(node.mtime)}</D:getlastmodified>"

    def _creationdate(self, node: Node, budget: list[int]) -> str:
        # POSIX keeps no creation time; stored files never change, so mtime is when they came.
        return f"<D:creationdate>{iso_date(node.mtime)}</D:creationdate>"

    def _getcontentlength(self, node: Node, budget: list[int]) -> str | None:
        return None if node.is_dir else f"<D:getcontentlength>{node.size}</D:getcontentlength>"

    def _getcontenttype(self, node: Node, budget: list[int]) -> str | None:
        if node.is_dir:
            return None
        return f"<D:getcontenttype>{content_type(node.name)}</D:getcontenttype>"

    def _getetag(self, node: Node, budget: list[int]) -> str | None:
        return None if node.is_dir else f'<D:getetag>"{self.tree.etag(node, budget)}"</D:getetag>'

    def _checksums(self, node: Node, budget: list[int]) -> str | None:
        digest = None if node.is_dir else self.tree.checksum(node, budget)
        if digest is None:
            return None
        return f"<oc:checksums><oc:checksum>{self.algorithm}:{digest}</oc:checksum></oc:checksums>"


def _empty_element(name: str) -> str:
    """An empty element for a property name in Clark notation, declaring its namespace."""
    if name.startswith("{"):
        namespace, _, local = name[1:].partition("}")
    else:
        namespace, local = "", name
    if namespace == DAV:
        return f"<D:{local}/>"
    if namespace == OC:
        return f"<oc:{local}/>"
    if not namespace:
        return f'<{local} xmlns=""/>'
    return f'<X:{local} xmlns:X="{namespace.translate(_XML_ESCAPES)}"/>'

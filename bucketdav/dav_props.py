"""PROPFIND for the common cases: parse the request body, render the multistatus answer."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from bucketdav.dav_fs import Node, PublicTree, content_type

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
        "getcontentlength",
        "getcontenttype",
        "getetag",
    )
)
KNOWN = frozenset((*ALLPROP, CHECKSUMS))
# Bytes one PROPFIND may hash to answer checksums of files that are not blobs.
HASH_BUDGET = 256 << 20
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


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
    return PropRequest("prop", names)


def http_date(seconds: float) -> str:
    """An RFC 1123 date in GMT, independent of the locale."""
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def href_of(node: Node) -> str:
    """The percent-encoded href of a node; folders end with a slash."""
    path = quote(node.path, safe="/")
    return path + "/" if node.is_dir and not path.endswith("/") else path


class Renderer:
    """Renders multistatus responses for one store's tree."""

    def __init__(self, tree: PublicTree) -> None:
        self.tree = tree
        self.algorithm = tree.algorithm.upper()

    def multistatus(self, nodes: Iterable[Node], request: PropRequest) -> bytes:
        """The whole 207 body for `nodes` answering `request`."""
        budget = [HASH_BUDGET]
        if request.mode == "propname":
            return self._propnames(nodes)
        names = ALLPROP if request.mode == "allprop" else request.names
        parts = [
            '<?xml version="1.0" encoding="utf-8"?>\n'
            f'<D:multistatus xmlns:D="DAV:" xmlns:oc="{OC}">'
        ]
        for node in nodes:
            parts.append(self._response(node, names, budget, strict=request.mode == "prop"))
        parts.append("</D:multistatus>\n")
        return "".join(parts).encode("utf-8")

    def _propnames(self, nodes: Iterable[Node]) -> bytes:
        parts = [
            '<?xml version="1.0" encoding="utf-8"?>\n'
            f'<D:multistatus xmlns:D="DAV:" xmlns:oc="{OC}">'
        ]
        for node in nodes:
            names = ALLPROP[:3] if node.is_dir else (*ALLPROP, CHECKSUMS)
            parts.append(
                f"<D:response><D:href>{href_of(node)}</D:href><D:propstat><D:prop>"
                f"{''.join(_empty_element(name) for name in names)}</D:prop>"
                "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
            )
        parts.append("</D:multistatus>\n")
        return "".join(parts).encode("utf-8")

    def _response(
        self, node: Node, names: Iterable[str], budget: list[int], *, strict: bool
    ) -> str:
        found: list[str] = []
        missing: list[str] = []
        for name in names:
            value = self._value(node, name, budget)
            if value is not None:
                found.append(value)
            elif strict:
                missing.append(_empty_element(name))
        out = [f"<D:response><D:href>{href_of(node)}</D:href>"]
        if found:
            out.append(
                f"<D:propstat><D:prop>{''.join(found)}</D:prop>"
                "<D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
            )
        if missing:
            out.append(
                f"<D:propstat><D:prop>{''.join(missing)}</D:prop>"
                "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"
            )
        out.append("</D:response>")
        return "".join(out)

    def _value(self, node: Node, name: str, budget: list[int]) -> str | None:
        if name == "{DAV:}resourcetype":
            return (
                "<D:resourcetype><D:collection/></D:resourcetype>"
                if node.is_dir
                else "<D:resourcetype/>"
            )
        if name == "{DAV:}displayname":
            return f"<D:displayname>{node.name.translate(_XML_ESCAPES)}</D:displayname>"
        if name == "{DAV:}getlastmodified":
            return f"<D:getlastmodified>{http_date(node.mtime)}</D:getlastmodified>"
        if node.is_dir:
            return None
        if name == "{DAV:}getcontentlength":
            return f"<D:getcontentlength>{node.size}</D:getcontentlength>"
        if name == "{DAV:}getcontenttype":
            return f"<D:getcontenttype>{content_type(node.name)}</D:getcontenttype>"
        if name == "{DAV:}getetag":
            return f'<D:getetag>"{self.tree.etag(node, budget)}"</D:getetag>'
        if name == CHECKSUMS:
            digest = self.tree.checksum(node, budget)
            if digest is None:
                return None
            return (
                f"<oc:checksums><oc:checksum>{self.algorithm}:{digest}</oc:checksum></oc:checksums>"
            )
        return None


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

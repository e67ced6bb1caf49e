"""The read-only WsgiDAV provider over the store's public trees."""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

from wsgidav.dav_error import HTTP_FORBIDDEN, HTTP_NOT_FOUND, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider
from wsgidav.util import etree

from bucketdav.dav.lookup import Node, PublicTree, content_type, is_active
from bucketdav.dav.propfind import CHECKSUM, CHECKSUMS

log = logging.getLogger(__name__)

ACTIVE_HEADERS = (("Content-Security-Policy", "sandbox"),)
ALWAYS_HEADERS = (("X-Content-Type-Options", "nosniff"),)


class Folder(DAVCollection):
    """A folder of a public tree (or the root listing the trees)."""

    def __init__(self, node: Node, environ: dict[str, Any], tree: PublicTree) -> None:
        super().__init__(node.path, environ)
        self.node = node
        self.tree = tree

    def get_member_names(self) -> list[str]:
        """Names of the visible members."""
        return [child.name for child in self.tree.children(self.node)]

    def get_member_list(self) -> list[Folder | File]:
        """The visible members as resources, from one listing."""
        return [
            make_resource(child, self.environ, self.tree) for child in self.tree.children(self.node)
        ]

    def get_member(self, name: str) -> Folder | File | None:
        """One member by name (looked up again, so confinement applies)."""
        node = self.tree.lookup(self.node.path.rstrip("/") + "/" + name)
        return make_resource(node, self.environ, self.tree) if node else None

    def get_display_name(self) -> str:
        """The folder's own name."""
        return self.node.name

    def get_last_modified(self) -> float:
        """Modification time of the folder."""
        return self.node.mtime

    def get_creation_date(self) -> float:
        """POSIX keeps no creation time; the folder's modification time stands in."""
        return self.node.mtime

    def get_etag(self) -> None:
        """Folders have no entity tag."""
        return None

    def support_etag(self) -> bool:
        """Folders have no entity tag."""
        return False

    def create_empty_resource(self, name: str) -> None:
        """The store is read-only over WebDAV."""
        raise DAVError(HTTP_FORBIDDEN)

    def create_collection(self, name: str) -> None:
        """The store is read-only over WebDAV."""
        raise DAVError(HTTP_FORBIDDEN)


class File(DAVNonCollection):
    """A file of a public tree: a blob or a link of one."""

    def __init__(self, node: Node, environ: dict[str, Any], tree: PublicTree) -> None:
        super().__init__(node.path, environ)
        self.node = node
        self.tree = tree

    def get_content_length(self) -> int:
        """Size in bytes."""
        return self.node.size

    def get_content_type(self) -> str:
        """Media type by extension."""
        return content_type(self.node.name)

    def get_display_name(self) -> str:
        """The file's own name."""
        return self.node.name

    def get_creation_date(self) -> float:
        """Stored content never changes, so its modification time is when it appeared."""
        return self.node.mtime

    def get_last_modified(self) -> float:
        """Modification time of the file."""
        return self.node.mtime

    def get_etag(self) -> str | None:
        """The content checksum when known, else the file's identity."""
        return self.tree.etag(self.node)

    def support_etag(self) -> bool:
        """Every file has an entity tag."""
        return True

    def support_ranges(self) -> bool:
        """Byte ranges are served."""
        return True

    def get_content(self) -> BinaryIO:
        """The file, opened for reading."""
        return open(self.node.real, "rb")

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        """The standard live properties, plus checksums when named (they may cost a read)."""
        names = super().get_property_names(is_allprop=is_allprop)
        return names if is_allprop else [*names, CHECKSUMS]

    def get_property_value(self, name: str) -> Any:
        """Standard properties from the stat; oc:checksums from the store."""
        if name != CHECKSUMS:
            return super().get_property_value(name)
        digest = self.tree.checksum(self.node)
        if digest is None:
            raise DAVError(HTTP_NOT_FOUND)
        element = etree.Element(CHECKSUMS)
        checksum = etree.SubElement(element, CHECKSUM)
        checksum.text = f"{self.tree.algorithm.upper()}:{digest}"
        return element

    def finalize_headers(self, environ: dict[str, Any], response_headers: list[Any]) -> None:
        """Keep active content from acting on this origin."""
        response_headers.extend(ALWAYS_HEADERS)
        if is_active(self.get_content_type()):
            response_headers.extend(ACTIVE_HEADERS)


def make_resource(node: Node, environ: dict[str, Any], tree: PublicTree) -> Folder | File:
    """The WsgiDAV resource of a node."""
    return Folder(node, environ, tree) if node.is_dir else File(node, environ, tree)


class StoreProvider(DAVProvider):
    """Serves the public trees of one store, read-only; it knows no locks and no dead props."""

    def __init__(self, tree: PublicTree) -> None:
        super().__init__()
        self.tree = tree

    def is_readonly(self) -> bool:
        """Always: writes go through the upload API."""
        return True

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Folder | File | None:
        """The resource at `path`, or None when missing, hidden or outside the public trees."""
        node = self.tree.lookup(path)
        return make_resource(node, environ, self.tree) if node else None

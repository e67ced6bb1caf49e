"""WebDAV side: the public trees of the store, read-only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.wsgidav_app import WsgiDAVApp

from bucketdav.settings import Settings
from bucketdav.store import PUBLIC_TREES, Store


def make_dav_app(settings: Settings, store: Store) -> Callable[..., Any]:
    """A WsgiDAV application serving blob/, explode/ and replica/ read-only."""
    config = {
        "provider_mapping": {
            f"/{name}": FilesystemProvider(str(store.root / name), readonly=True)
            for name in PUBLIC_TREES
        },
        "simple_dc": {"user_mapping": {"*": True}},
        "fs_dav_provider": {"follow_symlinks": True},
        "lock_storage": None,
        "property_manager": None,
        "logging": {"enable": False},
        "verbose": 1,
    }
    return WsgiDAVApp(config)

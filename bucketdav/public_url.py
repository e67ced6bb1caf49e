"""The base URL that answers give out, from the settings, a trusted proxy, or the request itself.

A client chooses its Host and X-Forwarded-* headers freely; whatever is echoed into an upload's
URLs or the Connect page's shell commands must be a plain scheme://host[:port].
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(
    rf"(?:{_LABEL}(?:\.{_LABEL})*|\[(?P<ip6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?"
)
_MAX_HOST = 253 + len(":65535")
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def parse_host(text: str) -> str | None:
    """`text` as a lower-case host[:port] (a name, IPv4 or [IPv6] literal), else None."""
    if len(text) > _MAX_HOST:
        return None
    match = _HOST.fullmatch(text)
    if not match:
        return None
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        return None
    if match.group("ip6") is not None:
        try:
            ipaddress.IPv6Address(match.group("ip6"))
        except ValueError:
            return None
    return text.lower()


def parse_public_url(text: str) -> str | None:
    """BUCKETDAV_PUBLIC_URL: empty for none, else http(s)://host[:port] and nothing more."""
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("expected http://host[:port] or https://host[:port]")
    if "@" in parts.netloc:
        raise ValueError("a user name or password does not belong in it")
    host = parse_host(parts.netloc)
    if host is None:
        raise ValueError("expected a host name or IP address, and a port from 1 to 65535")
    if parts.path not in ("", "/"):
        raise ValueError("bucketdav must be at the root of its host: no path after the host")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError("no query or fragment")
    return f"{parts.scheme.lower()}://{host}"


def parse_proxies(text: str) -> tuple[Network, ...]:
    """BUCKETDAV_TRUSTED_PROXIES: addresses or CIDR networks, separated by commas or spaces."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    return tuple(networks)


def is_trusted(remote_addr: str, proxies: tuple[Network, ...]) -> bool:
    """True when the peer at `remote_addr` is one of the trusted proxies."""
    if not proxies:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # A server listening on :: sees IPv4 peers as ::ffff:a.b.c.d.
        address = address.ipv4_mapped
    return any(address in network for network in proxies)


def base_url(
    environ: Mapping[str, Any],
    *,
    public_url: str | None,
    proxies: tuple[Network, ...],
    listen_host: str,
) -> str:
    """scheme://host[:port] of this server as the client reached it, with no trailing slash.

    BUCKETDAV_PUBLIC_URL wins; else a trusted proxy's X-Forwarded-Proto/-Host (the last value
    of each, the one the proxy itself set); else the request's own scheme and Host. A value
    that is not a plain http(s) scheme or host[:port] is ignored, and without a usable Host
    the answer names the address the server listens on.
    """
    if public_url:
        return public_url
    scheme = str(environ.get("wsgi.url_scheme") or "http").lower()
    if scheme not in ("http", "https"):
        scheme = "http"
    host = parse_host(str(environ.get("HTTP_HOST") or "").strip())
    if is_trusted(str(environ.get("REMOTE_ADDR") or ""), proxies):
        forwarded_proto = _last(environ.get("HTTP_X_FORWARDED_PROTO")).lower()
        if forwarded_proto in ("http", "https"):
            scheme = forwarded_proto
        host = parse_host(_last(environ.get("HTTP_X_FORWARDED_HOST"))) or host
    if host is None:
        host = _listening(listen_host, str(environ.get("SERVER_PORT") or ""), scheme)
    return f"{scheme}://{host}"


def _last(value: Any) -> str:
    return str(value or "").rsplit(",", 1)[-1].strip()


def _listening(listen_host: str, port: str, scheme: str) -> str:
    """The listening address as host[:port]; a wildcard address is shown as localhost."""
    host = "localhost" if listen_host in _WILDCARDS else listen_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    default = "443" if scheme == "https" else "80"
    address = host if port in ("", default) else f"{host}:{port}"
    return parse_host(address) or "localhost"

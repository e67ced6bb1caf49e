"""HTTPS through Cheroot's builtin TLS adapter, and the start-up warnings about exposure."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import ssl
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter

from bucketdav.settings import SettingError, Settings

_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 45\r\n"
    b"Connection: close\r\n\r\nThis port speaks HTTPS: use an https:// URL.\n"
)


class LazyTLSAdapter(BuiltinSSLAdapter):
    """Cheroot's builtin adapter, with the handshake left to the worker thread.

    Cheroot shakes hands in the thread that accepts connections, so one client that
    connects and stays silent would stop everyone else's connections for the whole timeout.
    """

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        """Wrap `sock` for TLS without shaking hands yet; see `handshake`."""
        wrapped = self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}


def handshake(sock: socket.socket) -> bool:
    """Finish the TLS handshake of a new connection; False when it failed and must be closed.

    A client speaking plain HTTP is told, in plain HTTP, to use https://.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return True
    try:
        sock.do_handshake()
    except ssl.SSLError as exc:
        if "http request" in str(exc).lower():
            with contextlib.suppress(OSError):
                os.write(sock.fileno(), _PLAIN_HTTP_ANSWER)
        return False
    except (OSError, ValueError):
        return False
    return True


def tls_adapter(settings: Settings) -> LazyTLSAdapter | None:
    """The TLS adapter BUCKETDAV_TLS_CERT and BUCKETDAV_TLS_KEY ask for, or None for HTTP."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "BUCKETDAV_TLS_CERT" if cert is None else "BUCKETDAV_TLS_KEY"
        raise SettingError(missing, "", "HTTPS needs both BUCKETDAV_TLS_CERT and BUCKETDAV_TLS_KEY")
    for name, path in (("BUCKETDAV_TLS_CERT", cert), ("BUCKETDAV_TLS_KEY", key)):
        if not os.access(path, os.R_OK):
            raise SettingError(name, str(path), "cannot read it")
    try:
        return LazyTLSAdapter(str(cert), str(key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise SettingError(
            "BUCKETDAV_TLS_CERT", str(cert), f"not a PEM certificate matching the key: {reason}"
        ) from None


def is_loopback(host: str) -> bool:
    """True when listening on `host` reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warnings(settings: Settings) -> list[str]:
    """What to warn about at start-up: an open store, or credentials in clear, on the network."""
    if is_loopback(settings.host):
        return []
    if settings.access_file is None:
        return [
            f"no BUCKETDAV_ACCESS_FILE: anyone who can reach {settings.host} may read and "
            "upload everything"
        ]
    if settings.tls_cert is None:
        return [
            f"credentials cross the network in clear text on {settings.host}: set "
            "BUCKETDAV_TLS_CERT and BUCKETDAV_TLS_KEY, or put a TLS-terminating proxy in front"
        ]
    return []

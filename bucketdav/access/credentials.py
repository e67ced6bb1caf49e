"""Credentials: the Authorization header, passwords and tokens checked, and briefly remembered.

A mounted drive sends the same Basic header with every request; checking its password each
time would cost a bcrypt or argon2 hash (milliseconds) per request. Headers that verified are
remembered, under a keyed hash, for REMEMBER_SECONDS. Every failure costs one password hash,
whether the name, the password or the token was wrong, so timing tells nobody which names
exist; hashes run a few at a time, so guesses cannot take every core.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import argon2
import bcrypt

from bucketdav.access.rules import Identity, Rules

REMEMBER_SECONDS = 60.0
REMEMBER_ENTRIES = 10_000
# Longer than any real credentials; a longer header is refused without hashing anything.
MAX_HEADER = 4096
# bcrypt reads at most this many bytes of a password (htpasswd cuts it there too).
BCRYPT_MAX = 72
TOKEN_PREFIX = "sha256:"  # noqa: S105 - the hash's label, not a secret


@dataclass(frozen=True)
class Checked:
    """What the credentials of a request turned out to be."""

    identity: Identity | None
    # Why there is no identity: a short phrase for the log, never the credentials.
    problem: str = ""
    # Whether it counts as a failed guess towards the lock-out.
    failure: bool = False


def token_digest(token: bytes) -> bytes:
    """The SHA-256 of a token, as the access file keeps it."""
    return hashlib.sha256(token).digest()


def verify_password(stored: str, password: bytes) -> bool:
    """True when `password` matches the bcrypt or argon2id hash `stored`."""
    if stored.startswith("$argon2id$"):
        try:
            return argon2.PasswordHasher().verify(stored, password)
        except argon2.exceptions.Argon2Error:
            return False
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX], stored.encode("ascii"))
    except ValueError:
        return False


def parse_authorization(value: str) -> tuple[str | None, bytes] | None:
    """(user name, secret) from a Basic or Bearer header value (None as the name for Bearer).

    None when the header is malformed or of another scheme.
    """
    scheme, _, rest = value.strip().partition(" ")
    scheme = scheme.lower()
    rest = rest.strip()
    if scheme == "bearer" and rest:
        return None, rest.encode("utf-8", "surrogatepass")
    if scheme != "basic":
        return None
    try:
        raw = base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        return None
    name, colon, secret = raw.partition(b":")
    if not colon:
        return None
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        # Some clients send ISO-8859-1, as RFC 7617 allowed before UTF-8.
        text = name.decode("latin-1")
    return text, secret


class Verifier:
    """Checks credentials against one version of the rules; remembers those that verified."""

    def __init__(
        self,
        rules: Rules,
        *,
        hashing: threading.BoundedSemaphore,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.rules = rules
        self.hashing = hashing
        self.clock = clock
        self.now = now or _utcnow
        self._key = secrets.token_bytes(32)
        self._known: dict[bytes, tuple[Identity, float]] = {}
        self._tokens = [(token.digest, token.identity) for token in rules.tokens]
        # A failure hashes as much as a wrong password of a real user would.
        first = next(iter(rules.users.values()), None)
        self._decoy = first.password if first else None

    def check(self, header: str) -> Checked:
        """The identity that `header` (an Authorization value) proves, or why it proves none."""
        if len(header) > MAX_HEADER:
            return Checked(None, "credentials too long", failure=True)
        key = hashlib.blake2b(
            header.encode("utf-8", "surrogatepass"), key=self._key, digest_size=16
        ).digest()
        known = self._known.get(key)
        if known is not None and known[1] > self.clock():
            return self._valid(known[0])
        parsed = parse_authorization(header)
        if parsed is None:
            scheme = header.strip().partition(" ")[0].lower()
            if scheme in ("basic", "bearer"):
                return Checked(None, "malformed credentials", failure=True)
            return Checked(None, "credentials of an unsupported scheme (use Basic or Bearer)")
        name, secret = parsed
        identity = self._token(secret) or self._user(name, secret)
        if identity is None:
            return Checked(None, "wrong credentials", failure=True)
        if len(self._known) >= REMEMBER_ENTRIES:
            self._known.clear()
        self._known[key] = (identity, self.clock() + REMEMBER_SECONDS)
        return self._valid(identity)

    def _valid(self, identity: Identity) -> Checked:
        if identity.expired(self.now()):
            return Checked(None, f"the credentials of {identity.name} have expired")
        return Checked(identity)

    def _token(self, secret: bytes) -> Identity | None:
        digest = token_digest(secret)
        found = None
        # Every token is compared, each in constant time: the time says nothing of which.
        for stored, identity in self._tokens:
            if hmac.compare_digest(stored, digest):
                found = identity
        return found

    def _user(self, name: str | None, secret: bytes) -> Identity | None:
        user = self.rules.users.get(name) if name is not None else None
        stored = user.password if user is not None else self._decoy
        if stored is None:
            return None
        with self.hashing:
            matched = verify_password(stored, secret)
        return user.identity if matched and user is not None else None


def _utcnow() -> datetime:
    return datetime.now(UTC)

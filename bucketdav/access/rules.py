"""The access file (TOML): who may read which paths, upload, file replicas where, see metrics.

```toml
[anonymous]              # no credentials
read = ["/"]

[users.alice]            # HTTP Basic: this name and its password
password = "$2y$05$…"    # bcrypt (htpasswd -nB alice) or argon2id
read = ["/"]
upload = true
replicas = ["user/alice/"]

[tokens.ci-nightly]      # any name and this token, or Bearer
hash = "sha256:…"
upload = true
replicas = ["team/nightly/"]
expires = 2027-06-30
```

Read prefixes are URL paths (`/replica/team/`); replica prefixes are relative to replica/
(`team/nightly/`, or written `/replica/team/nightly/`). Both match whole path segments.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import argon2

ANONYMOUS = "anonymous"
RIGHTS = ("read", "upload", "replicas", "metrics")
_KEYS = {
    "anonymous": frozenset(RIGHTS),
    "users": frozenset((*RIGHTS, "password", "expires")),
    "tokens": frozenset((*RIGHTS, "hash", "expires")),
}
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_TOKEN_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_MAX_NAME = 128
_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")


class AccessFileError(ValueError):
    """The access file cannot be used; the message names the line when it can."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Grant:
    """The rights one table of the access file gives."""

    # Path prefixes, each "/" or "/a/b/" (segments, a slash at both ends).
    read: tuple[str, ...] = ()
    upload: bool = False
    # Replica folder prefixes relative to replica/, each "" (all) or "a/b/"; None: any.
    replicas: tuple[str, ...] | None = None
    metrics: bool = False

    @property
    def anything(self) -> bool:
        """True when this grant allows anything at all."""
        return bool(self.read) or self.upload or self.metrics


@dataclass(frozen=True)
class Identity:
    """Who a request is: a name and its grants (its own, then the anonymous one)."""

    name: str
    grants: tuple[Grant, ...]
    known: bool = True
    # The first moment the identity is no longer valid, if any.
    expires: datetime | None = None
    read: tuple[str, ...] = field(init=False)
    reads_all: bool = field(init=False)

    def __post_init__(self) -> None:
        prefixes = tuple(dict.fromkeys(p for grant in self.grants for p in grant.read))
        object.__setattr__(self, "read", prefixes)
        object.__setattr__(self, "reads_all", "/" in prefixes)

    def expired(self, now: datetime) -> bool:
        """True when `now` is past this identity's expiry."""
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True)
class User:
    """A person: an identity and the hash of its password (bcrypt or argon2id)."""

    identity: Identity
    password: str


@dataclass(frozen=True)
class Token:
    """A pipeline's token: an identity and the SHA-256 of its secret."""

    identity: Identity
    digest: bytes


@dataclass(frozen=True)
class Rules:
    """Everything the access file says."""

    anonymous: Identity
    users: dict[str, User]
    tokens: tuple[Token, ...]

    def identity(self, name: str) -> Identity | None:
        """The identity of that name, if the file still has it."""
        if name == ANONYMOUS:
            return self.anonymous
        user = self.users.get(name)
        if user is not None:
            return user.identity
        return next((t.identity for t in self.tokens if t.identity.name == name), None)


def parse_rules(text: str) -> Rules:
    """Read an access file; raise AccessFileError naming the line of the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _AT_LINE.search(message)
        line = int(match.group(1)) if match else max(1, len(text.splitlines()))
        raise AccessFileError(_AT_LINE.sub("", message).strip(), line) from None
    where = _Locator(text)
    for key in data:
        if key not in _KEYS:
            raise AccessFileError(
                f"unknown table {key!r}: expected [anonymous], [users.NAME] or [tokens.NAME]",
                where.line(key),
            )
    anonymous_table = data.get("anonymous", {})
    if not isinstance(anonymous_table, dict):
        raise AccessFileError("anonymous must be a table: [anonymous]", where.line("anonymous"))
    base = _grant(anonymous_table, where, ("anonymous",))
    anonymous = Identity(ANONYMOUS, (base,), known=False)
    users: dict[str, User] = {}
    tokens: list[Token] = []
    names: set[str] = set()
    for kind in ("users", "tokens"):
        tables = data.get(kind, {})
        if not isinstance(tables, dict):
            raise AccessFileError(f"{kind} must hold tables: [{kind}.NAME]", where.line(kind))
        for name, table in tables.items():
            path = (kind, name)
            if not isinstance(table, dict):
                raise AccessFileError(f"[{kind}.{name}] must be a table", where.line(*path))
            problem = name_problem(name, kind)
            if problem:
                raise AccessFileError(problem, where.line(*path))
            if name in names:
                raise AccessFileError(
                    f"{name!r} is both a user and a token: identities need their own names",
                    where.line(*path),
                )
            names.add(name)
            identity = Identity(
                name,
                (_grant(table, where, path), base),
                expires=_expiry(table, where, path),
            )
            if kind == "users":
                users[name] = User(identity, _password(table, where, name))
            else:
                tokens.append(Token(identity, _token_digest(table, where, name)))
    return Rules(anonymous, users, tuple(tokens))


def _grant(table: dict[str, Any], where: _Locator, path: tuple[str, ...]) -> Grant:
    kind = path[0]
    for key in table:
        if key not in _KEYS[kind]:
            allowed = ", ".join(sorted(_KEYS[kind]))
            raise AccessFileError(
                f"unknown key {key!r} in [{'.'.join(path)}] (known: {allowed})",
                where.line(*path, key=key),
            )
    read = table.get("read", [])
    if not isinstance(read, list) or not all(isinstance(p, str) for p in read):
        raise AccessFileError(
            'read must be a list of path prefixes such as ["/replica/team/"]',
            where.line(*path, key="read"),
        )
    replicas = table.get("replicas")
    if replicas is not None and (
        not isinstance(replicas, list) or not all(isinstance(p, str) for p in replicas)
    ):
        raise AccessFileError(
            'replicas must be a list of folder prefixes under replica/ such as ["team/nightly/"]',
            where.line(*path, key="replicas"),
        )
    flags = {}
    for key in ("upload", "metrics"):
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise AccessFileError(f"{key} must be true or false", where.line(*path, key=key))
        flags[key] = value
    try:
        prefixes = tuple(read_prefix(p) for p in read)
        folders = None if replicas is None else tuple(replica_prefix(p) for p in replicas)
    except ValueError as exc:
        key = "read" if isinstance(exc, _ReadError) else "replicas"
        raise AccessFileError(str(exc), where.line(*path, key=key)) from None
    return Grant(prefixes, flags["upload"], folders, flags["metrics"])


class _ReadError(ValueError):
    pass


def read_prefix(text: str) -> str:
    """A read prefix in its one form: "/" or "/a/b/"; raises ValueError when it cannot be one."""
    if not text.startswith("/"):
        raise _ReadError(f"read prefix {text!r} must be a path from the root, such as /replica/")
    return "/" + "".join(s + "/" for s in _segments(text, _ReadError))


def replica_prefix(text: str) -> str:
    """A replica prefix in its one form: "" (any) or "a/b/", relative to replica/."""
    if text.startswith("/"):
        if not re.match(r"/replica(/|$)", text):
            raise ValueError(
                f"replicas prefix {text!r} is relative to replica/ (team/nightly/), "
                "or starts with /replica/"
            )
        text = text[len("/replica") :]
    return "".join(s + "/" for s in _segments(text, ValueError))


def _segments(text: str, error: type[ValueError]) -> list[str]:
    parts = [s for s in text.split("/") if s]
    for part in parts:
        if part in (".", "..") or not part.isprintable() or "\\" in part:
            raise error(f"{text!r}: {part!r} cannot be part of a path prefix")
    return parts


def name_problem(name: str, kind: str) -> str | None:
    """Why `name` cannot name one of `kind` ("users" or "tokens"), or None."""
    if name == ANONYMOUS:
        return f"{name!r} is the name of requests without credentials; choose another"
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        return f"{name[:40]!r}: a name is 1 to {_MAX_NAME} printable characters"
    if kind == "users" and ":" in name:
        return f"{name!r}: a user name cannot hold ':' (HTTP Basic splits at the first one)"
    return None


def _expiry(table: dict[str, Any], where: _Locator, path: tuple[str, ...]) -> datetime | None:
    value = table.get("expires")
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        # A date is the last day it works, in UTC.
        return datetime.combine(value + timedelta(days=1), time(0), UTC)
    raise AccessFileError(
        "expires must be a date (2027-06-30) or a date and time", where.line(*path, key="expires")
    )


def _password(table: dict[str, Any], where: _Locator, name: str) -> str:
    value = table.get("password")
    line = where.line("users", name, key="password")
    if not isinstance(value, str):
        raise AccessFileError(
            f"[users.{name}] needs password = the line `bucketdav passwd {name}` or "
            f"`htpasswd -nB {name}` prints",
            line or where.line("users", name),
        )
    # htpasswd prints "name:hash"; the hash alone is what is kept.
    value = value.strip().removeprefix(f"{name}:")
    if _BCRYPT.fullmatch(value):
        return value
    if value.startswith("$argon2id$"):
        try:
            argon2.extract_parameters(value)
        except argon2.exceptions.InvalidHashError:
            pass
        else:
            return value
    raise AccessFileError(
        f"the password of {name!r} is not a bcrypt ($2y$, $2b$) or argon2id hash", line
    )


def _token_digest(table: dict[str, Any], where: _Locator, name: str) -> bytes:
    value = table.get("hash")
    match = _TOKEN_HASH.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise AccessFileError(
            f'[tokens.{name}] needs hash = "sha256:<64 hex digits>", as `bucketdav token {name}` '
            "prints it",
            where.line("tokens", name, key="hash") or where.line("tokens", name),
        )
    return bytes.fromhex(match.group(1))


class _Locator:
    """Finds the line of a table or key in the file's text (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line(self, *path: str, key: str | None = None) -> int | None:
        start = self._table(path)
        if start is None:
            return None
        if key is None:
            return start + 1
        assignment = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for index in range(start, len(self.lines)):
            line = self.lines[index]
            if index > start and line.lstrip().startswith("["):
                break
            if assignment.match(line) or (
                index == start and re.search(rf"\b{re.escape(key)}\b", line)
            ):
                return index + 1
        return start + 1

    def _table(self, path: tuple[str, ...]) -> int | None:
        quoted = [rf"(?:{re.escape(p)}|\"{re.escape(p)}\"|'{re.escape(p)}')" for p in path]
        header = re.compile(r"\s*\[\s*" + r"\s*\.\s*".join(quoted) + r"\s*\]")
        for index, line in enumerate(self.lines):
            if header.match(line):
                return index
        # Dotted keys or inline tables: the first line that names the last part.
        last = path[-1]
        for index, line in enumerate(self.lines):
            if not line.lstrip().startswith("#") and last in line:
                return index
        return None

"""Settings: one frozen dataclass, from defaults, a config file, the environment and flags."""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucketdav.public_url import Network, parse_proxies, parse_public_url
from bucketdav.uploads.templates import Template, TemplateError, parse_template

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
REPLICATE_NAMES = tuple(f"REPLICATE_{i}" for i in range(10))
KEEP_SUFFIXES = ("_KEEP_LAST", "_KEEP_DAYS")
REPLICATE_KEEP_NAMES = tuple(f"{n}{suffix}" for n in REPLICATE_NAMES for suffix in KEEP_SUFFIXES)
# A node name is one path segment (staging/<node>/), used as given: the characters of host names.
_NODE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")


class SettingError(ValueError):
    """A setting has a value bucketdav cannot use; the message names both."""

    def __init__(self, name: str, value: object, reason: str) -> None:
        super().__init__(f"{name}={value!r}: {reason}")
        self.name = name


def parse_size(text: str) -> int:
    """Parse `<int>` bytes or `<int>kb|mb|gb|tb` (any case, 1024-based) into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError("expected <int> bytes or <int>kb|mb|gb")
    return int(match.group(1)) * _UNITS[match.group(2) and match.group(2).lower()]


def format_size(size: int) -> str:
    """Write a byte count the way parse_size reads it back, in the largest exact unit."""
    for unit in ("tb", "gb", "mb", "kb"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


@dataclass(frozen=True)
class FreeSpace:
    """A free-space watermark: an absolute byte count or a percentage of the file system."""

    size: int = 0
    percent: float = 0.0

    def bytes_for(self, total: int) -> int:
        """The watermark in bytes on a file system of `total` bytes."""
        return self.size if not self.percent else int(total * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else format_size(self.size)


def parse_free_space(text: str) -> FreeSpace:
    """Parse a watermark: a size as parse_size reads it, or a percentage such as `2%`."""
    text = text.strip()
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 <= percent < 100:
            raise ValueError("a percentage must be from 0 to 99")
        return FreeSpace(percent=percent)
    return FreeSpace(size=parse_size(text))


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, order=True)
class Duration:
    """A span of time in whole seconds, shown in its largest exact unit (`90d`, `1h`)."""

    seconds: int

    def __str__(self) -> str:
        for unit in ("d", "h", "m"):
            if self.seconds and self.seconds % _DURATION_UNITS[unit] == 0:
                return f"{self.seconds // _DURATION_UNITS[unit]}{unit}"
        return f"{self.seconds}s"


def parse_duration(text: str, *, bare: str = "s") -> Duration:
    """`<int>` (in the unit `bare`) or `<int>s|m|h|d`, any case."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"expected <int>{'' if bare == 's' else ' days'} or <int>s|m|h|d")
    unit = match.group(2).lower() or bare
    return Duration(int(match.group(1)) * _DURATION_UNITS[unit])


def parse_keep_last(text: str) -> int | None:
    """How many newest entries of each name a rule keeps; empty: no such rule."""
    if not text.strip():
        return None
    return _positive_int(text)


def parse_keep_days(text: str) -> Duration | None:
    """How young an entry a rule keeps: `<int>` days or `<int>s|m|h|d`; empty: no rule."""
    if not text.strip():
        return None
    duration = parse_duration(text, bare="d")
    if not duration.seconds:
        raise ValueError("must be more than 0 (unset it to keep entries of any age)")
    return duration


def parse_unreferenced_days(text: str) -> Duration | None:
    """How long content stays unreferenced before collection; empty: never, 0: next run."""
    return parse_duration(text, bare="d") if text.strip() else None


def parse_interval(text: str) -> Duration:
    """Time between two collections: `<int>` seconds or `<int>s|m|h|d`, at least 1 second."""
    duration = parse_duration(text)
    if not duration.seconds:
        raise ValueError("must be at least 1 second")
    return duration


@dataclass(frozen=True)
class TemplateKeep:
    """Retention rules of one template (REPLICATE_<n>_KEEP_LAST / _KEEP_DAYS)."""

    variable: str
    keep_last: int | None
    keep_days: Duration | None


def parse_checksum_type(text: str) -> str:
    """Accept any fixed-length hashlib algorithm, by its lower-case name."""
    name = text.strip().lower()
    try:
        digest = hashlib.new(name)
    except (ValueError, TypeError):
        raise ValueError("not a hashlib algorithm on this system") from None
    if name.startswith("shake") or digest.digest_size == 0:
        raise ValueError("needs a fixed-length digest")
    return name


def parse_port(text: str) -> int:
    """A TCP port, 0 meaning any free one."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("a port is from 0 to 65535")
    return port


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError("seconds from 0 to 3600")
    return value


def _deflate(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "always", "never"):
        raise ValueError("expected auto, always or never")
    return value


def parse_switch(text: str) -> bool:
    """`on` or `off` (also true/false, yes/no, 1/0), any case."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError("expected on or off")


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("expected text or json")
    return value


def _optional(text: str) -> str | None:
    return text.strip() or None


def _optional_path(text: str) -> Path | None:
    return Path(text.strip()) if text.strip() else None


_LOCKOUT_RE = re.compile(r"^\s*(\d+)\s*([smh]?)\s*$", re.IGNORECASE)


def _lockout_seconds(text: str) -> float:
    """`<int>` seconds or `<int>s|m|h`, from 1 second to a day."""
    match = _LOCKOUT_RE.match(text)
    if not match:
        raise ValueError("expected <int> seconds or <int>s|m|h")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2).lower()]
    if not 1 <= seconds <= 86400:
        raise ValueError("from 1 second to 24h")
    return float(seconds)


def parse_node(text: str) -> str:
    """This node's name (empty: the host name): letters, digits, `.`, `_`, `-`, one segment."""
    name = text.strip() or socket.gethostname()
    if not _NODE_RE.match(name):
        raise ValueError(
            "a node name is 1 to 253 letters, digits, '.', '_' or '-', not starting with "
            "'.' or '-'" + ("" if text.strip() else " (the host name is not one: set one)")
        )
    return name


@dataclass(frozen=True)
class Setting:
    """One setting: its variable name, default text, parser and a line of documentation."""

    name: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ARCHIVE_DIR",
        "archive_dir",
        "/tmp/bucket",  # noqa: S108 - the earlier service's default, kept for drop-in use
        Path,
        "Where the store lives; all of it on one file system (hard links).",
    ),
    Setting(
        "ARCHIVE_URI",
        "archive_uri",
        "",
        _optional,
        "If set, upload responses give `path` values under this prefix.",
    ),
    Setting(
        "CHECKSUM_TYPE",
        "checksum_type",
        "md5",
        parse_checksum_type,
        "Content checksum: any fixed-length hashlib algorithm (md5, sha1, sha256, ...).",
    ),
    Setting(
        "MAX_CONTENT_LENGTH",
        "max_content_length",
        "32mb",
        parse_size,
        "Largest upload: <int> bytes or <int>kb|mb|gb, any case.",
    ),
    Setting(
        "BUCKETDAV_HOST",
        "host",
        "127.0.0.1",
        str.strip,
        "Address to listen on (the Docker image uses 0.0.0.0).",
    ),
    Setting("BUCKETDAV_PORT", "port", "8080", parse_port, "TCP port to listen on."),
    Setting(
        "BUCKETDAV_EXTRACT_MAX_BYTES",
        "extract_max_bytes",
        "1gb",
        parse_size,
        "Most bytes one archive or compressed file may expand to.",
    ),
    Setting(
        "BUCKETDAV_EXTRACT_MAX_FILES",
        "extract_max_files",
        "100000",
        _positive_int,
        "Most members one archive may have.",
    ),
    Setting(
        "BUCKETDAV_DOWNLOAD_MAX_BYTES",
        "download_max_bytes",
        "64gb",
        parse_size,
        "Most bytes of files one folder download (?download=zip|tar) may hold; more: 413.",
    ),
    Setting(
        "BUCKETDAV_DOWNLOAD_MAX_FILES",
        "download_max_files",
        "200000",
        _positive_int,
        "Most files, folders and links one folder download may hold; more: 413.",
    ),
    Setting(
        "BUCKETDAV_DOWNLOAD_DEFLATE",
        "download_deflate",
        "auto",
        _deflate,
        "Zip downloads: `auto` deflates all but compressed content, `always`, or `never`.",
    ),
    Setting(
        "BUCKETDAV_MIN_FREE",
        "min_free",
        "1%",
        parse_free_space,
        "Free space kept on the store's disk: uploads that would go below it get 507.",
    ),
    Setting(
        "BUCKETDAV_KEEP_LAST",
        "keep_last",
        "",
        parse_keep_last,
        "Retention: keep the N newest replicas of each name in each replica folder "
        "(REPLICATE_<n>_KEEP_LAST per template); unset, no such rule.",
    ),
    Setting(
        "BUCKETDAV_KEEP_DAYS",
        "keep_days",
        "",
        parse_keep_days,
        "Retention: keep replicas younger than D days (<int> days or <int>s|m|h|d; "
        "REPLICATE_<n>_KEEP_DAYS per template); unset, no such rule.",
    ),
    Setting(
        "BUCKETDAV_GC_UNREFERENCED_DAYS",
        "gc_unreferenced",
        "",
        parse_unreferenced_days,
        "Collect blobs and trees nothing refers to once unreferenced this long (<int> days or "
        "<int>s|m|h|d; 0: at the next collection); unset, never.",
    ),
    Setting(
        "BUCKETDAV_GC_INTERVAL",
        "gc_interval",
        "1h",
        parse_interval,
        "Time between the server's retention and collection runs when a rule is set "
        "(<int> seconds or <int>s|m|h|d).",
    ),
    Setting(
        "BUCKETDAV_THREADS",
        "threads",
        "64",
        _positive_int,
        "Worker threads; slow clients each hold one while they send.",
    ),
    Setting(
        "BUCKETDAV_MAX_UPLOADS",
        "max_uploads",
        "16",
        _positive_int,
        "Uploads processed at once; more get 503 with Retry-After.",
    ),
    Setting(
        "BUCKETDAV_TIMEOUT",
        "timeout",
        "30",
        _seconds,
        "Seconds a connection may stay silent, or take to send its request head; a body "
        "bringing under 16 KiB in that time is cut off (408).",
    ),
    Setting(
        "BUCKETDAV_METRICS",
        "metrics",
        "on",
        parse_switch,
        "GET /metrics in Prometheus format; `off` removes it and counts nothing.",
    ),
    Setting(
        "BUCKETDAV_LOG_FORMAT",
        "log_format",
        "text",
        _log_format,
        "`text` lines, or `json`: one JSON object per line (access lines with their fields).",
    ),
    Setting(
        "BUCKETDAV_PUBLIC_URL",
        "public_url",
        "",
        parse_public_url,
        "Base URL of answers, listings and the Connect page, such as https://files.example "
        "behind a proxy; unset, the request's Host (or a trusted proxy's X-Forwarded-Host).",
    ),
    Setting(
        "BUCKETDAV_TRUSTED_PROXIES",
        "trusted_proxies",
        "",
        parse_proxies,
        "Addresses or networks (10.0.0.0/8) of proxies whose X-Forwarded-Proto and "
        "X-Forwarded-Host are believed; from anyone else they are ignored.",
    ),
    Setting(
        "BUCKETDAV_ACCESS_FILE",
        "access_file",
        "",
        _optional_path,
        "TOML file of who may read, upload and see metrics (README: Who may do what); "
        "unset, anyone may do anything.",
    ),
    Setting(
        "BUCKETDAV_TLS_CERT",
        "tls_cert",
        "",
        _optional_path,
        "PEM certificate (chain) for HTTPS; with BUCKETDAV_TLS_KEY the port speaks HTTPS only.",
    ),
    Setting(
        "BUCKETDAV_TLS_KEY",
        "tls_key",
        "",
        _optional_path,
        "PEM private key of BUCKETDAV_TLS_CERT.",
    ),
    Setting(
        "BUCKETDAV_LOGIN_FAILURES",
        "login_failures",
        "10",
        _positive_int,
        "Failed sign-ins from one address within BUCKETDAV_LOGIN_LOCKOUT that lock it out.",
    ),
    Setting(
        "BUCKETDAV_LOGIN_LOCKOUT",
        "login_lockout",
        "10m",
        _lockout_seconds,
        "Window for counting failed sign-ins, and how long a locked-out address gets 429 "
        "(<int> seconds or <int>s|m|h).",
    ),
    Setting(
        "BUCKETDAV_NODE",
        "node",
        "",
        parse_node,
        "This server's name among several on one store: its staging folder (staging/<node>/), "
        "named in /healthz; unset, the host name.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one bucketdav server."""

    archive_dir: Path
    archive_uri: str | None
    checksum_type: str
    max_content_length: int
    host: str
    port: int
    extract_max_bytes: int
    extract_max_files: int
    download_max_bytes: int
    download_max_files: int
    download_deflate: str
    min_free: FreeSpace
    threads: int
    max_uploads: int
    timeout: float
    metrics: bool
    log_format: str
    public_url: str | None
    trusted_proxies: tuple[Network, ...]
    access_file: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    login_failures: int
    login_lockout: float
    node: str
    replicate: tuple[Template, ...] = field(default=())
    keep_last: int | None = None
    keep_days: Duration | None = None
    gc_unreferenced: Duration | None = None
    gc_interval: Duration = Duration(3600)
    replicate_keep: tuple[TemplateKeep, ...] = field(default=())

    @property
    def collects(self) -> bool:
        """True when any retention or collection rule is set (the server then runs them)."""
        rules = (self.keep_last, self.keep_days, self.gc_unreferenced)
        return any(rule is not None for rule in rules) or bool(self.replicate_keep)

    def public(self) -> dict[str, Any]:
        """The settings as JSON-ready values, for GET /config (nothing here is secret)."""
        out: dict[str, Any] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.attr)
            if isinstance(value, Path | FreeSpace | Duration):
                value = str(value)
            elif setting.attr == "trusted_proxies":
                value = [str(network) for network in value]
            out[setting.name] = value
        out["MAX_CONTENT_LENGTH_TEXT"] = format_size(self.max_content_length)
        for template in self.replicate:
            out[template.variable] = template.text
        out["replication"] = [
            {"variable": t.variable, "template": t.text, "headers": list(t.headers)}
            for t in self.replicate
        ]
        for keep in self.replicate_keep:
            out[f"{keep.variable}_KEEP_LAST"] = keep.keep_last
            out[f"{keep.variable}_KEEP_DAYS"] = keep.keep_days and str(keep.keep_days)
        return out


def parse_env_file(text: str) -> dict[str, str]:
    """Read `NAME=value` lines with `#` comments, as `docker run --env-file` does (no quoting)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip()
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise SettingError(f"line {number}", raw, "expected NAME=value")
        values[name.strip()] = value
    return values


def load_settings(
    *,
    environ: Mapping[str, str],
    file_values: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Settings:
    """Merge defaults, config file, environment and flags (later wins) into Settings."""
    merged: dict[str, str] = {}
    for source in (file_values or {}, environ, {k: v for k, v in (flags or {}).items() if v}):
        for name, value in source.items():
            if name in _KNOWN or name in REPLICATE_NAMES or name in REPLICATE_KEEP_NAMES:
                merged[name] = str(value)
    kwargs: dict[str, Any] = {}
    for setting in SETTINGS:
        text = merged.get(setting.name, setting.default)
        try:
            kwargs[setting.attr] = setting.parse(text)
        except (ValueError, TypeError) as exc:
            raise SettingError(setting.name, text, str(exc)) from None
    templates = []
    for name in REPLICATE_NAMES:
        text = merged.get(name, "").strip()
        if text:
            try:
                templates.append(parse_template(name, text))
            except TemplateError as exc:
                raise SettingError(name, text, str(exc)) from None
    keep = _template_keep(merged, {t.variable for t in templates})
    return Settings(**kwargs, replicate=tuple(templates), replicate_keep=keep)


def _template_keep(merged: Mapping[str, str], defined: set[str]) -> tuple[TemplateKeep, ...]:
    """The per-template retention rules; one for a template that is not set is an error."""
    rules = []
    for variable in REPLICATE_NAMES:
        texts = {s: merged.get(variable + s, "").strip() for s in KEEP_SUFFIXES}
        if not any(texts.values()):
            continue
        for suffix, text in texts.items():
            if text and variable not in defined:
                raise SettingError(variable + suffix, text, f"{variable} is not set")
        try:
            last = parse_keep_last(texts["_KEEP_LAST"])
        except ValueError as exc:
            raise SettingError(variable + "_KEEP_LAST", texts["_KEEP_LAST"], str(exc)) from None
        try:
            days = parse_keep_days(texts["_KEEP_DAYS"])
        except ValueError as exc:
            raise SettingError(variable + "_KEEP_DAYS", texts["_KEEP_DAYS"], str(exc)) from None
        rules.append(TemplateKeep(variable, last, days))
    return tuple(rules)


_KNOWN = frozenset(s.name for s in SETTINGS)

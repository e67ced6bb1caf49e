"""The `bucketdav push` command: its arguments, the pushes, and what is printed for each path."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from bucketdav import __version__
from bucketdav.client.progress import Progress, human_size
from bucketdav.client.push import Pushed, Pusher
from bucketdav.client.retry import RetryPolicy
from bucketdav.client.source import SourceError
from bucketdav.client.transport import ConnectionLost, Server

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Framing is the client's business: a user's value for these would corrupt the request.
RESERVED = frozenset({"content-length", "transfer-encoding", "host", "connection", "expect"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `bucketdav push`."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to send")
    parser.add_argument(
        "--to", required=True, metavar="URL", help="the server, as http://host:port"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: value'",
        help="a request header, such as those the replication templates name (repeatable)",
    )
    parser.add_argument(
        "--token", help="sent as 'Authorization: Bearer …' (default: BUCKETDAV_TOKEN)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the server's JSON answer, one line per PATH"
    )
    parser.add_argument(
        "--tries", type=_count, default=5, help="tries per request on a lost connection or 503"
    )
    parser.add_argument(
        "--max-wait", type=_seconds, default=30.0, help="longest wait in seconds between two tries"
    )
    parser.add_argument(
        "--timeout", type=_timeout, default=300.0, help="seconds the server may stay silent"
    )
    parser.add_argument(
        "--always-send",
        action="store_true",
        help="send files without first asking the server whether it has their checksum",
    )


def parse_header(text: str) -> tuple[str, bytes]:
    """`Name: value` as a header name and its UTF-8 value; ValueError names what is wrong."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not TOKEN.fullmatch(name):
        raise ValueError(f"-H {text!r}: expected 'Name: value'")
    if name.lower() in RESERVED:
        raise ValueError(f"-H {text!r}: {name} is set by bucketdav push itself")
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"-H {text!r}: a value cannot hold line breaks or NUL")
    return name, value.encode("utf-8", "surrogateescape")


def run(
    args: argparse.Namespace, environ: Mapping[str, str], *, stdout: TextIO, stderr: TextIO
) -> int:
    """Push every path; 0 when all were stored, 1 when one was not, 2 for unusable arguments."""

    def say(message: str) -> None:
        print(f"bucketdav: {message}", file=stderr, flush=True)

    try:
        headers = [("User-Agent", f"bucketdav-push/{__version__}")]
        headers += [parse_header(text) for text in args.header]
        token = args.token or environ.get("BUCKETDAV_TOKEN")
        if token:
            headers.append(_authorization(token))
        server = Server(args.to, timeout=args.timeout, environ=environ)
    except ValueError as exc:
        say(str(exc))
        return 2
    paths = [Path(text) for text in args.paths]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        say(f"no such file or folder: {', '.join(missing)}; nothing sent")
        return 2
    odd = [str(path) for path in paths if not (path.is_file() or path.is_dir())]
    if odd:
        say(f"not a file or folder: {', '.join(odd)}; nothing sent")
        return 2
    terminal = stdout.isatty()
    pusher = Pusher(
        server,
        headers=headers,
        policy=RetryPolicy(tries=args.tries, max_wait=args.max_wait),
        say=say,
        progress=lambda label, total: Progress(stdout, label, total, enabled=terminal),
        check=not args.always_send,
    )
    failed = 0
    try:
        for path in paths:
            failed += not _push_one(pusher, path, args=args, stdout=stdout, say=say)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        server.close()
    return 1 if failed else 0


def _push_one(
    pusher: Pusher,
    path: Path,
    *,
    args: argparse.Namespace,
    stdout: TextIO,
    say: Callable[[str], None],
) -> bool:
    """Push one path and print its outcome; True when it was stored."""
    try:
        pushed = pusher.push(path)
    except ConnectionLost as exc:
        say(f"{path}: {args.to}: {exc}; not stored")
        return False
    except SourceError as exc:
        say(f"{path}: {exc}; not stored")
        return False
    data = pushed.reply.json()
    if args.json and data is not None:
        print(json.dumps(data), file=stdout, flush=True)
    if not pushed.stored:
        say(f"{path}: {pushed.reply.message()}")
        return False
    if not args.json:
        print("\n".join(outcome_lines(str(path), pushed, data)), file=stdout, flush=True)
    return True


def outcome_lines(path: str, pushed: Pushed, data: Any) -> list[str]:
    """What a person reads about a stored path: what was sent, then each URL made."""
    if pushed.known:
        lines = [f"{path}: already stored, 0 bytes sent"]
    else:
        files = f"{pushed.files} files, " if pushed.files is not None else ""
        lines = [f"{path}: {files}{human_size(pushed.sent)} sent in {pushed.seconds:.1f} s"]
    urls = data.get("url") if isinstance(data, dict) else None
    if isinstance(urls, dict):
        for key in ("blob", "decompressed", "archive"):
            if urls.get(key):
                lines.append(f"  {key:<12} {urls[key]}")
        lines += [f"  {'replica':<12} {url}" for url in urls.get("replicas") or []]
    skipped = data.get("skipped") if isinstance(data, dict) else None
    lines += [f"  {'skipped':<12} {text}" for text in skipped or []]
    return lines


def _authorization(token: str) -> tuple[str, bytes]:
    if any(char in token for char in "\r\n\0"):
        raise ValueError("the token cannot hold line breaks or NUL")
    return "Authorization", f"Bearer {token.strip()}".encode("utf-8", "surrogateescape")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    return value


def _timeout(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("a timeout of 0 s would never wait for the server")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a count of 1 or more")
    return value

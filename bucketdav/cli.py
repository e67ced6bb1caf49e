"""Command line: `bucketdav serve` runs the server, `bucketdav check` checks a store,
`bucketdav push` sends files and folders to a server."""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.metadata
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from bucketdav import __version__
from bucketdav.access import commands as access_commands
from bucketdav.client import command as push_command
from bucketdav.observe.logs import JsonFormatter
from bucketdav.settings import SettingError, Settings, load_settings, parse_env_file
from bucketdav.store.blobs import StoreError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="bucketdav", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bucketdav {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP and WebDAV server")
    serve.add_argument("--host", help="address to listen on (BUCKETDAV_HOST, default 127.0.0.1)")
    serve.add_argument(
        "--port", help="port to listen on, 0 for any free one (BUCKETDAV_PORT, default 8080)"
    )
    serve.add_argument("--config", help="settings file of NAME=value lines (BUCKETDAV_CONFIG)")
    check = commands.add_parser("check", help="check a store's layout; exit 0 only when clean")
    check.add_argument("--full", action="store_true", help="hash every blob and copy")
    check.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
    check.add_argument("--config", help="settings file of NAME=value lines (BUCKETDAV_CONFIG)")
    check.set_defaults(host=None, port=None)
    gc = commands.add_parser("gc", help="apply retention and collect unreferenced content once")
    gc.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    gc.add_argument("--json", action="store_true", help="print the report as one JSON object")
    gc.add_argument("--config", help="settings file of NAME=value lines (BUCKETDAV_CONFIG)")
    gc.set_defaults(host=None, port=None)
    rm = commands.add_parser("rm", help="remove replica entries and re-point their latest link")
    rm.add_argument("paths", nargs="+", metavar="PATH", help="replica/… as upload answers name it")
    rm.add_argument("--json", action="store_true", help="print what went as one JSON object")
    rm.add_argument("--config", help="settings file of NAME=value lines (BUCKETDAV_CONFIG)")
    rm.set_defaults(host=None, port=None)
    access_commands.add_arguments(
        commands.add_parser("token", help="make a token: the secret once, the access-file lines"),
        commands.add_parser("passwd", help="hash a password into access-file lines"),
    )
    push = commands.add_parser("push", help="send files and folders to a server")
    push_command.add_arguments(push)
    return parser


def package_version() -> str:
    """The installed package's version, or the source's when it runs uninstalled."""
    try:
        return importlib.metadata.version("bucketdav")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Settings from the config file named by flag or environment, the environment and flags."""
    config = args.config or environ.get("BUCKETDAV_CONFIG")
    file_values = {}
    if config:
        try:
            with open(config, encoding="utf-8") as handle:
                file_values = parse_env_file(handle.read())
        except OSError as exc:
            raise SettingError("BUCKETDAV_CONFIG", config, exc.strerror or str(exc)) from None
    flags = {"BUCKETDAV_HOST": args.host, "BUCKETDAV_PORT": args.port}
    return load_settings(environ=environ, file_values=file_values, flags=flags)


class BatchingHandler(logging.StreamHandler):
    """Writes log lines from a thread of its own, in batches at most `interval` seconds late.

    A request thread only formats its line and appends it: no write, and no thread to wake
    for every line, which cost about a quarter of the time of a small GET (bench/dav.py).
    Warnings and errors wake the writer at once. At most `limit` lines wait: while the
    output is stuck (a full pipe nobody reads), later lines are counted, not kept, and the
    count is logged once the output moves again. A process killed with SIGKILL loses the
    lines of its last `interval`; SIGTERM and SIGINT lose none (close() writes them).
    """

    def __init__(self, stream: TextIO, interval: float = 0.1, limit: int = 10_000) -> None:
        super().__init__(stream)
        self.interval = interval
        self.limit = limit
        # Appended by emit() under the handler's lock, taken by flush() under `output` alone:
        # a caller of flush() that holds the handler's lock (logging.shutdown) cannot deadlock.
        self.pending: collections.deque[str] = collections.deque()
        self.dropped = 0
        self.counting = threading.Lock()
        self.output = threading.Lock()
        self.wake = threading.Event()
        self.closing = False
        threading.Thread(target=self._run, name="log-writer", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted line, or count it when the queue is full (Handler.handle locks)."""
        if len(self.pending) >= self.limit:
            with self.counting:
                self.dropped += 1
        else:
            try:
                self.pending.append(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
        if record.levelno >= logging.WARNING:
            self.wake.set()

    def _run(self) -> None:
        while not self.closing:
            self.wake.wait(self.interval)
            self.wake.clear()
            # A stderr that is gone (closed pipe) loses the lines, not the writer.
            with contextlib.suppress(OSError, ValueError):
                self.flush()

    def flush(self) -> None:
        """Write every line queued so far, and how many were dropped."""
        # Lines are taken and written under one lock, so they come out in the order they were
        # queued, whichever thread writes them.
        with self.output:
            lines = [self.pending.popleft() for _ in range(len(self.pending))]
            with self.counting:
                dropped, self.dropped = self.dropped, 0
            if dropped:
                lines.append(self._dropped_line(dropped))
            if lines:
                self.stream.write("".join(lines))
                self.stream.flush()

    def _dropped_line(self, count: int) -> str:
        record = logging.LogRecord(
            "bucketdav.log",
            logging.WARNING,
            __file__,
            0,
            "%d log lines dropped: the log output did not keep up",
            (count,),
            None,
        )
        return self.format(record) + self.terminator

    def close(self) -> None:
        """Write what is left and stop the writer; no join, as the caller may hold the lock."""
        self.closing = True
        self.wake.set()
        self.flush()
        super().close()


def setup_logging() -> BatchingHandler:
    """Log to stderr in batches, so request threads never wait on the write."""
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "token":
        return access_commands.run_token(args, stdout=sys.stdout, stderr=sys.stderr)
    if args.command == "passwd":
        return access_commands.run_passwd(
            args, stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr
        )
    if args.command == "push":
        # A client: no server settings, no log handler; it speaks on stdout and stderr.
        return push_command.run(args, os.environ, stdout=sys.stdout, stderr=sys.stderr)
    handler = setup_logging()
    try:
        settings = settings_from(args, dict(os.environ))
        if settings.log_format == "json":
            handler.setFormatter(JsonFormatter())
        if args.command == "serve":
            from bucketdav.server import ListenError, serve

            try:
                serve(settings)
            except ListenError as exc:
                return _failed(exc)
        elif args.command == "check":
            from bucketdav.store.check import run_check

            return run_check(settings, full=args.full, repair=args.repair)
        elif args.command == "gc":
            from bucketdav.store.commands import run_gc

            return run_gc(settings, dry_run=args.dry_run, as_json=args.json)
        elif args.command == "rm":
            from bucketdav.store.commands import run_rm

            return run_rm(settings, args.paths, as_json=args.json)
    except (SettingError, StoreError) as exc:
        return _failed(exc)
    finally:
        handler.close()
    return 0


def _failed(exc: Exception) -> int:
    """Report a start-up failure as one line on stderr; returns the exit status."""
    print(f"bucketdav: {exc}", file=sys.stderr)
    return 2

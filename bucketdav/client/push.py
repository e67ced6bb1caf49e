"""Pushing one path: a file is sent only when the server lacks its checksum; a folder as a tar."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bucketdav.client.progress import Progress
from bucketdav.client.retry import RetryPolicy, with_retries
from bucketdav.client.source import FolderTar, SourceError, file_chunks, file_digest
from bucketdav.client.transport import Reply, Server, upload_path

Headers = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Pushed:
    """What pushing one path came to: the server's answer, the bytes sent, how long it took."""

    reply: Reply
    sent: int
    seconds: float
    known: bool = False
    files: int | None = None

    @property
    def stored(self) -> bool:
        """The server stored it (200)."""
        return self.reply.status == 200


class Pusher:
    """Pushes paths to one server with the same headers, retry policy and progress display."""

    def __init__(
        self,
        server: Server,
        *,
        headers: Headers,
        policy: RetryPolicy,
        say: Callable[[str], None],
        progress: Callable[[str, int | None], Progress],
        check: bool = True,
    ) -> None:
        self.server = server
        self.headers = list(headers)
        self.policy = policy
        self.say = say
        self.progress = progress
        self.check = check
        self._algorithm: str | None = None
        self._asked = False

    def push(self, path: Path) -> Pushed:
        """Push a file or a folder; raises ConnectionLost or SourceError when it could not."""
        if path.is_dir():
            return self.push_folder(path)
        return self.push_file(path)

    def push_file(self, path: Path) -> Pushed:
        """Deploy by checksum when the server has the content, else send it with its checksum."""
        started = time.monotonic()
        name = path.name
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
        digest = self._digest(path, size) if self.check else None
        if digest is not None:
            known = self._deploy(name, digest)
            if known is not None:
                return Pushed(known, sent=0, seconds=time.monotonic() - started, known=True)
        headers = [*self.headers]
        if digest is not None:
            # The server checks the bytes against it: a file changed since it was hashed is
            # refused (422), not stored under a checksum that was never asked about.
            headers.append(("X-Checksum", digest))
        reply, sent = self._send(name, headers, lambda: file_chunks(path, size), length=size)
        return Pushed(reply, sent=sent, seconds=time.monotonic() - started)

    def push_folder(self, path: Path) -> Pushed:
        """Send the folder as a tar made while it is read; its content is known only once sent."""
        started = time.monotonic()
        name = (path.resolve().name or "root") + ".tar"
        tar = FolderTar(path, skipped=lambda what: self.say(f"{path}: skipped {what}"))
        reply, sent = self._send(name, self.headers, lambda: iter(tar), length=None)
        return Pushed(reply, sent=sent, seconds=time.monotonic() - started, files=tar.files)

    def algorithm(self) -> str | None:
        """The server's CHECKSUM_TYPE from GET /config, if this Python can compute it."""
        if not self._asked:
            reply = self._exchange(
                lambda: self.server.request("GET", "/config", headers=self.headers)
            )
            data = reply.json() if reply.status == 200 else None
            name = data.get("CHECKSUM_TYPE") if isinstance(data, dict) else None
            self._algorithm = name if name in hashlib.algorithms_available else None
            self._asked = True
        return self._algorithm

    def _digest(self, path: Path, size: int) -> str | None:
        algorithm = self.algorithm()
        if algorithm is None:
            return None
        progress = self.progress(f"{path.name} (checksum)", size)
        try:
            return file_digest(path, size, algorithm, seen=progress.add)
        finally:
            progress.close()

    def _deploy(self, name: str, digest: str) -> Reply | None:
        """The deploy-by-checksum answer when the server has that content, else None."""
        head = self._exchange(
            lambda: self.server.request("HEAD", f"/checksum/{digest}", headers=self.headers)
        )
        if head.status != 200:
            return None
        deploy = [*self.headers, ("X-Checksum-Deploy", "true"), ("X-Checksum", digest)]
        reply = self._exchange(
            lambda: self.server.request("PUT", upload_path(name), headers=deploy)
        )
        # 404: the content went away since the HEAD (collected); send the bytes after all.
        return None if reply.status == 404 else reply

    def _send(
        self,
        name: str,
        headers: Headers,
        chunks: Callable[[], Iterable[bytes]],
        *,
        length: int | None,
    ) -> tuple[Reply, int]:
        sent = 0

        def attempt() -> Reply:
            nonlocal sent
            sent = 0
            progress = self.progress(name, length)

            def count(n: int) -> None:
                nonlocal sent
                sent += n
                progress.add(n)

            try:
                return self.server.request(
                    "PUT",
                    upload_path(name),
                    headers=headers,
                    body=chunks(),
                    length=length,
                    sent=count,
                )
            finally:
                progress.close()

        return self._exchange(attempt), sent

    def _exchange(self, attempt: Callable[[], Reply]) -> Reply:
        return with_retries(attempt, policy=self.policy, say=self.say)

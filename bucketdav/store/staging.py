"""Files being written in staging/: hashed in the same pass, in threads for large chunks."""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bucketdav.store.files import disk_full_as_store_full

_SPACE_CHECK_EVERY = 16 << 20
# Chunks at least this large are hashed in a thread of their own, overlapping the next read.
_PIPE_MIN_CHUNK = 256 << 10
_PIPE_DEPTH = 4
# Start writing back every this many bytes, so the final fsync has little left to do.
_WRITEBACK_EVERY = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


class _Pipe:
    """Runs `work` on each chunk in a thread of its own, in order; keeps the first error.

    hashlib and os.write release the GIL, so hashing, writing and reading the next chunk
    proceed at once. After an error the thread keeps taking chunks (dropping them), so the
    feeding side never blocks; it sees the error at its next feed or at finish.
    """

    def __init__(self, work: Callable[[bytes], None], name: str) -> None:
        self.work = work
        self.error: BaseException | None = None
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_PIPE_DEPTH)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is None:
                try:
                    self.work(chunk)
                except BaseException as exc:  # handed to the feeding thread
                    self.error = exc

    def feed(self, chunk: bytes) -> None:
        self.raise_error()
        self.chunks.put(chunk)

    def finish(self) -> None:
        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


@dataclass
class StagedFile:
    """A file being written in staging/, hashed in the same pass as it is written.

    Small chunks are hashed and written at once; from the first large chunk on, hashing and
    writing each run in a thread of their own while the caller reads the next chunk.
    """

    path: Path
    fd: int
    hasher: hashlib._Hash
    extra: dict[str, hashlib._Hash] = field(default_factory=dict)
    size: int = 0
    space_check: int = _SPACE_CHECK_EVERY
    written: int = 0
    written_back: int = 0
    # Called every _SPACE_CHECK_EVERY bytes; raises StoreFull when the disk passes the watermark.
    check_space: Callable[[int], None] | None = None
    pipes: tuple[_Pipe, ...] = ()
    # Told the size on disk after every write, so a reader can follow the file as it grows.
    on_written: Callable[[int], None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data`, hashing it as it goes (in a second thread for large chunks)."""
        data = bytes(data) if not isinstance(data, bytes) else data
        if not self.pipes and len(data) >= _PIPE_MIN_CHUNK:
            self.pipes = (_Pipe(self._hash, "hash"), _Pipe(self._write, "write"))
        if self.pipes:
            for pipe in self.pipes:
                pipe.feed(data)
        else:
            self._hash(data)
            self._write(data)
        self.size += len(data)
        if self.check_space is not None and self.size >= self.space_check:
            self.space_check = self.size + _SPACE_CHECK_EVERY
            self.check_space(0)

    def _hash(self, data: bytes) -> None:
        self.hasher.update(data)
        for extra in self.extra.values():
            extra.update(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with disk_full_as_store_full():
            while view:
                view = view[os.write(self.fd, view) :]
        self.written += len(data)
        if self.written - self.written_back >= _WRITEBACK_EVERY and _sync_file_range is not None:
            _sync_file_range(
                self.fd,
                self.written_back,
                self.written - self.written_back,
                _SYNC_FILE_RANGE_WRITE,
            )
            self.written_back = self.written
        if self.on_written is not None:
            self.on_written(self.written)

    def finish(self) -> None:
        """Wait until every chunk given so far is hashed and written; raise what failed."""
        for pipe in self.pipes:
            pipe.finish()

    def hexdigest(self) -> str:
        """The digest of everything written so far."""
        self.finish()
        return self.hasher.hexdigest()

    def extra_hexdigest(self, algorithm: str) -> str:
        """The digest in one of the extra algorithms asked for."""
        self.finish()
        return self.extra[algorithm].hexdigest()

"""Small helpers shared by tests: hashing, walking a store, multipart bodies."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
from pathlib import Path

from bucketdav.settings import parse_node

# A real MD5 collision: two different 128-byte blocks with the same MD5.
MD5_COLLISION_A = bytes.fromhex(
    "d131dd02c5e6eec4693d9a0698aff95c2fcab58712467eab4004583eb8fb7f89"
    "55ad340609f4b30283e488832571415a085125e8f7cdc99fd91dbdf280373c5b"
    "d8823e3156348f5bae6dacd436c919c6dd53e2b487da03fd02396306d248cda0"
    "e99f33420f577ee8ce54b67080a80d1ec69821bcb6a8839396f9652b6ff72a70"
)
MD5_COLLISION_B = bytes.fromhex(
    "d131dd02c5e6eec4693d9a0698aff95c2fcab50712467eab4004583eb8fb7f89"
    "55ad340609f4b30283e4888325f1415a085125e8f7cdc99fd91dbd7280373c5b"
    "d8823e3156348f5bae6dacd436c919c6dd53e23487da03fd02396306d248cda0"
    "e99f33420f577ee8ce54b67080280d1ec69821bcb6a8839396f965ab6ff72a70"
)


def saturate_links(monkeypatch, path: str | os.PathLike[str]) -> None:
    """From now on os.link of `path` fails with EMLINK, as when it has all the links it can take.

    Wraps whatever os.link is at the call (a recorder's, say); other links go through.
    """
    target = os.fspath(path)
    real_link = os.link

    def saturated(src, dst, **kwargs):
        if os.fspath(src) == target:
            raise OSError(errno.EMLINK, "Too many links", os.fspath(dst))
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", saturated)


def md5(data: bytes) -> str:
    """Hex MD5 of `data`."""
    return hashlib.md5(data).hexdigest()  # noqa: S324 - the store's default checksum


def files_under(root: Path) -> list[Path]:
    """Every non-directory entry below `root`, sorted."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(Path(dirpath) / name for name in files)
    return sorted(out)


def own_staging(root: Path) -> Path:
    """The staging folder of a server started with the default node name (the host name)."""
    return root / "staging" / parse_node("")


def staged(root: Path) -> list[Path]:
    """Every entry in staging/ of any node (staging/<node>/…, or left directly in staging/)."""
    out: list[Path] = []
    for top in sorted((root / "staging").iterdir()):
        out.extend(sorted(top.iterdir()) if top.is_dir() and not top.is_symlink() else [top])
    return out


def assert_blobs_sound(root: Path, algorithm: str = "md5") -> None:
    """Every file under blob/ hashes to its name and sits in its fan-out directory."""
    for path in files_under(root / "blob"):
        digest = hashlib.new(algorithm, path.read_bytes()).hexdigest()
        assert path.name == digest, f"{path} holds content {digest}"
        assert path.parent.name == digest[2:4] and path.parent.parent.name == digest[:2]


def multipart_body(
    fields: list[tuple[str, str | None, bytes]], boundary: str = "bucketdavtestboundary"
) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, filename, data) parts, and its Content-Type."""
    out = bytearray()
    for name, filename, data in fields:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogateescape")
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz of regular files and symlinks (name: target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def raw_tar_header(name: bytes, kind: bytes, size: int, *, link: bytes = b"") -> bytes:
    """One ustar header block, written field by field (for headers tarfile would not write)."""
    block = bytearray(512)
    block[0:100] = name[:100].ljust(100, b"\0")
    block[100:108] = b"0000644\0"
    block[108:124] = b"0000000\0" * 2
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"14536621000\0"
    block[156:157] = kind
    block[157:257] = link[:100].ljust(100, b"\0")
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_blocks(*parts: bytes) -> bytes:
    """A tar of `parts` (each a header and its data), each padded to 512 bytes, then the end."""
    return b"".join(part + b"\0" * (-len(part) % 512) for part in parts) + b"\0" * 1024

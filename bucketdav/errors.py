"""Domain errors: what went wrong, in words for the client; the API maps each to a status."""

from __future__ import annotations


class BucketError(Exception):
    """Base of every error a client can cause or be told about."""


class BadRequest(BucketError):
    """The request is malformed: no file part, empty name, broken framing."""


class NotMultipart(BucketError):
    """A POST upload that is not multipart/form-data."""


class LengthRequired(BucketError):
    """A body was expected but neither Content-Length nor chunked framing was sent."""


class TooLarge(BucketError):
    """The upload is larger than MAX_CONTENT_LENGTH."""


class ChecksumMismatch(BucketError):
    """A checksum header the client sent does not match the content."""


class UnsafeArchive(BucketError):
    """An archive cannot be extracted safely or within bounds; names the member."""

    def __init__(self, message: str, *, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class UnknownContent(BucketError):
    """Deploy by checksum of content that is not stored."""


class ChecksumCollision(BucketError):
    """Different content with the digest of a stored blob (weak CHECKSUM_TYPE)."""


class StoreFull(BucketError):
    """The store's disk is full or below the free-space watermark."""


class Busy(BucketError):
    """Too many uploads at once; the client should retry."""

    retry_after = 5


class ClientGone(BucketError):
    """The client stopped sending before the body was complete."""


class TooSlow(ClientGone):
    """The client sends its body too slowly to finish; the connection is closed."""


class NotSignedIn(BucketError):
    """Credentials are needed for this and none came with the request."""


class NotAllowed(BucketError):
    """The identity may not do this: read there, upload, or file a replica there."""

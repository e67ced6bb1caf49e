"""bucketdav: upload with one curl call, browse and mount the store read-only over WebDAV."""

__version__ = "0.1.0"

"""`bucketdav push`: send files and folders to a bucketdav server (stdlib HTTP, no server code)."""

"""The read-only WebDAV side: look-ups, PROPFIND, GET, listings and the WsgiDAV app."""

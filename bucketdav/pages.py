"""Pages for people: the upload page."""

from __future__ import annotations

from html import escape

from bucketdav.settings import Settings, format_size


def upload_page(settings: Settings) -> str:
    """The upload page: a plain form that works without JavaScript."""
    limit = escape(format_size(settings.max_content_length))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Upload · bucketdav</title></head>
<body><main>
<h1>Upload a file</h1>
<form method="post" action="/upload" enctype="multipart/form-data">
<label for="file">File (up to {limit})</label>
<input id="file" type="file" name="file" required>
<button type="submit">Upload</button>
</form>
<p><a href="/">Browse the store</a></p>
</main></body></html>
"""

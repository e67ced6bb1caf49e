"""Pages for people: the upload page and the Connect page with mount commands.

Both load their script and style from /static and have no inline script or style, so they
are sent with `bucketdav.api.PAGE_CSP`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from urllib.parse import urlsplit

from bucketdav.settings import Settings, format_size

# A Host the Connect page will put into shell commands: a name or IPv4/IPv6 literal and a port.
# Anything else (quotes, spaces, `$`) could turn a copied command into another command.
_SAFE_BASE = re.compile(r"https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
FALLBACK_BASE = "http://bucketdav.example:8080"
# A user name the Connect page will put into shell commands as it is; others show as USER.
_SAFE_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def _head(title: str, *scripts: str) -> str:
    tags = "".join(f'<script type="module" src="/static/{name}"></script>\n' for name in scripts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · bucketdav</title>
<link rel="stylesheet" href="/static/bucketdav.css">
<link rel="icon" href="/static/folder.svg" type="image/svg+xml">
<script src="/static/js-on.js"></script>
{tags}</head>
<body>
"""


def _bar(current: str) -> str:
    links = [("/", "Browse"), ("/upload", "Upload"), ("/connect", "Connect")]
    items = "\n".join(
        f'<a href="{href}"' + (' aria-current="page"' if href == current else "") + f">{label}</a>"
        for href, label in links
    )
    return f"""<header class="bar">
<a class="brand" href="/">bucketdav</a>
<nav aria-label="Pages" class="actions">
{items}
</nav>
</header>
"""


def upload_page(settings: Settings) -> str:
    """The upload page: a plain form without JavaScript; with it, drops, folders and progress."""
    limit = escape(format_size(settings.max_content_length))
    return (
        _head("Upload", "copy.js", "upload.js")
        + _bar("/upload")
        + f"""<main>
<h1>Upload</h1>
<form id="upload-form" method="post" action="/upload" enctype="multipart/form-data">
<div class="drop" id="drop">
<p class="js-only">Drop files or folders anywhere on this page, or choose them.
A folder is packed into one tar and unpacked on the server.</p>
<p class="js-only choose">
<button type="button" id="choose-files">Choose files</button>
<button type="button" id="choose-folder" class="secondary">Choose a folder</button>
<input id="folder" type="file" webkitdirectory hidden aria-label="Folder to upload">
</p>
<p class="nojs-only">
<label for="files">File</label>
<input id="files" type="file" name="file" required>
<button type="submit">Upload</button>
</p>
<p class="hint">Up to <span id="limit">{limit}</span> per upload
(<code>MAX_CONTENT_LENGTH</code>).
<span class="nojs-only">Without JavaScript one file at a time; the answer is JSON.</span></p>
</div>
</form>
<fieldset id="replication" class="js-only" hidden>
<legend>Filed under</legend>
<p class="hint">These request headers name the upload's place under
<code>replica/</code>. They are remembered in this browser.</p>
<div id="fields"></div>
<ul id="where" class="where" aria-live="polite"></ul>
</fieldset>
<h2 class="js-only">Uploads</h2>
<p id="idle" class="hint js-only">Nothing uploaded yet. Three uploads run at a time;
content already stored is recognised by its checksum and not sent again.</p>
<ul id="uploads" aria-label="Uploads"></ul>
<p id="announce" class="visually-hidden" aria-live="polite"></p>
<p class="hint">From a script: <code>curl -T results.xml <span class="origin">http://HOST:PORT</span>/upload/</code>
· <a href="/connect">mount the store</a></p>
</main>
</body></html>
"""
    )


@dataclass(frozen=True)
class Recipe:
    """One way to connect: a heading, what to do, and the commands to copy."""

    key: str
    title: str
    steps: str
    commands: tuple[str, ...]
    note: str = ""


def safe_base_url(base_url: str) -> str:
    """`base_url` when it is a plain scheme://host[:port], else a placeholder address."""
    base = base_url.rstrip("/")
    return base if _SAFE_BASE.fullmatch(base) else FALLBACK_BASE


def recipes(base_url: str, *, user: str | None = None) -> list[Recipe]:
    """The mount and copy commands for a server reached at `base_url`.

    With `user` (access control on; "" when not signed in) the commands pass credentials.
    """
    if user is not None:
        return _signed_in(base_url, user if _SAFE_USER.fullmatch(user) else "USER")
    base = safe_base_url(base_url)
    url = base + "/"
    parts = urlsplit(base)
    host = parts.hostname or "localhost"
    if ":" in host:
        # Windows UNC paths spell IPv6 literals with dashes and a fixed suffix.
        host = host.replace(":", "-") + ".ipv6-literal.net"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ssl = "@SSL" if parts.scheme == "https" else ""
    unc_port = "" if port == (443 if ssl else 80) else f"@{port}"
    unc = f"\\\\{host}{ssl}{unc_port}\\DavWWWRoot"
    return [
        Recipe(
            "davfs2",
            "Linux: davfs2",
            "Mount the store read-only, as root (<code>sudo -i</code> first); "
            "<code>umount /mnt/bucket</code> leaves.",
            (
                "mkdir -p /mnt/bucket",
                "printf 'ask_auth 0\\nuse_locks 0\\nbuf_size 64\\n' > /etc/davfs2/bucketdav.conf",
                f"mount -t davfs -o ro,conf=/etc/davfs2/bucketdav.conf {url} /mnt/bucket",
            ),
            "<code>buf_size 64</code> is needed on Linux 6.16 and newer, where every listing "
            "otherwise fails with <em>Invalid argument</em>; <code>ask_auth 0</code> because the "
            "store needs no login, <code>use_locks 0</code> because it has no locks.",
        ),
        Recipe(
            "rclone",
            "Linux, macOS, Windows: rclone",
            "Mount without root (<code>rclone mount</code> runs until Ctrl-C; on Windows, with "
            "WinFsp, mount on a drive letter such as <code>B:</code>), or copy a folder out of "
            "the store.",
            (
                "mkdir -p ~/bucket",
                # The double quotes keep the single-quoted URL in the remote when pasted into
                # a shell; without them the shell strips the quotes and rclone cannot parse it.
                f"rclone mount \":webdav,url='{url}':\" ~/bucket --read-only",
                f"rclone copy \":webdav,url='{url}':replica\" ./replica",
            ),
            "With <code>--webdav-vendor owncloud</code> rclone reads each file's checksum from "
            "the server, so <code>rclone check</code> and <code>rclone md5sum</code> download "
            "nothing.",
        ),
        Recipe(
            "windows",
            "Windows Explorer",
            "In Explorer choose <em>This PC</em> → <em>Map network drive…</em> and enter this "
            "folder (or the address itself), or run the command in a terminal.",
            (unc, f"net use B: {unc}", url),
            "Windows' WebDAV client refuses to download files over about 50 MB unless its "
            "<code>FileSizeLimitInBytes</code> setting is raised; use rclone for big files.",
        ),
        Recipe(
            "macos",
            "macOS Finder",
            "In Finder choose <em>Go</em> → <em>Connect to Server…</em> (⌘K), enter the address "
            "and choose <em>Connect</em>. Finder mounts it read-only.",
            (url,),
        ),
        Recipe(
            "curl",
            "Upload from a script: curl",
            "Send a file, or a folder as one tar that the server unpacks.",
            (f"curl -T results.xml {url}upload/", f"tar c build | curl -T - {url}upload/build.tar"),
        ),
    ]


def _signed_in(base_url: str, user: str) -> list[Recipe]:
    """The recipes with credentials: USER and PASSWORD (a password, or a token) to fill in."""
    open_recipes = {recipe.key: recipe for recipe in recipes(base_url)}
    base = safe_base_url(base_url)
    url = base + "/"
    tls = (
        " With a private CA or a self-signed certificate, add "
        "<code>trust_server_cert /path/to/cert.pem</code> to the configuration."
        if base.startswith("https:")
        else ""
    )
    rclone_tls = (
        " With a private CA or a self-signed certificate, add <code>--ca-cert cert.pem</code>."
        if base.startswith("https:")
        else ""
    )
    login = f"--webdav-user {user} --webdav-pass \"$(rclone obscure 'PASSWORD')\""
    return [
        Recipe(
            "davfs2",
            "Linux: davfs2",
            "Mount the store read-only, as root (<code>sudo -i</code> first), with the "
            "password (or a token) in davfs2's <code>secrets</code> file; "
            "<code>umount /mnt/bucket</code> leaves.",
            (
                "mkdir -p /mnt/bucket",
                "printf 'ask_auth 0\\nuse_locks 0\\nbuf_size 64\\n' > /etc/davfs2/bucketdav.conf",
                f"echo '/mnt/bucket {user} PASSWORD' >> /etc/davfs2/secrets",
                f"mount -t davfs -o ro,conf=/etc/davfs2/bucketdav.conf {url} /mnt/bucket",
            ),
            "<code>/etc/davfs2/secrets</code> must stay readable by root only (mode 600); a "
            "password with spaces or quotes goes in double quotes, with <code>\\</code> before "
            '<code>"</code> and <code>\\</code>. <code>buf_size 64</code> is needed on Linux '
            "6.16 and newer." + tls,
        ),
        Recipe(
            "rclone",
            "Linux, macOS, Windows: rclone",
            "Mount without root (<code>rclone mount</code> runs until Ctrl-C), or copy a folder "
            "out of the store. rclone takes the password (or a token) only as "
            "<code>rclone obscure</code> writes it.",
            (
                "mkdir -p ~/bucket",
                f"rclone mount \":webdav,url='{url}':\" ~/bucket --read-only {login}",
                f"rclone copy \":webdav,url='{url}':replica\" ./replica {login}",
            ),
            open_recipes["rclone"].note + rclone_tls,
        ),
        Recipe(
            "windows",
            open_recipes["windows"].title,
            open_recipes["windows"].steps
            + " Explorer asks for the name and password, and sends them only over HTTPS.",
            open_recipes["windows"].commands,
            open_recipes["windows"].note,
        ),
        Recipe(
            "macos",
            "macOS Finder",
            "In Finder choose <em>Go</em> → <em>Connect to Server…</em> (⌘K), enter the address, "
            "choose <em>Connect</em> and sign in as a <em>Registered User</em>.",
            (url,),
        ),
        Recipe(
            "curl",
            "Upload from a script: curl",
            "Send a file, or a folder as one tar that the server unpacks: with a name and "
            "password, or a token as the password (any name) or as a Bearer token.",
            (
                f"curl -u {user} -T results.xml {url}upload/",
                f'tar c build | curl -H "Authorization: Bearer $TOKEN" -T - {url}upload/build.tar',
            ),
        ),
    ]


def connect_page(base_url: str, *, user: str | None = None) -> str:
    """The Connect page: exact mount commands for this server's address, each with a copy button.

    With `user` (access control on; "" when not signed in) the commands pass credentials.
    """
    sections = []
    for recipe in recipes(base_url, user=user):
        commands = "\n".join(
            f'<div class="cmd"><pre id="{recipe.key}-{n}"><code>{escape(cmd)}</code></pre>'
            f'<button type="button" class="copy" data-copy="{escape(cmd, quote=True)}" '
            f'aria-label="Copy: {escape(cmd, quote=True)}">Copy</button></div>'
            for n, cmd in enumerate(recipe.commands)
        )
        note = f'<p class="hint">{recipe.note}</p>' if recipe.note else ""
        sections.append(
            f"""<section class="howto" id="{recipe.key}" aria-labelledby="{recipe.key}-title">
<h2 id="{recipe.key}-title">{recipe.title}</h2>
<p>{recipe.steps}</p>
{commands}
{note}
</section>"""
        )
    address = escape(safe_base_url(base_url) + "/")
    return (
        _head("Connect", "copy.js")
        + _bar("/connect")
        + f"""<main>
<h1>Connect</h1>
<p>The whole store is a read-only WebDAV drive at <code>{address}</code>.
Mount it to browse builds and results like local files.</p>
{"".join(sections)}
</main>
</body></html>
"""
    )

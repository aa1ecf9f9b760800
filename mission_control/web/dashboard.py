# -*- test-case-name: tests.test_web_dashboard -*-
"""
The dashboard's files, served by the hub itself (docs/dashboard.md, docs/http-api.md):

    GET /                      index.html
    GET /assets/NAME           NAME, from the dashboard folder
    GET /assets/vendor/NAME    NAME, from its vendor/ subfolder

The folder is package data (C{mission_control/static/dashboard}, found with importlib.resources,
so it works from a wheel as from a checkout), or any folder given to L{Dashboard}.  Its files are
read once, when the resource is made, into a table: every regular file of a known type (by its
extension, L{CONTENT_TYPES}) in the folder and in its C{vendor/} subfolder; they total a few
hundred KiB.  A request is a lookup in that table, never a path on disk, so no request reaches
anything else: no directory listing, no C{..}, no symlink (symlinks are not loaded at all: one
could point anywhere, and a packager that links vendor files to a system copy gets a log line
instead of a silent change of what is served).

Every file is answered with a strong ETag (a hash of its bytes) and C{Cache-Control: no-cache}:
the browser keeps its copy but asks each time, gets C{304 Not Modified} while it is current, and
the new page at once after the hub is upgraded.  Every answer of this resource, errors included,
carries a Content-Security-Policy that allows only the hub's own scripts, styles, images and
connections (no inline script or style, no framing), with C{X-Frame-Options}, C{Referrer-Policy}
and C{Cross-Origin-Opener-Policy} to match; the site adds C{Server} and C{nosniff}.  The page
signs in from C{/#token=...}: a fragment never reaches the server, and C{no-referrer} keeps the
address out of every request the page makes.

Without an index.html in the folder (the hub installed without its front-end), C{/} answers a
short placeholder page that says so.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Union

from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET, Request

from mission_control.web.site import error_body

#: The package and folder of the dashboard's files.
PACKAGE = "mission_control"
FOLDER = ("static", "dashboard")
#: The subfolder served under /assets/vendor/.
VENDOR = "vendor"
INDEX = "index.html"

#: The files served, by extension, and the Content-Type of each.
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".txt": b"text/plain; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}

#: Only the hub's own files and connections (the WebSocket included: CSP level 3 matches a
#: same-origin ws:// or wss:// URL with 'self'), no inline script or style, no plugin, no base
#: URL, forms only to the hub, never in a frame.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)

#: Headers of every answer of the dashboard resource.
SECURITY_HEADERS = (
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
)

#: What a served file may be called: no dot files, nothing that needs quoting in a URL.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

#: Where the files are: a path, or a C{Traversable} (the package's own folder, from a wheel too).
Folder = Union[str, os.PathLike[str], Traversable]

PLACEHOLDER_PAGE = b"""<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>mission-control</title>
<h1>mission-control</h1>
<p>The hub is running, but its dashboard files are not installed. The WebSocket is at
<code>/ws</code> and the HTTP API under <code>/api</code> (see docs/http-api.md).</p>
</html>
"""


@dataclass(frozen=True)
class StaticFile:
    """One file as it is served: its bytes, its Content-Type and its ETag."""

    body: bytes
    content_type: bytes
    etag: bytes

    @classmethod
    def of(cls, body: bytes, content_type: bytes) -> "StaticFile":
        """A file with a strong ETag: the first 128 bits of the SHA-256 of its bytes, quoted."""
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, content_type, b'"' + digest.encode("ascii") + b'"')


def default_folder() -> Traversable:
    """The dashboard folder of the installed package (a C{Traversable})."""
    folder = resources.files(PACKAGE)
    for part in FOLDER:
        folder = folder / part
    return folder


def load_files(folder: Folder, log: Logger | None = None) -> dict[str, StaticFile]:
    """
    The files to serve from C{folder} (a path or an importlib.resources C{Traversable}), by the
    name they are served under: C{app.js}, C{vendor/uplot.min.css}.  Regular files of a known
    type only; anything else (a subfolder other than C{vendor}, a symlink, a dot file, another
    type) is left out, and said in the log when it looks like a file meant to be served.
    """
    directory: Traversable = (
        pathlib.Path(folder) if isinstance(folder, (str, os.PathLike)) else folder
    )
    log = log or Logger()
    files: dict[str, StaticFile] = {}

    def skip(name: str, why: str) -> None:
        log.warn("not serving the dashboard file {name}: {why}", name=name, why=why)

    def load(directory: Traversable, prefix: str) -> None:
        for entry in sorted(directory.iterdir(), key=lambda e: e.name):
            name = entry.name
            if _NAME_RE.match(name) is None:
                continue  # dot files and the like: never part of the page
            if _is_symlink(entry):
                skip(prefix + name, "a symlink")
            elif entry.is_dir():
                if not prefix and name == VENDOR:
                    load(entry, VENDOR + "/")
                else:
                    skip(prefix + name, "only the vendor/ subfolder is served")
            elif not entry.is_file():
                skip(prefix + name, "not a regular file")
            elif _extension(name) not in CONTENT_TYPES:
                skip(prefix + name, "only " + " ".join(sorted(CONTENT_TYPES)) + " files are served")
            else:
                content_type = CONTENT_TYPES[_extension(name)]
                files[prefix + name] = StaticFile.of(entry.read_bytes(), content_type)

    # The folder itself is the operator's choice, a symlink or not; what is in it is checked.
    if directory.is_dir():
        load(directory, "")
    return files


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _is_symlink(entry: Traversable) -> bool:
    """Whether C{entry} is a symlink (a C{Traversable} that is not on disk never is)."""
    return isinstance(entry, pathlib.Path) and entry.is_symlink()


def etag_matches(header: bytes | None, etag: bytes) -> bool:
    """
    Whether an C{If-None-Match} header value names C{etag}: C{*}, or a comma-separated list of
    entity tags compared weakly (C{W/"x"} matches C{"x"}), as RFC 9110 section 13.1.2 asks.
    """
    if not header:
        return False
    for tag in header.split(b","):
        tag = tag.strip()
        if tag == b"*":
            return True
        if tag.startswith(b"W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


class Dashboard(resource.Resource):
    """
    The dashboard's files, at C{/} (index.html) and under C{/assets/}: put it in a tree with
    L{mount}.

    @param folder: where the files are: a path or a C{Traversable}; the package's own by default.
    @ivar files: what is served under C{/assets/}, by name (C{vendor/NAME} for vendor files).
    @ivar index: what C{/} serves: index.html, or L{PLACEHOLDER_PAGE} when there is none.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, folder: Folder | None = None) -> None:
        super().__init__()
        self.files = load_files(default_folder() if folder is None else folder, self.log)
        index = self.files.get(INDEX)
        if index is None:
            self.log.info("the dashboard has no {index}: / answers a placeholder page",
                          index=INDEX)
            index = StaticFile.of(PLACEHOLDER_PAGE, CONTENT_TYPES[".html"])
        self.index = index

    def mount(self, root: resource.Resource) -> None:
        """Serve the page at C{/} and the files under C{/assets/} of C{root}."""
        root.putChild(b"", self)
        root.putChild(b"assets", self)

    def lookup(self, prepath: list[bytes], postpath: list[bytes]) -> StaticFile | None:
        """
        The file a request path asks for, or C{None}: C{/} is the page, C{/assets/NAME} and
        C{/assets/vendor/NAME} a file of the table; nothing else (C{//}, C{/assets/},
        C{/assets/a/b}) is.
        """
        mounted = prepath[-1] if prepath else b""
        if mounted == b"":
            return self.index if not postpath else None
        if mounted != b"assets" or not 1 <= len(postpath) <= 2:
            return None
        if len(postpath) == 2 and postpath[0] != VENDOR.encode():
            return None
        if any(b"/" in part for part in postpath):
            return None  # a percent-encoded slash: one segment, never two
        try:
            name = "/".join(part.decode("utf-8") for part in postpath)
        except UnicodeDecodeError:
            return None
        return self.files.get(name)

    def render(self, request: Request) -> bytes | int:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        found = self.lookup(request.prepath or [], request.postpath or [])
        if found is None:
            return _error(request, 404, "not_found", "no such resource")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _error(request, 405, "method_not_allowed", "method not allowed")
        request.setHeader(b"ETag", found.etag)
        request.setHeader(b"Cache-Control", b"no-cache")
        if etag_matches(request.getHeader(b"if-none-match"), found.etag):
            # Written here: returned, an empty body would be announced as Content-Length: 0,
            # which a 304 must not say of a file that is not empty.
            request.setResponseCode(304)
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", found.content_type)
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % (len(found.body),))
            return b""
        return found.body


def _error(request: Request, status: int, code: str, message: str) -> bytes:
    """The hub's JSON error, from the dashboard's resource (its head alone for HEAD)."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    body = error_body(code, message)
    if request.method == b"HEAD":
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return b""
    return body

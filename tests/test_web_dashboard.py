# -*- test-case-name: tests.test_web_dashboard -*-
"""
Tests for L{mission_control.web.dashboard}: which files are loaded, and how C{/} and C{/assets/}
answer over real loopback HTTP (types, ETags and 304s, the security headers, nothing outside the
table), with a dashboard folder of each test's own; and, when Playwright and Chromium are there,
that the page's Content-Security-Policy lets it open the hub's WebSocket and runs no inline script.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from twisted.internet import defer, threads
from twisted.trial import unittest

from mission_control.web import dashboard
from mission_control.web.dashboard import (
    CONTENT_SECURITY_POLICY,
    PLACEHOLDER_PAGE,
    Dashboard,
    StaticFile,
    etag_matches,
    load_files,
)
from tests.helpers import LogCapture, http_request, raw_request, start_server, wait_until

INDEX = b'<!doctype html><meta charset="utf-8"><title>t</title><script type="module" src="/assets/app.js"></script>'


def make_folder(testcase, files: dict[str, bytes]) -> str:
    """A dashboard folder holding C{files} (names may be C{vendor/NAME}); its path."""
    folder = os.path.abspath(testcase.mktemp())
    os.makedirs(os.path.join(folder, "vendor"))
    for name, body in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(body)
    return folder


def standard_files() -> dict[str, bytes]:
    return {
        "index.html": INDEX,
        "app.js": b"export const x = 1;\n",
        "app.css": b"body { color: black; }\n",
        "icon.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "icon.png": b"\x89PNG\r\n\x1a\n",
        "favicon.ico": b"\x00\x00\x01\x00",
        "NOTICE.txt": b"notice\n",
        "vendor/uplot.iife.min.js": b"var uPlot = 1;\n",
        "vendor/uplot.min.css": b".u { }\n",
    }


class LoadTests(unittest.SynchronousTestCase):
    """load_files: the table of what is served, read once."""

    def test_known_types_in_the_folder_and_vendor(self):
        """Every regular file of a known type, in the folder and in vendor/, with its type."""
        files = load_files(make_folder(self, standard_files()))
        self.assertEqual(
            {name: f.content_type for name, f in files.items()},
            {"index.html": b"text/html; charset=utf-8",
             "app.js": b"text/javascript; charset=utf-8",
             "app.css": b"text/css; charset=utf-8",
             "icon.svg": b"image/svg+xml",
             "icon.png": b"image/png",
             "favicon.ico": b"image/x-icon",
             "NOTICE.txt": b"text/plain; charset=utf-8",
             "vendor/uplot.iife.min.js": b"text/javascript; charset=utf-8",
             "vendor/uplot.min.css": b"text/css; charset=utf-8"})
        self.assertEqual(files["app.js"].body, b"export const x = 1;\n")

    def test_everything_else_left_out(self):
        """
        Dot files, unknown types, other subfolders, files deeper than vendor/, symlinks (to a
        file outside, to a file inside, a symlinked vendor folder) are not loaded; each but the
        dot files is named in the log.
        """
        outside = make_folder(self, {"secret.js": b"secret"})
        folder = make_folder(self, {"index.html": INDEX, ".hidden.js": b"h", "notes.md": b"n",
                                    "app.js.map": b"{}", "vendor/.keep": b""})
        os.makedirs(os.path.join(folder, "img"))
        with open(os.path.join(folder, "img", "a.png"), "wb") as f:
            f.write(b"png")
        os.makedirs(os.path.join(folder, "vendor", "deep"))
        with open(os.path.join(folder, "vendor", "deep", "x.js"), "wb") as f:
            f.write(b"x")
        os.symlink(os.path.join(outside, "secret.js"), os.path.join(folder, "linked.js"))
        os.symlink(os.path.join(folder, "index.html"), os.path.join(folder, "again.html"))
        logged = LogCapture(self)
        files = load_files(folder)
        self.assertEqual(sorted(files), ["index.html"])
        skipped = logged.matching("not serving the dashboard file")
        for name in ("notes.md", "app.js.map", "img", "vendor/deep", "linked.js", "again.html"):
            self.assertEqual(len([line for line in skipped if f" {name}:" in line]), 1, name)
        self.assertEqual(len(skipped), 6)

        shutil.rmtree(os.path.join(folder, "vendor"))
        os.symlink(outside, os.path.join(folder, "vendor"))
        self.assertEqual(sorted(load_files(folder)), ["index.html"])
        self.assertEqual(len(logged.matching("not serving the dashboard file vendor: a symlink")), 1)

    def test_folder_may_be_a_symlink(self):
        """The folder itself may be a symlink: what it holds is loaded, checked as ever."""
        folder = make_folder(self, {"index.html": INDEX, "app.js": b"x"})
        link = os.path.join(os.path.abspath(self.mktemp()))
        os.symlink(folder, link)
        self.assertEqual(sorted(load_files(link)), ["app.js", "index.html"])

    def test_missing_folder(self):
        """A folder that is not there serves nothing, and / the placeholder page."""
        missing = os.path.join(os.path.abspath(self.mktemp()), "nope")
        self.assertEqual(load_files(missing), {})
        self.assertEqual(Dashboard(missing).index.body, PLACEHOLDER_PAGE)

    def test_read_once(self):
        """The files are read when the resource is made: later changes on disk are not seen."""
        folder = make_folder(self, {"index.html": INDEX, "app.js": b"one"})
        resource = Dashboard(folder)
        with open(os.path.join(folder, "app.js"), "wb") as f:
            f.write(b"two")
        with open(os.path.join(folder, "late.js"), "wb") as f:
            f.write(b"late")
        self.assertEqual(resource.files["app.js"].body, b"one")
        self.assertNotIn("late.js", resource.files)

    def test_package_folder(self):
        """By default the package's own folder is read: its vendored uPlot is there."""
        files = Dashboard().files
        self.assertIn("vendor/uplot.iife.min.js", files)
        self.assertEqual(files["vendor/uplot.min.css"].content_type, b"text/css; charset=utf-8")

    def test_etag(self):
        """A strong ETag, quoted, the same for the same bytes and another for other bytes."""
        one = StaticFile.of(b"abc", b"text/plain").etag
        self.assertRegex(one.decode(), r'^"[0-9a-f]{32}"$')
        self.assertEqual(one, StaticFile.of(b"abc", b"text/css").etag)
        self.assertNotEqual(one, StaticFile.of(b"abd", b"text/plain").etag)

    def test_if_none_match(self):
        """If-None-Match matches its own tag, in a list, weakly (W/), and *; nothing else."""
        tag = b'"abc"'
        for header in (b'"abc"', b'"x", "abc"', b'W/"abc"', b"*", b' "x" ,W/"abc" '):
            self.assertTrue(etag_matches(header, tag), header)
        for header in (None, b"", b'"abd"', b"abc", b'"abc', b'W/"x"'):
            self.assertFalse(etag_matches(header, tag), header)


class ServeTests(unittest.TestCase):
    """/ and /assets/ over real HTTP, with a dashboard folder of the test's own."""

    SECURITY = {
        "content-security-policy": CONTENT_SECURITY_POLICY.decode(),
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
        "x-content-type-options": "nosniff",
        "server": "mission-control",
    }

    def setUp(self):
        self.server = start_server(self)
        self.files = standard_files()
        self.dashboard = Dashboard(make_folder(self, self.files))
        self.dashboard.mount(self.server.service.site.resource)

    def request(self, path, method="GET", headers=None):
        return raw_request(self.server.port, http_request(method, path, headers=headers))

    def assertSecured(self, response):
        for name, value in self.SECURITY.items():
            self.assertEqual(response.headers.get(name), value, name)

    @defer.inlineCallbacks
    def test_page(self):
        """
        GET / is index.html, as text/html with its length, a strong ETag, Cache-Control
        no-cache and every security header: the CSP, no framing, no referrer, its own opener.
        """
        response = yield self.request("/")
        self.assertEqual((response.status, response.body), (200, INDEX))
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(response.headers["content-length"], str(len(INDEX)))
        self.assertEqual(response.headers["etag"], StaticFile.of(INDEX, b"").etag.decode())
        self.assertEqual(response.headers["cache-control"], "no-cache")
        self.assertSecured(response)
        self.assertEqual(response.headers["content-security-policy"],
                         "default-src 'none'; script-src 'self'; style-src 'self'; "
                         "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
                         "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        query = yield self.request("/?from=link")
        self.assertEqual(query.body, INDEX)

    @defer.inlineCallbacks
    def test_assets(self):
        """Each file under /assets/ and /assets/vendor/ with its bytes, type, ETag and headers."""
        for name, body in self.files.items():
            response = yield self.request(f"/assets/{name}?v=2")
            self.assertEqual((response.status, response.body), (200, body), name)
            self.assertEqual(response.headers["content-type"],
                             self.dashboard.files[name].content_type.decode(), name)
            self.assertEqual(response.headers["etag"], self.dashboard.files[name].etag.decode())
            self.assertEqual(response.headers["cache-control"], "no-cache")
            self.assertSecured(response)

    @defer.inlineCallbacks
    def test_head(self):
        """HEAD answers GET's head, with the file's length, and no body."""
        response = yield self.request("/assets/app.css", method="HEAD")
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(response.headers["content-length"], str(len(self.files["app.css"])))
        self.assertEqual(response.headers["content-type"], "text/css; charset=utf-8")
        self.assertSecured(response)

    @defer.inlineCallbacks
    def test_not_modified(self):
        """
        A matching If-None-Match gets 304 with the ETag, Cache-Control and security headers,
        no body and no Content-Length: 0; a stale one gets the file.
        """
        etag = self.dashboard.index.etag.decode()
        for header in (etag, f'"old", {etag}', f"W/{etag}", "*"):
            for method in ("GET", "HEAD"):
                response = yield self.request("/", method, {"If-None-Match": header})
                self.assertEqual((response.status, response.body), (304, b""), header)
                self.assertEqual(response.headers["etag"], etag)
                self.assertEqual(response.headers["cache-control"], "no-cache")
                self.assertNotIn("content-length", response.headers)
                self.assertSecured(response)
        response = yield self.request("/", headers={"If-None-Match": '"old"'})
        self.assertEqual((response.status, response.body), (200, INDEX))

    @defer.inlineCallbacks
    def test_keep_alive_after_304(self):
        """A 304 ends cleanly: the next request on the same connection is answered too."""
        etag = self.dashboard.index.etag.decode()
        request = (http_request("GET", "/", headers={"If-None-Match": etag})
                   + http_request("GET", "/assets/app.js", headers={"Connection": "close"}))
        response = yield raw_request(self.server.port, request, close_after=False)
        self.assertEqual(response.status, 304)
        self.assertIn(b"HTTP/1.1 200 OK", response.raw)
        self.assertTrue(response.raw.endswith(self.files["app.js"]))

    @defer.inlineCallbacks
    def test_nothing_else(self):
        """
        Any path that is not / or a loaded file is the hub's JSON 404, with the security
        headers: no listing, no .., no encoded tricks, no dot file, no deeper path.
        """
        folder = os.path.dirname(os.path.dirname(dashboard.__file__))
        self.assertTrue(os.path.exists(os.path.join(folder, "tap.py")))
        for path in ("/assets", "/assets/", "/assets/vendor", "/assets/vendor/", "//",
                     "/assets/nope.js", "/assets/../tap.py", "/assets/%2e%2e/tap.py",
                     "/assets/vendor/../../tap.py", "/assets/..%2f..%2ftap.py",
                     "/assets/vendor%2fuplot.min.css", "/assets/%2Fetc%2Fpasswd",
                     "/assets/.hidden.js", "/assets/app.js/", "/assets/app.js/x",
                     "/assets/vendor/uplot.min.css/x", "/assets/%ff", "/assets/APP.JS"):
            response = yield self.request(path)
            self.assertEqual(response.status, 404, path)
            self.assertEqual(response.json()["error"]["code"], "not_found", path)
            self.assertSecured(response)
        response = yield self.request("/index.html")
        self.assertEqual((response.status, response.json()["error"]["code"]), (404, "not_found"))

    @defer.inlineCallbacks
    def test_other_methods(self):
        """Other methods on a file are 405 JSON with Allow: GET, HEAD; unknown paths stay 404."""
        for method, path in (("POST", "/"), ("DELETE", "/assets/app.js"), ("PUT", "/"),
                             ("OPTIONS", "/assets/vendor/uplot.min.css")):
            response = yield self.request(path, method)
            self.assertEqual(response.status, 405, (method, path))
            self.assertEqual(response.headers["allow"], "GET, HEAD")
            self.assertEqual(response.json()["error"]["code"], "method_not_allowed")
            self.assertSecured(response)
        response = yield self.request("/assets/nope.js", "POST")
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_placeholder(self):
        """Without index.html, / answers a placeholder page, as HTML with the same headers."""
        Dashboard(make_folder(self, {"app.js": b"x"})).mount(self.server.service.site.resource)
        response = yield self.request("/")
        self.assertEqual((response.status, response.body), (200, PLACEHOLDER_PAGE))
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertSecured(response)
        self.assertNotIn(b"<script", PLACEHOLDER_PAGE)
        self.assertNotIn(b"style", PLACEHOLDER_PAGE)


class PackageDashboardTests(unittest.TestCase):
    """The hub as twistd builds it serves the package's dashboard folder."""

    @defer.inlineCallbacks
    def test_served_by_the_tap(self):
        """/ is HTML and the vendored uPlot is under /assets/vendor/, from the package."""
        server = start_server(self)
        page = yield raw_request(server.port, http_request("GET", "/"))
        self.assertEqual((page.status, page.headers["content-type"]),
                         (200, "text/html; charset=utf-8"))
        script = yield raw_request(server.port,
                                   http_request("GET", "/assets/vendor/uplot.iife.min.js"))
        self.assertEqual(script.status, 200)
        self.assertEqual(script.headers["content-type"], "text/javascript; charset=utf-8")
        self.assertIn(b"uPlot", script.body)


#: A page that runs one module: it opens the hub's WebSocket, same origin, with the token from
#: the fragment, and reports what happened in the document; an inline script tries to run too.
BROWSER_INDEX = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>csp</title>
<script>document.documentElement.dataset.inline = "ran";</script>
<script type="module" src="/assets/check.js"></script>
</head><body></body></html>
"""

BROWSER_SCRIPT = b"""
const report = document.documentElement.dataset;
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const ws = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
ws.onmessage = (m) => {
  const frame = JSON.parse(m.data);
  if (frame.type === "welcome") report.ws = "welcome " + frame.payload.user.id;
};
ws.onerror = () => { report.ws = report.ws || "error"; };
"""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class BrowserPolicyTests(unittest.TestCase):
    """The Content-Security-Policy in Chromium (skipped without Playwright or Chromium)."""

    timeout = 60

    def setUp(self):
        if importlib.util.find_spec("playwright") is None:
            raise unittest.SkipTest("Playwright is not installed (pip install -e '.[test]')")
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest(f"no Chromium at {CHROMIUM}")

    @defer.inlineCallbacks
    def test_connect_src_self_admits_the_websocket(self):
        """
        Under the dashboard's CSP, Chromium runs the page's module, lets it open the hub's
        same-origin ws:// WebSocket (connect-src 'self'), and refuses the inline script.
        """
        server = start_server(self)
        folder = make_folder(self, {"index.html": BROWSER_INDEX, "check.js": BROWSER_SCRIPT})
        Dashboard(folder).mount(server.service.site.resource)
        url = f"http://127.0.0.1:{server.port}/#token={server.token('dana')}"
        seen = yield threads.deferToThread(_open_in_chromium, url)
        self.assertEqual(seen["ws"], "welcome dana", seen)
        self.assertIsNone(seen["inline"], seen)
        refused = [m for m in seen["console"] if "Content Security Policy" in m]
        self.assertEqual(len(refused), 1, seen)
        self.assertIn("inline script", refused[0])
        yield wait_until(lambda: server.hub.connection_count == 0)


def _open_in_chromium(url: str) -> dict:
    """Open C{url} in headless Chromium, wait for the page's report; in a thread of its own."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(url)
            page.wait_for_function("document.documentElement.dataset.ws !== undefined",
                                   timeout=20_000)
            seen = page.evaluate("""() => {
                const d = document.documentElement.dataset;
                return {ws: d.ws, inline: d.inline ?? null};
            }""")
            return dict(seen, console=console)
        finally:
            browser.close()

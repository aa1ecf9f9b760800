# -*- test-case-name: tests.test_dashboard -*-
"""
Browser tests under trial: headless Chromium driven by Playwright, against a real hub process.

Trial runs the reactor in the main thread, and Playwright's sync API blocks the thread it runs
on.  So each browser session runs on a thread of its own: L{run_browser} starts that thread, which
starts Playwright, launches Chromium, calls C{fn(session)} and closes everything again, and the
returned Deferred fires (on the reactor thread, through C{callFromThread}) with what C{fn}
returned or with its failure.  While C{fn} runs, the reactor goes on serving the hub child's log
pipes and any Twisted client a test uses; C{fn} calls back into the reactor with
L{BrowserSession.call} when it must (to restart the hub, to open a WebSocket with Autobahn).

Every page of a session is watched: its console messages, the exceptions it did not catch
(Playwright's C{pageerror}), the requests it made and the dialogs it opened.  A session in which
a page threw fails, whatever C{fn} checked; a failing session's error carries the page's console
errors, which is usually where the reason is.

L{DashboardHub} is the hub: C{twistd -n mission-control} as a child process on a free loopback
port with a fresh data dir, which can be stopped and started again on the same port and data.
Tokens come from the C{mission-control token} command, as a user would mint them.

The browser is the system's Chromium, never a downloaded one: C{$MISSION_CONTROL_CHROMIUM}, else
C{/usr/bin/chromium}, else C{chromium} on the C{PATH}.  Without it, or without Playwright (the
C{test} extra), L{UNAVAILABLE} says why, and the browser tests skip with that reason.
"""

from __future__ import annotations

import http.client
import importlib
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field

from twisted.internet import defer, reactor, threads, utils
from twisted.python import failure

from mission_control import keys, tokens
from tests.helpers import PROJECT_ROOT, free_port, spawn_twistd, wait_until

CHROMIUM_ENV = "MISSION_CONTROL_CHROMIUM"
#: Flags for a headless Chromium in a container: no sandbox (no user namespaces there), and
#: nothing that phones home or updates itself while a test runs.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
#: How long (milliseconds) a Playwright action or wait may take unless a test says otherwise.
#: Generous: it bounds a wait for something that should happen, it measures nothing.
DEFAULT_TIMEOUT_MS = 10_000
#: Seconds a call from the browser thread into the reactor may take.
REACTOR_CALL_TIMEOUT = 30.0
#: Seconds a test waits, once it ended, for its browser session to close.
SESSION_END_TIMEOUT = 60.0


def find_chromium() -> str | None:
    """The Chromium to drive: C{$MISSION_CONTROL_CHROMIUM}, /usr/bin/chromium, or the PATH's."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable() -> str | None:
    """Why browser tests cannot run here (Playwright or Chromium missing), or L{None}."""
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError as e:
        return f"Playwright is not installed (pip install '.[test]'): {e}"
    if find_chromium() is None:
        configured = os.environ.get(CHROMIUM_ENV)
        if configured:
            return f"${CHROMIUM_ENV} is {configured!r}, which is not an executable"
        return ("no Chromium: not at /usr/bin/chromium nor on the PATH (apt-get install chromium, "
                f"or set ${CHROMIUM_ENV}; .ci/run installs it)")
    return None


#: The reason browser tests skip here, or None when they can run: a test class's C{skip}.
UNAVAILABLE = unavailable()


class PageError(AssertionError):
    """A page threw an exception that it did not catch."""


@dataclass
class PageLog:
    """What one page reported while a session ran."""

    label: str
    console: list = field(default_factory=list)   # (type, text)
    errors: list = field(default_factory=list)    # uncaught exceptions, with their stack
    requests: list = field(default_factory=list)  # (method, url)
    dialogs: list = field(default_factory=list)   # (type, message) of alert/confirm/prompt

    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]

    def request_paths(self) -> list[str]:
        """The path (with query) of every request, in the order the page made them."""
        from urllib.parse import urlsplit

        paths = []
        for _, url in self.requests:
            parts = urlsplit(url)
            paths.append(parts.path + (f"?{parts.query}" if parts.query else ""))
        return paths


class BrowserSession:
    """
    One Chromium, on the thread L{run_browser} started: C{page} is its first page, L{new_page}
    opens more, each in a fresh context (its own storage, as another user's browser would be).
    Its methods may only be called from that thread.
    """

    def __init__(self, browser, context_options: dict) -> None:
        self.browser = browser
        self.logs: list[PageLog] = []
        self._by_page: dict = {}
        self.page = self.new_page(**context_options)

    def new_page(self, label: str | None = None, **context_options):
        """A page in a new browser context made with C{context_options}; it is watched."""
        context = self.browser.new_context(**context_options)
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        page = context.new_page()
        log = PageLog(label or f"page {len(self.logs) + 1}")
        self.logs.append(log)
        self._by_page[id(page)] = (page, log)
        page.on("console", lambda message: log.console.append((message.type, message.text)))
        page.on("pageerror", lambda error: log.errors.append(error.stack or error.message))
        page.on("request", lambda request: log.requests.append((request.method, request.url)))

        def dialog(d):
            log.dialogs.append((d.type, d.message))
            d.dismiss()

        page.on("dialog", dialog)
        return page

    def log(self, page=None) -> PageLog:
        """What C{page} (by default the first page) reported so far."""
        return self._by_page[id(page if page is not None else self.page)][1]

    def page_errors(self) -> list[str]:
        return [f"{log.label}: {error}" for log in self.logs for error in log.errors]

    def console_errors(self) -> list[str]:
        return [f"{log.label}: {text}" for log in self.logs for text in log.console_errors()]

    def call(self, f, *args, timeout: float = REACTOR_CALL_TIMEOUT, **kwargs):
        """
        Call C{f} on the reactor thread and wait for its result (a Deferred's too), at most
        C{timeout} seconds.  For what only the reactor may do: restart the hub, use a Twisted
        client.
        """
        def in_reactor():
            d = defer.maybeDeferred(f, *args, **kwargs)
            return d.addTimeout(timeout, reactor)

        return threads.blockingCallFromThread(reactor, in_reactor)

    def describe(self) -> str:
        """The page errors and console errors so far, for a failure message."""
        lines = [f"page error: {e}" for e in self.page_errors()]
        lines += [f"console error: {e}" for e in self.console_errors()]
        return "\n".join(lines) or "(no page errors, no console errors)"


def _run_session(fn, context_options: dict):
    """On the session's thread: Playwright, Chromium, C{fn(session)}, and everything closed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(),
                                             args=list(CHROMIUM_ARGS))
        try:
            session = BrowserSession(browser, context_options)
            try:
                result = fn(session)
            except BaseException as e:
                e.add_note(session.describe())
                raise
            errors = session.page_errors()
            if errors:
                raise PageError("the page threw:\n" + "\n".join(errors)
                                + "\n" + "\n".join(session.console_errors()))
            return result
        finally:
            browser.close()


def run_browser(testcase, fn, **context_options) -> defer.Deferred:
    """
    Run C{fn(session)} with a fresh L{BrowserSession} on a thread of its own; the Deferred fires
    on the reactor thread with what C{fn} returned, or fails with its exception, or with
    L{PageError} when a page threw.  C{context_options} go to the first page's browser context
    (C{viewport}, C{bypass_csp}, ...).  The test does not end before the browser is closed.
    """
    result = defer.Deferred()
    ended = defer.Deferred()

    def deliver(outcome):
        ended.callback(None)
        if isinstance(outcome, failure.Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def main():
        try:
            outcome = _run_session(fn, context_options)
        except BaseException:
            outcome = failure.Failure()
        reactor.callFromThread(deliver, outcome)

    def closed():
        """The test ends once the browser is closed: Playwright's timeouts bound each action."""
        if ended.called:
            return None
        waiting = defer.Deferred()
        ended.addCallback(lambda _: waiting.called or waiting.callback(None))

        def still_running(f):
            f.trap(defer.TimeoutError)
            raise AssertionError(f"the browser session still ran {SESSION_END_TIMEOUT} s after "
                                 "the test ended")

        return waiting.addTimeout(SESSION_END_TIMEOUT, reactor).addErrback(still_running)

    thread = threading.Thread(target=main, name=f"browser: {testcase.id()}", daemon=True)
    testcase.addCleanup(closed)
    thread.start()
    return result


def _child_environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [PROJECT_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class DashboardHub:
    """
    A real hub for browser tests: C{twistd -n mission-control} (with C{--demo} unless told
    otherwise) on 127.0.0.1 and a free port, with a data dir of the test's own.  L{start} fires
    once it listens; L{stop} sends SIGTERM and waits for the process to end; L{restart} starts it
    again on the same port and data dir.  Whatever still runs when the test ends is stopped.

    L{post} is plain blocking HTTP, for the browser thread (never the reactor's).
    """

    def __init__(self, testcase, demo: bool = True, args=()) -> None:
        self.testcase = testcase
        self.port = free_port()
        self.data_dir = os.path.abspath(testcase.mktemp())
        self.args = (["--demo"] if demo else []) + list(args)
        self.process = None
        self.runs = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base + path

    def ws_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws" + (f"?{query}" if query else "")

    def page_url(self, token: str) -> str:
        """The dashboard, signing in with C{token} from the fragment."""
        return self.url("/#token=" + token)

    @defer.inlineCallbacks
    def start(self):
        process = spawn_twistd(self.testcase, *self.args,
                               "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                               "--data-dir", self.data_dir)
        self.process = process
        self.runs.append(process)
        self.testcase.addCleanup(self._stop_process, process)
        yield wait_until(lambda: "mint a token with" in process.text or process.ended.called,
                         timeout=30)
        if process.ended.called:
            raise AssertionError("the hub did not start: " + process.describe())
        return self

    def log(self) -> str:
        """Everything the hub processes wrote, run after run."""
        return "".join(run.output for run in self.runs)

    @defer.inlineCallbacks
    def _stop_process(self, process):
        if process.ended.called:
            return
        process.transport.signalProcess("TERM")
        timer = reactor.callLater(15, lambda: process.ended.called
                                  or process.transport.signalProcess("KILL"))
        yield process.ended
        if timer.active():
            timer.cancel()

    def stop(self):
        """SIGTERM the hub; fires once it has exited."""
        return self._stop_process(self.process)

    @defer.inlineCallbacks
    def restart(self):
        """Stop the hub, then start it again on the same port and data dir."""
        yield self.stop()
        yield self.start()

    @defer.inlineCallbacks
    def token(self, sub: str = "alice", role: str = "admin", ttl: str = "1h", name=None):
        """A token from C{mission-control token --data-dir DIR --sub SUB --role ROLE}."""
        argv = ["-m", "mission_control.cli", "token", "--data-dir", self.data_dir,
                "--sub", sub, "--role", role, "--ttl", ttl]
        if name is not None:
            argv += ["--name", name]
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, argv, env=_child_environment(), path=PROJECT_ROOT)
        if code != 0:
            raise AssertionError(f"mission-control token failed ({code}): {err!r}")
        return out.decode().strip()

    def expired_token(self, sub: str = "alice", role: str = "admin") -> str:
        """A token signed with the hub's secret whose C{exp} passed an hour ago."""
        secret = keys.read_secret(os.path.join(self.data_dir, keys.SECRET_FILE_NAME))
        now = time.time()
        return tokens.mint_token(secret, sub, now - 7200, ttl=3600, role=role)

    def dashboard_link(self) -> str | None:
        """The signed-in link of the start-up log (C{dashboard: http://...#token=...})."""
        match = re.search(r"dashboard: (http://127\.0\.0\.1:%d/#token=[A-Za-z0-9._~+/=-]+)"
                          % (self.port,), self.log())
        return match.group(1) if match else None

    def request(self, method: str, path: str, token: str | None = None, body=None):
        """
        One blocking HTTP request (never call it on the reactor thread): the status and the
        decoded JSON answer (or the raw bytes when it is not JSON).
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, data, headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw

    def post(self, path: str, token: str, body) -> dict:
        """POST C{body} to C{path}; the answer's JSON, which must be a 200."""
        status, answer = self.request("POST", path, token, body)
        if status != 200:
            raise AssertionError(f"POST {path} answered {status}: {answer!r}")
        return answer

    def publish_status(self, token: str, agent_id: str, **payload) -> dict:
        """POST /api/agents/{agent_id}/status; the stored envelope (with its seq)."""
        return self.post(f"/api/agents/{agent_id}/status", token, payload)["event"]

    def publish_activity(self, token: str, session_id: str, **payload) -> dict:
        """POST /api/sessions/{session_id}/activity; the stored envelope (with its seq)."""
        return self.post(f"/api/sessions/{session_id}/activity", token, payload)["event"]

# -*- test-case-name: tests.test_cli_publish -*-
"""
Tests for C{mission-control publish} (L{mission_control.cli.publish}): what is refused before any
request, and the POST itself, run on the test's reactor as the console script runs it under
C{task.react}, against a real server on a loopback port (L{tests.helpers.start_server}).
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource
from twisted.web import server as web_server
from twisted.web.util import Redirect

from mission_control import cli
from tests.cli_helpers import UsageAssertions, free_port, publish, run, secret_dir
from tests.helpers import ChildProcess, start_server


# publish: everything that is refused before any request


class PublishUsageTests(UsageAssertions, SynchronousTestCase):
    """C{mission-control publish} arguments, checked locally."""

    def test_options_after_the_arguments(self):
        """Options may follow AGENT_ID and STATUS, and connection options may come before the
        subcommand; both end up in the request."""
        options = cli.parse_command_line(
            ["publish", "--url", "http://127.0.0.1:9", "status", "agent-1", "busy",
             "--message", "hi", "--metadata", '{"k": [1, 2]}', "--token", "x.y.z"], {})
        leaf = options.subOptions.subOptions
        self.assertEqual(leaf["body"], {"status": "busy", "message": "hi",
                                        "metadata": {"k": [1, 2]}})
        self.assertEqual(leaf["url"] + leaf["path"],
                         "http://127.0.0.1:9/api/agents/agent-1/status")
        self.assertEqual(leaf["credentials"].token(0), "x.y.z")

    def test_bad_arguments(self):
        """Bad JSON, a non-object, an unknown status, a bad id, missing or extra arguments and a
        missing subcommand: exit code 2 before any request (no token or server is needed)."""
        cases = [
            (["status", "a1", "busy", "--metadata", "{x"], ["--metadata is not valid JSON"]),
            (["status", "a1", "busy", "--metadata", "[1]"], ["--metadata must be a JSON object"]),
            (["activity", "s1", "started", "--detail", "nope"], ["--detail is not valid JSON"]),
            (["status", "a1", "sleeping"], ["status must be one of online, busy"]),
            (["status", "not an id", "busy"], ["AGENT_ID must be"]),
            (["activity", "s1", "not a word"], ["activity must be a short word"]),
            (["status"], ["missing AGENT_ID and STATUS"]),
            (["activity", "s1"], ["missing ACTIVITY"]),
            (["status", "a1", "busy", "extra"], ["unexpected argument 'extra'"]),
            (["status", "a1", "busy", "--message", "x" * 1025], ["message must be at most"]),
        ]
        for argv, fragments in cases:
            self.assertUsageError(["publish", *argv], *fragments)

    def test_publish_without_subcommand(self):
        """C{publish} alone prints its usage, which names both subcommands, and exits 2."""
        code, out, err = run(["publish"])
        self.assertEqual((code, out), (2, ""))
        self.assertIn("status", err)
        self.assertIn("activity", err)
        self.assertIn("mission-control publish: no command given", err)


# publish against a real server


class PublishTests(TestCase):
    """C{mission-control publish} over HTTP to a running hub."""

    timeout = 30

    def setUp(self):
        self.data_dir, _ = secret_dir(self)
        self.server = start_server(self, ["--data-dir", self.data_dir])
        self.url = f"http://127.0.0.1:{self.server.port}"

    @defer.inlineCallbacks
    def test_status_is_stored_and_broadcast(self):
        """publish status posts the payload; the hub stores it and the line printed has the seq
        the hub assigned."""
        token = self.server.token("ops", role="operator")
        code, out, err = yield publish(
            ["publish", "status", "agent-atlas", "busy", "--message", "working on a task",
             "--name", "Atlas", "--metadata", '{"task": 7}', "--url", self.url,
             "--token", token])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"published agent:status seq={self.server.hub.store.last_seq}\n")
        [stored] = self.server.hub.store.agents()
        self.assertEqual(
            {k: stored[k] for k in ("agentId", "status", "message", "name", "metadata")},
            {"agentId": "agent-atlas", "status": "busy", "message": "working on a task",
             "name": "Atlas", "metadata": {"task": 7}})

    @defer.inlineCallbacks
    def test_activity(self):
        """publish activity posts a session:activity with its agent, summary and detail."""
        code, out, err = yield publish(
            ["publish", "activity", "sess-00001", "tool_call", "--agent", "agent-atlas",
             "--summary", "called web.search", "--detail", '{"tool": "web.search"}',
             "--url", self.url, "--token", self.server.token("root", role="admin")])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, "published session:activity seq=1\n")
        [stored] = self.server.hub.store.sessions()
        self.assertEqual(
            {k: stored[k] for k in ("sessionId", "activity", "agentId", "summary", "detail")},
            {"sessionId": "sess-00001", "activity": "tool_call", "agentId": "agent-atlas",
             "summary": "called web.search", "detail": {"tool": "web.search"}})

    @defer.inlineCallbacks
    def test_mints_an_admin_token_without_one(self):
        """With no token, publish mints one from the data dir's secret, found through
        MISSION_CONTROL_DATA_DIR, and the URL comes from MISSION_CONTROL_URL."""
        environ = {"MISSION_CONTROL_DATA_DIR": self.data_dir, "MISSION_CONTROL_URL": self.url}
        code, out, err = yield publish(["publish", "status", "agent-b", "idle"], environ)
        self.assertEqual((code, out, err), (0, "published agent:status seq=1\n", ""))

    @defer.inlineCallbacks
    def test_http_error_shows_status_and_message(self):
        """A refusal prints the status and the hub's JSON error message, exit code 1, nothing on
        stdout, and never the token."""
        token = self.server.token("someone", role="viewer")
        code, out, err = yield publish(
            ["publish", "status", "agent-atlas", "busy", "--url", self.url, "--token", token])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err, "mission-control publish status: 403 Forbidden: "
                 "not allowed to publish for this agent\n")
        self.assertNotIn(token, err)
        self.assertEqual(self.server.hub.store.last_seq, 0)

    @defer.inlineCallbacks
    def test_foreign_secret_hint(self):
        """A token minted from a secret the hub does not use gets 401, with a hint that names the
        secret file it was minted from."""
        other_dir, _ = secret_dir(self)
        code, out, err = yield publish(
            ["publish", "status", "agent-atlas", "busy", "--url", self.url,
             "--data-dir", other_dir])
        self.assertEqual((code, out), (1, ""))
        self.assertIn("401 Unauthorized: invalid token", err)
        self.assertIn(os.path.join(other_dir, "jwt-secret"), err)
        self.assertEqual(err.count("\n"), 1)

    @defer.inlineCallbacks
    def test_connection_refused(self):
        """Nothing listening: one line saying so, exit code 1."""
        code, out, err = yield publish(
            ["publish", "status", "agent-atlas", "busy", "--url",
             f"http://127.0.0.1:{free_port()}", "--token", "x.y.z"])
        self.assertEqual((code, out), (1, ""))
        self.assertIn("connection refused", err)
        self.assertEqual(err.count("\n"), 1)
        self.assertNotIn("Traceback", err)


class _Recorder(resource.Resource):
    """Answers anything with C{{}}, remembering the Authorization header of each request."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.authorizations = []

    def render(self, request):
        self.authorizations.append(request.getHeader(b"authorization"))
        return b"{}"


class PublishRedirectTests(TestCase):
    """C{publish} and redirects."""

    timeout = 30

    @defer.inlineCallbacks
    def test_redirect_not_followed(self):
        """A redirect is reported as an error and not followed, so the bearer token never goes to
        the URL it points at."""
        recorder = _Recorder()
        root = resource.Resource()
        root.putChild(b"api", Redirect(b"/elsewhere"))
        root.putChild(b"elsewhere", recorder)
        port = reactor.listenTCP(0, web_server.Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        code, out, err = yield publish(
            ["publish", "status", "agent-atlas", "busy", "--token", "x.y.z",
             "--url", f"http://127.0.0.1:{port.getHost().port}"])
        self.assertEqual((code, out), (1, ""))
        self.assertIn("302 Found", err)
        self.assertEqual(recorder.authorizations, [])


class _Silent(Protocol):
    """A peer that accepts the connection and the request, and never answers."""

    def dataReceived(self, data):
        self.factory.requests.append(data)


class _Flood(Protocol):
    """A peer that answers 200 with a body of C{size} bytes of JSON text."""

    size = 3 * 1024 * 1024

    def dataReceived(self, data):
        if b"\r\n\r\n" in data and self.transport.connected:
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n\r\n".encode()
            self.transport.write(head + b" " * self.size)


class PublishLimitTests(TestCase):
    """C{publish} against peers that do not answer as a hub does."""

    timeout = 30

    def listen(self, protocol):
        factory = Factory.forProtocol(protocol)
        factory.requests = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def test_timeout(self):
        """A hub that takes the request and never answers: after the timeout, one line saying
        the request timed out, exit code 1, and nothing left running (no timer, no connection:
        trial fails a test that leaves either behind)."""
        factory, url = self.listen(_Silent)
        started = reactor.seconds()
        code, out, err = yield publish(
            ["publish", "status", "agent-atlas", "busy", "--token", "x.y.z", "--url", url],
            timeout=0.3)
        self.assertGreaterEqual(reactor.seconds() - started, 0.3)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"mission-control publish status: request to {url}"
                              f"/api/agents/agent-atlas/status failed: timed out\n")
        self.assertEqual(len(factory.requests), 1)
        self.assertIn(b"POST /api/agents/agent-atlas/status HTTP/1.1", factory.requests[0])

    @defer.inlineCallbacks
    def test_answer_read_up_to_a_limit(self):
        """An answer larger than any hub's is read no further than the limit (1 MiB) and is not
        taken for a hub's: one line saying so, exit code 1."""
        _, url = self.listen(_Flood)
        code, out, err = yield publish(
            ["publish", "status", "agent-atlas", "busy", "--token", "x.y.z", "--url", url])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"mission-control publish status: {url}/api/agents/agent-atlas/"
                              f"status did not answer like a mission-control hub\n")


class PublishProcessTests(TestCase):
    """The console script's C{publish} as a process: it runs under task.react and exits with
    the command's code."""

    timeout = 60

    @defer.inlineCallbacks
    def run_script(self, *argv):
        process = ChildProcess()
        reactor.spawnProcess(process, sys.executable,
                             [sys.executable, "-m", "mission_control.cli", *argv],
                             env=dict(os.environ))
        code = yield process.ended
        return code, process.out.decode(), process.err.decode()

    @defer.inlineCallbacks
    def test_published_and_refused(self):
        """Published: the seq on stdout, exit code 0.  Refused: the status and the hub's message
        on stderr, exit code 1, nothing on stdout."""
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        url = f"http://127.0.0.1:{server.port}"
        result = yield self.run_script("publish", "status", "agent-1", "busy", "--url", url,
                                       "--data-dir", data_dir)
        self.assertEqual(result, (0, "published agent:status seq=1\n", ""))
        result = yield self.run_script("publish", "status", "agent-1", "busy", "--url", url,
                                       "--token", server.token("someone", role="viewer"))
        self.assertEqual(result, (1, "", "mission-control publish status: 403 Forbidden: "
                                         "not allowed to publish for this agent\n"))
        self.assertEqual(server.hub.store.last_seq, 1)

    @defer.inlineCallbacks
    def test_unreachable(self):
        """Nothing listening: one line on stderr, exit code 1."""
        code, out, err = yield self.run_script(
            "publish", "status", "agent-1", "busy", "--token", "x.y.z",
            "--url", f"http://127.0.0.1:{free_port()}")
        self.assertEqual((code, out), (1, ""))
        self.assertRegex(err, r"^mission-control publish status: cannot reach http://127\.0\.0\.1"
                              r":\d+/api/agents/agent-1/status: connection refused "
                              r"\(is the hub running there\?\)\n$")

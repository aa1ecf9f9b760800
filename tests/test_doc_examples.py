# -*- test-case-name: tests.test_doc_examples -*-
"""
The examples in README.md and docs/ run, as written there, against a real hub.

Each example is read from the document itself: a code block preceded by an HTML comment that names
it, C{<!-- example: NAME -->} (invisible once rendered), so that an example cannot change without
its test noticing, and no copy of it lives here.  What the test changes is only what the reader's
machine would differ in: the hub's port (the examples say 127.0.0.1:8080, the tests listen on a
free port), and the URLs a page or a script is told to use.

Shell examples run with C{/bin/sh} in a folder whose C{.venv} is this Python's environment, as the
README's set-up makes it.  The Node.js example runs with the machine's C{node}; the browser client
and the React hook run in headless Chromium.  Those tests skip, saying why, when the program is
missing; C{.ci/run} installs them, so CI runs every one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase

from mission_control import events
from tests.helpers import PROJECT_ROOT, free_port, start_server, wait_until

_MARKER = re.compile(r"<!--\s*example:\s*([\w.-]+)\s*-->")


def examples(relative_path: str) -> dict[str, str]:
    """
    The marked examples of a markdown file of this checkout, by name: the fenced (```) or
    indented (four spaces) code block that follows each C{<!-- example: NAME -->} comment.
    """
    with open(os.path.join(PROJECT_ROOT, relative_path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    found: dict[str, str] = {}
    i = 0
    while i < len(lines):
        match = _MARKER.fullmatch(lines[i].strip())
        i += 1
        if match is None:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        block: list[str] = []
        if i < len(lines) and lines[i].startswith("```"):
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
        else:
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:
            raise AssertionError(f"{relative_path}: example {match.group(1)} has no code block")
        found[match.group(1)] = "\n".join(block) + "\n"
    return found


class Process(ProcessProtocol):
    """
    A child process: its output so far, and C{ended}, which fires with its exit code (C{None}
    when a signal ended it: C{signal} says which).
    """

    def __init__(self, name: str):
        self.name = name
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()
        self.transport = None
        self.signal = None

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.signal = reason.value.signal
        self.ended.callback(reason.value.exitCode)

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def describe(self) -> str:
        return (f"{self.name}: stdout {self.out.decode('utf-8', 'replace')!r}, "
                f"stderr {self.err.decode('utf-8', 'replace')!r}")


def spawn(testcase, name, argv, env, cwd) -> Process:
    """Start C{argv}; it is killed at the end of the test if it is still running."""
    proto = Process(name)
    reactor.spawnProcess(proto, argv[0], argv, env=env, path=cwd)

    def kill():
        if not proto.ended.called:
            proto.transport.signalProcess("KILL")
            return proto.ended

    testcase.addCleanup(kill)
    return proto


def child_environment(**extra) -> dict:
    """This process's environment without the hub's own variables, plus C{extra}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
    env.update(extra)
    return env


class ReadmeTourTests(TestCase):
    """README.md's "one-minute tour", command by command, in the order it gives them."""

    timeout = 90

    def setUp(self):
        venv = os.path.join(sys.prefix, "bin")
        if not os.path.exists(os.path.join(venv, "mission-control")):
            raise SkipTest(f"the tour needs the console scripts installed in {venv}")
        if shutil.which("curl") is None:
            raise SkipTest("the tour uses curl, which is not installed")
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        os.symlink(sys.prefix, os.path.join(self.cwd, ".venv"))
        self.port = free_port()
        self.env = child_environment(MISSION_CONTROL_URL=f"http://127.0.0.1:{self.port}")
        self.blocks = examples("README.md")

    def command(self, name: str) -> str:
        """The example C{name}, on this test's port."""
        return self.blocks[name].replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")

    def start(self, name: str, command: str) -> Process:
        return spawn(self, name, ["/bin/sh", "-c", "exec " + command.strip()], self.env, self.cwd)

    @defer.inlineCallbacks
    def start_hub(self, name: str, command: str) -> Process:
        """The hub, with the README's command plus a --listen on this test's port."""
        hub = self.start(name, f"{command.strip()} --listen tcp:{self.port}:interface=127.0.0.1")
        yield wait_until(lambda: f"ws://127.0.0.1:{self.port}/ws" in hub.text
                         or hub.ended.called, timeout=20)
        self.assertFalse(hub.ended.called, hub.describe())
        return hub

    @defer.inlineCallbacks
    def run_shell(self, name: str, script: str) -> str:
        """Run C{script} in one shell, as typed into one terminal; fires with its stdout."""
        proto = spawn(self, name, ["/bin/sh", "-e", "-c", script], self.env, self.cwd)
        code = yield proto.ended
        self.assertEqual(code, 0, proto.describe())
        return proto.text

    @defer.inlineCallbacks
    def test_tour(self):
        """
        Following the tour word for word: the first watch prints the demo's events; a watch as
        another user, on an agent's channel and presence, prints presence:leave and
        presence:join when the first stops and starts again; the published statuses reach the
        first watch; the reads answer; and after the hub is stopped and started again with the
        tour's command, the watch resumes without losing anything.
        """
        setup = self.blocks["setup-run"].strip()
        hub = yield self.start_hub("hub", setup.split(" && ")[-1])

        first = self.start("watch", self.command("tour-watch"))
        yield wait_until(lambda: "connected as mission-control-cli" in first.text, timeout=20)
        carol = self.start("watch --sub carol", self.command("tour-presence"))
        yield wait_until(lambda: "connected as carol" in carol.text, timeout=20)

        first.transport.signalProcess("INT")  # Ctrl-C
        self.assertEqual((yield first.ended), 0, first.describe())
        yield wait_until(lambda: "presence:leave  mission-control-cli" in carol.text, timeout=10)
        first = self.start("watch again", self.command("tour-watch"))
        yield wait_until(lambda: "presence:join  mission-control-cli" in carol.text, timeout=20)
        self.assertRegex(carol.text, r'presence:join  mission-control-cli  "mission-control CLI"'
                                     r'  \(viewer\)  connections=1')

        output = yield self.run_shell("publish and read", "\n".join(
            self.command(name) for name in ("tour-publish", "tour-publish-cli", "tour-read")))
        self.assertIn('"agentId":"agent-42","status":"busy"', output)
        self.assertRegex(output, r"published agent:status seq=\d+")
        self.assertIn('"agentId":"agent-42","status":"idle"', output)
        self.assertIn('"sessions":[', output)
        yield wait_until(lambda: "agent-42  idle  \"done\"" in first.text, timeout=10)
        self.assertIn('agent-42  busy  "summarizing the weekly report"', first.text)

        hub.transport.signalProcess("INT")  # Ctrl-C: twistd ends by the signal, after a clean stop
        self.assertIn(((yield hub.ended), hub.signal), [(0, None), (None, signal.SIGINT)])
        self.assertIn("Server Shut Down", hub.text)
        yield wait_until(lambda: "reconnecting" in first.err.decode(), timeout=10)
        yield self.start_hub("hub again", self.command("tour-restart"))
        yield wait_until(lambda: re.search(r"resumed: (replayed seq|nothing missed)", first.text),
                         timeout=30)
        seqs = [int(s) for s in re.findall(r"  seq=(\d+)$", first.text, re.MULTILINE)]
        self.assertEqual(seqs, sorted(set(seqs)), "each event printed once, in order")
        for proto in (first, carol):
            proto.transport.signalProcess("INT")
            self.assertEqual((yield proto.ended), 0, proto.describe())


def node_command(testcase) -> list[str]:
    """
    How docs/delivery.md says to run its Node.js example on this machine's C{node}: plain on
    Node.js 22 or newer, with C{--experimental-websocket} on 20.10 or newer; else skip.
    """
    node = shutil.which("node")
    if node is None:
        raise SkipTest("node is not installed (.ci/run installs it)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    match = re.match(r"v(\d+)\.(\d+)", version.strip())
    if match is None:
        raise SkipTest(f"cannot tell the version of {node}: {version!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    if major >= 22:
        return [node]
    if (major, minor) >= (20, 10):
        return [node, "--experimental-websocket"]
    raise SkipTest(f"the example needs Node.js 22, or 20.10 with a flag; this is {version.strip()}")


def publish_status(server, agent_id, status="online"):
    """Publish an agent:status through C{server}'s hub; return its seq."""
    payload = events.agent_status({"status": status}, reactor.seconds(), agent_id)
    return server.hub.publish(events.AGENT_STATUS, payload)["seq"]


class NodeNotifierTests(TestCase):
    """docs/delivery.md's notifier.js, the at-least-once consumer for Node.js."""

    timeout = 60

    @defer.inlineCallbacks
    def test_notifier_handles_every_event_across_a_hub_restart(self):
        """
        notifier.js handles each event once and in order; when the hub restarts it keeps
        trying while connections are refused (Node.js fires only "error" then, never "close"),
        and once the hub is back it resumes: the events published meanwhile, then live ones.
        """
        node = node_command(self)
        data_dir = os.path.abspath(self.mktemp())
        server = start_server(self, ["--data-dir", data_dir])
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "notifier.js"), "w") as f:
            f.write(examples("docs/delivery.md")["notifier"])
        env = child_environment(MC_URL=server.url(),
                                MC_TOKEN=server.token("notifier-service", ttl=600))
        notifier = spawn(self, "notifier.js", [*node, "notifier.js"], env, folder)

        def handled():
            return [int(line.split()[0]) for line in notifier.text.splitlines()]

        yield wait_until(lambda: server.hub.connections_of("notifier-service")
                         or notifier.ended.called, timeout=20)
        self.assertFalse(notifier.ended.called, notifier.describe())
        for agent in ("agent-1", "agent-2", "agent-3"):
            publish_status(server, agent)
        yield wait_until(lambda: handled() == [1, 2, 3], timeout=10)
        self.assertIn("1 agent:status agent-1", notifier.text)

        ports = [port for _, port in server.service.ports]
        yield server.service.stopService()
        yield wait_until(lambda: not any(port.connected for port in ports))
        # The 1001 close, then at least one attempt refused while nothing listens.
        yield wait_until(lambda: "disconnected (no connection)" in notifier.err.decode(),
                         timeout=15)
        self.assertIn("disconnected (1001)", notifier.err.decode())
        server = start_server(self, ["--data-dir", data_dir,
                                     "--listen", f"tcp:{server.port}:interface=127.0.0.1"])
        for agent in ("agent-4", "agent-5"):
            publish_status(server, agent)  # before the notifier can be back: it must resume
        yield wait_until(lambda: server.hub.connections_of("notifier-service"), timeout=20)
        publish_status(server, "agent-live")
        yield wait_until(lambda: handled()[-1:] == [6], timeout=10)
        self.assertEqual(handled(), [1, 2, 3, 4, 5, 6], notifier.describe())
        self.assertFalse(notifier.ended.called, notifier.describe())

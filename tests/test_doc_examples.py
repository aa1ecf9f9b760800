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

import json
import os
import re
import shutil
import signal
import sys
import urllib.error

from twisted.internet import defer, reactor, threads, utils
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web import resource
from twisted.web import server as web_server

from mission_control import events
from tests.helpers import (
    PROJECT_ROOT,
    ChildProcess,
    connect,
    fired,
    free_port,
    node_version,
    spawn_process,
    start_server,
    wait_until,
)

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


def spawn(testcase, name, argv, env, cwd) -> ChildProcess:
    """Start C{argv}; it is killed at the end of the test if it is still running."""
    return spawn_process(testcase, ChildProcess(name), argv, env, cwd)


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

    def start(self, name: str, command: str) -> ChildProcess:
        return spawn(self, name, ["/bin/sh", "-c", "exec " + command.strip()], self.env, self.cwd)

    @defer.inlineCallbacks
    def start_hub(self, name: str, command: str) -> ChildProcess:
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
    node, (major, minor), printed = node_version()
    if major >= 22:
        return [node]
    if (major, minor) >= (20, 10):
        return [node, "--experimental-websocket"]
    raise SkipTest(f"the example needs Node.js 22, or 20.10 with a flag; this is {printed}")


def publish_status(server, agent_id, status="online"):
    """Publish an agent:status through C{server}'s hub; return its seq."""
    payload = events.agent_status({"status": status}, reactor.seconds(), agent_id)
    return fired(server.hub.publish(events.AGENT_STATUS, payload))["seq"]


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


# The browser: docs/websocket-api.md's client, its "Use it" code and the React hook, in Chromium.

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

#: A stand-in for React's useState and useEffect, enough to run a hook without a build step:
#: one component, rendered again (in a microtask) after each state change; effects run after the
#: render whose dependencies changed, the previous one's clean-up first; unmount cleans up.
REACT_STAND_IN = """
let slots = [];
let component = null;
let cursor = 0;
let pending = [];
let scheduled = false;
export function useState(initial) {
  const i = cursor++;
  if (!slots[i]) slots[i] = { value: initial };
  const slot = slots[i];
  return [slot.value, (value) => { slot.value = value; schedule(); }];
}
export function useEffect(effect, deps) {
  const i = cursor++;
  const slot = slots[i];
  if (slot && deps && deps.every((d, k) => Object.is(d, slot.deps[k]))) return;
  pending.push(() => { slot?.cleanup?.(); slots[i] = { deps, cleanup: effect() }; });
}
function schedule() {
  if (!scheduled) { scheduled = true; queueMicrotask(run); }
}
function run() {
  scheduled = false;
  if (!component) return;
  cursor = 0;
  component();
  const effects = pending;
  pending = [];
  effects.forEach((effect) => effect());
}
export function render(c) { component = c; schedule(); }
export function unmount() {
  component = null;
  slots.forEach((slot) => slot?.cleanup?.());
  slots = [];
}
"""

#: What every test page runs first: report(kind, data) posts to the test, numbered, so that
#: the order of the page's reports survives concurrent requests.
REPORTER = """
let reportCount = 0;
window.report = (kind, data) => fetch("/report", {
  method: "POST", body: JSON.stringify({ n: reportCount++, kind, ...data }),
});
window.addEventListener("error", (e) => report("page-error", { message: String(e.message) }));
window.addEventListener("unhandledrejection", (e) => report("page-error", { message: String(e.reason) }));
"""


class _Text(resource.Resource):
    isLeaf = True

    def __init__(self, body: str, content_type: bytes):
        super().__init__()
        self.body, self.content_type = body.encode("utf-8"), content_type

    def render_GET(self, request):
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        return self.body


class _TokenEndpoint(resource.Resource):
    """C{GET /api/mc-token} of "your backend": a fresh short-lived hub token for the page."""

    isLeaf = True

    def __init__(self, mint):
        super().__init__()
        self.mint, self.issued = mint, 0

    def render_GET(self, request):
        self.issued += 1
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({"token": self.mint()}).encode()


class _Reports(resource.Resource):
    """C{POST /report}: what the page tells the test, kept in the order the page sent it."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.received: list[dict] = []

    def render_POST(self, request):
        self.received.append(json.loads(request.content.read()))
        self.received.sort(key=lambda report: report["n"])
        return b""

    def of(self, kind) -> list[dict]:
        return [report for report in self.received if report["kind"] == kind]


class DashboardClientTests(SynchronousTestCase):
    """
    The hub's own dashboard connects with the documented browser client: the file it serves at
    C{/assets/client.js} is the example of docs/websocket-api.md, so the example is what the
    dashboard's own browser tests exercise, and the two cannot drift apart.
    """

    def test_dashboard_client_is_the_documented_example(self):
        """mission_control/static/dashboard/client.js is the C{browser-client} example, byte for byte."""
        path = os.path.join(PROJECT_ROOT, "mission_control", "static", "dashboard", "client.js")
        with open(path, encoding="utf-8") as f:
            served = f.read()
        self.assertEqual(served.rstrip("\n"), examples("docs/websocket-api.md")["browser-client"].rstrip("\n"))


class BrowserTests(TestCase):
    """
    The browser client of docs/websocket-api.md, in headless Chromium, against a real hub: the
    page is served by a small site of the test's own, which plays the dashboard's backend (the
    token endpoint) and hears what the page reports.
    """

    timeout = 60

    def setUp(self):
        self.chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if self.chromium is None:
            raise SkipTest("chromium is not installed (.ci/run installs it: "
                           "apt-get install -y chromium)")
        self.doc = examples("docs/websocket-api.md")
        self.data_dir = os.path.abspath(self.mktemp())
        self.hub = start_server(self, ["--data-dir", self.data_dir])

    def serve(self, page_script: str, files: dict | None = None, sub="dana") -> None:
        """Serve a page that runs C{page_script} (a module), and open it in Chromium."""
        root = resource.Resource()
        html = ('<!doctype html><meta charset="utf-8"><title>test</title>'
                '<script type="importmap">{"imports": {"react": "/react.js"}}</script>'
                '<pre id="status"></pre><pre id="agents"></pre>'
                f"<script>{REPORTER}</script>"
                f'<script type="module">{page_script}</script>')
        root.putChild(b"", _Text(html, b"text/html; charset=utf-8"))
        scripts = {"mission-control-client.js": self.doc["browser-client"],
                   "react.js": REACT_STAND_IN, **(files or {})}
        for name, body in scripts.items():
            root.putChild(name.encode(), _Text(body, b"text/javascript; charset=utf-8"))
        self.tokens = _TokenEndpoint(lambda: self.hub.token(sub, ttl=300))
        api = resource.Resource()
        api.putChild(b"mc-token", self.tokens)
        root.putChild(b"api", api)
        self.reports = _Reports()
        root.putChild(b"report", self.reports)
        site = web_server.Site(root)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        self.browser = spawn(
            self, "chromium",
            [self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"http://127.0.0.1:{port.getHost().port}/"],
            child_environment(), profile)

    def hub_url(self) -> str:
        return f"ws://127.0.0.1:{self.hub.port}/ws"

    def wait_for(self, predicate, timeout=20):
        """Wait until C{predicate()}; a page error or a browser that died fails at once."""
        def check():
            errors = self.reports.of("page-error")
            if errors or self.browser.ended.called:
                raise AssertionError(f"page errors {errors}; {self.browser.describe()[-2000:]}")
            return predicate()

        return wait_until(check, timeout=timeout)

    @defer.inlineCallbacks
    def restart_hub(self):
        """Stop the hub (1001 to its clients) and start it again on its port and data dir."""
        ports = [port for _, port in self.hub.service.ports]
        yield self.hub.service.stopService()
        yield wait_until(lambda: not any(port.connected for port in ports))
        self.hub = start_server(self, ["--data-dir", self.data_dir,
                                       "--listen", f"tcp:{self.hub.port}:interface=127.0.0.1"])

    @defer.inlineCallbacks
    def test_use_it_shows_the_fleet_and_survives_a_restart(self):
        """
        The "Use it" code, as written (the hub's URL aside), on a page with #status and #agents:
        it shows "open" and the agents of the snapshot, each new status as it is published,
        and after the hub restarts it shows what was published while it was away.
        """
        publish_status(self.hub, "agent-1", "idle")
        use_it = self.doc["browser-client-use"].replace("wss://mc.example.com/ws", self.hub_url())
        self.serve("""
            import "/use-it.js";
            let last = "";
            setInterval(() => {
              const status = document.querySelector("#status").textContent;
              const agents = document.querySelector("#agents").textContent;
              if (status + agents !== last) { last = status + agents; report("dom", { status, agents }); }
            }, 20);
        """, {"use-it.js": use_it.replace('"./mission-control-client.js"',
                                           '"/mission-control-client.js"')})

        def shown():
            dom = self.reports.of("dom")
            return dom[-1] if dom else {"status": "", "agents": ""}

        yield self.wait_for(lambda: (shown()["status"], shown()["agents"])
                            == ("open", "agent-1: idle"))
        publish_status(self.hub, "agent-2", "busy")
        yield self.wait_for(lambda: shown()["agents"] == "agent-1: idle\nagent-2: busy")

        yield self.restart_hub()
        publish_status(self.hub, "agent-3", "error")  # before the page can be back
        yield self.wait_for(lambda: shown()["status"] == "open"
                            and "agent-3: error" in shown()["agents"])
        self.assertIn("retrying", [report["status"] for report in self.reports.of("dom")])
        self.assertGreaterEqual(self.tokens.issued, 2)  # a fresh token for each connection

    def states(self, kind="state") -> list:
        return self.reports.of(kind)

    @defer.inlineCallbacks
    def test_client_resumes_and_keeps_agents_in_update_order(self):
        """
        connectMissionControl: the snapshot's agents in their order (least recently updated
        first), an updated agent moved to the end, each event applied once; after the hub
        restarts it resumes with since and epoch, so what was published meanwhile arrives as
        events (not in a snapshot), then live events.
        """
        publish_status(self.hub, "agent-1")
        publish_status(self.hub, "agent-2")
        self.serve(f"""
            import {{ connectMissionControl }} from "/mission-control-client.js";
            connectMissionControl({{
              url: "{self.hub_url()}",
              onStatus: (status) => report("status", {{ status }}),
              onEvent: (frame) => report("event", {{ seq: frame.seq }}),
              onChange: (state) => report("state", {{
                agents: [...state.agents.keys()], lastSeq: state.lastSeq, epoch: state.epoch,
              }}),
            }});
        """)
        yield self.wait_for(lambda: self.states() and self.states()[-1]["lastSeq"] == 2)
        self.assertEqual(self.states()[-1]["agents"], ["agent-1", "agent-2"])
        self.assertEqual(self.states()[-1]["epoch"], self.hub.hub.store.epoch)
        publish_status(self.hub, "agent-1", "busy")
        yield self.wait_for(lambda: self.states()[-1]["lastSeq"] == 3)
        self.assertEqual(self.states()[-1]["agents"], ["agent-2", "agent-1"])

        yield self.restart_hub()
        publish_status(self.hub, "agent-3")  # seq 4, before the page can be back
        yield self.wait_for(lambda: self.states()[-1]["lastSeq"] == 4)
        publish_status(self.hub, "agent-1", "idle")  # seq 5, live
        yield self.wait_for(lambda: self.states()[-1]["lastSeq"] == 5)
        self.assertEqual([e["seq"] for e in self.reports.of("event")], [3, 4, 5])
        self.assertEqual(self.states()[-1]["agents"], ["agent-2", "agent-3", "agent-1"])
        statuses = [r["status"] for r in self.reports.of("status")]
        self.assertEqual(statuses[:2], ["connecting", "open"])
        self.assertIn("retrying", statuses)
        self.assertEqual(statuses[-1], "open")

    @defer.inlineCallbacks
    def test_client_with_channels(self):
        """
        The channels example: a client on agents:agent-7, agents:agent-8 and sessions gets those
        agents in its snapshot and as events, and nothing of the other agents.
        """
        for agent in ("agent-1", "agent-7"):
            publish_status(self.hub, agent)
        example = self.doc["browser-client-channels"].replace("wss://mc.example.com/ws",
                                                              self.hub_url())
        self.serve(f"""
            import {{ connectMissionControl }} from "/mission-control-client.js";
            const showTeam = (state) => report("team", {{
              agents: [...state.agents.keys()], lastSeq: state.lastSeq,
            }});
            {example}
        """)
        yield self.wait_for(lambda: self.states("team"))
        self.assertEqual(self.states("team")[-1]["agents"], ["agent-7"])
        self.assertEqual(self.states("team")[-1]["lastSeq"], 2)
        publish_status(self.hub, "agent-1", "busy")
        publish_status(self.hub, "agent-8", "busy")
        yield self.wait_for(lambda: self.states("team")[-1]["lastSeq"] == 4)
        self.assertEqual(self.states("team")[-1]["agents"], ["agent-7", "agent-8"])

    @defer.inlineCallbacks
    def test_react_hook(self):
        """
        useMissionControl, run with a stand-in for React's useState and useEffect (React itself
        needs a build step): its view goes from connecting to open with the user and the
        agents least recently updated first, follows each update, and unmounting closes the
        connection.
        """
        publish_status(self.hub, "agent-1")
        publish_status(self.hub, "agent-2")
        self.serve(f"""
            import {{ render, unmount }} from "react";
            import {{ useMissionControl }} from "/use-mission-control.js";
            render(() => {{
              const view = useMissionControl("{self.hub_url()}");
              const agents = view.agents.map((a) => a.agentId);
              report("view", {{ status: view.status, user: view.user?.id ?? null, agents,
                               lastSeq: view.lastSeq }});
              if (view.lastSeq === 3) setTimeout(unmount, 0);
            }});
        """, {"use-mission-control.js": self.doc["react-hook"]})
        yield self.wait_for(lambda: self.states("view")
                            and self.states("view")[-1]["status"] == "open"
                            and self.states("view")[-1]["lastSeq"] == 2)
        self.assertEqual(self.states("view")[0]["status"], "connecting")
        self.assertEqual(self.states("view")[-1]["user"], "dana")
        self.assertEqual(self.states("view")[-1]["agents"], ["agent-1", "agent-2"])
        self.assertEqual(len(self.hub.hub.connections_of("dana")), 1)
        publish_status(self.hub, "agent-1", "busy")
        yield self.wait_for(lambda: self.states("view")[-1]["lastSeq"] == 3)
        self.assertEqual(self.states("view")[-1]["agents"], ["agent-2", "agent-1"])
        yield self.wait_for(lambda: not self.hub.hub.connections_of("dana"))


class PythonExampleTests(TestCase):
    """The Python functions of the docs, run in this process against a real hub."""

    def example(self, document: str, name: str) -> dict:
        """Run the example's code; return the names it defines."""
        namespace: dict = {"__name__": f"example_{name.replace('-', '_')}"}
        exec(compile(examples(document)[name], f"{document}:{name}", "exec"), namespace)
        return namespace

    @defer.inlineCallbacks
    def test_token_endpoint_mints_tokens_the_hub_accepts(self):
        """websocket-api.md's mission_control_token: its token opens a WebSocket as that viewer,
        with the display name."""
        server = start_server(self)
        mint = self.example("docs/websocket-api.md", "token-endpoint-python")
        token = mint["mission_control_token"]("erin", "Erin Park", server.secret)
        client = yield connect(self, server, token=token)
        welcome = yield client.next_of("welcome")
        self.assertEqual(welcome["payload"]["user"],
                         {"id": "erin", "name": "Erin Park", "role": "viewer"})

    @defer.inlineCallbacks
    def test_publish_status_stores_the_event_and_refuses_at_once(self):
        """
        http-api.md's publish_status: it returns the stored event; a 4xx (a viewer may not
        publish) is raised at once, without retrying.
        """
        server = start_server(self)
        publish = self.example("docs/http-api.md", "publish-status-python")["publish_status"]
        hub = f"http://127.0.0.1:{server.port}"
        event = yield threads.deferToThread(publish, hub, server.token("ops", role="operator"),
                                            "agent-7", "busy", "compiling")
        self.assertEqual((event["seq"], event["payload"]["message"]), (1, "compiling"))
        self.assertEqual(server.hub.store.last_seq, 1)
        failure = yield self.assertFailure(
            threads.deferToThread(publish, hub, server.token("viewer"), "agent-7", "idle"),
            urllib.error.HTTPError)
        self.assertEqual(failure.code, 403)
        failure.close()
        self.assertEqual(server.hub.store.last_seq, 1)


def nginx_location(config: str, uri: str) -> str | None:
    """
    The body of the C{location} block nginx chooses for C{uri} in C{config}: an exact match
    (C{=}), else the longest prefix if it is C{^~}, else the first matching regular expression
    (C{~}, C{~*}) in order, else the longest prefix.  Only the forms the docs use.
    """
    blocks = re.findall(r"location\s+(=|\^~|~\*|~)?\s*(\S+)\s*\{(.*?)\n\s*\}", config, re.DOTALL)
    prefixes = []
    for modifier, pattern, body in blocks:
        if modifier == "=" and uri == pattern:
            return body
        if modifier in ("", "^~") and uri.startswith(pattern):
            prefixes.append((len(pattern), modifier, body))
    longest = max(prefixes, default=None)
    if longest and longest[1] == "^~":
        return longest[2]
    for modifier, pattern, body in blocks:
        if modifier in ("~", "~*") and re.search(pattern, uri, re.I if modifier == "~*" else 0):
            return body
    return longest[2] if longest else None


class NginxExampleTests(TestCase):
    """deployment.md's nginx configuration sends every path the hub serves to the hub."""

    def test_every_hub_path_is_proxied(self):
        """
        /ws and /ws/ (both WebSocket paths of the hub) reach it with the upgrade headers, and
        the API, the health check and the dashboard reach it; the paths are chosen as nginx
        chooses locations.
        """
        config = examples("docs/deployment.md")["nginx"]
        for uri in ("/ws", "/ws/"):
            body = nginx_location(config, uri)
            self.assertIsNotNone(body, uri)
            self.assertIn("proxy_pass http://127.0.0.1:8080;", body, uri)
            self.assertIn("proxy_set_header Upgrade $http_upgrade;", body, uri)
            self.assertIn("proxy_set_header Connection $connection_upgrade;", body, uri)
        for uri in ("/api/agents", "/api/events", "/healthz", "/", "/assets/app.js",
                    "/assets/vendor/uplot.min.css"):
            body = nginx_location(config, uri)
            self.assertIsNotNone(body, uri)
            self.assertIn("proxy_pass http://127.0.0.1:8080;", body, uri)
        for uri in ("/wsx", "/ws/x", "/secret"):
            self.assertIsNone(nginx_location(config, uri), uri)


def console_session(block: str) -> list[tuple[str, str]]:
    """
    The C{(command, expected output)} pairs of a C{console} example: each C{$ } line (with its
    backslash-continued lines) and the lines printed after it, up to the next command.
    """
    pairs: list[list[str]] = []
    continued = False
    for line in block.splitlines():
        if line.startswith("$ ") and not continued:
            pairs.append([line[2:], ""])
        elif continued:
            pairs[-1][0] += "\n" + line
        elif line.strip():
            pairs[-1][1] += line + "\n"
        continued = line.endswith("\\")
    return [(command, output.strip()) for command, output in pairs]


def shape(value, volatile=("timestamp", "ts", "seq", "epoch", "connectionId", "expiresAt")):
    """C{value} with the values that differ from run to run (times, seqs, ids) blanked."""
    if isinstance(value, dict):
        return {k: ("..." if k in volatile else shape(v, volatile)) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v, volatile) for v in value]
    return value


class CurlExampleTests(TestCase):
    """The curl sessions of http-api.md, run with /bin/sh and curl against a real hub."""

    timeout = 30

    def setUp(self):
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed (.ci/run installs it)")
        self.server = start_server(self)
        self.env = child_environment(TOKEN=self.server.token("alice", role="admin"))

    @defer.inlineCallbacks
    def shell(self, command: str) -> str:
        """C{command} in a shell, on this test's hub; fires with what it printed."""
        command = command.replace("127.0.0.1:8080", f"127.0.0.1:{self.server.port}")
        out, err, code = yield utils.getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env=self.env)
        self.assertEqual((code, err), (0, b""), command)
        return out.decode("utf-8").strip()

    @defer.inlineCallbacks
    def test_idempotency_key_session(self):
        """
        The Idempotency-Key session prints what the doc shows, times and seqs aside: the first
        publish and its repeats (the same bytes, the same JSON with other spacing and order, and
        with a null field, which counts as absent) answer the one event stored; another body
        gets 409.
        """
        session = console_session(examples("docs/http-api.md")["idempotency-curl"])
        self.assertEqual(len(session), 5)
        printed = []
        for command, expected in session:
            printed.append((yield self.shell(command)))
            self.assertEqual(shape(json.loads(printed[-1])), shape(json.loads(expected)), command)
        self.assertEqual(printed[0], printed[1])
        self.assertEqual(printed[0], printed[2])
        self.assertEqual(printed[0], printed[3])
        self.assertEqual(self.server.hub.store.last_seq, 1)

    @defer.inlineCallbacks
    def test_batch_publish(self):
        """
        The batch example, sent with an agent's token, answers what the doc shows, times and
        seqs aside: both events, in order, with consecutive seqs and the activity attributed to
        the agent.
        """
        self.env["AGENT_TOKEN"] = self.server.token("agent-7", role="agent")
        [(command, expected)] = console_session(examples("docs/http-api.md")["batch-curl"])
        answer = json.loads((yield self.shell(command)))
        self.assertEqual(shape(answer), shape(json.loads(expected)))
        self.assertEqual([event["seq"] for event in answer["events"]], [1, 2])

    @defer.inlineCallbacks
    def test_event_history_page(self):
        """GET /api/events answers with the fields the doc's example shows, and no others."""
        for agent in ("agent-1", "agent-7", "agent-7", "agent-7", "agent-9"):
            publish_status(self.server, agent)
        [(command, expected)] = console_session(examples("docs/http-api.md")["events-curl"])
        answer, documented = json.loads((yield self.shell(command))), json.loads(expected)
        self.assertEqual(sorted(answer), sorted(documented))
        self.assertEqual({k: v for k, v in answer.items() if k not in ("events", "epoch")},
                         {k: v for k, v in documented.items() if k not in ("events", "epoch")})

    @defer.inlineCallbacks
    def test_event_history_of_one_channel(self):
        """
        GET /api/events?channel=sessions:sess-42 answers as the doc's example shows: that
        session's events only, and the same fields as every page.
        """
        now = reactor.seconds()
        hub = self.server.hub
        publish_status(self.server, "agent-7")
        for session, word in (("sess-42", "started"), (None, None), ("sess-42", "tool_call"),
                              ("sess-43", "started")):
            if session is None:
                publish_status(self.server, "agent-7", "busy")
                continue
            self.successResultOf(hub.publish(events.SESSION_ACTIVITY, events.session_activity(
                {"activity": word, "agentId": "agent-7"}, now, session)))
        [(command, expected)] = console_session(
            examples("docs/http-api.md")["events-channel-curl"])
        answer, documented = json.loads((yield self.shell(command))), json.loads(expected)
        self.assertEqual(sorted(answer), sorted(documented))
        self.assertEqual({k: v for k, v in answer.items() if k not in ("events", "epoch")},
                         {k: v for k, v in documented.items() if k not in ("events", "epoch")})
        self.assertEqual([(e["seq"], e["payload"]["sessionId"]) for e in answer["events"]],
                         [(e["seq"], e["payload"]["sessionId"]) for e in documented["events"]])

    @defer.inlineCallbacks
    def test_who_am_i(self):
        """GET /api/me answers with the fields the doc's example shows, for the token sent."""
        [(command, expected)] = console_session(examples("docs/http-api.md")["me-curl"])
        answer, documented = json.loads((yield self.shell(command))), json.loads(expected)
        self.assertEqual(sorted(answer), sorted(documented))
        self.assertEqual(sorted(answer["user"]), sorted(documented["user"]))
        self.assertEqual((answer["user"]["id"], answer["user"]["role"], answer["channels"]),
                         ("alice", "admin", None))

    @defer.inlineCallbacks
    def test_close_a_connection(self):
        """The DELETE of the doc, on a real connection's id, answers as shown and closes it 4009."""
        client = yield connect(self, self.server, self.server.token("bob"))
        connection_id = (yield client.next_of("welcome"))["payload"]["connectionId"]
        [(command, expected)] = console_session(
            examples("docs/http-api.md")["close-connection-curl"])
        documented_id = json.loads(expected)["closed"]
        answer = yield self.shell(command.replace(documented_id, connection_id))
        self.assertEqual(answer, expected.replace(documented_id, connection_id))
        _, code, _ = yield client.closed
        self.assertEqual(code, 4009)

    @defer.inlineCallbacks
    def test_dashboard_head(self):
        """
        HEAD / answers the headers the doc shows, in that order, with the same values but for
        the date, the ETag and the length of the page.
        """
        [(command, expected)] = console_session(
            examples("docs/http-api.md")["dashboard-head-curl"])
        answer = yield self.shell(command)

        def headers(text):
            lines = text.replace("\r", "").splitlines()
            return lines[0], [line.split(":", 1) for line in lines[1:] if line.strip()]

        (status, got), (documented_status, documented) = headers(answer), headers(expected)
        self.assertEqual(status, documented_status)
        self.assertEqual([name for name, _ in got], [name for name, _ in documented])
        for (name, value), (_, documented_value) in zip(got, documented):
            if name not in ("Date", "ETag", "Content-Length"):
                self.assertEqual(value, documented_value, name)


class DocumentedFrameTests(TestCase):
    """The frames the docs show have the fields the hub sends."""

    timeout = 30

    def documented(self, frame_type: str) -> list[dict]:
        """Every C{frame_type} frame written out in docs/*.md (a trailing C{,...} closed)."""
        found = []
        for name in sorted(os.listdir(os.path.join(PROJECT_ROOT, "docs"))):
            if not name.endswith(".md"):
                continue
            with open(os.path.join(PROJECT_ROOT, "docs", name), encoding="utf-8") as f:
                text = f.read()
            for match in re.finditer(r'\{"type":"%s".*?\}(?=`|\n)' % re.escape(frame_type), text):
                found.append((name, json.loads(match.group(0).replace(",...}", "}"))))
        self.assertTrue(found, frame_type)
        return found

    @defer.inlineCallbacks
    def test_welcome_and_auth_ok(self):
        """Each welcome and auth:ok frame in the docs has the payload fields of the hub's own."""
        server = start_server(self)
        client = yield connect(self, server, token=server.token("bob"))
        welcome = yield client.next_of("welcome")
        client.send_json({"type": "auth", "id": "t1", "token": server.token("bob")})
        auth_ok = yield client.next_of("auth:ok")
        for sent in (welcome, auth_ok):
            for name, frame in self.documented(sent["type"]):
                self.assertEqual(sorted(frame["payload"]), sorted(sent["payload"]),
                                 f"{name}: {frame}")

"""
Tests for L{mission_control.tap}: the service tree that C{makeService} builds (on a fake reactor),
its start-up log, the file limit, and the real C{twistd} command in a child process.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, error, protocol, reactor, utils
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mission_control import keys, tap, tokens
from mission_control.demo import DemoFleet
from mission_control.listener import Listener
from mission_control.tap import MissionControlService, makeService
from tests.helpers import (
    ChildProcess,
    OptionsMixin,
    TwistdProcess,
    bearer,
    free_port,
    spawn_twistd,
    http_request,
    parse_response,
    raw_request,
    upgrade_request,
    wait_until,
    write_file,
)


class ServiceTreeTests(OptionsMixin, SynchronousTestCase):
    """L{makeService} on a fake reactor: what it builds, starts and stops."""

    def build(self, *args):
        self.reactor = MemoryReactorClock()
        if "--listen" not in args:
            args = ("--listen", "tcp:0:interface=127.0.0.1", *args)
        options = self.parse(*args)
        service = makeService(options, reactor=self.reactor)
        self.logged: list = []
        service.log = Logger(observer=self.logged.append)
        return options, service

    def messages(self) -> list[str]:
        return [formatEvent(event) for event in self.logged]

    def test_wiring(self):
        """The options reach the hub: heartbeat interval and connection caps."""
        _, service = self.build("--heartbeat-interval", "7", "--max-connections", "3",
                                "--max-connections-per-user", "2")
        self.assertIsInstance(service, MissionControlService)
        self.assertEqual(service.hub.heartbeat_interval, 7)
        self.assertEqual(service.hub.max_connections, 3)
        self.assertEqual(service.hub.max_connections_per_user, 2)

    def test_wiring_of_the_limits(self):
        """The HTTP connection cap, the read rate and the handshake rate reach their objects."""
        _, service = self.build("--max-http-connections", "7", "--max-reads-per-second", "3",
                                "--max-handshakes-per-second", "2", "--max-connections-per-user",
                                "4")
        self.assertEqual(service.site.max_http_connections, 7)
        api = service.site.resource.children[b"api"]
        self.assertEqual((api._reads.rate, api._reads.burst), (3, 6))
        self.assertEqual((service.hub.handshakes.rate, service.hub.handshakes.burst), (2, 4))

    def test_file_limit_too_low_is_said_at_start(self):
        """
        When the file limit cannot be raised to what the connection limits may use, the start-up
        log says so with both numbers; when it can, nothing is said.
        """
        self.patch(tap, "raise_file_limit", lambda needed: 256)
        _, service = self.build("--max-connections", "500", "--max-http-connections", "100")
        service.startService()
        self.addCleanup(service.stopService)
        warned = [m for m in self.messages() if "file limit" in m]
        self.assertEqual(len(warned), 1)
        self.assertIn("(256)", warned[0])
        self.assertIn(f"({500 + 100 + tap.FILE_RESERVE})", warned[0])
        self.patch(tap, "raise_file_limit", lambda needed: needed)
        _, service = self.build()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([m for m in self.messages() if "file limit" in m], [])

    def test_listeners_are_child_services(self):
        """
        Each --listen endpoint is a L{Listener} child of the service, in the order given, with
        the site as its factory, as twisted.web's own tap adds its strports services.
        """
        _, service = self.build("--listen", "tcp:0:interface=127.0.0.1",
                                "--listen", "tcp:9999:interface=127.0.0.1")
        listeners = [child for child in service if isinstance(child, Listener)]
        self.assertEqual(listeners, service.listeners)
        self.assertEqual([listener.description for listener in listeners],
                         ["tcp:0:interface=127.0.0.1", "tcp:9999:interface=127.0.0.1"])
        self.assertEqual({id(listener.factory) for listener in listeners}, {id(service.site)})
        self.assertEqual(service.ports, [])
        service.startService()
        self.assertTrue(all(listener.running for listener in listeners))
        self.successResultOf(service.stopService())
        self.assertFalse(any(listener.running for listener in listeners))
        self.assertEqual(service.ports, [])

    def test_listens_on_every_endpoint(self):
        """Starting listens once per --listen, with the site, and logs each URL."""
        _, service = self.build("--listen", "tcp:0:interface=127.0.0.1",
                                "--listen", "tcp:9999:interface=127.0.0.1")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([(port, interface) for port, _, _, interface in self.reactor.tcpServers],
                         [(0, "127.0.0.1"), (9999, "127.0.0.1")])
        self.assertIs(self.reactor.tcpServers[0][1], service.site)
        self.assertEqual(len(service.ports), 2)
        urls = [m for m in self.messages() if "listening" in m]
        self.assertEqual(len(urls), 4)

    def test_no_demo_by_default(self):
        """Without --demo nothing publishes: no DemoFleet, and seq stays 0 as time passes."""
        _, service = self.build()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([s for s in service if isinstance(s, DemoFleet)], [])
        self.reactor.advance(60)
        self.assertEqual(service.hub.store.last_seq, 0)

    def test_demo_fleet_publishes(self):
        """
        With --demo the service runs a DemoFleet on the hub and the service's clock: every agent
        comes online at start, then one event per interval, until the service stops.
        """
        _, service = self.build("--demo")
        [fleet] = [s for s in service if isinstance(s, DemoFleet)]
        self.assertIs(fleet.hub, service.hub)
        self.assertIs(fleet.clock, self.reactor)
        service.startService()
        self.assertTrue(fleet.running)
        started = service.hub.store.last_seq
        self.assertEqual(started, len(fleet.agents))
        self.assertEqual(len(service.hub.store.agents()), len(fleet.agents))
        for _ in range(10):
            self.reactor.advance(fleet.interval)
        self.assertGreaterEqual(service.hub.store.last_seq, started + 10)
        service.stopService()
        self.assertFalse(fleet.running)
        stopped = service.hub.store.last_seq
        self.reactor.advance(60)
        self.assertEqual(service.hub.store.last_seq, stopped)

    def test_start_log_names_command_without_secret(self):
        """
        With a generated secret the start-up log gives the command that mints a token: the
        console script installed next to the running Python, named by its path, with the data
        dir quoted for a shell; never the secret itself.
        """
        data_dir = os.path.join(self.data_dir(), "my data")
        options, service = self.build("--data-dir", data_dir)
        service.startService()
        self.addCleanup(service.stopService)
        [hint] = [m for m in self.messages() if "mission-control token" in m]
        words = shlex.split(hint.split("mint a token with: ", 1)[1])
        self.assertEqual(
            words[1:], ["token", "--data-dir", data_dir, "--sub", "alice", "--role", "admin"])
        # The console script next to the running Python (a venv's), which a shell may not find.
        self.assertTrue(os.path.samefile(
            words[0], os.path.join(os.path.dirname(sys.executable), "mission-control")), words[0])
        secret = options["verifier"].key.decode()
        for message in self.messages():
            self.assertNotIn(secret, message)

    def dashboard_links(self) -> list[str]:
        return [m for m in self.messages() if m.startswith("dashboard: ")]

    def test_start_log_links_the_dashboard(self):
        """
        With the development secret the start-up log has one link per HTTP listener that opens
        the dashboard signed in: the page's URL and, in the fragment, a token the hub accepts,
        for sub admin, name Administrator, role admin, valid 12 hours.  A unix socket gets none;
        the token is in no other line, and the secret in none.
        """
        socket_path = os.path.join(self.data_dir(), "hub.sock")
        options, service = self.build("--listen", "tcp:0:interface=127.0.0.1",
                                      "--listen", "tcp:9999:interface=127.0.0.1",
                                      "--listen", f"unix:{socket_path}")
        self.reactor.advance(1_800_000_000)
        service.startService()
        self.addCleanup(service.stopService)
        links = self.dashboard_links()
        # The memory reactor's ports say they listen on every interface: "localhost".
        self.assertEqual([link.split("#", 1)[0] for link in links],
                         ["dashboard: http://localhost:0/", "dashboard: http://localhost:9999/"])
        [token] = {link.split("#token=", 1)[1] for link in links}
        now = self.reactor.seconds()
        principal = options["verifier"].verify(token, now)
        self.assertEqual((principal.sub, principal.name, principal.role),
                         ("admin", "Administrator", "admin"))
        self.assertEqual(principal.expires_at, int(now) + 12 * 3600)
        self.assertEqual([m for m in self.messages() if token in m], links)
        secret = options["verifier"].key.decode()
        self.assertFalse([m for m in self.messages() if secret in m])

    def test_dashboard_link_with_a_read_secret(self):
        """A development secret read from an earlier start (not generated now) links too."""
        data_dir = self.data_dir()
        keys.load_or_create_secret(data_dir)
        options, service = self.build("--data-dir", data_dir)
        self.assertFalse(options["generated-secret"])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.dashboard_links()), 1)

    def test_dashboard_token_fits_the_verifier(self):
        """
        The link's token carries the configured iss and aud and is signed with the first
        configured algorithm, so the hub accepts it whatever those options say.
        """
        options, service = self.build("--jwt-algorithm", "HS512", "--jwt-issuer", "mc",
                                      "--jwt-audience", "dash")
        service.startService()
        self.addCleanup(service.stopService)
        [link] = self.dashboard_links()
        token = link.split("#token=", 1)[1]
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS512")
        self.assertEqual(options["verifier"].verify(token, self.reactor.seconds()).role, "admin")

    def test_dashboard_urls(self):
        """Only http:// and https:// listener URLs are dashboard pages."""
        self.assertEqual(tap.dashboard_urls(["http://a:1/", "ws://a:1/ws", "https://b:2/",
                                             "wss://b:2/ws", "unix socket /x (HTTP, ...)"]),
                         ["http://a:1/", "https://b:2/"])

    def test_no_dashboard_link_without_the_development_secret(self):
        """With --jwt-secret-file or --jwt-public-key no token is logged at all."""
        path = write_file(self, "secret", b"q" * 32)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = write_file(self, "key.pem", key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        for args in (("--jwt-secret-file", path), ("--jwt-public-key", pem)):
            _, service = self.build(*args)
            service.startService()
            self.addCleanup(service.stopService)
            self.assertEqual(self.dashboard_links(), [], args)
            self.assertFalse([m for m in self.messages() if "token=" in m or "eyJ" in m], args)

    def test_no_token_hint_with_secret_file(self):
        """With --jwt-secret-file there is no data-dir secret, so no hint to use it."""
        path = write_file(self, "secret", b"q" * 32)
        _, service = self.build("--jwt-secret-file", path)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([m for m in self.messages() if "mission-control token" in m], [])
        self.assertNotIn("q" * 32, "".join(self.messages()))


class FileLimitTests(SynchronousTestCase):
    """raise_file_limit: room for every connection, as far as the hard limit allows."""

    def fake(self, soft, hard):
        import resource

        state = {"limits": (soft, hard)}

        def setrlimit(which, limits):
            self.assertEqual(which, resource.RLIMIT_NOFILE)
            if limits[0] > state["limits"][1] != resource.RLIM_INFINITY:
                raise ValueError("not allowed")
            state["limits"] = limits

        return state, (lambda which: state["limits"]), setrlimit

    def test_raised_to_what_is_needed(self):
        """A soft limit below the need is raised to the need when the hard limit allows it."""
        state, get, set_ = self.fake(1024, 65536)
        self.assertEqual(tap.raise_file_limit(11064, get, set_), 11064)
        self.assertEqual(state["limits"], (11064, 65536))

    def test_raised_as_far_as_the_hard_limit(self):
        """Past the hard limit, the soft one goes up to the hard one, and that is returned."""
        state, get, set_ = self.fake(256, 4096)
        self.assertEqual(tap.raise_file_limit(11064, get, set_), 4096)
        self.assertEqual(state["limits"], (4096, 4096))

    def test_enough_already(self):
        """A soft limit that covers the need is left alone."""
        state, get, set_ = self.fake(65536, 65536)
        self.assertEqual(tap.raise_file_limit(11064, get, set_), 65536)
        self.assertEqual(state["limits"], (65536, 65536))


class TwistdCommandTests(TestCase):
    """C{twistd -n mission-control ...} as a real child process."""

    def spawn(self, *args) -> TwistdProcess:
        return spawn_twistd(self, *args)

    def ended(self, proto, timeout=15):
        return proto.ended.addTimeout(timeout, reactor)

    @defer.inlineCallbacks
    def test_starts_serves_and_stops(self):
        """
        twistd -n mission-control starts, logs its URLs and the command that mints a token (never
        the secret), answers /healthz, and exits on SIGTERM.
        """
        port = free_port()
        data_dir = os.path.abspath(self.mktemp())
        proto = self.spawn("--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir)
        # The mint command is the last line of the start: the output may arrive in pieces.
        yield wait_until(lambda: "mint a token with: " in proto.output
                         or proto.ended.called, timeout=15)
        yield wait_until(lambda: proto.output.endswith("\n") or proto.ended.called, timeout=5)
        self.assertFalse(proto.ended.called, proto.output)
        self.assertIn(f"http://127.0.0.1:{port}/", proto.output)
        self.assertIn(f"ws://127.0.0.1:{port}/ws", proto.output)
        self.assertIn(
            f"mission-control token --data-dir {shlex.quote(data_dir)} --sub alice --role admin",
            proto.output,
        )
        # The dashboard's link opens it signed in: its token is the hub's admin.
        [link] = [line.split("dashboard: ", 1)[1] for line in proto.output.splitlines()
                  if "dashboard: " in line]
        page, _, fragment = link.partition("#token=")
        self.assertEqual(page, f"http://127.0.0.1:{port}/")
        response = yield raw_request(port, http_request("GET", "/api/me", token=fragment))
        self.assertEqual((response.status, response.json()["user"]),
                         (200, {"id": "admin", "name": "Administrator", "role": "admin"}))
        response = yield raw_request(port, http_request("GET", "/"))
        self.assertEqual(response.status, 200)

        response = yield raw_request(port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), {"status": "ok"})

        # The command works as printed, in a shell whose PATH does not hold the hub's venv.
        [command] = [line.split("mint a token with: ", 1)[1]
                     for line in proto.output.splitlines() if "mint a token with: " in line]
        minted = yield utils.getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env={"PATH": "/usr/bin:/bin"})
        self.assertEqual(minted[2], 0, minted)
        token = minted[0].decode().strip()
        response = yield raw_request(port, http_request("GET", "/api/agents", token=token))
        self.assertEqual(response.status, 200, response.raw)

        proto.process.signalProcess("TERM")
        reason = yield self.ended(proto)
        self.assertIn((reason.exitCode, reason.signal), [(0, None), (None, signal.SIGTERM)])
        self.assertIn("Server Shut Down", proto.output)
        with open(os.path.join(data_dir, "jwt-secret")) as f:
            secret = f.read().strip()
        self.assertGreaterEqual(len(secret), 32)
        self.assertNotIn(secret, proto.output)
        self.assertNotIn("Traceback", proto.output)

    @defer.inlineCallbacks
    def test_usage_error(self):
        """A bad option exits non-zero with one clear line on stderr, no usage page, no traceback."""
        proto = self.spawn("--data-dir", os.path.abspath(self.mktemp()), "--jwt-leeway", "abc")
        reason = yield self.ended(proto)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertNotEqual(reason.exitCode, 0)
        lines = proto.err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, proto.output)
        self.assertIn("--jwt-leeway must be a number >= 0, not 'abc'", lines[0])
        self.assertEqual(proto.out, b"")
        self.assertNotIn("Traceback", proto.output)

    @defer.inlineCallbacks
    def test_port_in_use(self):
        """A port already in use exits non-zero with a "cannot listen" line and no traceback."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proto = self.spawn("--listen", f"tcp:{port}:interface=127.0.0.1",
                           "--data-dir", os.path.abspath(self.mktemp()))
        reason = yield self.ended(proto)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertNotEqual(reason.exitCode, 0)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", proto.output)
        # Under --logfile=- twistd logs what is written to stderr: one line there.
        [line] = [line for line in proto.output.splitlines() if "cannot listen" in line]
        self.assertIn(f"mission-control: cannot listen on tcp:{port}:interface=127.0.0.1: ", line)
        self.assertIn("Address already in use", line)
        self.assertNotIn("Traceback", proto.output)

    @defer.inlineCallbacks
    def test_endpoint_that_cannot_listen(self):
        """
        An endpoint that parses but cannot listen (a unix socket in a directory that does not
        exist) exits non-zero with one line naming it and the reason, no traceback.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "missing", "hub.sock")
        proto = self.spawn("--listen", f"unix:{path}", "--data-dir", os.path.abspath(self.mktemp()))
        reason = yield self.ended(proto)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertNotEqual(reason.exitCode, 0)
        [line] = [line for line in proto.output.splitlines() if "cannot listen" in line]
        self.assertIn(f"mission-control: cannot listen on unix:{path}: ", line)
        self.assertIn("No such file or directory", line)
        self.assertNotIn("Traceback", proto.output)


class _Collector(protocol.Protocol):
    """Collects what the server sends; C{lost} fires with it once the connection ends."""

    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(self.data)

    def close_frame_code(self) -> int | None:
        """The code of the first close frame after the handshake's head, if one arrived."""
        _, _, frames = self.data.partition(b"\r\n\r\n")
        while len(frames) >= 2:
            opcode, length = frames[0] & 0x0F, frames[1] & 0x7F
            start = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(frames[2:start], "big")
            if len(frames) < start + length:
                return None
            if opcode == 0x8:
                return int.from_bytes(frames[start:start + 2], "big")
            frames = frames[start + length:]
        return None


class TwistdShutdownTests(TestCase):
    """What clients see while a real C{twistd mission-control} process stops on SIGTERM."""

    timeout = 60

    @defer.inlineCallbacks
    def test_clients_connecting_during_sigterm_get_a_clear_answer(self):
        """
        On SIGTERM the hub stops listening before anything else: a client connecting from then on
        is refused at once, never accepted and left without an answer.  A connection accepted
        before the signal still has its answer: its WebSocket handshake, sent after the hub has
        closed every WebSocket, gets 503 shutting down instead of being dropped when the
        process exits.  Then the process exits cleanly.
        """
        port = free_port()
        data_dir = os.path.abspath(self.mktemp())
        proto = spawn_twistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                             "--data-dir", data_dir)
        yield wait_until(lambda: f"ws://127.0.0.1:{port}/ws" in proto.output
                         or proto.ended.called, timeout=15)
        self.assertFalse(proto.ended.called, proto.output)
        secret = keys.read_secret(os.path.join(data_dir, "jwt-secret"))
        token = tokens.mint_token(secret, "alice", reactor.seconds(), ttl=600)

        def endpoint():
            return TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        # The hub accepts in arrival order: once the later WebSocket is answered, it holds this one.
        in_flight = yield connectProtocol(endpoint(), _Collector())
        watcher = yield connectProtocol(endpoint(), _Collector())
        watcher.transport.write(upgrade_request(headers=bearer(token)))
        yield wait_until(lambda: b'"welcome"' in watcher.data, timeout=10)

        proto.process.signalProcess("TERM")
        # The watcher hears 1001 and does not answer: the hub keeps waiting for it.
        yield wait_until(lambda: watcher.close_frame_code() is not None, timeout=10)
        self.assertEqual(watcher.close_frame_code(), 1001)
        yield self.assertFailure(connectProtocol(endpoint(), _Collector()),
                                 error.ConnectionRefusedError)

        watcher.transport.abortConnection()
        yield wait_until(lambda: "of alice closed" in proto.output, timeout=10)
        in_flight.transport.write(upgrade_request(headers=bearer(token)))
        answer = parse_response((yield in_flight.lost))
        self.assertEqual((answer.status, answer.reason), (503, "shutting down"), answer.raw)

        reason = yield proto.ended.addTimeout(15, reactor)
        self.assertIn((reason.exitCode, reason.signal), [(0, None), (None, signal.SIGTERM)])
        self.assertIn("Server Shut Down", proto.output)
        self.assertNotIn("Traceback", proto.output)


class TwistdFilesTests(TestCase):
    """The files twistd writes for the hub: its log file and pidfile, as deployment.md runs it."""

    timeout = 60

    def twistd(self, *args, cwd):
        """Run C{twistd ARGS} (twistd's options and the plugin's) in C{cwd}; fires at its exit."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise SkipTest(f"no twistd next to {sys.executable}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        proto = ChildProcess()
        reactor.spawnProcess(proto, twistd, [twistd, *args], env=env, path=cwd)
        return proto

    def workdir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    @defer.inlineCallbacks
    def test_missing_log_and_pid_directories(self):
        """
        A --logfile or --pidfile in a directory that does not exist stops the start with one line
        on stderr that names the option and the directory, exit status 1, no traceback, and
        nothing created.
        """
        cwd = self.workdir()
        for option, path in [("--logfile", "logs/hub.log"), ("--pidfile", "run/hub.pid")]:
            args = ["--pidfile", os.path.join(cwd, "hub.pid"), "--logfile",
                    os.path.join(cwd, "hub.log")]
            args[args.index(option) + 1] = os.path.join(cwd, path)
            proto = self.twistd(*args, "mission-control", "--data-dir",
                                os.path.join(cwd, "data"), "--listen", "tcp:0", cwd=cwd)
            code = yield proto.ended
            lines = proto.err.decode().strip().splitlines()
            self.assertEqual((code, len(lines)), (1, 1), proto.err)
            directory = os.path.dirname(os.path.join(cwd, path))
            self.assertIn(f"twistd mission-control: {option} {os.path.join(cwd, path)}: "
                          f"the directory {directory} does not exist", lines[0])
            self.assertNotIn(b"Traceback", proto.out + proto.err)
            self.assertEqual(os.listdir(cwd), [])

    @defer.inlineCallbacks
    def test_daemon_log_file_is_private_from_the_start(self):
        """
        Daemonized with deployment.md's command, the first log file is created with the umask
        twistd documents for daemons, 0077: mode 0600, like every file rotated after it; and the
        daemon stops on SIGTERM to the pid in its pidfile, which it removes.
        """
        cwd = self.workdir()
        os.makedirs(os.path.join(cwd, "log"))
        os.makedirs(os.path.join(cwd, "run"))
        pidfile, logfile = os.path.join(cwd, "run", "hub.pid"), os.path.join(cwd, "log", "hub.log")
        port = free_port()
        proto = self.twistd("--pidfile", pidfile, "--logfile", logfile, "mission-control",
                            "--data-dir", os.path.join(cwd, "data"),
                            "--listen", f"tcp:{port}:interface=127.0.0.1", cwd=cwd)
        code = yield proto.ended
        self.assertEqual(code, 0, proto.err)
        with open(pidfile) as f:
            pid = int(f.read())

        def stop():
            if os.path.exists(pidfile):
                os.kill(pid, signal.SIGTERM)
                return wait_until(lambda: not os.path.exists(pidfile), timeout=15)

        self.addCleanup(stop)
        yield wait_until(lambda: f"ws://127.0.0.1:{port}/ws" in open(logfile).read(), timeout=15)
        self.assertEqual(oct(os.stat(logfile).st_mode & 0o777), oct(0o600))
        # An answer means the daemon's reactor runs, so its SIGTERM handler is in place: the
        # start-up log is written before that, and a SIGTERM sooner would kill it outright.
        response = yield raw_request(port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 200)
        yield stop()
        self.assertIn("Server Shut Down", open(logfile).read())

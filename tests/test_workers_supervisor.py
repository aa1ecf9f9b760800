"""
Tests for L{mission_control.workers.supervisor}: the restart backoff, a worker's command line
and environment, what the supervisor makes of a worker's output, and the supervisor itself with
real processes on real loopback sockets: a stand-in worker (tests/fake_worker.py) for the
mechanics, and hub workers (C{twistd -n mission-control}) for the hub's own start and stop.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mission_control import tokens
from mission_control.workers import WORKER_VARIABLE, assignment_from
from mission_control.workers.supervisor import (
    BOOTSTRAP,
    WORKER_LOGGER,
    RestartBackoff,
    Supervisor,
    WorkerOutput,
    describe_exit,
    worker_command,
    worker_environment,
)
from mission_control.workers.worker import log_observer
from tests import certs
from tests.helpers import (
    PROJECT_ROOT,
    alive,
    client_tls,
    connect,
    free_port,
    http_request,
    tls_exchange,
    wait_until,
)

FAKE_WORKER = os.path.join(PROJECT_ROOT, "tests", "fake_worker.py")


class RestartBackoffTests(SynchronousTestCase):
    def test_doubles_up_to_the_longest(self):
        """A worker that keeps dying at once waits 1, 2, 4, ... seconds, never more than 30."""
        backoff = RestartBackoff()
        self.assertEqual([backoff.delay(0.5) for _ in range(8)],
                         [1, 2, 4, 8, 16, 30, 30, 30])

    def test_a_steady_run_starts_over(self):
        """Once a worker ran for 30 s before it ended, the next wait is 1 s again."""
        backoff = RestartBackoff()
        for _ in range(5):
            backoff.delay(1.0)
        self.assertEqual(backoff.delay(30.0), 1)
        self.assertEqual(backoff.delay(2.0), 2)

    def test_custom_schedule(self):
        """The first wait, the longest and the steady run are the caller's to choose."""
        backoff = RestartBackoff(first=0.25, longest=1.0, steady=5.0)
        self.assertEqual([backoff.delay(0) for _ in range(4)], [0.25, 0.5, 1.0, 1.0])
        self.assertEqual(backoff.delay(5.0), 0.25)


class WorkerCommandTests(SynchronousTestCase):
    def test_runs_twistd_with_the_same_options(self):
        """
        A worker is this Python running twistd in the foreground, without a pidfile, logging JSON
        to its stdout, with the hub options exactly as the supervisor was given them.
        """
        arguments = ["--workers", "2", "--store", "redis://127.0.0.1:6379/0", "--listen",
                     "tcp:8080"]
        command = worker_command("/opt/venv/bin/python", arguments)
        self.assertEqual(command, [
            "/opt/venv/bin/python", "-P", "-c", BOOTSTRAP, "--nodaemon", "--pidfile=",
            "--logger=mission_control.workers.worker.log_observer", "mission-control",
            *arguments,
        ])
        self.assertEqual(WORKER_LOGGER, "mission_control.workers.worker.log_observer")

    def test_environment_names_the_worker(self):
        """
        A worker's environment is the supervisor's (MISSION_CONTROL_* options included) plus its
        assignment, which replaces one the supervisor might have inherited.
        """
        environ = {"MISSION_CONTROL_STORE": "redis://r:6379", "PATH": "/usr/bin",
                   WORKER_VARIABLE: "stale"}
        env = worker_environment(environ, 2, listeners=3)
        self.assertEqual(env["MISSION_CONTROL_STORE"], "redis://r:6379")
        self.assertEqual(env["PATH"], "/usr/bin")
        assignment = assignment_from(env, 3)
        assert assignment is not None
        self.assertEqual((assignment.number, assignment.fds), (2, (3, 4, 5)))
        self.assertEqual(environ[WORKER_VARIABLE], "stale")  # the caller's is left alone


class DescribeExitTests(SynchronousTestCase):
    def test_status_and_signal(self):
        """An exit says its status; a signal is named."""
        self.assertEqual(describe_exit(Failure(error.ProcessDone(0))), "exited with status 0")
        self.assertEqual(describe_exit(Failure(error.ProcessTerminated(3))),
                         "exited with status 3")
        self.assertEqual(
            describe_exit(Failure(error.ProcessTerminated(None, signal.SIGKILL))),
            "was ended by SIGKILL")

    def test_a_start_that_failed(self):
        """A worker that could not be started says why."""
        self.assertEqual(describe_exit(Failure(OSError(2, "No such file or directory"))),
                         "ended: [Errno 2] No such file or directory")


class WorkerOutputTests(SynchronousTestCase):
    """What the supervisor logs of a worker's stdout and stderr, without a process."""

    def setUp(self):
        self.events: list[dict] = []
        self.output = WorkerOutput(2, Logger(namespace="supervisor", observer=self.events.append))

    def worker_log(self) -> tuple[Logger, io.StringIO]:
        """A logger as a worker has it: JSON lines, as the worker's log observer writes them."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        return Logger(namespace="mission_control.protocol", observer=log_observer()), stdout

    def lines(self) -> list[tuple[LogLevel, str, str]]:
        return [(e["log_level"], e["log_system"], formatEvent(e)) for e in self.events]

    def test_json_events_keep_their_level_and_namespace(self):
        """
        A worker's log event is logged again at its own level, its text formatted, with the
        worker's number and the event's namespace and level as the system.
        """
        log, stdout = self.worker_log()
        log.warn("security: handshake refused from {peer}: 401 {why}", peer="tcp4:1.2.3.4:5",
                 why="token expired")
        log.info("mission-control listening: {url}", url="http://127.0.0.1:8080/")
        self.output.childDataReceived(1, stdout.getvalue().encode())
        self.assertEqual(self.lines(), [
            (LogLevel.warn, "worker 2: mission_control.protocol#warn",
             "security: handshake refused from tcp4:1.2.3.4:5: 401 token expired"),
            (LogLevel.info, "worker 2: mission_control.protocol#info",
             "mission-control listening: http://127.0.0.1:8080/"),
        ])

    def test_lines_may_come_in_pieces(self):
        """A line split across reads is logged once, whole, when its end arrives."""
        log, stdout = self.worker_log()
        log.info("one {word}", word="piece")
        data = stdout.getvalue().encode()
        for i in range(len(data)):
            self.output.childDataReceived(1, data[i:i + 1])
        self.assertEqual([text for _, _, text in self.lines()], ["one piece"])

    def test_a_traceback_is_kept(self):
        """An event with a failure is logged with the worker's traceback."""
        log, stdout = self.worker_log()
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("publishing failed")
        self.output.childDataReceived(1, stdout.getvalue().encode())
        [(level, _, text)] = self.lines()
        self.assertEqual(level, LogLevel.critical)
        self.assertTrue(text.startswith("publishing failed\n"), text)
        self.assertIn("ZeroDivisionError", text)

    def test_plain_lines(self):
        """
        Lines that are not log events are logged as text: at info from stdout, at warn from
        stderr (Python's own complaints, a usage error); blank lines are dropped.
        """
        self.output.childDataReceived(1, b"hello\n\n")
        self.output.childDataReceived(2, b"twistd mission-control: bad option\r\n")
        self.output.childDataReceived(1, b"\x1enot json\n")
        self.assertEqual(self.lines(), [
            (LogLevel.info, "worker 2: stdout", "hello"),
            (LogLevel.warn, "worker 2: stderr", "twistd mission-control: bad option"),
            (LogLevel.info, "worker 2: stdout", "\x1enot json"),
        ])

    def test_unfinished_line_at_the_end(self):
        """What a worker wrote without a final newline is logged when it ends."""
        self.output.childDataReceived(2, b"Traceback (most recent call last):\n  File")
        self.assertEqual(len(self.events), 1)
        self.output.processEnded(Failure(error.ProcessTerminated(1)))
        self.assertEqual([text for _, _, text in self.lines()],
                         ["Traceback (most recent call last):", "  File"])
        self.assertTrue(self.output.ended.called)
        self.assertEqual(self.output.reason.value.exitCode, 1)

    def test_long_lines_are_cut(self):
        """A line longer than a MiB is logged in pieces rather than held without limit."""
        self.output.childDataReceived(1, b"x" * (3 << 20))
        self.assertEqual([len(text) for _, _, text in self.lines()], [1 << 20] * 2)


class Answer(Protocol):
    """Collects what the server says until it closes the connection."""

    def __init__(self):
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


@defer.inlineCallbacks
def ask(port: int):
    """Connect to 127.0.0.1:C{port}; fires with what the fake worker that accepted it answered:
    its pid and number."""
    answer = Answer()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), answer)
    data = yield answer.done.addTimeout(5, reactor)
    pid, number = data.decode().split()
    return int(pid), int(number)




class SupervisorMixin:
    """Start a L{Supervisor} in the test's reactor; it is stopped when the test ends."""

    def supervise(self, listen, count, command, env=None, backoff=None) -> Supervisor:
        environ = dict(os.environ) if env is None else env
        environ["PYTHONPATH"] = os.pathsep.join(
            [PROJECT_ROOT] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []))
        supervisor = Supervisor(listen, count, command, environ, reactor,
                                backoff=backoff or RestartBackoff(0.1, 0.5, 10.0))
        self.events: list[dict] = []
        supervisor.log = Logger(namespace="supervisor", observer=self.events.append)
        supervisor.privilegedStartService()
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        return supervisor

    def logged(self, *fragments: str) -> list[str]:
        """The supervisor's log lines (system and text) that contain every fragment."""
        lines = [f"[{e.get('log_system', '-')}] {formatEvent(e)}" for e in self.events]
        return [line for line in lines if all(f in line for f in fragments)]


class SupervisorTests(SupervisorMixin, TestCase):
    """The supervisor with stand-in workers: real processes, a real socket on 127.0.0.1."""

    timeout = 60

    def fake(self, count=2, **env):
        port = free_port()
        environ = dict(os.environ, FAKE_WORKER_LISTENERS="1", **env)
        supervisor = self.supervise([f"tcp:{port}:interface=127.0.0.1"], count,
                                    [sys.executable, FAKE_WORKER], environ)
        return supervisor, port

    @defer.inlineCallbacks
    def answers(self, port: int, wanted: set[int], attempts: int = 200):
        """Ask until every pid of C{wanted} has answered; fires with the pids that answered."""
        seen: set[int] = set()
        for _ in range(attempts):
            pid, _ = yield ask(port)
            seen.add(pid)
            if wanted <= seen:
                break
        return seen

    @defer.inlineCallbacks
    def test_workers_share_the_listener(self):
        """
        Two workers accept on the one socket the supervisor listens on: connections to its port
        are answered by both, and by nobody else.
        """
        supervisor, port = self.fake()
        yield wait_until(lambda: len(self.logged("ready")) == 2, timeout=20)
        pids = set(supervisor.pids.values())
        self.assertEqual(len(pids), 2)
        seen = yield self.answers(port, pids)
        self.assertEqual(seen, pids)
        self.assertEqual(self.logged("mission-control listening: ", f"127.0.0.1:{port}/",
                                     "(2 workers)"),
                         [f"[-] mission-control listening: http://127.0.0.1:{port}/ (2 workers)",
                          f"[-] mission-control listening: ws://127.0.0.1:{port}/ws (2 workers)"])

    @defer.inlineCallbacks
    def test_output_is_logged_with_the_worker_number(self):
        """
        What a worker logs reaches the supervisor's log at its level, with the worker's number;
        a plain line on its stderr too, at warn.
        """
        self.fake()
        yield wait_until(lambda: len(self.logged("plain line")) == 2, timeout=20)
        for number in (1, 2):
            [event] = [e for e in self.events
                       if e.get("log_system") == f"worker {number}: fake#warn"]
            self.assertEqual((event["log_level"], formatEvent(event)),
                             (LogLevel.warn, f"fake worker {number} ready"))
            [event] = [e for e in self.events
                       if e.get("log_system") == f"worker {number}: stderr"]
            self.assertEqual((event["log_level"], formatEvent(event)),
                             (LogLevel.warn, f"plain line from fake worker {number}"))

    @defer.inlineCallbacks
    def test_a_killed_worker_is_started_again(self):
        """
        A worker killed with SIGKILL is logged with how it ended and started again after the
        backoff; the new process accepts on the same socket, next to the one that lived on.
        """
        supervisor, port = self.fake()
        yield wait_until(lambda: len(self.logged("ready")) == 2, timeout=20)
        first, other = supervisor.pids[1], supervisor.pids[2]
        os.kill(first, signal.SIGKILL)
        yield wait_until(lambda: supervisor.pids.get(1) not in (None, first), timeout=20)
        self.assertEqual(
            self.logged(f"worker 1 (pid {first}) was ended by SIGKILL; starting it again in 0.1 s"),
            [f"[-] worker 1 (pid {first}) was ended by SIGKILL; starting it again in 0.1 s"])
        again = supervisor.pids[1]
        self.assertEqual(supervisor.pids[2], other)
        yield wait_until(lambda: len(self.logged("fake worker 1 ready")) == 2, timeout=20)
        seen = yield self.answers(port, {again, other})
        self.assertEqual(seen, {again, other})
        self.assertFalse(alive(first))

    @defer.inlineCallbacks
    def test_a_worker_that_keeps_dying_backs_off(self):
        """
        A worker that exits at once, again and again, is started after longer and longer waits.
        """
        port = free_port()
        command = [sys.executable, "-c", "import sys; sys.exit(3)"]
        self.supervise([f"tcp:{port}:interface=127.0.0.1"], 1, command,
                       backoff=RestartBackoff(0.05, 0.2, 10.0))
        yield wait_until(lambda: len(self.logged("exited with status 3")) >= 4, timeout=20)
        delays = [line.rsplit(" in ", 1)[1] for line in self.logged("exited with status 3")]
        self.assertEqual(delays[:4], ["0.05 s", "0.1 s", "0.2 s", "0.2 s"])

    @defer.inlineCallbacks
    def test_stopping_ends_every_worker(self):
        """
        Stopping the supervisor sends SIGTERM to every worker and fires once all have ended;
        none is started again, and the port is closed: a new connection is refused.
        """
        supervisor, port = self.fake()
        yield wait_until(lambda: len(self.logged("ready")) == 2, timeout=20)
        pids = dict(supervisor.pids)
        yield supervisor.stopService()
        self.assertEqual(supervisor.pids, {})
        for number, pid in pids.items():
            self.assertFalse(alive(pid))
            self.assertEqual(self.logged(f"worker {number} (pid {pid}) stopped"),
                             [f"[-] worker {number} (pid {pid}) stopped: it exited with status 0"])
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)
        self.assertEqual(self.logged("starting it again"), [])

    @defer.inlineCallbacks
    def test_a_worker_that_will_not_stop_is_killed(self):
        """A worker still running C{kill_time} seconds after SIGTERM gets SIGKILL."""
        supervisor, _ = self.fake(count=1, FAKE_WORKER_IGNORES_SIGTERM="1")
        supervisor.kill_time = 0.5
        yield wait_until(lambda: len(self.logged("ready")) == 1, timeout=20)
        pid = supervisor.pids[1]
        started = reactor.seconds()
        yield supervisor.stopService()
        self.assertGreaterEqual(reactor.seconds() - started, 0.5)
        self.assertFalse(alive(pid))
        self.assertEqual(self.logged("did not stop"),
                         [f"[-] worker 1 (pid {pid}) did not stop in 0.5 s: killing it"])
        self.assertEqual(self.logged("stopped: it was ended by SIGKILL"),
                         [f"[-] worker 1 (pid {pid}) stopped: it was ended by SIGKILL"])

    def test_a_port_in_use_stops_the_start(self):
        """A port already in use stops the start with one line naming the endpoint."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        other = free_port()
        supervisor = Supervisor([f"tcp:{other}:interface=127.0.0.1",
                                 f"tcp:{port}:interface=127.0.0.1"], 2,
                                [sys.executable, FAKE_WORKER], {}, reactor)
        exc = self.assertRaises(SystemExit, supervisor.privilegedStartService)
        self.assertIn(f"mission-control: cannot listen on tcp:{port}:interface=127.0.0.1: ",
                      str(exc))
        self.assertEqual(supervisor.ports, [])

        def refused():  # the first listener is closed again
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", other)) != 0

        return wait_until(refused)

    def test_a_unix_socket_is_refused(self):
        """A listener that is not TCP cannot be shared: one line says so, nothing listens."""
        directory = tempfile.mkdtemp(prefix="mc-")  # short: a socket path has 107 bytes
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "hub.sock")
        supervisor = Supervisor([f"unix:{path}"], 2, [sys.executable, FAKE_WORKER], {}, reactor)
        exc = self.assertRaises(SystemExit, supervisor.privilegedStartService)
        self.assertEqual(str(exc),
                         f"mission-control: cannot listen on unix:{path}: "
                         f"workers share TCP sockets only")
        self.assertEqual(supervisor.ports, [])
        return wait_until(lambda: not os.path.exists(path))


class HubWorkerTests(SupervisorMixin, TestCase):
    """
    The supervisor with hub workers: C{twistd -n mission-control} as the supervisor starts it,
    each worker with a store of its own (memory), which is all the mechanics need.
    """

    timeout = 90

    def hub(self, listen: str, count: int = 2) -> tuple[Supervisor, bytes]:
        secret = secrets.token_hex(32).encode()
        secret_file = os.path.abspath(self.mktemp())
        with open(secret_file, "wb") as f:
            f.write(secret)
        arguments = ["--listen", listen, "--store", "memory", "--jwt-secret-file", secret_file,
                     "--data-dir", os.path.abspath(self.mktemp()), "--heartbeat-interval", "0"]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        supervisor = self.supervise([listen], count, worker_command(sys.executable, arguments),
                                    environ)
        return supervisor, secret

    def listening(self, count: int):
        return wait_until(
            lambda: len(self.logged("mission-control listening: http")) == count + 1,
            timeout=30)

    @defer.inlineCallbacks
    def test_hub_workers_share_the_listener_and_close_with_1001(self):
        """
        Two hub workers serve WebSockets on the supervisor's one port, both of them; stopping
        the supervisor closes every WebSocket with 1001, and every worker ends.
        """
        port = free_port()
        supervisor, secret = self.hub(f"tcp:{port}:interface=127.0.0.1")
        yield self.listening(2)
        pids = dict(supervisor.pids)

        class Server:  # what tests.helpers.connect needs of a server
            scheme = "http"

            def url(self, path="/ws", query=""):
                return f"ws://127.0.0.1:{port}{path}" + (f"?{query}" if query else "")

        Server.port = port  # type: ignore[attr-defined]
        clients = []
        for i in range(40):
            # A user each: one user's handshakes are rate limited per worker, and the kernel may
            # hand many connections in a row to one worker before the other gets one.
            token = tokens.mint_token(secret, f"viewer-{i}", reactor.seconds(), ttl=600,
                                      role="viewer")
            client = yield connect(self, Server(), token=token)
            clients.append(client)
            yield wait_until(lambda: len(self.logged("handshake accepted")) == len(clients))
            serving = {line.split(":", 1)[0] for line in self.logged("handshake accepted")}
            if len(serving) == 2:
                break
        self.assertEqual(serving, {"[worker 1", "[worker 2"})
        for client in clients:
            welcome = yield client.frames.get()
            self.assertEqual(welcome["type"], "welcome")

        yield supervisor.stopService()
        for client in clients:
            yield client.closed
            self.assertEqual(client.close_code, 1001)
        for pid in pids.values():
            self.assertFalse(alive(pid))
        self.assertEqual(len(self.logged("stopped: it")), 2)
        self.assertEqual(self.logged("Traceback"), [])

    @defer.inlineCallbacks
    def test_hub_workers_serve_tls(self):
        """
        On an C{ssl:} listener each worker wraps the shared socket in TLS with the endpoint's
        certificate: HTTPS requests are answered by both workers, verified against the CA.
        """
        files = certs.write_certificates(self)
        port = free_port()
        self.hub(f"ssl:{port}:interface=127.0.0.1:privateKey={files.key}:certKey={files.cert}")
        yield self.listening(2)
        self.assertEqual(len(self.logged(f"mission-control listening: https://127.0.0.1:{port}/")),
                         3)
        trusted = client_tls(files.ca_pem)
        serving: set[str] = set()
        for sent in range(1, 61):
            request = http_request("GET", "/healthz", headers={"Connection": "close"})
            data, _ = yield tls_exchange(port, request, trusted).addTimeout(10, reactor)
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
            self.assertEqual(json.loads(data.split(b"\r\n\r\n", 1)[1]), {"status": "ok"})
            yield wait_until(lambda: len(self.logged("GET /healthz")) == sent)
            serving = {line.split(":", 1)[0] for line in self.logged("GET /healthz")}
            if len(serving) == 2:
                break
        self.assertEqual(serving, {"[worker 1", "[worker 2"})

    @defer.inlineCallbacks
    def test_a_worker_stops_when_the_supervisor_is_gone(self):
        """
        A worker whose stdin reaches its end (the supervisor exited, however it ended) stops
        as SIGTERM stops it, and says why.
        """
        port = free_port()
        supervisor, _ = self.hub(f"tcp:{port}:interface=127.0.0.1", count=1)
        yield self.listening(1)
        worker = supervisor.workers[1].process
        assert worker is not None and worker.transport is not None
        pid = worker.pid
        worker.transport.closeStdin()
        yield worker.ended
        self.assertFalse(alive(pid))
        self.assertEqual(len(self.logged("[worker 1: mission_control.workers.worker",
                                         "the supervisor is gone: stopping")), 1)
        self.assertEqual(len(self.logged("Server Shut Down")), 1)

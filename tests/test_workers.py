"""
Tests for L{mission_control.workers}: the rules of C{--workers} (with C{--store} and C{--listen})
as L{Options} applies them, the assignment a supervisor hands each worker, what C{makeService}
builds for a supervisor and for a worker, and C{twistd mission-control --workers} as a real
command.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import defer, error, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mission_control import keys
from mission_control.tap import MissionControlService, makeService
from mission_control.workers import (
    MAX_WORKERS,
    WORKER_VARIABLE,
    WorkerAssignment,
    assignment_for,
    assignment_from,
    is_shared_store,
    refusal,
)
from mission_control.workers.supervisor import BOOTSTRAP, Supervisor
from mission_control.workers.worker import SupervisorWatch
from tests.helpers import (
    OptionsMixin,
    RemoteServer,
    alive,
    connect,
    free_port,
    http_request,
    raw_request,
    spawn_twistd,
    wait_until,
)
from tests.redis_helpers import RedisTestMixin

REDIS = "redis://127.0.0.1:6379/0"
NEEDS_SHARED = "--workers above 1 needs a shared store (--store redis://...)"


class RuleTests(SynchronousTestCase):
    """L{refusal} and L{is_shared_store}, the pure rules."""

    def test_shared_stores(self):
        """Redis, over TCP or TLS, is shared; SQLite and memory are not; the scheme's case
        does not matter."""
        for store in ("redis://r:6379/0", "rediss://:pw@r:6380/1?prefix=a", "REDIS://r"):
            self.assertTrue(is_shared_store(store), store)
        for store in ("sqlite", "memory", "redis", "http://redis:6379", ""):
            self.assertFalse(is_shared_store(store), store)

    def test_one_worker_goes_with_anything(self):
        """One worker is one hub: any store, any listener."""
        self.assertIsNone(refusal(1, "sqlite", ["unix:/run/hub.sock"]))

    def test_several_workers_need_a_shared_store(self):
        """Above 1 with SQLite or memory: one line that names the way out."""
        self.assertEqual(refusal(2, "sqlite", ["tcp:8080"]), f"{NEEDS_SHARED}, not --store sqlite")
        self.assertEqual(refusal(4, "memory", ["tcp:8080"]), f"{NEEDS_SHARED}, not --store memory")
        self.assertIsNone(refusal(2, REDIS, ["tcp:8080", "tcp6:8081", "ssl:8443:privateKey=k"]))

    def test_several_workers_share_tcp_only(self):
        """A Unix socket cannot be shared by workers: refused, naming the listener."""
        self.assertEqual(
            refusal(2, REDIS, ["tcp:8080", "unix:/run/hub.sock"]),
            "--workers above 1 shares tcp:, tcp6: and ssl: listeners only, "
            "not --listen unix:/run/hub.sock")


class AssignmentTests(SynchronousTestCase):
    """What the supervisor tells a worker, through L{WORKER_VARIABLE}."""

    def test_round_trip(self):
        """An assignment reads back as it was written: descriptors 3, 4, ... per listener."""
        assignment = assignment_for(3, 2)
        self.assertEqual(assignment, WorkerAssignment(3, (3, 4)))
        self.assertEqual(assignment_from({WORKER_VARIABLE: assignment.encode()}, 2), assignment)

    def test_absent_or_empty(self):
        """Without the variable (or with it empty) a process is not a worker."""
        self.assertIsNone(assignment_from({}, 1))
        self.assertIsNone(assignment_from({WORKER_VARIABLE: ""}, 1))

    def test_malformed(self):
        """A value no supervisor writes is refused, saying not to set it by hand."""
        for value in ("1", "{}", '{"number": 0, "fds": [3]}', '{"number": 1, "fds": [1]}',
                      '{"number": "1", "fds": [3]}', '{"number": 1, "fds": "3"}', "[", "null"):
            exc = self.assertRaises(ValueError, assignment_from, {WORKER_VARIABLE: value}, 1)
            self.assertIn("is set only by the supervisor of --workers", str(exc))

    def test_one_socket_per_listener(self):
        """A worker must have inherited exactly one socket per --listen endpoint."""
        exc = self.assertRaises(ValueError, assignment_from,
                                {WORKER_VARIABLE: assignment_for(1, 1).encode()}, 2)
        self.assertEqual(str(exc), f"{WORKER_VARIABLE} names 1 inherited listeners for "
                                   f"2 --listen endpoints")


class WorkersOptionTests(OptionsMixin, SynchronousTestCase):
    """C{--workers} among the options, as twistd parses them."""

    def test_default_is_one(self):
        """Without --workers: one process, and it is no worker."""
        options = self.parse()
        self.assertEqual(options["workers"], 1)
        self.assertIsNone(options["worker"])

    def test_with_a_redis_store(self):
        """
        --workers N with --store redis:// (or rediss://) is accepted: the URL is parsed (its
        prefix kept) and nothing connects yet.
        """
        for store in (REDIS, "rediss://:pw@127.0.0.1:6380/2?prefix=mc"):
            options = self.parse("--workers", "4", "--store", store)
            self.assertEqual((options["workers"], options["store"]), (4, "redis"))
            self.assertEqual(options["redis"].prefix,
                             "mc" if "prefix" in store else "mission-control")

    def test_from_the_environment(self):
        """MISSION_CONTROL_WORKERS sets it, as every option; the command line wins."""
        environ = {"MISSION_CONTROL_WORKERS": "3", "MISSION_CONTROL_STORE": REDIS}
        self.assertEqual(self.parse(environ=environ)["workers"], 3)
        self.assertEqual(self.parse("--workers", "2", environ=environ)["workers"], 2)

    def test_not_a_count(self):
        """Zero, negative, fractional, too many or not a number: a usage error."""
        for value in ("0", "-1", "1.5", "two", str(MAX_WORKERS + 1)):
            self.assertUsageError(["--workers", value, "--store", REDIS],
                                  f"--workers must be a whole number from 1 to {MAX_WORKERS}, "
                                  f"not {value!r}")

    def test_refused_without_a_shared_store(self):
        """Above 1 with the default store, SQLite or memory: one usage line."""
        self.assertUsageError(["--workers", "2"], NEEDS_SHARED, "not --store sqlite")
        self.assertUsageError(["--workers", "2", "--store", "memory"], NEEDS_SHARED)
        self.assertUsageError([], NEEDS_SHARED,
                              environ={"MISSION_CONTROL_WORKERS": "8",
                                       "MISSION_CONTROL_DATA_DIR": self.data_dir()})

    def test_refused_on_a_unix_socket(self):
        """Above 1 with a unix: listener: one usage line naming it."""
        self.assertUsageError(["--workers", "2", "--store", REDIS, "--listen", "tcp:0",
                               "--listen", "unix:/tmp/hub.sock"],
                              "--workers above 1 shares tcp:, tcp6: and ssl: listeners only")

    def test_metrics_listener_not_shared_by_workers(self):
        """--metrics-listen with --workers above 1 is one usage line: each worker counts apart."""
        self.assertUsageError(["--workers", "2", "--store", REDIS, "--metrics-listen", "tcp:9100"],
                              "--metrics-listen cannot be shared by --workers above 1")

    def test_other_stores_still_refused(self):
        """--store takes sqlite, memory or a Redis URL; anything else is a usage error."""
        self.assertUsageError(["--store", "postgres://db"],
                              "--store must be sqlite, memory or a redis:// or rediss:// URL")

    def test_the_arguments_are_kept(self):
        """The options as given are kept, for the workers that run with the same ones."""
        options = self.parse("--workers", "2", "--store", REDIS, "--demo")
        self.assertEqual(options["arguments"][-5:], ["--workers", "2", "--store", REDIS, "--demo"])

    def test_a_worker_reads_its_assignment(self):
        """Started by a supervisor, a process knows its number and its inherited listeners."""
        environ = {WORKER_VARIABLE: assignment_for(2, 2).encode()}
        options = self.parse("--workers", "2", "--store", REDIS, "--listen", "tcp:8080",
                             "--listen", "tcp:8081", environ=environ)
        self.assertEqual(options["worker"], WorkerAssignment(2, (3, 4)))

    def test_a_bad_assignment_is_a_usage_error(self):
        """A worker variable set by hand, or for other listeners, stops the start in one line."""
        self.assertUsageError([], "is set only by the supervisor of --workers",
                              environ={WORKER_VARIABLE: "x"})
        self.assertUsageError(["--listen", "tcp:0"], "names 2 inherited listeners for 1",
                              environ={WORKER_VARIABLE: assignment_for(1, 2).encode()})


class MakeServiceTests(OptionsMixin, SynchronousTestCase):
    """What C{makeService} builds with --workers, on a fake reactor."""

    def test_supervisor(self):
        """
        With --workers above 1 the service is the supervisor: the listeners, the count, and a
        worker command that runs this Python with the options as given; no store is opened.
        """
        args = ["--workers", "3", "--store", REDIS, "--listen", "tcp:0:interface=127.0.0.1"]
        options = self.parse(*args)
        service = makeService(options, reactor=MemoryReactorClock())
        self.assertIsInstance(service, Supervisor)
        assert isinstance(service, Supervisor)
        self.assertEqual((service.listen, service.count), (["tcp:0:interface=127.0.0.1"], 3))
        self.assertEqual(service.command[:4], [sys.executable, "-P", "-c", BOOTSTRAP])
        self.assertEqual(service.command[-len(options["arguments"]):], options["arguments"])

    def test_worker(self):
        """
        In a worker (--workers above 1, and the supervisor's assignment) the service is the hub,
        its listeners shared, with the watch that stops it when the supervisor is gone.
        """
        options = self.parse("--workers", "2", "--store", REDIS, "--listen", "tcp:0",
                             environ={WORKER_VARIABLE: assignment_for(2, 1).encode()})
        options["store"] = "memory"  # the hub cannot open a Redis store in this build
        service = makeService(options, reactor=MemoryReactorClock())
        self.assertIsInstance(service, MissionControlService)
        assert isinstance(service, MissionControlService)
        self.assertEqual(
            [(listener.shared, listener.endpoint.fd) for listener in service.listeners],
            [(True, 3)])
        self.assertEqual([type(child) for child in service if isinstance(child, SupervisorWatch)],
                         [SupervisorWatch])

    def test_demo_fleet_in_the_first_worker_only(self):
        """With --demo, one simulated fleet for all workers: worker 1 runs it, the others not."""
        from mission_control.demo import DemoFleet

        fleets = []
        for number in (1, 2):
            options = self.parse("--demo", "--listen", "tcp:0",
                                 environ={WORKER_VARIABLE: assignment_for(number, 1).encode()})
            service = makeService(options, reactor=MemoryReactorClock())
            fleets.append(sum(isinstance(child, DemoFleet) for child in service))
        self.assertEqual(fleets, [1, 0])


class TwistdWorkersTests(TestCase):
    """C{twistd -n mission-control --workers ...} as a real command."""

    timeout = 60

    @defer.inlineCallbacks
    def test_refused_without_a_shared_store(self):
        """--workers 2 without a shared store exits non-zero with one line, before listening."""
        port = free_port()
        proto = spawn_twistd(self, "--workers", "2", "--store", "memory",
                             "--listen", f"tcp:{port}:interface=127.0.0.1",
                             "--data-dir", os.path.abspath(self.mktemp()))
        reason = yield proto.ended.addTimeout(30, reactor)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertNotEqual(reason.exitCode, 0)
        lines = proto.err.decode().strip().splitlines()
        self.assertEqual(lines, [f"twistd mission-control: {NEEDS_SHARED}, not --store memory"])
        self.assertEqual(proto.out, b"")



class WorkersOnRedisTests(RedisTestMixin, TestCase):
    """C{twistd mission-control --workers 2} on the Redis of 127.0.0.1:6379."""

    timeout = 60

    def setUp(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self.redis_setup())

    @defer.inlineCallbacks
    def test_workers_on_redis(self):
        """
        twistd mission-control --workers 2 on a Redis store: two worker processes load the
        shared history and both accept connections on the one port, as one hub (an event
        published through one reaches a client of the other); SIGTERM ends the supervisor and
        every worker, each closing its WebSockets with 1001.
        """
        port = free_port()
        data_dir = os.path.abspath(self.mktemp())
        store = f"redis://127.0.0.1:6379/0?prefix={self.prefix}"
        proto = spawn_twistd(self, "--workers", "2", "--store", store,
                             "--listen", f"tcp:{port}:interface=127.0.0.1",
                             "--data-dir", data_dir, "--heartbeat-interval", "0")
        yield wait_until(lambda: proto.output.count("shared history") >= 2
                         or proto.ended.called, timeout=30)
        self.assertFalse(proto.ended.called, proto.output)
        workers = {int(pid) for pid in _started_pids(proto.output)}
        self.assertEqual(len(workers), 2)
        response = yield raw_request(port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 200)
        secret = keys.read_secret(os.path.join(data_dir, "jwt-secret"))
        server = RemoteServer(port, secret)
        clients = []
        for i in range(12):
            client = yield connect(self, server, server.token(f"viewer-{i}"))
            yield client.next_of("snapshot")
            clients.append(client)
        accepted_by = {line.split("[worker ", 1)[1].split(":", 1)[0]
                       for line in proto.output.splitlines()
                       if "handshake accepted" in line and "[worker " in line}
        self.assertEqual(accepted_by, {"1", "2"}, proto.output)
        admin = server.token("root", role="admin")
        response = yield raw_request(port, http_request(
            "POST", "/api/agents/agent-1/status", {"status": "busy"}, token=admin))
        self.assertEqual(response.status, 200)
        for client in clients:
            frame = yield client.next_of("agent:status")
            self.assertEqual(frame["seq"], response.json()["event"]["seq"])
        proto.process.signalProcess("TERM")
        reason = yield proto.ended.addTimeout(30, reactor)
        self.assertIn((reason.exitCode, reason.signal), [(0, None), (None, signal.SIGTERM)])
        for client in clients:
            yield client.closed
        self.assertEqual({client.close_code for client in clients}, {1001})
        for pid in workers:
            yield wait_until(lambda: not alive(pid), timeout=15)
        self.assertNotIn("Traceback", proto.output)


def _started_pids(output: str) -> list[str]:
    return [line.rsplit("(pid ", 1)[1].rstrip(")") for line in output.splitlines()
            if "] worker " in line and " started (pid " in line]

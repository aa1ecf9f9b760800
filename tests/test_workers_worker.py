"""
Tests for L{mission_control.workers.worker}: a worker's listeners on inherited sockets (plain and
TLS, on real loopback sockets), stopping one without stopping the socket for the others, the
watch that stops a worker when its supervisor is gone, and its JSON log.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger, eventFromJSON, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mission_control.listener import Listener
from mission_control.workers import WorkerAssignment
from mission_control.workers.worker import (
    InheritedEndpoint,
    SupervisorWatch,
    log_observer,
    socket_family,
    worker_listeners,
)
from tests import certs
from tests.helpers import LogCapture, client_tls, tls_exchange, wait_until


class Hello(Protocol):
    """Says C{hello} and closes."""

    def connectionMade(self):
        self.transport.write(b"hello")
        self.transport.loseConnection()


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


@defer.inlineCallbacks
def hear(port: int):
    """What a plain TCP connection to 127.0.0.1:C{port} hears before it is closed."""
    proto = Collect()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), proto)
    data = yield proto.done.addTimeout(5, reactor)
    return data


class SharedSocket:
    """
    A listening socket on 127.0.0.1 as the supervisor holds it, and a copy of its descriptor
    as a worker inherits it.
    """

    def __init__(self, testcase):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.setblocking(False)
        self.port = self.socket.getsockname()[1]
        self.fd = os.dup(self.socket.fileno())
        testcase.addCleanup(self.socket.close)
        testcase.addCleanup(os.close, self.fd)

    def listening(self) -> bool:
        """Whether the socket still listens: a connection to it completes and is queued."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2):
            pass
        conn, _ = self.socket.accept()
        conn.close()
        return True


class InheritedEndpointTests(TestCase):
    @defer.inlineCallbacks
    def test_adopts_the_socket(self):
        """
        The endpoint listens on the inherited socket, whatever port its description names:
        connections to the socket's port reach the factory.
        """
        shared = SharedSocket(self)
        endpoint = InheritedEndpoint(reactor, shared.fd, "tcp:8080:interface=127.0.0.1")
        port = yield endpoint.listen(Factory.forProtocol(Hello))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().port, shared.port)
        data = yield hear(shared.port)
        self.assertEqual(data, b"hello")

    @defer.inlineCallbacks
    def test_tls(self):
        """
        For an C{ssl:} description the site is served over TLS with the certificate and key the
        description names, as an C{ssl:} endpoint serves it.
        """
        files = certs.write_certificates(self)
        shared = SharedSocket(self)
        endpoint = InheritedEndpoint(
            reactor, shared.fd, f"ssl:0:privateKey={files.key}:certKey={files.cert}")

        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(b"over tls: " + data)
                self.transport.loseConnection()

        port = yield endpoint.listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        data, _ = yield tls_exchange(shared.port, b"ping", client_tls(files.ca_pem))
        self.assertEqual(data, b"over tls: ping")

    def test_not_a_tcp_socket(self):
        """A socket that is not TCP (a Unix one) is refused, naming the endpoint."""
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        self.assertEqual(socket_family(left.fileno()), socket.AF_UNIX)
        endpoint = InheritedEndpoint(reactor, left.fileno(), "tcp:8080")
        failure = self.failureResultOf(endpoint.listen(Factory.forProtocol(Hello)), ValueError)
        self.assertEqual(str(failure.value),
                         "the socket inherited for tcp:8080 is not a TCP socket")


class SharedListenerTests(TestCase):
    @defer.inlineCallbacks
    def test_stopping_leaves_the_socket_listening(self):
        """
        A worker's listener stops accepting and closes its own descriptor when it stops, but the
        shared socket listens on for the other workers: no shutdown, no accepting what they
        will accept.
        """
        shared = SharedSocket(self)
        factory = Factory.forProtocol(Hello)
        factory.accepted_count = 0
        listener = Listener("tcp:0:interface=127.0.0.1", factory, reactor,
                            endpoint=InheritedEndpoint(reactor, shared.fd, "tcp:0"), shared=True)
        listener.privilegedStartService()
        listener.startService()
        data = yield hear(shared.port)
        self.assertEqual(data, b"hello")
        yield listener.stopService()
        self.assertIsNone(listener.port)
        self.assertTrue(shared.listening())

    @defer.inlineCallbacks
    def test_worker_listeners(self):
        """A worker has one shared listener per C{--listen}, each on the descriptor given."""
        first, second = SharedSocket(self), SharedSocket(self)
        listeners = worker_listeners(
            WorkerAssignment(1, (first.fd, second.fd)),
            ["tcp:8080:interface=127.0.0.1", "tcp:8081:interface=127.0.0.1"],
            Factory.forProtocol(Hello), reactor)
        self.assertEqual([(listener.description, listener.shared) for listener in listeners],
                         [("tcp:8080:interface=127.0.0.1", True),
                          ("tcp:8081:interface=127.0.0.1", True)])
        for listener in listeners:
            listener.startService()
            self.addCleanup(listener.stopService)
        self.assertEqual([listener.port.getHost().port for listener in listeners],
                         [first.port, second.port])
        for port in (first.port, second.port):
            data = yield hear(port)
            self.assertEqual(data, b"hello")


class SupervisorWatchTests(TestCase):
    def pipe(self):
        """A pipe: its read end (closed when the test ends) and its write end (the test's to
        close, as the supervisor's end is closed when it exits)."""
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        return read, write

    @defer.inlineCallbacks
    def test_end_of_the_pipe_stops_the_worker(self):
        """
        When the pipe from the supervisor ends (it exited: the kernel closes its end), the
        watch calls C{gone} once and logs why; what the supervisor writes changes nothing.
        """
        logs = LogCapture(self)
        read, write = self.pipe()
        calls = []
        watch = SupervisorWatch(reactor, read, gone=lambda: calls.append("gone"))
        watch.startService()
        self.addCleanup(watch.stopService)
        os.write(write, b"anything")
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(calls, [])
        os.close(write)
        yield wait_until(lambda: calls == ["gone"])
        self.assertEqual(logs.matching("the supervisor is gone: stopping"),
                         ["the supervisor is gone: stopping"])

    @defer.inlineCallbacks
    def test_stopped_watch_says_nothing(self):
        """A watch that was stopped (the worker is stopping anyway) no longer reacts."""
        read, write = self.pipe()
        calls = []
        watch = SupervisorWatch(reactor, read, gone=lambda: calls.append("gone"))
        watch.startService()
        watch.stopService()
        os.close(write)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(calls, [])


class LogObserverTests(SynchronousTestCase):
    def test_json_lines_on_stdout(self):
        """
        A worker logs each event as one line on stdout: the record separator, then the event as
        JSON, which reads back into the same event.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        log = Logger(namespace="mission_control.tap", observer=log_observer())
        log.info("mission-control listening: {url}", url="http://127.0.0.1:8080/")
        [line, end] = stdout.getvalue().split("\n")
        self.assertEqual(end, "")
        self.assertTrue(line.startswith("\x1e"))
        json.loads(line[1:])
        event = eventFromJSON(line[1:])
        self.assertEqual(formatEvent(event), "mission-control listening: http://127.0.0.1:8080/")
        self.assertEqual(event["log_namespace"], "mission_control.tap")

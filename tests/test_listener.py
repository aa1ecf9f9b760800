"""
Tests for L{mission_control.listener}: the L{Listener} service of each C{--listen} endpoint, on
real ports (listening, a failed listen, stopping with the accept queue drained) and the URLs the
start-up log gives for a port.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, error, protocol, reactor, threads
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mission_control.listener import (
    LISTEN_BACKLOG,
    Listener,
    ListenError,
    urls_of,
    with_backlog,
)
from mission_control.tap import makeService
from tests.helpers import (
    OptionsMixin,
    bearer,
    free_port,
    http_request,
    parse_response,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


class UrlsTests(SynchronousTestCase):
    """L{urls_of}: what the start-up log announces for a listening port."""

    class Port:
        def __init__(self, address):
            self.address = address

        def getHost(self):
            return self.address

    def test_tcp(self):
        """A TCP port serves http:// and ws://.../ws on its address and real port."""
        port = self.Port(IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertEqual(urls_of("tcp:8080:interface=127.0.0.1", port),
                         ["http://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws"])

    def test_ssl(self):
        """An ssl: port serves https:// and wss://."""
        port = self.Port(IPv4Address("TCP", "127.0.0.1", 8443))
        self.assertEqual(urls_of("ssl:8443:privateKey=k.pem:certKey=c.pem", port),
                         ["https://127.0.0.1:8443/", "wss://127.0.0.1:8443/ws"])

    def test_all_interfaces(self):
        """A port on every interface is announced as localhost."""
        self.assertEqual(urls_of("tcp:80", self.Port(IPv4Address("TCP", "0.0.0.0", 80))),
                         ["http://localhost:80/", "ws://localhost:80/ws"])
        self.assertEqual(urls_of("tcp6:80", self.Port(IPv6Address("TCP", "::", 80))),
                         ["http://localhost:80/", "ws://localhost:80/ws"])

    def test_ipv6(self):
        """An IPv6 address is bracketed."""
        port = self.Port(IPv6Address("TCP", "::1", 9000))
        self.assertEqual(urls_of("tcp6:9000:interface=\\:\\:1", port),
                         ["http://[::1]:9000/", "ws://[::1]:9000/ws"])

    def test_unix(self):
        """A UNIX socket is named by its path."""
        [line] = urls_of("unix:/run/mc.sock", self.Port(UNIXAddress("/run/mc.sock")))
        self.assertIn("/run/mc.sock", line)
        self.assertIn("/ws", line)


class BacklogTests(OptionsMixin, SynchronousTestCase):
    """
    Every listener that has a listen backlog gets a large one unless its description sets its
    own: Twisted's 50 drops the connections of a fleet reconnecting at once.
    """

    def test_default_listen(self):
        """Without --listen, the hub listens on its default endpoint with L{LISTEN_BACKLOG}."""
        clock = MemoryReactorClock()
        service = makeService(self.parse("--store", "memory"), reactor=clock)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        [(port, _, backlog, interface)] = clock.tcpServers
        self.assertEqual((port, backlog, interface), (8080, LISTEN_BACKLOG, "127.0.0.1"))
        self.assertGreaterEqual(LISTEN_BACKLOG, 4096)

    def test_user_endpoint(self):
        """A tcp: endpoint given without backlog= listens with L{LISTEN_BACKLOG}."""
        clock = MemoryReactorClock()
        Listener("tcp:8123:interface=127.0.0.1", _Site(), clock).privilegedStartService()
        [(port, _, backlog, _)] = clock.tcpServers
        self.assertEqual((port, backlog), (8123, LISTEN_BACKLOG))

    def test_own_backlog_kept(self):
        """An endpoint that sets backlog= keeps it."""
        clock = MemoryReactorClock()
        Listener("tcp:8123:backlog=77", _Site(), clock).privilegedStartService()
        [(_, _, backlog, _)] = clock.tcpServers
        self.assertEqual(backlog, 77)

    def test_with_backlog(self):
        """
        L{with_backlog} adds C{backlog=} to tcp:, tcp6:, ssl: and unix: descriptions without one,
        in any case of the type, and leaves alone one with its own, other types, and descriptions
        that do not parse or name no address.
        """
        added = ["tcp:8080:interface=127.0.0.1", "TCP:8080", "tcp6:8080:interface=\\:\\:1",
                 "ssl:443:privateKey=k.pem:certKey=c.pem", "unix:/run/mc.sock:mode=660"]
        for description in added:
            self.assertEqual(with_backlog(description), f"{description}:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("tcp:80", 9), "tcp:80:backlog=9")
        kept = ["tcp:8080:backlog=10", "ssl:443:backlog=5:privateKey=k.pem",
                "systemd:domain=INET:index=0", "tcp", "tcp:", "nonsense", ""]
        for description in kept:
            self.assertEqual(with_backlog(description), description)


class ListeningTests(OptionsMixin, TestCase):
    """The service on real ports."""

    def test_real_port(self):
        """A real TCP port listens with the backlog (what the kernel is asked for)."""
        listener = Listener("tcp:0:interface=127.0.0.1", _Site(), reactor)
        listener.privilegedStartService()
        self.addCleanup(listener.stopService)
        self.assertEqual(listener.port.backlog, LISTEN_BACKLOG)

    @defer.inlineCallbacks
    def test_every_listener_serves(self):
        """With two --listen endpoints both answer /healthz."""
        server = start_server(self, args=["--listen", "tcp:0:interface=127.0.0.1",
                                          "--listen", "tcp:0:interface=127.0.0.1"])
        ports = [port.getHost().port for _, port in server.service.ports]
        self.assertEqual(len(set(ports)), 2)
        for port in ports:
            response = yield raw_request(port, http_request("GET", "/healthz"))
            self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_stop_closes_ports(self):
        """Once stopService's Deferred fires, the ports no longer accept connections."""
        options = self.parse("--listen", "tcp:0:interface=127.0.0.1")
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        port = service.ports[0][1].getHost().port
        yield service.stopService()
        with socket.socket() as s:
            self.assertRaises(ConnectionRefusedError, s.connect, ("127.0.0.1", port))

    @defer.inlineCallbacks
    def test_stopping_answers_connections_already_queued(self):
        """
        A connection the kernel completed but the reactor had not accepted yet when stopping
        began is accepted and answered (its WebSocket handshake gets 503 shutting down), not
        reset when the listening socket closes; one made after that is refused.
        """
        server = start_server(self)
        queued = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(queued.close)
        queued.sendall(upgrade_request(headers=bearer(server.token("late"))))
        # The reactor has not run since: the connection waits in the listening socket's queue.
        stopped = server.service.stopService()
        with socket.socket() as late:
            self.assertRaises(ConnectionRefusedError, late.connect, ("127.0.0.1", server.port))

        def read_all():
            queued.settimeout(10)
            data = b""
            while chunk := queued.recv(65536):
                data += chunk
            return data

        answer = parse_response((yield threads.deferToThread(read_all)))
        self.assertEqual((answer.status, answer.reason), (503, "shutting down"), answer.raw)
        yield stopped

    @defer.inlineCallbacks
    def test_port_in_use(self):
        """
        A port that is taken stops the start with one "cannot listen" line, and the listeners
        opened before it are closed again.
        """
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        taken_port = taken.getHost().port
        first = free_port()
        options = self.parse("--listen", f"tcp:{first}:interface=127.0.0.1",
                             "--listen", f"tcp:{taken_port}:interface=127.0.0.1")
        service = makeService(options, reactor=reactor)
        exc = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(len(exc.code.splitlines()), 1, exc.code)
        self.assertIn(f"mission-control: cannot listen on tcp:{taken_port}", exc.code)
        self.assertIn("Address already in use", exc.code)
        self.assertEqual(service.ports, [])

        def first_is_free():
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", first))
                except OSError:
                    return False
                return True

        yield wait_until(first_is_free)


class _Site(protocol.Factory):
    """A factory with the accept count that stopping a listener reads."""

    accepted_count = 0


class _Port:
    """A listening port whose closing completes when the test says so."""

    def __init__(self):
        self.closing = None

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 8124)

    def stopListening(self):
        self.closing = defer.Deferred()
        return self.closing


class _Endpoint:
    """An endpoint whose listens complete (or fail) only when the test says so."""

    def __init__(self):
        self.waiting = None
        self.cancelled = False

    def listen(self, factory):
        def cancel(_):
            self.cancelled = True

        self.waiting = defer.Deferred(cancel)
        return self.waiting


class ListenerTests(TestCase):
    """L{Listener}: Twisted's endpoint service, with the endpoint named in its failures."""

    def test_listens_with_the_site(self):
        """Starting listens on the endpoint the description names, with the factory given."""
        clock = MemoryReactorClock()
        site = _Site()
        listener = Listener("tcp:8123:interface=127.0.0.1", site, clock)
        listener.privilegedStartService()
        listener.startService()
        [(port, factory, _, interface)] = clock.tcpServers
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.assertIs(factory, site)
        self.assertEqual(listener.port.getHost().port, 8123)
        self.assertEqual(len(clock.tcpServers), 1)  # startService does not listen twice

    def test_failed_listen_names_the_endpoint(self):
        """
        A listen that fails at once raises L{ListenError}: one line with the --listen
        description and Twisted's own reason, the endpoint's error kept as its C{reason}; the
        listener is left not listening, and stopping it does nothing.
        """
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        description = f"tcp:{taken.getHost().port}:interface=127.0.0.1"
        listener = Listener(description, _Site(), reactor)
        exc = self.assertRaises(ListenError, listener.privilegedStartService)
        self.assertIsInstance(exc.reason, error.CannotListenError)
        self.assertEqual(exc.description, description)
        self.assertTrue(str(exc).startswith(f"cannot listen on {description}: "), str(exc))
        self.assertIn("Address already in use", str(exc))
        self.assertEqual(len(str(exc).splitlines()), 1)
        self.assertIsNone(listener.port)
        self.assertIsNone(self.successResultOf(listener.stopService()))

    def listener(self):
        """A listener on an endpoint of the test's own (L{_Endpoint})."""
        listener = Listener("tcp:0", _Site(), MemoryReactorClock())
        listener.endpoint = _Endpoint()
        return listener, listener.endpoint

    def test_listen_completing_later(self):
        """
        A listen that completes later is waited for: the port is known once it completes, and
        stopping closes it, firing once it is closed.
        """
        listener, endpoint = self.listener()
        listener.privilegedStartService()
        listener.startService()
        self.assertIsNone(listener.port)
        port = _Port()
        endpoint.waiting.callback(port)
        self.assertIs(listener.port, port)
        stopped = listener.stopService()
        self.assertIsNotNone(port.closing)
        self.assertNoResult(stopped)
        port.closing.callback(None)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertIsNone(listener.port)

    def test_listen_failing_later_is_logged(self):
        """
        A listen that fails after the start is logged by Twisted's service, with the endpoint's
        error; the listener has no port, and stops at once.
        """
        listener, endpoint = self.listener()
        listener.privilegedStartService()
        listener.startService()
        endpoint.waiting.errback(error.CannotListenError("127.0.0.1", 1, OSError("no")))
        self.assertEqual(len(self.flushLoggedErrors(error.CannotListenError)), 1)
        self.assertIsNone(listener.port)
        self.assertIsNone(self.successResultOf(listener.stopService()))

    def test_stop_gives_up_a_listen_under_way(self):
        """Stopping while a listen is still under way cancels it; nothing is logged."""
        listener, endpoint = self.listener()
        listener.startService()
        self.assertIsNone(self.successResultOf(listener.stopService()))
        self.assertTrue(endpoint.cancelled)
        self.assertFalse(listener.running)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_stopping_twice(self):
        """
        A listener whose listening was stopped already (the hub's service does that before it
        stops its children) stops again at once, without closing anything twice; and it can be
        started again.
        """
        listener, endpoint = self.listener()
        listener.startService()
        first = _Port()
        endpoint.waiting.callback(first)
        stopped = listener.stop_listening()
        first.closing.callback(None)
        self.successResultOf(stopped)
        closing = first.closing
        self.assertIsNone(self.successResultOf(listener.stopService()))
        self.assertIs(first.closing, closing)
        listener.startService()
        second = _Port()
        endpoint.waiting.callback(second)
        self.assertIs(listener.port, second)

    def test_unix_socket_in_a_missing_directory(self):
        """A unix socket whose directory does not exist is a failed listen that names its path."""
        path = self.mktemp() + "/missing/hub.sock"
        listener = Listener(f"unix:{path}", _Site(), reactor)
        exc = self.assertRaises(ListenError, listener.privilegedStartService)
        self.assertTrue(str(exc).startswith(f"cannot listen on unix:{path}: "), str(exc))
        self.assertIn("No such file or directory", str(exc))
        self.assertIsNone(listener.port)


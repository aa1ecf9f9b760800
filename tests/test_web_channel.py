"""
Tests for L{mission_control.web.channel}: the limits of one HTTP connection, on a fake clock and
transport, deadline by deadline (tests/test_hardening_http.py has the same over real sockets).
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from mission_control.web.channel import HubHTTPChannel
from mission_control.web.site import HubSite
from tests.helpers import parse_response


class _Hello(Resource):
    isLeaf = True

    def render(self, request):
        return b"hello"


class _Transport(StringTransport):
    """
    A string transport that, like a TCP one, lets its producer be unregistered twice (a channel
    that closes after its answer while draining closes twice).
    """

    def unregisterProducer(self):
        self.producer = None


class ChannelTests(SynchronousTestCase):
    """One L{HubHTTPChannel} of a L{HubSite} on a L{Clock}."""

    def setUp(self):
        self.clock = Clock()
        self.site = HubSite(_Hello(), reactor=self.clock, handshake_timeout=10,
                            request_timeout=30, max_http_connections=2)

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
        transport = _Transport()
        channel.makeConnection(transport)
        self.addCleanup(lambda: channel.transport and channel.connectionLost(None))
        return channel, transport

    def answer(self, transport):
        return parse_response(transport.value())

    def test_is_the_sites_channel(self):
        """The site builds L{HubHTTPChannel}s with its own deadlines."""
        channel, _ = self.connect()
        self.assertIsInstance(channel, HubHTTPChannel)
        self.assertEqual((channel.handshake_timeout, channel.request_timeout), (10, 30))

    def test_head_deadline_closes_quietly(self):
        """A head not complete within handshake_timeout closes the connection, answering nothing."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_body_deadline_is_408_from_the_start(self):
        """
        A body not complete within request_timeout of the request's start (not of the head's
        end) is answered 408 request_timeout, and the connection closed.
        """
        channel, transport = self.connect()
        self.clock.advance(5)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        self.clock.advance(24.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        response = self.answer(transport)
        self.assertEqual((response.status, response.json()["error"]["code"]),
                         (408, "request_timeout"))
        self.assertEqual(response.headers["connection"], "close")
        self.assertTrue(transport.disconnecting)

    def test_complete_request_is_answered_and_waits_again(self):
        """A request in time is answered; the next one on the connection has its own deadline."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.answer(transport).status, 200)
        self.assertEqual(self.answer(transport).headers["server"], "mission-control")
        transport.clear()
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_body_over_the_cap_is_413(self):
        """A Content-Length over max_body_size is refused with 413 before the body is read."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                             % (channel.max_body_size + 1,))
        response = self.answer(transport)
        self.assertEqual((response.status, response.json()["error"]["code"]),
                         (413, "payload_too_large"))
        self.assertTrue(transport.disconnecting)

    def test_connection_cap_is_503(self):
        """
        Past max_http_connections a new connection is answered 503 too_many_connections at once
        and closed, without a place in the count; a closed connection frees its place.
        """
        first, _ = self.connect()
        self.connect()
        self.assertEqual(self.site.http_connections, 2)
        _, refused = self.connect()
        response = self.answer(refused)
        self.assertEqual((response.status, response.json()["error"]["code"]),
                         (503, "too_many_connections"))
        self.assertTrue(refused.disconnecting)
        self.assertEqual(self.site.http_connections, 2)
        first.connectionLost(None)
        self.assertEqual(self.site.http_connections, 1)
        _, admitted = self.connect()
        self.assertFalse(admitted.disconnecting)
        self.assertEqual(self.site.accepted_count, 4)

    def test_handed_over_leaves_count_and_deadline(self):
        """A connection handed to the WebSocket leaves the HTTP count and has no deadline."""
        channel, transport = self.connect()
        channel.handed_over()
        self.assertEqual(self.site.http_connections, 0)
        self.assertNotIn(channel, self.site.channels)
        self.clock.advance(45)  # past both deadlines; the idle timeout (60) is Autobahn's then
        self.assertFalse(transport.disconnecting)

    def test_one_timer_while_waiting(self):
        """
        A connection waiting for its request head holds one timer, the deadline: the idle
        timeout, longer and restarted at the same moments, is not scheduled besides it.
        """
        channel, transport = self.connect()
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [10])
        channel.handed_over()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_timeout_kept_when_shorter(self):
        """An idle timeout shorter than the head's deadline still closes a silent connection."""
        self.site = HubSite(_Hello(), reactor=self.clock, handshake_timeout=100,
                            request_timeout=300, idle_timeout=20)
        channel, transport = self.connect()
        self.clock.advance(19)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_drain_closes_idle_connections(self):
        """
        When the site drains, a connection that waits between requests closes; an answer given
        from then on says Connection: close.
        """
        idle, idle_transport = self.connect()
        idle.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        fresh, fresh_transport = self.connect()
        self.site.drain()
        self.assertTrue(idle_transport.disconnecting)
        self.assertFalse(fresh_transport.disconnecting)
        fresh.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.answer(fresh_transport).headers["connection"], "close")
        self.assertTrue(fresh_transport.disconnecting)

    def test_malformed_request_is_json_400(self):
        """A request twisted.web cannot parse is answered with a JSON 400 and closed."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        response = self.answer(transport)
        self.assertEqual((response.status, json.loads(response.body)["error"]["code"]),
                         (400, "bad_request"))
        self.assertTrue(transport.disconnecting)

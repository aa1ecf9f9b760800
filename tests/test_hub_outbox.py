"""
Tests for L{mission_control.hub.outbox}: the fan-out window.  Events that follow one another
within the window reach each connection as one write, in order, behind nothing and ahead of
nothing they were not ahead of before; who receives an event is decided when it is published.
The hub's part runs on a L{Clock} with fake connections; the connection's part
(L{mission_control.protocol.HubServerProtocol.flush}) on a string transport; the whole over
loopback.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mission_control import events
from mission_control.hub import ConnectRequest, Hub
from mission_control.hub.outbox import FanoutWindow
from mission_control.metrics import Metrics
from mission_control.protocol import HubServerProtocol
from tests.helpers import connect, start_server, wait_until
from tests.hubfakes import FakeConnection, HubTestCase

WINDOW = 0.02


class WindowTests(HubTestCase):
    """The hub queues each event to its subscribers and flushes them once per window."""

    def setUp(self):
        super().setUp()
        self.hub.window.window = WINDOW

    def seqs(self, conn):
        return [f["seq"] for f in conn.frames if f["type"] == "agent:status"]

    def test_default_is_at_once(self):
        """A Hub built without a window delivers every event as it is published."""
        hub = Hub(self.clock, self.hub.store)
        conn = FakeConnection()
        hub.register(conn)
        for _ in range(2):
            self.successResultOf(
                hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1"))
        self.assertEqual(len(conn.delivered), 2)

    def test_events_of_one_window_are_one_write(self):
        """
        After a quiet window the first event goes out at once; the ones that follow it within the
        window wait for its end and reach each connection as one write, in seq order.
        """
        conns = [self.connect(f"u{i}") for i in range(3)]
        self.publish(1)
        self.assertEqual([c.writes for c in conns], [1, 1, 1])
        self.publish(4)
        self.assertEqual([self.seqs(c) for c in conns], [[1]] * 3)
        self.clock.advance(WINDOW)
        self.assertEqual([self.seqs(c) for c in conns], [[1, 2, 3, 4, 5]] * 3)
        self.assertEqual([c.writes for c in conns], [2, 2, 2])
        self.assertEqual(len(self.prepared), 5 + 3)  # each event encoded once (and 3 snapshots)

    def test_quiet_again_is_at_once(self):
        """Once a whole window passed without a flush, the next event is not delayed."""
        conn = self.connect()
        self.publish(2)
        self.clock.advance(WINDOW)
        self.clock.advance(WINDOW)
        self.publish(1)
        self.assertEqual(self.seqs(conn), [1, 2, 3])

    def test_direct_frames_stay_behind_queued_ones(self):
        """
        A reply (or any frame sent to the connection alone) goes out after the events queued
        before it, as it did when events were written at once.
        """
        conn = self.connect()
        self.publish(2)
        self.hub.handle_frame(conn, b'{"type":"ping","id":"p"}', False)
        conn.send_frame(self.hub.frame("pong", {}, "p"))  # what the protocol does with the reply
        self.assertEqual(conn.types()[-3:], ["agent:status", "agent:status", "pong"])

    def test_heartbeat_and_presence_share_the_queue(self):
        """Heartbeats and presence frames are queued with the events, in the order they came."""
        watcher = self.connect("w", request=ConnectRequest(channels=("agents", "presence")))
        self.publish(2)
        self.connect("bob")
        self.hub.send_heartbeat()
        self.clock.advance(WINDOW)
        self.assertEqual(watcher.types()[-4:],
                         ["agent:status", "agent:status", "presence:join", "heartbeat"])

    def test_going_live_during_a_window(self):
        """
        A client that resumes while events wait in the window gets each event once: those before
        it went live from the history, those after live, none twice, none missing.
        """
        first = self.connect()
        self.publish(2)  # 1 at once, 2 queued
        resuming = self.connect("r", request=ConnectRequest(since=0,
                                                            epoch=self.hub.store.epoch))
        self.publish(1)  # 3 queued, for both
        self.clock.advance(WINDOW)
        self.assertEqual(self.seqs(first), [1, 2, 3])
        self.assertEqual(self.seqs(resuming), [1, 2, 3])
        self.assertEqual(resuming.types().index("resumed"), 3)  # welcome, 1, 2, resumed

    def test_unsubscribe_during_a_window(self):
        """
        Events queued while a client was subscribed reach it before its C{subscribed} answer;
        none published after it unsubscribed does.
        """
        conn = self.connect()
        self.publish(2)
        reply = self.hub.handle_frame(
            conn, b'{"type":"unsubscribe","channels":["agents"]}', False)
        conn.send_frame(reply)
        self.publish(2)
        self.clock.advance(WINDOW)
        self.assertEqual(self.seqs(conn), [1, 2])
        self.assertEqual(conn.types()[-1], "subscribed")

    def test_close_during_a_window(self):
        """A connection that closed during the window is not written to; the others are."""
        gone, stays = self.connect("gone"), self.connect("stays")
        self.publish(2)
        gone.open = False
        self.hub.unregister(gone)
        self.clock.advance(WINDOW)
        self.assertEqual(self.seqs(gone), [1])
        self.assertEqual(self.seqs(stays), [1, 2])

    def test_close_all_sends_what_is_queued_first(self):
        """Shutting down: each connection gets its queued events, then its close."""
        conn = self.connect()
        self.publish(3)
        self.hub.stop()
        self.hub.close_all()
        self.assertEqual(self.seqs(conn), [1, 2, 3])
        self.assertEqual(conn.closed_with[0], 1001)
        self.assertEqual([call for call in self.clock.getDelayedCalls()
                          if call.func == self.hub.window.flush], [])

    def flush_calls(self):
        return [call for call in self.clock.getDelayedCalls()
                if call.func == self.hub.window.flush]

    def test_quiet_window_queues_nothing(self):
        """
        An event after a quiet window is handed to each subscriber's C{deliver} in the same turn:
        nothing is queued and no timer waits; one that follows it within the window is queued.
        """
        conns = [self.connect(f"u{i}") for i in range(3)]
        enqueued = []
        for conn in conns:
            conn.enqueue = lambda prepared, conn=conn: (enqueued.append(conn),
                                                        conn.queued.append(prepared))
        self.publish(1)
        self.assertEqual(enqueued, [])
        self.assertEqual([self.seqs(c) for c in conns], [[1]] * 3)
        self.assertEqual(self.flush_calls(), [])
        self.publish(1)
        self.assertEqual(sorted(map(id, enqueued)), sorted(map(id, conns)))
        self.clock.advance(WINDOW)
        self.assertEqual([self.seqs(c) for c in conns], [[1, 2]] * 3)

    def test_no_window_delivers_each_event_without_a_queue(self):
        """With a window of 0, every event is delivered as it is published, none queued."""
        self.hub.window.window = 0
        conn = self.connect()
        conn.enqueue = lambda prepared: self.fail("queued with no window")
        self.publish(3)
        self.assertEqual(self.seqs(conn), [1, 2, 3])
        self.assertEqual(conn.writes, 3)
        self.assertEqual(self.flush_calls(), [])

    def test_publish_returns_at_once(self):
        """
        Hub.publish's Deferred has fired with the stored envelope when it returns, while the
        event's delivery still waits for the window.
        """
        conn = self.connect()
        self.publish(1)
        envelope = self.publish(1)[0]
        self.assertEqual(envelope["seq"], 2)
        self.assertEqual(self.seqs(conn), [1])


class _Prepared:
    """A prepared frame: its framed bytes."""

    def __init__(self, data):
        self.payloadHybi = data


class _FastConnection:
    """
    A connection in the common case: what C{fast_send} is handed, and takes C{take} bytes of
    (all by default; an exception to raise instead), what goes to C{write_rest}, C{deliver},
    C{enqueue}.
    """

    def __init__(self, take=None, error=None):
        self.take, self.error = take, error
        self.sent, self.rest, self.delivered, self.queued = [], [], [], []
        self.fast_send = self._send

    def _send(self, data):
        if self.error is not None:
            raise self.error
        self.sent.append(data)
        return len(data) if self.take is None else self.take

    def write_rest(self, data, sent):
        self.rest.append((data, sent))

    def deliver(self, prepared):
        self.delivered.append(prepared)

    def enqueue(self, prepared):
        self.queued.append(prepared)

    def flush(self):
        self.queued = []


class FastSendTests(unittest.SynchronousTestCase):
    """After a quiet window, a connection in the common case is handed the framed bytes."""

    def fan_out(self, *conns, window=0.0):
        outbox = FanoutWindow(Clock(), window)
        prepared = _Prepared(b"\x81\x02{}")
        outbox.fan_out(prepared, conns)
        return outbox, prepared

    def test_framed_bytes_go_to_fast_send(self):
        """The framed bytes go to C{fast_send}, once; nothing else is called."""
        conn = _FastConnection()
        self.fan_out(conn)
        self.assertEqual((conn.sent, conn.rest, conn.delivered), ([b"\x81\x02{}"], [], []))

    def test_without_fast_send_deliver(self):
        """A connection without C{fast_send} is handed the prepared frame by C{deliver}."""
        conn, other = _FastConnection(), _FastConnection()
        conn.fast_send = None
        _, prepared = self.fan_out(conn, other)
        self.assertEqual((conn.delivered, conn.sent), ([prepared], []))
        self.assertEqual(other.sent, [b"\x81\x02{}"])

    def test_partial_send_writes_the_rest(self):
        """What the kernel did not take goes to C{write_rest}, with how much it took."""
        conn = _FastConnection(take=2)
        self.fan_out(conn)
        self.assertEqual(conn.rest, [(b"\x81\x02{}", 2)])

    def test_send_error_writes_it_all(self):
        """An error of the send hands the whole frame to C{write_rest}: its write meets it."""
        conn = _FastConnection(error=ConnectionResetError())
        self.fan_out(conn)
        self.assertEqual(conn.rest, [(b"\x81\x02{}", 0)])

    def test_within_a_window_queued(self):
        """Within a window the frame is queued, not sent, C{fast_send} or not."""
        conn = _FastConnection()
        outbox, _ = self.fan_out(conn, window=WINDOW)
        second = _Prepared(b"x")
        outbox.fan_out(second, [conn])
        self.assertEqual((len(conn.sent), conn.queued), (1, [second]))
        outbox.stop()


class _Hub:
    """What the protocol needs of the hub here: where it counts what it drops."""

    def __init__(self):
        self.metrics = Metrics(process=False)


class _Factory:
    max_outbound_bytes = 100

    def __init__(self):
        self.hub = _Hub()


class ProtocolFlushTests(unittest.SynchronousTestCase):
    """The WebSocket connection writes its queue as one write, within its outbound limit."""

    def setUp(self):
        self.protocol = protocol = HubServerProtocol()
        # Trial keeps test cases to the end of the run; a protocol kept with one would look like
        # a leak to the tests that count the live ones.
        self.addCleanup(vars(self).pop, "protocol")
        protocol.factory = _Factory()
        protocol.transport = self.transport = StringTransport()
        protocol.state = protocol.STATE_OPEN
        protocol._perMessageCompress = None
        protocol.send_queue = []
        protocol._queued = []
        protocol.connection_id = "c1"
        protocol.principal = None
        self.closed = []
        protocol.sendClose = lambda code, reason: self.closed.append(code)
        self.writes = []
        self.transport.write = self.writes.append

    def frames(self, *payloads):
        from autobahn.websocket.protocol import PreparedMessage
        return [PreparedMessage(p, False, False, False) for p in payloads]

    def counted(self, name, **labels):
        """The value of the metric C{name} (a sample's full name) the hub counts."""
        registry = self.protocol.factory.hub.metrics.registry
        return registry.get_sample_value(f"mission_control_{name}", labels)

    def test_one_write_of_the_framed_bytes(self):
        """Queued frames go out as one write: their framed bytes, joined, in order."""
        prepared = self.frames(b'{"a":1}', b'{"b":2}', b'{"c":3}')
        for p in prepared:
            self.protocol.enqueue(p)
        self.assertEqual(self.writes, [])
        self.protocol.flush()
        self.assertEqual(self.writes, [b"".join(p.payloadHybi for p in prepared)])
        self.protocol.flush()
        self.assertEqual(len(self.writes), 1)

    def test_paused_counts_each_frame_and_closes_past_the_limit(self):
        """
        While paused, each queued frame counts against the outbound limit as one delivery would:
        the frames within it are written, the first past it closes the connection with 4008.
        """
        self.protocol.pause_writing()
        prepared = self.frames(b"x" * 40, b"y" * 40, b"z" * 40, b"w" * 10)
        for p in prepared:
            self.protocol.enqueue(p)
        self.protocol.flush()
        self.assertEqual(self.writes, [prepared[0].payloadHybi + prepared[1].payloadHybi])
        self.assertEqual(self.closed, [4008])
        # The two frames not written are dropped deliveries; one slow consumer was closed.
        self.assertEqual(self.counted("deliveries_dropped_total", reason="slow_consumer"), 2)
        self.assertEqual(self.counted("slow_consumer_closes_total"), 1)

    def test_closed_connection_drops_its_queue(self):
        """A connection no longer open writes nothing of what it had queued."""
        self.protocol.enqueue(self.frames(b"{}")[0])
        self.protocol.state = self.protocol.STATE_CLOSING
        self.protocol.flush()
        self.assertEqual(self.writes, [])
        self.assertEqual(self.counted("deliveries_dropped_total", reason="closing"), 1)

    def test_direct_frame_writes_the_queue_first(self):
        """A frame sent directly goes out after what was queued before it."""
        queued = self.frames(b'{"a":1}')[0]
        self.protocol.enqueue(queued)
        self.protocol.sendMessage = lambda data, isBinary: self.writes.append(data)
        self.protocol.send_frame({"type": "pong"})
        self.assertEqual(self.writes, [queued.payloadHybi, b'{"type":"pong"}'])


    def test_deliver_is_one_write_of_the_framed_bytes(self):
        """A frame delivered with nothing queued goes out at once: its framed bytes, one write."""
        (prepared,) = self.frames(b'{"a":1}')
        self.protocol.deliver(prepared)
        self.assertEqual(self.writes, [prepared.payloadHybi])

    def test_deliver_writes_the_queue_first(self):
        """A delivered frame goes out after what was queued before it."""
        queued, delivered = self.frames(b'{"a":1}', b'{"b":2}')
        self.protocol.enqueue(queued)
        self.protocol.deliver(delivered)
        self.assertEqual(self.writes, [queued.payloadHybi, delivered.payloadHybi])

    def test_deliver_while_paused_counts_each_frame(self):
        """
        While paused, each delivered frame counts against the outbound limit: those within it
        are written, the first past it closes the connection with 4008 and is not written.
        """
        self.protocol.sendData = self.writes.append
        self.protocol.pause_writing()
        prepared = self.frames(b"x" * 40, b"y" * 40, b"z" * 40)
        for p in prepared:
            self.protocol.deliver(p)
        self.assertEqual(self.writes, [prepared[0].payloadHybi, prepared[1].payloadHybi])
        self.assertEqual(self.closed, [4008])
        self.assertEqual(self.counted("deliveries_dropped_total", reason="slow_consumer"), 1)
        self.assertEqual(self.counted("slow_consumer_closes_total"), 1)

    def test_deliver_to_a_closing_connection_writes_nothing(self):
        """A connection no longer open is not written to, queued frames included."""
        queued, delivered = self.frames(b'{"a":1}', b'{"b":2}')
        self.protocol.enqueue(queued)
        self.protocol.state = self.protocol.STATE_CLOSING
        self.protocol.deliver(delivered)
        self.assertEqual(self.writes, [])
        # The delivered frame is dropped; the queued one is dropped when the queue is flushed.
        self.assertEqual(self.counted("deliveries_dropped_total", reason="closing"), 1)
        self.protocol.flush()
        self.assertEqual(self.counted("deliveries_dropped_total", reason="closing"), 2)


    def test_fast_send_dropped_on_pause(self):
        """A pause of the transport ends the common case: bytes must be counted again."""
        self.protocol.fast_send = self.writes.append
        self.protocol.pause_writing()
        self.assertIsNone(self.protocol.fast_send)

    def test_fast_send_dropped_by_any_other_write(self):
        """A write of Autobahn's own (a reply, a ping, a close) leaves the transport a buffer."""
        self.protocol.fast_send = self.writes.append
        self.protocol.send_queue = [(b"x", False)]  # queued, not written: the call is the point
        self.protocol._trigger = lambda: None
        self.protocol.sendData(b"y")
        self.assertIsNone(self.protocol.fast_send)

    def test_fast_send_dropped_on_close_of_the_connection(self):
        """Dropping the TCP connection ends the common case."""
        self.protocol.fast_send = self.writes.append
        self.protocol._closeConnection()
        self.assertIsNone(self.protocol.fast_send)
        self.assertTrue(self.transport.disconnecting)

    def test_fast_send_dropped_while_a_message_streams(self):
        """Frames are held behind a streamed message: not the common case."""
        self.protocol.fast_send = self.writes.append
        self.protocol.paused = True  # the stream waits for the transport
        self.protocol.beginMessage = lambda isBinary: None
        self.protocol.send_stream(iter([b"a"]), lambda: None)
        self.assertIsNone(self.protocol.fast_send)

    def test_flush_with_fast_send_is_one_send(self):
        """In the common case the queue's framed bytes, joined, go to C{fast_send} in one call."""
        sent = []
        self.protocol.fast_send = lambda data: sent.append(data) or len(data)
        prepared = self.frames(b'{"a":1}', b'{"b":2}')
        for p in prepared:
            self.protocol.enqueue(p)
        self.protocol.flush()
        self.assertEqual((sent, self.writes), ([b"".join(p.payloadHybi for p in prepared)], []))
        self.assertIsNotNone(self.protocol.fast_send)

    def test_flush_partial_send_writes_the_rest(self):
        """What C{fast_send} did not take of a flush is written through the transport."""
        self.protocol.fast_send = lambda data: 3
        (prepared,) = self.frames(b'{"a":1}')
        self.protocol.enqueue(prepared)
        self.protocol.flush()
        self.assertEqual(self.writes, [prepared.payloadHybi[3:]])
        self.assertIsNone(self.protocol.fast_send)

    def test_rest_goes_through_the_transport(self):
        """What the kernel did not take is written through the transport, which buffers it."""
        self.protocol.fast_send = self.writes.append
        self.protocol.write_rest(b"abcdef", 2)
        self.assertEqual(self.writes, [b"cdef"])
        self.assertIsNone(self.protocol.fast_send)

    def test_string_transport_never_fast(self):
        """Only a plain TCP connection with nothing buffered is sent to directly."""
        self.protocol.deliver(self.frames(b"{}")[0])
        self.assertIsNone(self.protocol.fast_send)


class LoopbackTests(unittest.TestCase):
    """Over real sockets, events published together arrive together, in order, each once."""

    @defer.inlineCallbacks
    def test_burst_arrives_in_order_in_two_writes(self):
        """
        Five events published in one reactor turn reach a client in seq order: the first at once,
        the other four in one write at the end of the window.
        """
        server = start_server(self)
        client = yield connect(self, server, server.token("viewer"))
        yield client.next_of("snapshot")
        (protocol,) = list(server.hub.registry)
        writes = []
        original = protocol._write

        def counting(data):
            writes.append(data)
            original(data)

        self.patch(protocol, "_write", counting)
        now = reactor.seconds()
        for i in range(5):
            self.successResultOf(server.hub.publish("agent:status", events.agent_status(
                {"status": "busy", "message": str(i)}, now, "a1")))
        received = []
        for _ in range(5):
            frame = yield client.next_of("agent:status")
            received.append(frame["seq"])
        self.assertEqual(received, list(range(received[0], received[0] + 5)))
        yield wait_until(lambda: len(writes) >= 2)
        self.assertEqual(len(writes), 2)

    @defer.inlineCallbacks
    def test_fast_send_after_a_write_taken_whole(self):
        """
        Over plain TCP, a delivery the kernel took whole makes the next ones go straight to the
        socket; a frame sent directly ends that, and what follows still arrives in order, once.
        """
        server = start_server(self)
        server.hub.window.window = 0
        client = yield connect(self, server, server.token("viewer"))
        yield client.next_of("snapshot")
        (protocol,) = list(server.hub.registry)
        self.assertIsNone(protocol.fast_send)
        now = reactor.seconds()

        def publish(i):
            self.successResultOf(server.hub.publish("agent:status", events.agent_status(
                {"status": "busy", "message": str(i)}, now, "a1")))

        publish(0)
        self.assertIsNotNone(protocol.fast_send)
        publish(1)
        protocol.send_frame({"type": "note"})
        self.assertIsNone(protocol.fast_send)
        publish(2)
        received = []
        for _ in range(3):
            frame = yield client.next_of("agent:status")
            received.append(frame["payload"]["message"])
        self.assertEqual(received, ["0", "1", "2"])

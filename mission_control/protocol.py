# -*- test-case-name: tests.test_websocket,tests.test_hardening_websocket -*-
"""
The WebSocket adapter: turns handshakes and frames into calls on the L{Hub}, and nothing more.

Wire protocol (the full text is docs/websocket-api.md):

    client                                   server
    GET /ws  (Authorization: Bearer JWT, or ?token=JWT)
                                             401/403/429/503/400 plain HTTP refusal, or 101
                                             {"type":"welcome","payload":{connectionId,user,...}}
                                             {"type":"snapshot","payload":{agents,sessions,lastSeq}}
                                             {"type":"agent:status","payload":{...},"seq":N}  (live)
                                             {"type":"heartbeat","payload":{timestamp,lastSeq}}
    {"type":"ping","id":"r1"}          ->    {"type":"pong","id":"r1","payload":{}}
    {"type":"ack","seq":41}            ->    {"type":"ack","payload":{"seq":41}}
    {"type":"auth","token":"JWT"}      ->    {"type":"auth:ok",...}, or error + close 4003
    {"type":"subscribe","channels":[]} ->    {"type":"subscribed","payload":{"channels":[...]}}
    {"type":"publish","event":{...}}   ->    {"type":"published","payload":{"seq":N,"type":...}}
    anything malformed                 ->    {"type":"error","payload":{"code","message"}}

    GET /ws?channels=agents:a1,presence      only those channels (default: agents, sessions)

    GET /ws?since=SEQ&epoch=E          ->    welcome, the events after SEQ, then
                                             {"type":"resumed","payload":{"recovered":true,...}}
                                             (or recovered:false and a snapshot)

The handshake, every check before the upgrade and every refusal, is L{HandshakeProtocol}'s
(L{mission_control.handshake}); the factory that builds these protocols and admits handshakes is
L{mission_control.factory}.

Every frame a client sends costs one message of its rate (C{Hub.allow_message}): a message's
first frame is charged when the message is answered, its continuation frames, pings and pongs as
they arrive; past the rate the connection is closed with 4029.  A message in more than
C{max_fragments} frames is closed with 1009 like an oversized one.  A connection closed for what
it sends (4029, the fragment cap) is not read any further: its close frame goes out and the TCP
connection is closed behind it, without waiting for a close reply, so a flood costs nothing more.

Backpressure: a small push producer registered on the transport hears when the kernel stops
taking data (about 64 KiB queued).  Bytes sent while paused are counted; past
C{max_outbound_bytes} the connection is closed with 4008, so one stalled client can hold only
that much of the server's memory, and the hub's fan-out to everyone else is never held up.  The
hub's metrics count those closes, and the fan-out frames a connection drops (past the limit, or
because it was closing).

Fan-out frames are queued (L{HubServerProtocol.enqueue}) and written together by
L{HubServerProtocol.flush}: the framed bytes Autobahn prepared once for every connection
(C{PreparedMessage.payloadHybi}; compression is never negotiated, see the factory), joined, in
one C{transport.write} (handed to the kernel at once when the socket has nothing buffered,
L{HubServerProtocol._write}).  After a quiet window an event is not queued at all: the outbox
sends its framed bytes at once, straight to C{fast_send} (the socket's C{send}) while the
connection is in the common case, else through L{HubServerProtocol.deliver}.  Anything else sent
to the connection writes the queue first.

About 500 lines, past the 400 lines of a module, for a reason: it is the one adapter between
Autobahn and the hub, and its parts (backpressure, the streamed snapshot, the fan-out queue and
its direct sends) all guard the same writes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, cast

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import tcp
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from mission_control.events import encode_json
from mission_control.handshake import HandshakeProtocol
from mission_control.hub import IConnection

#: Close codes for what a client sends: the connection is not read after them.
CLOSE_TOO_MANY_MESSAGES = 4029
CLOSE_TOO_BIG = 1009
_HANG_UP_CODES = (CLOSE_TOO_MANY_MESSAGES,)

#: A frame held while a message streams, and the method that sends it once the message ends.
_Held = tuple[Callable[[Any], None], Any]


@implementer(IConnection)
class HubServerProtocol(HandshakeProtocol):
    """
    One client connection: the hub's L{mission_control.hub.IConnection}.  Its handshake is
    L{HandshakeProtocol}'s; from the upgrade on, everything is here.
    """

    connection_id: str | None = None
    paused = False
    _paused_bytes = 0
    #: Fan-out frames waiting for L{flush} (see L{enqueue}).
    _queued: list[PreparedMessage] | None = None
    #: The socket's C{send} while a fan-out frame may go straight to it (see L{_arm}), else None.
    fast_send: Callable[[bytes], int] | None = None

    # From the upgrade on

    def onOpen(self) -> None:
        request = self._connect_request
        self.forget_handshake()  # and the token with it
        self._queued = []
        self._watch_backpressure()
        self.factory.hub.register(self, request)

    def _watch_backpressure(self) -> None:
        """
        Put our producer on the transport (behind twisted.web, the HTTP channel was there).  The
        kernel's share of what waits for this client is bounded by the site
        (L{mission_control.web.site.bound_unsent}) from the moment the connection was accepted.
        """
        transport = self._consumer()
        transport.unregisterProducer()  # a no-op where none is registered
        transport.registerProducer(_Backpressure(self), True)

    def _consumer(self) -> IConsumer:
        """The transport, as the consumer it is (Twisted types C{transport} as an ITransport)."""
        return cast(IConsumer, self.transport)

    def onPing(self, payload: bytes) -> None:
        """
        Pings count against the message rate like frames, and their pongs against the outbound
        limit: a client that pings and never reads must not grow our memory.
        """
        if self.factory.hub.allow_message(self) and self._account(len(payload or b"") + 2):
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        """A pong costs a message too: unsolicited ones are free to send and cost us a parse."""
        self.factory.hub.allow_message(self)

    def onMessageBegin(self, isBinary: bool) -> None:
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        """
        Every frame after a message's first costs one message of the rate (the first is charged
        with the whole message, in L{Hub.handle_frame}); past C{max_fragments} frames the
        connection is closed with 1009.
        """
        self._fragments += 1
        if self._fragments > 1 and self.state == self.STATE_OPEN:
            if self._fragments > self.factory.max_fragments:
                self._log.warn(
                    "closing connection {connection_id} of {user}: a message in more than "
                    "{max_fragments} frames",
                    connection_id=self.connection_id,
                    user=self.principal.sub if self.principal else None,
                    max_fragments=self.factory.max_fragments,
                )
                self._close_and_hang_up(CLOSE_TOO_BIG, "too many fragments")
            else:
                self.factory.hub.allow_message(self)
        super().onMessageFrameBegin(length)

    _fragments = 0

    def onAutoPingTimeout(self) -> None:
        self.factory.hub.timed_out(self)
        super().onAutoPingTimeout()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # A connection that is gone needs no close handshake timer (one that vanished right after
        # we sent a close, or one we hung up on): Autobahn leaves it to fire seconds later.
        timer: Any = getattr(self, "closeHandshakeTimeoutCall", None)
        if timer is not None:
            timer.cancel()
            self.closeHandshakeTimeoutCall = None
        # The transport still holds whatever the peer never read (up to --max-outbound-bytes);
        # drop our reference so it is freed now, not at the next full garbage collection.
        self.transport = None
        self._queued = self.fast_send = None

    # Frames

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return  # the rest of a message that arrived after we closed
        reply = self.factory.hub.handle_frame(self, payload, isBinary)
        if reply is not None:
            self.send_frame(reply)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.hub.unregister(self)

    # Backpressure

    def pause_writing(self) -> None:
        # Transports repeat pauseProducing on every write while over their limit: count from the
        # first one only.
        if not self.paused:
            self.paused = True
            self._paused_bytes = 0
            self.fast_send = None

    def resume_writing(self) -> None:
        self.paused = False
        self._paused_bytes = 0
        self._pump()
        self.factory.hub.writable(self)

    def _account(self, size: int) -> bool:
        """Count C{size} bytes queued while paused; close with 4008 past the limit."""
        if not self.paused:
            return True
        self._paused_bytes += size
        if self._paused_bytes <= self.factory.max_outbound_bytes:
            return True
        self._too_slow()
        return False

    def _too_slow(self) -> None:
        self.factory.hub.metrics.slow_consumer_closed()
        self._log.warn(
            "closing connection {connection_id} of {user}: too slow ({size} bytes waiting)",
            connection_id=self.connection_id,
            user=self.principal.sub if self.principal else None,
            size=self.bytes_waiting(),
        )
        self.sendClose(4008, "too slow")

    # IConnection

    def enqueue(self, prepared: PreparedMessage) -> None:
        # Once per connection per event: nothing but the append (a closed connection's queue is
        # None, and it is no longer a subscriber; one closing drops its queue in flush).
        queued = self._queued
        if queued is not None:
            queued.append(prepared)
        else:
            self._dropped("closing")

    def flush(self) -> None:
        queued = self._queued
        if not queued:
            return
        self._queued = []
        send = self.fast_send  # open, not paused, nothing held or buffered: one send
        if send is not None:
            data = _framed(queued)
            try:
                sent = send(data)
            except OSError:
                sent = 0  # the transport's own write meets the error
            if sent != len(data):
                self.write_rest(data, sent)
            return
        if self.state != self.STATE_OPEN:
            self._dropped("closing", len(queued))
            return
        if self._held is not None or self._perMessageCompress is not None:
            for prepared in queued:
                self._deliver_one(prepared)
            return
        if not self.paused:
            if self._write(_framed(queued)):
                self._arm()
            return
        # Paused: count frame by frame, as one delivery at a time would; write the frames within
        # the limit, then close with 4008 at the first one past it.
        limit, taken = self.factory.max_outbound_bytes, 0
        for prepared in queued:
            size = len(prepared.payload)
            if self._paused_bytes + size > limit:
                break
            self._paused_bytes += size
            taken += 1
        if taken:
            self._write(_framed(queued[:taken]))
        if taken < len(queued):
            self._paused_bytes += len(queued[taken].payload)
            self._dropped("slow_consumer", len(queued) - taken)
            self._too_slow()

    def _write(self, data: bytes) -> bool:
        """
        Write framed bytes behind anything Autobahn itself still queues: handed to the kernel at
        once when the transport is a plain TCP connection with nothing buffered, else (or what
        the kernel did not take) through the transport.

        A write through the transport is sent at the reactor's next turn, and costs two
        C{epoll_ctl} calls and the reactor's bookkeeping on top of the C{send}: the larger part
        of a delivery's cost when each window holds one event.  What does not fit goes through
        the transport, which keeps the order (its buffer was empty) and its producer's
        backpressure.  On any error the transport's own write meets it.  This runs once per
        connection per write: the checks are inline, cheapest first.  True when the kernel took
        it all.
        """
        if self.send_queue:
            self.sendData(data)
            return False
        transport: Any = self.transport
        sent = 0
        if (type(transport) is tcp.Server and not transport._tempDataLen
                and len(transport.dataBuffer) == transport.offset and transport.connected
                and not transport.disconnecting and not transport._writeDisconnected):
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return True
        self.write_rest(data, sent)
        return False

    def write_rest(self, data: bytes, sent: int) -> None:
        """Write what the kernel did not take of C{data} through the transport, in order."""
        self.fast_send = None  # until the transport's buffer is empty again
        cast(Any, self.transport).write(data[sent:] if sent else data)

    def _arm(self) -> None:
        """
        After a write the kernel took whole, from an open connection with nothing paused, held or
        compressed: until one of those changes (L{sendData}, L{_closeConnection}, a pause, a
        stream, a partial write), its fan-out frames may go straight to the socket.
        """
        self.fast_send = cast(Any, self.transport).socket.send

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's writes (replies, pings, closes) leave the transport's buffer non-empty."""
        self.fast_send = None
        super().sendData(data, sync, chopsize)

    def _closeConnection(self, abort: bool = False) -> None:
        self.fast_send = None
        super()._closeConnection(abort)

    def deliver(self, prepared: PreparedMessage) -> None:
        # Once per connection per event after a quiet window: the common case (open, nothing
        # queued, held or compressed, not paused) is a few checks and one write.
        if self.state != self.STATE_OPEN:
            # sendPreparedMessage does not check the state: a closing one is skipped
            self._dropped("closing")
            return
        if self._queued:
            self.flush()
            if self.state != self.STATE_OPEN:
                self._dropped("slow_consumer")  # the queue was past the outbound limit
                return
        if self.paused or self._held is not None or self._perMessageCompress is not None:
            self._deliver_one(prepared)
        elif self._write(prepared.payloadHybi):
            self._arm()

    def _deliver_one(self, prepared: PreparedMessage) -> None:
        if self.state != self.STATE_OPEN:
            self._dropped("closing")
        elif self._held is not None:
            if not self._hold(self.sendPreparedMessage, prepared, len(prepared.payload)):
                self._dropped("slow_consumer")
        elif self._account(len(prepared.payload)):
            self.sendPreparedMessage(prepared)
        else:
            self._dropped("slow_consumer")

    def _dropped(self, reason: str, count: int = 1) -> None:
        """C{count} fan-out frames this connection will never write: counted by the hub."""
        self.factory.hub.metrics.dropped(reason, count)

    def send_frame(self, frame: Mapping) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.flush()
        if self.state != self.STATE_OPEN:
            return  # the queue was past the outbound limit
        data = encode_json(frame)
        if self._held is not None:
            self._hold(self._send_text, data, len(data))
        elif self._account(len(data)):
            self._send_text(data)

    def _send_text(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=False)

    # One message streamed as the client reads it (a large snapshot)

    #: C{(chunks, done)} while a streamed message is being sent.
    _stream: tuple[Iterator[bytes], Callable[[], None]] | None = None
    #: Frames sent while a message streams, sent once it ends (messages cannot interleave).
    _held: list[_Held] | None = None
    _held_bytes = 0

    def send_stream(self, chunks: Iterable[bytes], done: Callable[[], None]) -> None:
        """
        Send one text message made of C{chunks}, one WebSocket frame per chunk, taking the next
        chunk only while the transport takes data (L{_pump}); C{done()} once it is complete.
        What waits for a client that does not read is the rest of C{chunks}, not its bytes.
        """
        if self.state != self.STATE_OPEN:
            return
        self.flush()
        if self.state != self.STATE_OPEN:
            return
        self._stream = (iter(chunks), done)
        self._held, self._held_bytes, self.fast_send = [], 0, None
        self.beginMessage(isBinary=False)
        self._pump()

    def _pump(self) -> None:
        """Send chunks of the streamed message until the transport pauses us or it ends."""
        while self._stream is not None and not self.paused:
            if self.state != self.STATE_OPEN:
                self._stream = self._held = None
                return
            chunks, done = self._stream
            chunk = next(chunks, None)
            if chunk is None:
                self.endMessage()
                self._stream = None
                held, self._held = self._held, None
                assert held is not None  # set with the stream, in send_stream
                for send, value in held:
                    send(value)
                done()
                return
            self.sendMessageFrame(chunk)

    def _hold(self, send: Callable[[Any], None], value: Any, size: int) -> bool:
        """
        Keep a frame until the streamed message ends; past the outbound limit, close 4008 and
        drop it (C{False}).
        """
        self._held_bytes += size
        if self._held_bytes > self.factory.max_outbound_bytes:
            self.factory.hub.metrics.slow_consumer_closed()
            self._log.warn("closing connection {connection_id} of {user}: too slow "
                           "({size} bytes held behind its snapshot)",
                           connection_id=self.connection_id,
                           user=self.principal.sub if self.principal else None,
                           size=self._held_bytes)
            self.sendClose(4008, "too slow")
            return False
        assert self._held is not None  # frames are held only while a message streams
        self._held.append((send, value))
        return True

    def bytes_waiting(self) -> int:
        """Bytes queued in the transports below us (TLS, then TCP), best effort."""
        total, transport = 0, cast(Any, self.transport)
        for _ in range(4):
            if transport is None:
                break
            buffer = getattr(transport, "dataBuffer", None)
            if isinstance(buffer, (bytes, bytearray, memoryview)):
                total += len(buffer) - getattr(transport, "offset", 0)
            total += getattr(transport, "_tempDataLen", 0) or 0
            pending = getattr(transport, "_appSendBuffer", None)
            if pending:
                total += sum(len(chunk) for chunk in pending)
            transport = getattr(transport, "transport", None)
        return max(total, 0)

    def close(self, code: int, reason: str) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.flush()  # what was published before the close goes out before it
        if self.state != self.STATE_OPEN:
            return
        if code in _HANG_UP_CODES:
            self._close_and_hang_up(code, reason)
        elif code == 1001:
            # sendClose() only takes 1000 and 3000-4999.
            self.sendCloseFrame(code=1001, reasonUtf8=reason.encode("utf-8"))
        else:
            self.sendClose(code, reason)

    def _close_and_hang_up(self, code: int, reason: str) -> None:
        """
        Close a connection for what it sends, and read nothing more of it: what is buffered is
        dropped unparsed, and the TCP connection is closed as soon as the close frame is out (an
        orderly close, so the peer reads the code).  Waiting for the peer's close reply would
        mean parsing whatever it keeps sending; the close handshake timer still aborts a peer
        that does not take the close frame.
        """
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])
        self.data = b""
        self._consumer().unregisterProducer()  # a paused producer would hold the close back
        transport = self.transport
        assert transport is not None  # the connection is open: every caller checked
        transport.loseConnection()


def _framed(queued: list[PreparedMessage]) -> bytes:
    """The framed bytes of C{queued}, in order: one write."""
    if len(queued) == 1:
        return queued[0].payloadHybi
    return b"".join([prepared.payloadHybi for prepared in queued])


@implementer(IPushProducer)
class _Backpressure:
    """Tells the protocol when its transport stops and starts taking data."""

    def __init__(self, protocol: HubServerProtocol) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol.pause_writing()

    def resumeProducing(self) -> None:
        self.protocol.resume_writing()

    def stopProducing(self) -> None:
        pass

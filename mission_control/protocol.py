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

The token is checked in C{onConnect}, before the upgrade: a refusal is an HTTP status with a fixed
reason.  Every handshake leaves one audit line: "handshake accepted from PEER: 101 USER (ROLE),
connection ID" (the hub's, when it registers the connection) or
"security: handshake refused from PEER: STATUS REASON" (with the user once the token is known),
never the token.  Only the query parameter spelled C{token} carries a token: Autobahn decodes
parameter names, and C{%74oken} would slip past anything in front of us that filters C{token=}.

Every frame a client sends costs one message of its rate (C{Hub.allow_message}): a message's
first frame is charged when the message is answered, its continuation frames, pings and pongs as
they arrive; past the rate the connection is closed with 4029.  A message in more than
C{max_fragments} frames is closed with 1009 like an oversized one.  A connection closed for what
it sends (4029, the fragment cap) is not read any further: its close frame goes out and the TCP
connection is closed behind it, without waiting for a close reply, so a flood costs nothing more.

Backpressure: a small push producer registered on the transport hears when the kernel stops
taking data (about 64 KiB queued).  Bytes sent while paused are counted; past
C{max_outbound_bytes} the connection is closed with 4008, so one stalled client can hold only
that much of the server's memory, and the hub's fan-out to everyone else is never held up.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, cast
from urllib import parse

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mission_control.auth import OriginPolicy, Refusal, TokenVerifier, token_from_request
from mission_control.events import encode_json
from mission_control.hub import ConnectRequest, Hub, IConnection
from mission_control.policy import Principal
from mission_control.web.site import redact, status_phrase

#: The HTTP status line of every refusal is built from our own fixed phrases only.  Autobahn's
#: own handshake failures carry text from the request ("... header value: <value>"): those are
#: logged and answered with the standard phrase of their status instead.
SERVER_NAME = "mission-control"
WEBSOCKET_PATHS = ("/ws", "/ws/")
#: Frames one message may arrive in.  Browsers send a message in one frame; a client library
#: fragmenting a 64 KiB message in 1 KiB pieces needs 64.
MAX_FRAGMENTS = 64
#: Close codes for what a client sends: the connection is not read after them.
CLOSE_TOO_MANY_MESSAGES = 4029
CLOSE_TOO_BIG = 1009
_HANG_UP_CODES = (CLOSE_TOO_MANY_MESSAGES,)
#: Headers of every response to a handshake, the 101 and the refusals.
RESPONSE_HEADERS = (("Server", SERVER_NAME), ("X-Content-Type-Options", "nosniff"))


def exact_query_params(uri: str) -> dict[str, list[str]]:
    """
    The query parameters of C{uri} as Autobahn's C{parse_qs} reads them (values percent-decoded,
    blank ones left out), but only those whose name is written as is: a name with a percent
    escape or a C{+} is nobody's parameter here, so C{%74oken} is never the token.
    """
    params: dict[str, list[str]] = {}
    query = parse.urlsplit(uri).query
    for field in query.split("&"):
        name, sep, value = field.partition("=")
        if not sep or not value or not name or "%" in name or "+" in name:
            continue
        params.setdefault(name, []).append(parse.unquote_plus(value, errors="replace"))
    return params


class _WithoutDebug:
    """
    Autobahn's logger minus its debug and trace levels, whatever the global log level: at those
    levels Autobahn logs whole handshakes, and with them the tokens in headers and query strings.
    """

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    trace = debug

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


#: A frame held while a message streams, and the method that sends it once the message ends.
_Held = tuple[Callable[[Any], None], Any]


@implementer(IConnection)
class HubServerProtocol(WebSocketServerProtocol):
    """One client connection: the hub's L{mission_control.hub.IConnection}."""

    log = _WithoutDebug(WebSocketServerProtocol.log)
    _log = Logger()

    principal: Principal | None = None
    connection_id: str | None = None
    paused = False
    _paused_bytes = 0
    _connect_request: ConnectRequest | None = None

    # The handshake

    def onConnect(self, request: ConnectionRequest) -> None:
        peer = self.peer
        factory = self.factory
        principal = None
        try:
            # Parameters by their names as written (see exact_query_params), for every use.
            request.params = exact_query_params(self.http_request_uri)
            principal = factory.authenticate(request)
            factory.hub.admit(principal)
            self._connect_request = ConnectRequest.from_params(request.params, peer or "")
        except Refusal as refusal:
            self._refusal, self._refused_user = refusal, principal
            raise ConnectionDeny(refusal.status, refusal.reason)
        except Exception:
            self._log.failure("security: handshake refused from {peer}: 500 internal error",
                              peer=peer)
            self._refusal = Refusal(500, "internal error", code="internal_error")
            self._refusal_logged = True
            raise ConnectionDeny(500, "Internal Server Error")
        # Accepted: the hub logs the audit line when it registers the connection (onOpen).
        self.principal = principal
        return None

    _refusal: Refusal | None = None
    _refused_user: Principal | None = None
    _refusal_logged = False

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Iterable[tuple[str, str]] | None = None) -> None:
        """
        Refuse the handshake with a fixed phrase and a JSON error body (no body for HEAD), and log
        it: one line per refused handshake, ours.  Autobahn's own reasons can quote the request;
        they go to the log only, redacted.
        """
        refusal, detail = self._refusal, ""
        if refusal is None or refusal.status != code:
            refusal = Refusal(code, status_phrase(code))
            detail = f" ({_printable(redact(str(reason)))})"
        if not self._refusal_logged:
            user = self._refused_user
            level = self._log.warn if code in (401, 403, 429) else self._log.info
            level(
                "security: handshake refused from {peer}: {status} {reason}{detail}{user}",
                peer=self.peer,
                status=code,
                reason=refusal.reason,
                detail=detail,
                user=f" (user {_printable(user.sub)})" if user is not None else "",
            )
        self.wasNotCleanReason = refusal.reason
        # The refusal is a complete HTTP exchange, not a broken connection: marked clean, Autobahn
        # does not log the drop a second time.
        self.wasClean = True
        body = encode_json({"error": {"code": refusal.code, "message": refusal.reason}})
        headers = [
            *RESPONSE_HEADERS,
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        if code == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="mission-control"'))
        if code == 426:
            headers.append(("Upgrade", "websocket"))
        if code == 405:
            headers.append(("Allow", "GET"))
        headers.extend(responseHeaders or ())
        self.sendHttpErrorResponse(code, refusal.reason, headers)
        if self._request_method() != "HEAD":
            self.sendData(body)
        self.dropConnection(abort=False)

    def _request_method(self) -> str | None:
        """The method of the handshake request, once Autobahn has read its request line."""
        line = getattr(self, "http_status_line", None) or ""
        return line.split(" ", 1)[0] or None

    def onOpen(self) -> None:
        self._watch_backpressure()
        self.factory.hub.register(self, self._connect_request)

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
        self._log.warn(
            "closing connection {connection_id} of {user}: too slow ({size} bytes waiting)",
            connection_id=self.connection_id,
            user=self.principal.sub if self.principal else None,
            size=self.bytes_waiting(),
        )
        self.sendClose(4008, "too slow")
        return False

    # IConnection

    def deliver(self, prepared: PreparedMessage) -> None:
        # sendPreparedMessage does not check the state: a closing connection is skipped.
        if self.state != self.STATE_OPEN:
            return
        if self._held is not None:
            self._hold(self.sendPreparedMessage, prepared, len(prepared.payload))
        elif self._account(len(prepared.payload)):
            self.sendPreparedMessage(prepared)

    def send_frame(self, frame: Mapping) -> None:
        if self.state != self.STATE_OPEN:
            return
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
        self._stream = (iter(chunks), done)
        self._held, self._held_bytes = [], 0
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

    def _hold(self, send: Callable[[Any], None], value: Any, size: int) -> None:
        """Keep a frame until the streamed message ends; past the outbound limit, close 4008."""
        self._held_bytes += size
        if self._held_bytes > self.factory.max_outbound_bytes:
            self._log.warn("closing connection {connection_id} of {user}: too slow "
                           "({size} bytes held behind its snapshot)",
                           connection_id=self.connection_id,
                           user=self.principal.sub if self.principal else None,
                           size=self._held_bytes)
            self.sendClose(4008, "too slow")
            return
        assert self._held is not None  # frames are held only while a message streams
        self._held.append((send, value))

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


def _printable(text: object, limit: int = 200) -> str:
    """Text from a request, made safe for one log line."""
    value = str(text)[:limit]
    return "".join(c if c.isprintable() else "?" for c in value)


class HubServerFactory(WebSocketServerFactory):
    """
    Builds L{HubServerProtocol}s and holds what they share: the hub, the token verifier, the
    Origin policy.  Every Autobahn protocol option is set explicitly; its defaults are unsafe for a
    public listener (no size limits, any Origin, no ping, a status page naming its version).
    """

    protocol = HubServerProtocol

    def __init__(
        self,
        hub: Hub,
        verifier: TokenVerifier,
        origins: OriginPolicy | None = None,
        reactor: IReactorTime | None = None,
        max_message_size: int = 65536,
        max_outbound_bytes: int = 1048576,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        max_fragments: int = MAX_FRAGMENTS,
    ) -> None:
        super().__init__(server=SERVER_NAME, reactor=reactor,
                         headers=dict(RESPONSE_HEADERS[1:]))
        self.hub = hub
        self.verifier = verifier
        self.origins = origins or OriginPolicy()
        self.max_outbound_bytes = max_outbound_bytes
        self.max_fragments = max_fragments
        self.setProtocolOptions(
            versions=[13],
            webStatus=False,
            utf8validateIncoming=True,
            maskServerFrames=False,
            requireMaskedClientFrames=True,
            applyMask=True,
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            autoFragmentSize=0,
            failByDrop=False,
            echoCloseCodeReason=False,
            openHandshakeTimeout=handshake_timeout,
            closeHandshakeTimeout=5,
            tcpNoDelay=True,
            # Compression off: it defeats prepared (encode-once) broadcast and invites bombs.
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            autoPingSize=12,
            autoPingRestartOnAnyTraffic=True,
            serveFlashSocketPolicy=False,
            # Origins are checked in onConnect (403, with browser-style origins); Autobahn's own
            # check answers 400 and needs explicit ports.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            # Connection caps are the hub's (503 and 429 from admit()).
            maxConnections=0,
            trustXForwardedFor=0,
        )
        hub.set_prepare(self.prepareMessage)

    def admit(self, request: ConnectionRequest) -> Principal:
        """
        Decide a handshake: the path, the Origin, the token, the hub's connection caps.

        @return: the L{Principal} of the new connection.
        @raise Refusal: with the status and fixed reason to answer.
        """
        principal = self.authenticate(request)
        self.hub.admit(principal)
        return principal

    def authenticate(self, request: ConnectionRequest) -> Principal:
        """
        The path, the Origin and the token of a handshake (L{admit} without the hub's caps).

        @return: the L{Principal} the token names.
        @raise Refusal: with the status and fixed reason to answer.
        """
        if request.path not in WEBSOCKET_PATHS:
            raise Refusal(404, "not found")
        if not self.origins.allows(request.headers.get("origin")):
            raise Refusal(403, "origin not allowed")
        token = token_from_request(request.headers, request.params)
        return self.verifier.verify(token, self.reactor.seconds())

# -*- test-case-name: tests.test_web,tests.test_hardening_http -*-
"""
The HTTP side of the listener: the C{Site}, its hardened channel and request, and the resource tree.

    /ws          the WebSocket (L{HubWebSocketResource}: Autobahn's WebSocketResource around
                 L{HubServerFactory}, behind a check of what Autobahn will re-read)
    /api/...     the JSON API (L{mission_control.web.api})
    /healthz     200 {"status": "ok"} while serving
    /, /assets/  the dashboard's page and files (L{mission_control.web.dashboard})
    anything else  a JSON 404

Hardening, on top of twisted.web's own limits (16 KiB of request line plus headers, then 400):
  - a request must have sent all its headers within C{handshake_timeout} seconds of the connection
    (or of the previous response on it), else the connection is closed quietly: the idle timeout
    alone lets a client dribble one header byte at a time forever, and an idle kept-alive
    connection is closed the same way;
  - the whole request, head and body, must be in within C{request_timeout} seconds, else it is
    answered 408 and closed: a client cannot hold a connection by trickling a body either;
  - at most C{max_http_connections} HTTP connections at once; past that a new connection is
    answered 503 at once and closed.  A connection handed to the WebSocket leaves this count (the
    hub counts WebSockets, C{--max-connections}) and these deadlines;
  - a body over C{max_body_size} is refused with 413 before it is read;
  - a connection being closed that does not take its last bytes is aborted C{abortTimeout}
    seconds later, so a client that stops reading cannot hold a socket either;
  - every response says C{Server: mission-control} and C{X-Content-Type-Options: nosniff}; a
    failure inside a resource becomes a JSON 500 without a traceback;
  - the access log never shows a token: anything shaped like a JWT, and the value after a
    C{token} name however it is spelled (C{%74oken}, C{;token=}, C{#token=}), is redacted in the
    request line, the Referer and the User-Agent (L{redact}).
"""

from __future__ import annotations

import re
import socket
from http import HTTPStatus
import weakref

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.util import peer2str
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import failure
from twisted.web import http, resource, server

from mission_control.events import encode_json

SERVER_NAME = b"mission-control"
MAX_BODY_SIZE = 64 * 1024
#: Defaults of the tunables below (L{build_site} keyword arguments).
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
MAX_HTTP_CONNECTIONS = 1000
#: Linux's TCP_NOTSENT_LOWAT (Python names it from 3.12 on) and our bound for unsent kernel bytes.
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
KERNEL_UNSENT_LIMIT = 128 * 1024
#: Headers every response carries, whoever writes it.
STANDARD_HEADERS = ((b"Server", SERVER_NAME), (b"X-Content-Type-Options", b"nosniff"))


def bound_unsent(transport) -> None:
    """
    Keep the kernel from queueing megabytes for a client that does not read: Linux grows a
    socket's send buffer up to several MiB, uncounted, before Twisted's own buffer (where our
    producers and the WebSocket's --max-outbound-bytes see it) starts to fill.
    TCP_NOTSENT_LOWAT bounds only the bytes not yet sent, so a fast client on a long link keeps
    its throughput.  Set once per accepted connection: HTTP responses and the WebSocket it may
    become share the socket.
    """
    try:
        transport.getHandle().setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT,
                                         KERNEL_UNSENT_LIMIT)
    except (AttributeError, OSError):
        pass  # not TCP (a unix socket), or not Linux: Twisted's buffer is the only one counted


def status_phrase(code: int) -> str:
    """The standard reason phrase of an HTTP status (C{Error} for one without)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every HTTP error: C{{"error": {"code", "message"}}}."""
    return encode_json({"error": {"code": code, "message": message}})


def raw_error_response(status: int, phrase: bytes, code: str, message: str) -> bytes:
    """
    A whole JSON error response that closes the connection, for the answers written below
    twisted.web's request machinery (a refused connection, a refused or timed-out body).
    """
    body = error_body(code, message)
    head = [b"HTTP/1.1 %d %s" % (status, phrase)]
    head += [name + b": " + value for name, value in STANDARD_HEADERS]
    head += [b"Content-Type: application/json", b"Content-Length: %d" % (len(body),),
             b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# Redaction.  A token is recognised by what it looks like, not by where it is: a JWT (three
# base64url segments, the first one a JSON object: "eyJ"), the value after a name ending in
# "token" (each letter possibly percent-encoded, as Autobahn's query parsing decodes names), and
# whatever follows "Bearer".  Dots may be percent-encoded too.
_DOT = r"(?:\.|%2[Ee])"
_B64 = r"[A-Za-z0-9_\-]"
_JWT = r"eyJ" + _B64 + r"*" + _DOT + _B64 + r"+" + _DOT + _B64 + r"*"


def _spelled(word: str) -> str:
    """A pattern for C{word} with any of its letters percent-encoded (case-insensitive)."""
    return "".join(
        f"(?:{c}|%{ord(c.lower()):02x}|%{ord(c.upper()):02x})" for c in word
    )


_NAMED = (r"((?<![A-Za-z0-9])" r"(?:[A-Za-z0-9]+[_\-])?" + _spelled("token")
          + r"(?:\[\]|%5[Bb]%5[Dd])?\s*(?:=|%3[Dd]|:)\s*)[^&;#\s\"',]+")
_BEARER = r"(bearer(?:\s|%20|\+)+)[^\s\"',;]+"


class _Redactor:
    """The redaction patterns, compiled for C{bytes} or for C{str}."""

    def __init__(self, kind) -> None:
        def compile_(pattern, flags=0):
            source = pattern.encode("ascii") if kind is bytes else pattern
            return re.compile(source, flags)

        self.jwt = compile_(_JWT)
        self.named = compile_(_NAMED, re.IGNORECASE)
        self.bearer = compile_(_BEARER, re.IGNORECASE)
        # What every match above contains: text without any of it (most request lines) is
        # returned as it is, after one quick search instead of three substitutions.
        self.maybe = compile_(r"eyJ|oken|earer|%", re.IGNORECASE)
        self.marker = b"[redacted]" if kind is bytes else "[redacted]"
        self.keep = b"\\1" if kind is bytes else "\\1"

    def __call__(self, text):
        if self.maybe.search(text) is None:
            return text
        text = self.jwt.sub(self.marker, text)
        text = self.named.sub(self.keep + self.marker, text)
        return self.bearer.sub(self.keep + self.marker, text)


_redact_bytes = _Redactor(bytes)
_redact_str = _Redactor(str)


def redact(text):
    """
    C{text} (C{bytes} or C{str}: a URI, a header value, a log detail) with every token in it
    replaced by C{[redacted]}.
    """
    if isinstance(text, bytes):
        return _redact_bytes(text)
    return _redact_str(text)



class _RedactedRequest:
    """A view of a request for the access log formatter: its request line and headers redacted."""

    def __init__(self, request) -> None:
        self._request = request
        self.uri = redact(request.uri)
        self.method = redact(request.method)

    def getHeader(self, name):
        value = self._request.getHeader(name)
        return redact(value) if value is not None else None

    def __getattr__(self, name):
        return getattr(self._request, name)


def access_log_formatter(timestamp, request) -> str:
    """Combined log format, with any token in the request line, Referer or User-Agent redacted."""
    return http.combinedLogFormatter(timestamp, _RedactedRequest(request))


class HubRequest(server.Request):
    """A request that names only C{mission-control} and fails with JSON, never a traceback."""

    def write(self, data):
        if not self.startedWriting:
            for name, value in STANDARD_HEADERS:
                self.setHeader(name, value)
        super().write(data)

    def setResponseCode(self, code, message=None):
        """Every status with its standard phrase: twisted.web has none for some (429 among them)."""
        if message is None and code not in http.RESPONSES:
            message = status_phrase(code).encode("ascii")
        super().setResponseCode(code, message)

    def processingFailed(self, reason: failure.Failure):
        self._log.failure("request failed: {method} {path}", reason,
                          method=redact(self.method), path=redact(self.path))
        body = error_body("internal_error", "internal server error")
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % (len(body),))
        self.write(body)
        self.finish()
        return reason


class HubHTTPChannel(http.HTTPChannel):
    """
    An C{HTTPChannel} with deadlines for the request head and the whole request, a cap on the
    body, and a place in its site's count of HTTP connections.

    One timer, the deadline, runs from the moment the channel waits for a request (the connection
    opened, or the previous response is done on a kept-alive connection) until the request's last
    body byte: C{handshake_timeout} for the head, moved on to C{request_timeout} from the same
    start once the head announces a body.  Bytes arriving do not move it, unlike the idle timeout.
    A WebSocket upgrade hands the connection to Autobahn after the head; L{handed_over} then takes
    the channel out of its deadline and its site's count.
    """

    log = Logger()
    handshake_timeout = HANDSHAKE_TIMEOUT
    request_timeout = REQUEST_TIMEOUT
    max_body_size = MAX_BODY_SIZE
    _deadline = None
    _waiting_since = 0.0
    _in_body = False
    _body_received = 0
    _refused = False
    _counted = False
    _answered = False
    _lost = False

    def connectionMade(self):
        super().connectionMade()
        site = self.site
        site.accepted(self)
        bound_unsent(self.transport)
        if site.http_connections >= site.max_http_connections:
            self.log.warn("refusing a connection from {peer}: {count} HTTP connections open",
                          peer=peer2str(self.transport), count=site.http_connections)
            self._refuse(503, b"Service Unavailable", "too_many_connections",
                         "too many connections; retry later")
            return
        site.http_connections += 1
        site.channels.add(self)
        self._counted = True
        self._start_deadline()

    def _uncount(self):
        if self._counted:
            self._counted = False
            self.site.http_connections -= 1
            self.site.channels.discard(self)

    def handed_over(self):
        """The connection now belongs to a WebSocket: no deadline, no place in the HTTP count."""
        self._cancel_deadline()
        self._uncount()

    # The deadline

    def _start_deadline(self):
        self._cancel_deadline()
        self._in_body = False
        self._waiting_since = self.site.reactor.seconds()
        if self.handshake_timeout:
            self._deadline = self.callLater(self.handshake_timeout, self._timed_out)

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _timed_out(self):
        self._deadline = None
        peer = peer2str(self.transport)
        if self._in_body:
            self.log.info("closing {peer}: request body not complete in time", peer=peer)
            self._refuse(408, b"Request Timeout", "request_timeout",
                         "request not complete in time")
        else:
            self.log.info("closing {peer}: no complete request head in time", peer=peer)
            # Quietly: an idle kept-alive connection is not an attack, and nothing is pending.
            self.loseConnection()

    def allHeadersReceived(self):
        self._body_received = 0
        super().allHeadersReceived()
        if self.length is not None and self.length > self.max_body_size:
            self._refuse(413, b"Payload Too Large", "payload_too_large",
                         f"request body over {self.max_body_size} bytes")
            return
        if self.length != 0 and self.request_timeout:
            # A body follows: the whole request has request_timeout from its start.
            self._in_body = True
            ends = self._waiting_since + self.request_timeout
            left = max(0.0, ends - self.site.reactor.seconds())
            if self._deadline is not None:
                self._deadline.reset(left)
            else:
                self._deadline = self.callLater(left, self._timed_out)
        elif self.length != 0:
            self._cancel_deadline()  # no deadline for bodies: the head's is not theirs

    def allContentReceived(self):
        self._cancel_deadline()
        self._in_body = False
        super().allContentReceived()

    def requestDone(self, request):
        self._answered = True
        # Start waiting for the next request before the base class parses what is buffered of
        # it (pipelining): that parsing may complete it, and must then find the deadline running.
        if self.persistent and self.transport is not None:
            self._start_deadline()
        super().requestDone(request)
        if self.site.draining and not self.requests:
            self.loseConnection()

    # Stopping

    def checkPersistence(self, request, version):
        """While the site drains, every answer closes its connection (C{Connection: close})."""
        if self.site.draining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def drain(self):
        """
        The site is stopping: close this connection now if it waits between requests; one whose
        request is in progress (or has not come yet) closes after its answer.
        """
        if self._answered and not self.requests:
            self.loseConnection()

    # Refusals

    def _refuse(self, status: int, phrase: bytes, code: str, message: str):
        """Answer C{status} at once and close: nothing more of this connection is read."""
        self._refused = True
        self._cancel_deadline()
        self.transport.write(raw_error_response(status, phrase, code, message))
        self.loseConnection()

    def loseConnection(self):
        if self._lost:
            return
        # A peer that does not read keeps a closing connection open for ever: abort it
        # abortTimeout seconds on (the idle timeout's own close does the same).
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        super().loseConnection()

    def dataReceived(self, data):
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data):
        if self._refused:
            return
        # Chunked bodies have no length up front: count what arrives.
        if not self._handlingRequest and self.requests:
            self._body_received += len(data)
            if self._body_received > self.max_body_size + 1024:
                self._refuse(413, b"Payload Too Large", "payload_too_large",
                             f"request body over {self.max_body_size} bytes")
                return
        super().rawDataReceived(data)

    def connectionLost(self, reason):
        self._lost = True
        self._cancel_deadline()
        self._uncount()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self):
        self._refuse(400, b"Bad Request", "bad_request", "malformed HTTP request")


class HubSite(server.Site):
    """
    The C{Site}: our channel and request, no tracebacks, a redacting access log, and the
    connections it accepted: the HTTP ones (C{channels}, counted against
    C{max_http_connections}) and every one until the network closed it (for stopping, see
    L{drain} and L{closed}).
    """

    protocol = HubHTTPChannel
    requestFactory = HubRequest
    displayTracebacks = False

    #: Seconds between two looks at the transports while waiting for them to close.
    poll_interval = 0.05

    def __init__(self, root, reactor=None, handshake_timeout=HANDSHAKE_TIMEOUT,
                 idle_timeout=IDLE_TIMEOUT, request_timeout=REQUEST_TIMEOUT,
                 max_http_connections=MAX_HTTP_CONNECTIONS):
        kwargs = {"logFormatter": access_log_formatter, "timeout": idle_timeout}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(root, **kwargs)
        self.handshake_timeout = handshake_timeout
        self.request_timeout = request_timeout
        self.max_http_connections = max_http_connections
        #: Open HTTP connections (not handed to a WebSocket), and how many.
        self.channels: set = set()
        self.http_connections = 0
        #: How many connections were accepted, ever.
        self.accepted_count = 0
        self.draining = False
        # The network transport of every accepted connection, WebSockets included, until it is
        # garbage: weak, as a closed connection must not be kept alive by this.
        self._transports: weakref.WeakSet = weakref.WeakSet()

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.handshake_timeout = self.handshake_timeout
        channel.request_timeout = self.request_timeout
        return channel

    def accepted(self, channel) -> None:
        """A connection was accepted (called by its channel)."""
        self.accepted_count += 1
        self._transports.add(_lowest_transport(channel.transport))

    def drain(self) -> None:
        """
        Stopping: answer what is asked from now on with C{Connection: close}, and close the
        connections that wait between requests.  A WebSocket handshake still gets its answer
        (503 once the hub admits no one).
        """
        self.draining = True
        for channel in list(self.channels):
            channel.drain()

    def open_count(self) -> int:
        """How many accepted connections the network has not closed yet."""
        return sum(1 for transport in list(self._transports) if not transport.disconnected)

    def closed(self, clock) -> defer.Deferred:
        """A Deferred that fires once every accepted connection is closed; cancel it to stop."""
        loop = LoopingCall(lambda: self.open_count() == 0 and loop.stop())
        loop.clock = clock
        done = defer.Deferred(lambda _: loop.running and loop.stop())
        loop.start(self.poll_interval, now=True).addCallback(
            lambda _: done.called or done.callback(None))
        return done


def _lowest_transport(transport):
    """The TCP (or Unix) transport under any wrapper (TLS), which knows when it is closed."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


#: Headers Autobahn reads as one value: a second one is an ambiguous request, not a list.
SINGLE_HEADERS = (b"authorization", b"host", b"origin", b"sec-websocket-key",
                  b"sec-websocket-version")


def handshake_problem(request) -> str | None:
    """
    Why the WebSocket handshake C{request} must not reach Autobahn, or L{None}.

    Autobahn's C{WebSocketResource} rebuilds the request from twisted.web's parsed headers and
    reads it again, splitting lines with C{str.splitlines()} over its ISO-8859-1 decoding: that
    splits at \\x0b \\x0c \\x1c \\x1d \\x1e and \\x85 too, which twisted.web leaves inside a
    value, so C{X-Note: a\\x1cauthorization: Bearer ...} would become an Authorization header
    that no proxy in front of us saw.  The check rebuilds the head exactly as Autobahn does and
    refuses it unless it reads back as the same number of lines.
    """
    headers = request.requestHeaders
    for name in SINGLE_HEADERS:
        if len(headers.getRawHeaders(name, ())) > 1:
            return "duplicate header"
    lines = [request.method + b" " + request.uri + b" HTTP/1.1"]
    lines += [name + b": " + b",".join(values) for name, values in headers.getAllRawHeaders()]
    if len(b"\r\n".join(lines).decode("iso-8859-1").splitlines()) != len(lines):
        return "malformed header"
    return None


class HubWebSocketResource(WebSocketResource):
    """
    Autobahn's C{WebSocketResource}, given only requests it reads back as twisted.web parsed
    them (else a JSON 400), and telling the channel when it takes the connection over.
    """

    log = Logger()

    def render(self, request):
        channel = request.channel
        problem = handshake_problem(request) if channel.transport is not None else "no transport"
        if problem is not None:
            # A smuggling attempt, as likely as not: logged with the other refused handshakes.
            self.log.warn("security: handshake refused from {peer}: 400 Bad Request ({problem})",
                          peer=peer2str(channel.transport) if channel.transport else "unknown",
                          problem=problem)
            # Closed after the answer, as Autobahn's own refusals are.
            channel.persistent = False
            request.setResponseCode(400)
            request.setHeader(b"Connection", b"close")
            request.setHeader(b"Content-Type", b"application/json")
            return error_body("bad_request", "Bad Request")
        result = super().render(request)
        if channel.transport is None:
            channel.handed_over()
        return result


class JSONErrorResource(resource.Resource):
    """Any method: a fixed status with a JSON error body."""

    isLeaf = True

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__()
        self.status, self.code, self.message = status, code, message

    def render(self, request):
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        return error_body(self.code, self.message)


class Root(resource.Resource):
    """The tree's root: named children (C{/} itself is the dashboard's), a JSON 404 for the rest."""

    def getChild(self, path, request):
        return JSONErrorResource(404, "not_found", "no such resource")

    def render(self, request):
        # Not reached through a Site (a path always names a child, b"" for /); here for
        # completeness, as the same JSON 404.
        return JSONErrorResource(404, "not_found", "no such resource").render(request)


class Health(resource.Resource):
    """200 {"status": "ok"} while serving; 503 {"status": "stopping"} once shutdown began, so a
    load balancer stops sending new clients while the old ones are closed."""

    isLeaf = True

    def __init__(self, is_serving=lambda: True) -> None:
        super().__init__()
        self.is_serving = is_serving

    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setResponseCode(405)
            return error_body("method_not_allowed", "method not allowed")
        if not self.is_serving():
            request.setResponseCode(503)
            return encode_json({"status": "stopping"})
        return encode_json({"status": "ok"})


def build_site(
    ws_factory,
    api,
    reactor=None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    request_timeout: float = REQUEST_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    max_http_connections: int = MAX_HTTP_CONNECTIONS,
    dashboard=None,
) -> HubSite:
    """
    Put the WebSocket, the API, the health check and the dashboard under one C{Site}.

    @param handshake_timeout: seconds for a request head (and a WebSocket handshake) to arrive.
    @param request_timeout: seconds for a whole request, head and body, to arrive; then 408.
    @param idle_timeout: seconds without a byte before twisted.web closes a connection.
    @param max_http_connections: HTTP connections open at once; the next one gets 503.
        WebSocket connections are not counted here (see the hub's C{max_connections}).
    @param dashboard: the L{mission_control.web.dashboard.Dashboard} to serve at C{/} and under
        C{/assets/} (the tap gives the package's own); without one those paths are JSON 404s.
    """
    root = Root()
    if dashboard is not None:
        dashboard.mount(root)
    root.putChild(b"ws", HubWebSocketResource(ws_factory))
    root.putChild(b"api", api)
    root.putChild(b"healthz", Health(lambda: getattr(api.hub, "accepting", True)))
    return HubSite(root, reactor=reactor, handshake_timeout=handshake_timeout,
                   request_timeout=request_timeout, idle_timeout=idle_timeout,
                   max_http_connections=max_http_connections)

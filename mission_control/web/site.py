# -*- test-case-name: tests.test_web,tests.test_hardening_http -*-
"""
The HTTP side of the listener: the C{Site}, its request, and the tree it serves.

    /ws          the WebSocket (L{mission_control.web.resources.HubWebSocketResource}: Autobahn's
                 WebSocketResource around L{HubServerFactory}, behind a check of what Autobahn
                 will re-read)
    /api/...     the JSON API (L{mission_control.web.api})
    /healthz     200 {"status": "ok"} while serving (L{mission_control.web.resources.Health})
    /metrics     the Prometheus text format, for admins (L{mission_control.web.metrics})
    /, /assets/  the dashboard's page and files (L{mission_control.web.dashboard})
    anything else  a JSON 404

Hardening, on top of twisted.web's own limits (16 KiB of request line plus headers, then 400):
  - deadlines for the request head and the whole request (408), a cap on HTTP connections (503)
    and on bodies (413): L{mission_control.web.channel}, with this site holding the count;
  - every response says C{Server: mission-control} and C{X-Content-Type-Options: nosniff}; a
    failure inside a resource becomes a JSON 500 without a traceback (L{HubRequest});
  - the access log never shows a token (L{mission_control.web.redaction}).

The names other modules take from here (C{error_body}, C{redact}, C{MAX_BODY_SIZE}...) are
still importable from this module.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import failure
from twisted.web import http, server

from mission_control.web.channel import (
    HANDSHAKE_TIMEOUT,
    KERNEL_UNSENT_LIMIT,
    MAX_BODY_SIZE,
    REQUEST_TIMEOUT,
    TCP_NOTSENT_LOWAT,
    HubHTTPChannel,
    bound_unsent,
)
from mission_control.web.redaction import access_log_formatter, redact
from mission_control.web.resources import (
    Health,
    HubWebSocketResource,
    JSONErrorResource,
    Root,
    handshake_problem,
)
from mission_control.web.responses import (
    SERVER_NAME,
    STANDARD_HEADERS,
    error_body,
    raw_error_response,
    status_phrase,
)

__all__ = [
    "HANDSHAKE_TIMEOUT", "IDLE_TIMEOUT", "KERNEL_UNSENT_LIMIT", "MAX_BODY_SIZE",
    "MAX_HTTP_CONNECTIONS", "REQUEST_TIMEOUT", "SERVER_NAME", "STANDARD_HEADERS",
    "TCP_NOTSENT_LOWAT", "Health", "HubHTTPChannel", "HubRequest", "HubSite",
    "HubWebSocketResource", "JSONErrorResource", "Root", "access_log_formatter", "bound_unsent",
    "build_site", "error_body", "handshake_problem", "raw_error_response", "redact",
    "status_phrase",
]

#: Defaults of the site's own tunables (L{build_site} keyword arguments).
IDLE_TIMEOUT = 60.0
MAX_HTTP_CONNECTIONS = 1000


class HubRequest(server.Request):
    """A request that names only C{mission-control} and fails with JSON, never a traceback."""

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            for name, value in STANDARD_HEADERS:
                self.setHeader(name, value)
        super().write(data)

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """Every status with its standard phrase: twisted.web has none for some (429 among them)."""
        if message is None and code not in http.RESPONSES:
            message = status_phrase(code).encode("ascii")
        super().setResponseCode(code, message)

    def processingFailed(self, reason: failure.Failure) -> failure.Failure:
        self._log.failure("request failed: {method} {path}", reason,
                          method=redact(self.method), path=redact(self.path))
        body = error_body("internal_error", "internal server error")
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % (len(body),))
        self.write(body)
        self.finish()
        return reason



class HubSite(server.Site):
    """
    The C{Site}: our channel and request, no tracebacks, a redacting access log, and the
    connections it accepted: the HTTP ones (C{channels}, counted against
    C{max_http_connections}) and every one until the network closed it (for stopping, see
    L{drain} and L{closed}).
    """

    # HTTP/1.1 only: not the wrapper that could negotiate HTTP/2, which has none of these limits.
    protocol = HubHTTPChannel  # type: ignore[assignment]
    requestFactory = HubRequest
    displayTracebacks = False

    #: Seconds between two looks at the transports while waiting for them to close.
    poll_interval = 0.05

    def __init__(self, root: Any, reactor: Any = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT,
                 max_http_connections: int = MAX_HTTP_CONNECTIONS) -> None:
        kwargs: dict[str, Any] = {"logFormatter": access_log_formatter, "timeout": idle_timeout}
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

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.handshake_timeout = self.handshake_timeout
        channel.request_timeout = self.request_timeout
        return channel

    def accepted(self, channel: HubHTTPChannel) -> None:
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

    def closed(self, clock: IReactorTime) -> defer.Deferred[None]:
        """A Deferred that fires once every accepted connection is closed; cancel it to stop."""

        def look() -> None:
            if self.open_count() == 0:
                loop.stop()

        def cancel(_: defer.Deferred[None]) -> None:
            if loop.running:
                loop.stop()

        def finished(_: object) -> None:
            if not done.called:
                done.callback(None)

        loop = LoopingCall(look)
        loop.clock = clock
        done: defer.Deferred[None] = defer.Deferred(cancel)
        loop.start(self.poll_interval, now=True).addCallback(finished)
        return done


def _lowest_transport(transport: Any) -> Any:
    """The TCP (or Unix) transport under any wrapper (TLS), which knows when it is closed."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport



def build_site(
    ws_factory: Any,
    api: Any,
    reactor: Any = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    request_timeout: float = REQUEST_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    max_http_connections: int = MAX_HTTP_CONNECTIONS,
    dashboard: Any = None,
    metrics: Any = None,
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
    @param metrics: the resource to serve at C{/metrics} (the tap gives
        L{mission_control.web.metrics.admin_page}); without one, a JSON 404 there.
    """
    root = Root()
    if dashboard is not None:
        dashboard.mount(root)
    children: dict[bytes, Any] = {
        b"ws": HubWebSocketResource(ws_factory),
        b"api": api,
        b"healthz": Health(api.hub.health),
    }
    if metrics is not None:
        children[b"metrics"] = metrics
    for name, child in children.items():
        root.putChild(name, child)
    return HubSite(root, reactor=reactor, handshake_timeout=handshake_timeout,
                   request_timeout=request_timeout, idle_timeout=idle_timeout,
                   max_http_connections=max_http_connections)

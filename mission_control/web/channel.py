# -*- test-case-name: tests.test_web_channel,tests.test_hardening_http -*-
"""
The HTTP connection's limits: L{HubHTTPChannel}, twisted.web's C{HTTPChannel} with deadlines for
the request head and the whole request, a cap on the body, and a place in its site's count of
HTTP connections (past C{max_http_connections}, 503 at once); and L{bound_unsent}, the bound on
what the kernel queues for a client that does not read.

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
    seconds later, so a client that stops reading cannot hold a socket either.

The site (L{mission_control.web.site.HubSite}) holds the count and the tunables; the channel
applies them, one connection at a time.
"""

from __future__ import annotations

import socket
from typing import Any

from autobahn.twisted.util import peer2str
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python import failure
from twisted.web import http

from mission_control.web.responses import raw_error_response

MAX_BODY_SIZE = 64 * 1024
#: Defaults of the deadlines (L{mission_control.web.site.build_site} keyword arguments).
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
#: Linux's TCP_NOTSENT_LOWAT (Python names it from 3.12 on) and our bound for unsent kernel bytes.
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
KERNEL_UNSENT_LIMIT = 128 * 1024


def bound_unsent(transport: Any) -> None:
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
    #: The L{mission_control.web.site.HubSite} that built the channel (its factory sets it).
    site: Any
    handshake_timeout = HANDSHAKE_TIMEOUT
    request_timeout = REQUEST_TIMEOUT
    max_body_size = MAX_BODY_SIZE
    _deadline: Any = None
    _waiting_since = 0.0
    _in_body = False
    _body_received = 0
    _refused = False
    _counted = False
    _answered = False
    _lost = False

    def connectionMade(self) -> None:
        if self.handshake_timeout and self.timeOut and self.handshake_timeout <= self.timeOut:
            # The idle timeout runs only between requests, where the deadline runs too, is
            # restarted at the same moments and is shorter: it could never fire first.  Without
            # it a connection schedules one timer less, and a WebSocket does not leave it
            # cancelled in the reactor's queue (twisted.web cancels it as the upgrade request
            # begins) for the idle timeout's whole length.
            self.timeOut = None
        super().connectionMade()
        site = self.site
        site.accepted(self)
        bound_unsent(self.transport)
        if site.http_connections >= site.max_http_connections:
            self.log.warn("refusing a connection from {peer}: {count} HTTP connections open",
                          peer=self._peer(), count=site.http_connections)
            self._refuse(503, b"Service Unavailable", "too_many_connections",
                         "too many connections; retry later")
            return
        site.http_connections += 1
        site.channels.add(self)
        self._counted = True
        self._start_deadline()

    def _peer(self) -> str:
        transport: Any = self.transport
        return str(peer2str(transport))

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.site.http_connections -= 1
            self.site.channels.discard(self)

    def handed_over(self) -> None:
        """The connection now belongs to a WebSocket: no deadline, no place in the HTTP count."""
        self._cancel_deadline()
        self._uncount()

    # The deadline

    def _start_deadline(self) -> None:
        self._cancel_deadline()
        self._in_body = False
        self._waiting_since = self.site.reactor.seconds()
        if self.handshake_timeout:
            self._deadline = self.callLater(self.handshake_timeout, self._timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        peer = self._peer()
        if self._in_body:
            self.log.info("closing {peer}: request body not complete in time", peer=peer)
            self._refuse(408, b"Request Timeout", "request_timeout",
                         "request not complete in time")
        else:
            self.log.info("closing {peer}: no complete request head in time", peer=peer)
            # Quietly: an idle kept-alive connection is not an attack, and nothing is pending.
            self.loseConnection()

    def allHeadersReceived(self) -> None:
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

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        self._in_body = False
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._answered = True
        # Start waiting for the next request before the base class parses what is buffered of
        # it (pipelining): that parsing may complete it, and must then find the deadline running.
        if self.persistent and self.transport is not None:
            self._start_deadline()
        super().requestDone(request)
        if self.site.draining and not self.requests:
            self.loseConnection()

    # Stopping

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """While the site drains, every answer closes its connection (C{Connection: close})."""
        if self.site.draining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def drain(self) -> None:
        """
        The site is stopping: close this connection now if it waits between requests; one whose
        request is in progress (or has not come yet) closes after its answer.
        """
        if self._answered and not self.requests:
            self.loseConnection()

    # Refusals

    def _refuse(self, status: int, phrase: bytes, code: str, message: str) -> None:
        """Answer C{status} at once and close: nothing more of this connection is read."""
        self._refused = True
        self._cancel_deadline()
        transport: Any = self.transport
        transport.write(raw_error_response(status, phrase, code, message))
        self.loseConnection()

    def loseConnection(self) -> None:
        if self._lost:
            return
        # A peer that does not read keeps a closing connection open for ever: abort it
        # abortTimeout seconds on (the idle timeout's own close does the same).
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        super().loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
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

    def connectionLost(self, reason: failure.Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_deadline()
        self._uncount()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400, b"Bad Request", "bad_request", "malformed HTTP request")

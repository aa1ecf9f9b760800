# -*- test-case-name: tests.test_web -*-
"""
The HTTP side of the listener: the C{Site}, its hardened channel and request, and the resource tree.

    /ws          the WebSocket (Autobahn's WebSocketResource around L{HubServerFactory})
    /api/...     the JSON API (L{mission_control.web.api})
    /healthz     200 {"status": "ok"} while serving
    /            what this is and where to connect (the dashboard comes later)

Hardening, on top of twisted.web's own limits (16 KiB of request line plus headers, then 400):
  - a request must have sent all its headers within C{handshake_timeout} seconds of the connection
    (or of the previous request on it), else the connection is dropped: the idle timeout alone lets
    a client dribble one header byte at a time forever;
  - a body over C{max_body_size} is refused with 413 before it is read;
  - every response says C{Server: mission-control} and C{X-Content-Type-Options: nosniff}; a
    failure inside a resource becomes a JSON 500 without a traceback;
  - the access log never shows the value of a C{token} query parameter.
"""

from __future__ import annotations

import re

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.python import failure
from twisted.web import http, resource, server

from mission_control.events import encode_json

SERVER_NAME = b"mission-control"
MAX_BODY_SIZE = 64 * 1024
#: Headers every response carries, whoever writes it.
STANDARD_HEADERS = ((b"Server", SERVER_NAME), (b"X-Content-Type-Options", b"nosniff"))

_TOKEN_IN_QUERY = re.compile(rb"([?&]token=)[^&#]*", re.IGNORECASE)


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every HTTP error: C{{"error": {"code", "message"}}}."""
    return encode_json({"error": {"code": code, "message": message}})


def raw_error_response(status: int, phrase: bytes, code: str, message: str) -> bytes:
    """
    A whole JSON error response that closes the connection, for the answers written below
    twisted.web's request machinery (a refused or malformed request).
    """
    body = error_body(code, message)
    head = [b"HTTP/1.1 %d %s" % (status, phrase)]
    head += [name + b": " + value for name, value in STANDARD_HEADERS]
    head += [b"Content-Type: application/json", b"Content-Length: %d" % (len(body),),
             b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def redact_uri(uri: bytes) -> bytes:
    """C{uri} with the value of any C{token} query parameter replaced by C{[redacted]}."""
    return _TOKEN_IN_QUERY.sub(rb"\1[redacted]", uri)


class _RedactedRequest:
    """A view of a request for the access log formatter, its URI and Referer redacted."""

    def __init__(self, request) -> None:
        self._request = request
        self.uri = redact_uri(request.uri)

    def getHeader(self, name):
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact_uri(value)
        return value

    def __getattr__(self, name):
        return getattr(self._request, name)


def access_log_formatter(timestamp, request) -> str:
    """Combined log format, with any token in the query string redacted."""
    return http.combinedLogFormatter(timestamp, _RedactedRequest(request))


class HubRequest(server.Request):
    """A request that names only C{mission-control} and fails with JSON, never a traceback."""

    def write(self, data):
        if not self.startedWriting:
            for name, value in STANDARD_HEADERS:
                self.setHeader(name, value)
        super().write(data)

    def processingFailed(self, reason: failure.Failure):
        self._log.failure("request failed: {method} {path}", reason,
                          method=self.method, path=redact_uri(self.path))
        body = error_body("internal_error", "internal server error")
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % (len(body),))
        self.write(body)
        self.finish()
        return reason


class HubHTTPChannel(http.HTTPChannel):
    """
    An C{HTTPChannel} with a deadline for the request head and a cap on the body.

    The deadline starts when the connection opens and again when a response is done on a kept-alive
    connection; it stops when all headers are in.  WebSocket upgrades hand the connection to Autobahn
    after the headers, so this also bounds the time a WebSocket handshake may take.
    """

    log = Logger()
    handshake_timeout = 10.0
    max_body_size = MAX_BODY_SIZE
    _head_deadline = None
    _body_received = 0

    def connectionMade(self):
        super().connectionMade()
        self._start_head_deadline()

    def _start_head_deadline(self):
        self._cancel_head_deadline()
        if self.handshake_timeout:
            self._head_deadline = self.callLater(self.handshake_timeout, self._head_timed_out)

    def _cancel_head_deadline(self):
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_timed_out(self):
        self._head_deadline = None
        self.log.info("closing {peer}: no complete request head in time",
                      peer=str(self.transport.getPeer()))
        # A graceful close: an idle kept-alive connection is not an attack, and nothing is pending.
        self.transport.loseConnection()

    def allHeadersReceived(self):
        self._cancel_head_deadline()
        self._body_received = 0
        super().allHeadersReceived()
        if self.length is not None and self.length > self.max_body_size:
            self._refuse_body()

    def _refuse_body(self):
        """Answer 413 at once and close: the body is not read."""
        self.transport.write(raw_error_response(
            413, b"Payload Too Large", "payload_too_large",
            f"request body over {self.max_body_size} bytes"))
        # Read nothing more of this connection, then close it.
        self._refused = True
        self.loseConnection()

    _refused = False

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
                self._refuse_body()
                return
        super().rawDataReceived(data)

    def requestDone(self, request):
        super().requestDone(request)
        if self.persistent and self.transport is not None:
            self._start_head_deadline()

    def connectionLost(self, reason):
        self._cancel_head_deadline()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self):
        self.transport.write(raw_error_response(
            400, b"Bad Request", "bad_request", "malformed HTTP request"))
        self.loseConnection()


class HubSite(server.Site):
    """The C{Site}: our channel and request, no tracebacks, a redacting access log."""

    protocol = HubHTTPChannel
    requestFactory = HubRequest
    displayTracebacks = False

    def __init__(self, root, reactor=None, handshake_timeout=10.0, idle_timeout=60.0):
        kwargs = {"logFormatter": access_log_formatter, "timeout": idle_timeout}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(root, **kwargs)
        self.handshake_timeout = handshake_timeout

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.handshake_timeout = self.handshake_timeout
        return channel


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
    """The tree's root: named children, JSON 404 for everything else."""

    def __init__(self) -> None:
        super().__init__()

    def getChild(self, path, request):
        if path == b"" and not request.postpath:
            return self
        return JSONErrorResource(404, "not_found", "no such resource")

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return encode_json(
            {
                "service": "mission-control",
                "websocket": "/ws",
                "api": ["/api/agents", "/api/sessions", "/api/events", "/api/presence",
                        "/api/connections"],
                "health": "/healthz",
            }
        )

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setResponseCode(405)
            request.setHeader(b"Content-Type", b"application/json")
            return error_body("method_not_allowed", "method not allowed")
        return super().render(request)


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


def build_site(ws_factory, api, reactor=None, handshake_timeout: float = 10.0) -> HubSite:
    """Put the WebSocket, the API and the health check under one C{Site}."""
    root = Root()
    root.putChild(b"ws", WebSocketResource(ws_factory))
    root.putChild(b"api", api)
    root.putChild(b"healthz", Health(lambda: getattr(api.hub, "accepting", True)))
    return HubSite(root, reactor=reactor, handshake_timeout=handshake_timeout)

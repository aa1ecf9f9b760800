# -*- test-case-name: tests.test_web_resources,tests.test_hardening_http -*-
"""
The resources of the site's tree that are not the API's or the dashboard's: the WebSocket at
C{/ws} (L{HubWebSocketResource}, behind L{handshake_problem}, a check of what Autobahn will
re-read), the health check at C{/healthz} (L{Health}), and the tree's L{Root}, which answers a
JSON 404 for any path it does not know.
"""

from __future__ import annotations

from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.util import peer2str
from twisted.logger import Logger
from twisted.web import resource

from mission_control.events import encode_json
from mission_control.web.responses import error_body


#: Headers Autobahn reads as one value: a second one is an ambiguous request, not a list.
SINGLE_HEADERS = (b"authorization", b"host", b"origin", b"sec-websocket-key",
                  b"sec-websocket-version")


def handshake_problem(request: Any) -> str | None:
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

    def __init__(self, factory: Any) -> None:
        super().__init__(factory)
        #: The L{mission_control.factory.HubServerFactory}: its hub counts the refusals here.
        self.ws_factory = factory

    def render(self, request: Any) -> Any:
        channel = request.channel
        problem = handshake_problem(request) if channel.transport is not None else "no transport"
        if problem is not None:
            self.ws_factory.hub.metrics.handshake("bad_request")
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

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        return error_body(self.code, self.message)


class Root(resource.Resource):
    """The tree's root: named children (C{/} itself is the dashboard's), a JSON 404 for the rest."""

    def getChild(self, path: bytes, request: Any) -> Any:
        return JSONErrorResource(404, "not_found", "no such resource")

    def render(self, request: Any) -> bytes:
        # Not reached through a Site (a path always names a child, b"" for /); here for
        # completeness, as the same JSON 404.
        return JSONErrorResource(404, "not_found", "no such resource").render(request)


class Health(resource.Resource):
    """
    200 {"status": "ok"} while serving; 503 with the reason as the status otherwise:
    C{"stopping"} once shutdown began, so a load balancer stops sending new clients while the
    old ones are closed, and C{"starting"} while a shared history loads.
    """

    isLeaf = True

    def __init__(self, problem: Callable[[], str | None] = lambda: None) -> None:
        super().__init__()
        self.problem = problem

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setResponseCode(405)
            return error_body("method_not_allowed", "method not allowed")
        problem = self.problem()
        if problem is not None:
            request.setResponseCode(503)
            return encode_json({"status": problem})
        return encode_json({"status": "ok"})

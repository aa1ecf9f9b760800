# -*- test-case-name: tests.test_handshake,tests.test_websocket -*-
"""
The WebSocket handshake: the checks before the upgrade, and the refusals.

L{HandshakeProtocol} is the first half of every connection's protocol; from the upgrade on,
L{mission_control.protocol.HubServerProtocol} takes over.  It stands apart because what it speaks
is HTTP, with rules of its own: nothing taken from the request reaches a status line, and no token
reaches a log.

The token is checked in C{onConnect}, before the upgrade: a refusal is an HTTP status with a fixed
reason.  Every handshake leaves one audit line: "handshake accepted from PEER: 101 USER (ROLE),
connection ID" (the hub's, when it registers the connection) or
"security: handshake refused from PEER: STATUS REASON" (with the user once the token is known),
never the token.  Once the connection is open it forgets the handshake, and the token with it
(L{HandshakeProtocol.forget_handshake}).  Only the query parameter spelled C{token} carries a token: Autobahn decodes
parameter names, and C{%74oken} would slip past anything in front of us that filters C{token=}.

Autobahn computes the arguments of its debug lines whether or not they are logged: a
C{pformat} of its 40 protocol options on every connection, the traceback of every lost
connection, a description of every read and every write.  Where those lines sit on a connection's path, the
methods here do the same work without them, and the options live on the factory's own protocol
class (L{with_options}) instead of being copied onto every connection.
"""

from __future__ import annotations

from types import FunctionType
from typing import Any, Iterable, cast
from urllib import parse

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger

from mission_control.auth import Refusal
from mission_control.events import encode_json
from mission_control.hub import ConnectRequest
from mission_control.metrics import handshake_outcome
from mission_control.policy import Principal
from mission_control.web.site import redact, status_phrase

#: The HTTP status line of every refusal is built from our own fixed phrases only.  Autobahn's
#: own handshake failures carry text from the request ("... header value: <value>"): those are
#: logged and answered with the standard phrase of their status instead.
SERVER_NAME = "mission-control"
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


def _printable(text: object, limit: int = 200) -> str:
    """Text from a request, made safe for one log line."""
    value = str(text)[:limit]
    return "".join(c if c.isprintable() else "?" for c in value)


#: What Autobahn and the handshake keep of the request and the response, of no use once the
#: connection is open (L{HandshakeProtocol.forget_handshake}); the request's parts hold the token.
HANDSHAKE_DATA = frozenset((
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "http_response_data",
    "_wskey", "websocket_origin", "websocket_protocols", "websocket_extensions",
    "_connect_request",
))
#: Autobahn's per-connection state that is None, or False, from the upgrade until it changes:
#: held once by L{HandshakeProtocol} as class attributes, not by every open connection.
STATE_NONE = (
    "_perMessageCompress", "autoPingPending", "autoPingPendingSent", "autoPingTimeoutCall",
    "closeHandshakeTimeoutCall", "current_frame", "localCloseCode", "localCloseReason",
    "openHandshakeTimeoutCall", "remoteCloseCode", "remoteCloseReason", "trackedTimings",
    "wasNotCleanReason", "websocket_protocol_in_use",
)
STATE_FALSE = (
    "closedByMe", "droppedByMe", "failedByMe", "inside_message", "triggered", "wasClean",
    "wasCloseHandshakeTimeout", "wasMaxFramePayloadSizeExceeded",
    "wasMaxMessagePayloadSizeExceeded", "wasOpenHandshakeTimeout",
    "wasServerConnectionDropTimeout", "wasServingFlashSocketPolicyFile",
)
_SCALARS = (type(None), bool, int)
_MISSING = object()

#: Autobahn's protocol options: what its factory's C{setProtocolOptions} sets.
OPTION_NAMES = tuple(WebSocketServerProtocol.CONFIG_ATTRS)


def with_options(protocol: type[HandshakeProtocol], factory: Any) -> type[HandshakeProtocol]:
    """
    A subclass of C{protocol} whose class attributes are C{factory}'s Autobahn options, as they
    are now: what Autobahn would copy onto every connection (C{_connectionMade}), held once.  It
    keeps C{protocol}'s module and name, which name its log lines.
    """
    attrs: dict[str, Any] = {}
    for name in OPTION_NAMES:
        value = getattr(factory, name)
        # A function (perMessageCompressionAccept) stays a plain function, not a method.
        attrs[name] = staticmethod(value) if isinstance(value, FunctionType) else value
    attrs.update(__module__=protocol.__module__, __qualname__=protocol.__qualname__)
    return type(protocol.__name__, (protocol,), attrs)


class HandshakeProtocol(WebSocketServerProtocol):
    """
    A connection up to its upgrade: the checks of C{onConnect} (the factory's, then the hub's
    caps) and the refusals of C{failHandshake}.  Subclassed by the protocol of open connections.
    Built by a factory that gives it its options as class attributes (L{with_options}).
    """

    log = _WithoutDebug(WebSocketServerProtocol.log)
    #: Nothing for Autobahn to copy from the factory, or to format for its debug line.
    CONFIG_ATTRS: list[str] = []
    #: Named for the class of the connection (a Logger's namespace follows its instance's class).
    _log = Logger()

    principal: Principal | None = None
    _connect_request: ConnectRequest | None = None
    #: Autobahn's state at its usual value (and STATE_NONE, STATE_FALSE, set after the class).
    autoPingPendingSeq = 0
    send_state = 0  # WebSocketProtocol.SEND_STATE_GROUND

    def forget_handshake(self) -> None:
        """
        Once the connection is open: forget the handshake (L{HANDSHAKE_DATA}: the request as
        Autobahn kept it, its query parameters and headers with the token among them, our
        response, our reading of the query), and rebuild the instance dict without the
        attributes that hold their class's value.  An idle connection then holds a dict of about
        a third of the keys, and no token.
        """
        cls = type(self)
        kept = {}
        for name, value in self.__dict__.items():
            if name in HANDSHAKE_DATA:
                continue
            if type(value) in _SCALARS and getattr(cls, name, _MISSING) is value:
                continue
            kept[name] = value
        self.__dict__ = kept

    # Autobahn's, minus their debug lines (see the module's docstring).

    def _connectionMade(self) -> None:
        WebSocketProtocol._connectionMade(self)
        self.factory.countConnections += 1

    def _connectionLost(self, reason: Any) -> None:
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if chopsize or sync or self.send_queue:
            super().sendData(data, sync, chopsize)
            return
        cast(Any, self.transport).write(data)
        state = self.state
        if state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif state == self.STATE_CONNECTING or state == self.STATE_PROXY_CONNECTING:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if cast(Any, self).logOctets:
            self.logTxOctets(data, False)

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
        factory.hub.metrics.handshake("accepted")
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
        self.factory.hub.metrics.handshake(handshake_outcome(code, refusal.reason))
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


for _name in STATE_NONE:
    setattr(HandshakeProtocol, _name, None)
for _name in STATE_FALSE:
    setattr(HandshakeProtocol, _name, False)

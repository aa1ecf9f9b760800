# -*- test-case-name: tests.test_factory,tests.test_websocket -*-
"""
The factory of the hub's WebSocket connections: it holds what they share (the hub, the token
verifier, the Origin policy, the limits), decides whose handshake is let through (L{admit}), and
sets every Autobahn protocol option explicitly.

Apart from the protocol (L{mission_control.protocol}) because it is configuration and policy,
built once by the service (L{mission_control.tap}); the protocols are built per connection.
"""

from __future__ import annotations

from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IReactorTime

from mission_control.auth import OriginPolicy, Refusal, TokenVerifier, token_from_request
from mission_control.handshake import RESPONSE_HEADERS, SERVER_NAME, with_options
from mission_control.hub import Hub
from mission_control.policy import Principal
from mission_control.protocol import HubServerProtocol

WEBSOCKET_PATHS = ("/ws", "/ws/")
#: Frames one message may arrive in.  Browsers send a message in one frame; a client library
#: fragmenting a 64 KiB message in 1 KiB pieces needs 64.
MAX_FRAGMENTS = 64


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

    _options_protocol: tuple[type, type] | None = None

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        super().setProtocolOptions(*args, **options)
        self._options_protocol = None

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self._options_protocol = None

    def buildProtocol(self, addr: Any) -> HubServerProtocol:
        """
        A connection's protocol: an instance of C{protocol} with this factory's options as they
        are now, held by its class (see L{with_options}) rather than copied onto each connection.
        Options are set with C{setProtocolOptions}.
        """
        built = self._options_protocol
        if built is None or built[0] is not self.protocol:
            built = self._options_protocol = (self.protocol, with_options(self.protocol, self))
        proto = built[1]()
        proto.factory = self
        return cast(HubServerProtocol, proto)

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

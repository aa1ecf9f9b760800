# -*- test-case-name: tests.test_hub_connection -*-
"""
What the hub knows of a connection: the L{IConnection} it talks to, and the L{ConnectRequest} the
client made when it connected (the query of C{/ws}).

The hub knows nothing of sockets.  The WebSocket protocol (L{mission_control.protocol}) provides
L{IConnection}; the unit tests' fake connections do too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from zope.interface import Attribute, Interface

from mission_control import channels, ids
from mission_control.auth import Refusal


class IConnection(Interface):
    """One live client connection, as the hub sees it."""

    connection_id = Attribute("str: set by Hub.register")
    principal = Attribute("Principal: who is connected; replaced by a fresh token (auth frame)")
    paused = Attribute("bool: the transport is not taking more data right now (backpressure)")
    fast_send = Attribute(
        "None, or while the connection is open, not paused, holding nothing, queueing nothing and "
        "with nothing buffered below it: a callable that hands framed bytes straight to the "
        "kernel and returns how many it took (the rest goes to write_rest)")

    def write_rest(data: bytes, sent: int) -> None:
        """
        Write C{data} past its first C{sent} bytes (what C{fast_send} did not take) behind
        anything else, as any write of the connection.
        """

    def deliver(prepared: Any) -> None:
        """
        Send a frame prepared by the hub's C{prepare}, after what is queued; a no-op unless the
        connection is open.
        """

    def enqueue(prepared: Any) -> None:
        """
        Queue a frame prepared by the hub's C{prepare} until L{flush}.  Whatever is sent to this
        connection meanwhile (L{deliver}, L{send_frame}, L{send_stream}, L{close}) goes out after
        what is queued, so the order of frames is the order they were handed over.  Nothing but a
        reference is kept: this is called once per connection per event.
        """

    def flush() -> None:
        """
        Send what L{enqueue} queued, in order, as one write (counted against the outbound limit
        as each frame would be); dropped, not sent, unless the connection is open.
        """

    def send_frame(frame: Mapping) -> None:
        """Encode and send one frame to this connection alone."""

    def send_stream(chunks: Iterator[bytes], done: Callable[[], None]) -> None:
        """
        Send one text message made of C{chunks}, taking the next chunk only while the transport
        takes data; call C{done()} once the message is complete (not if the connection closes
        first).  Frames sent meanwhile wait for the message to end.
        """

    def close(code: int, reason: str) -> None:
        """Start a closing handshake with C{code}."""

    def bytes_waiting() -> int:
        """Bytes queued for this connection and not yet handed to the network."""


#: The close code of a connection an administrator closed (DELETE /api/connections/ID): the
#: client should not reconnect on its own, only after a person acts.
CLOSED_BY_ADMIN = 4009


@dataclass(frozen=True)
class ConnectRequest:
    """
    What a client asked for when it connected (query parameters of C{/ws}).

    @ivar since: resume after this seq (with C{epoch}).
    @ivar client: a client name: acks are kept per user and client name, and a connection of the
        same user and name without C{since} resumes from the last ack.
    """

    since: int | None = None
    epoch: str | None = None
    client: str | None = None
    peer: str = ""
    #: The channels asked for (C{channels=a,b}), or None for the default subscription.
    channels: tuple[str, ...] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, list], peer: str = "") -> ConnectRequest:
        """
        Read C{since}, C{epoch}, C{client} and C{channels} from query parameters (lists of
        values).

        @raise Refusal: 400 with a fixed reason when one of them is malformed.
        """

        def one(name: str) -> str | None:
            values = params.get(name) or []
            return values[0] if values else None

        since_text, epoch, client = one("since"), one("epoch"), one("client")
        wanted_text = one("channels")
        wanted: tuple[str, ...] | None = None
        if wanted_text is not None:
            wanted = tuple(name for name in wanted_text.split(",") if name)
            if len(wanted) > channels.MAX_SUBSCRIPTIONS or not all(
                channels.is_valid_channel(name) for name in wanted
            ):
                raise Refusal(400, "invalid channels")
        since: int | None = None
        if since_text is not None:
            if not (since_text.isascii() and since_text.isdigit() and len(since_text) <= 18):
                raise Refusal(400, "invalid since")
            since = int(since_text)
        if epoch is not None and not ids.is_valid_epoch(epoch):
            raise Refusal(400, "invalid epoch")
        if client is not None and not ids.is_valid_id(client):
            raise Refusal(400, "invalid client name")
        return cls(since=since, epoch=epoch, client=client, peer=peer, channels=wanted)

# -*- test-case-name: tests.test_hub_registry -*-
"""
The registry: who is connected, and who hears what.

It indexes the L{Client}s of open connections by connection, by user and by channel, and knows
which of them are live (in the fan-out) rather than still catching up.  It holds no clock and no
store, makes no decision about who may subscribe to what (the client asks L{policy} before it
calls L{Registry.subscribe}), and sends nothing: it answers "to whom".

A client is in a channel's subscriber set only while it is live, with one exception: presence
frames carry no seq and are never replayed, so a client that is catching up and asked for
C{presence} hears it from the moment it starts catching up (L{Registry.watch_presence}).
"""

from __future__ import annotations

from typing import Collection, Generic, Iterable, Iterator, Protocol, TypeVar

from mission_control import channels, events
from mission_control.hub.connection import ConnectRequest, IConnection


class Member(Protocol):
    """What the registry reads and keeps of a client (L{mission_control.hub.client.Client})."""

    conn: IConnection
    request: ConnectRequest
    connected_at: float
    acked_seq: int
    channels: set[str]
    live: bool
    presence_watched: bool


Client = TypeVar("Client", bound=Member)


class Registry(Generic[Client]):
    """The index of open connections: by connection, by user id, by channel, and the live set."""

    def __init__(self) -> None:
        self._clients: dict[IConnection, Client] = {}
        self._by_user: dict[str, set[IConnection]] = {}
        self._live: set[IConnection] = set()
        #: channel -> the connections that receive it now
        self._subscribers: dict[str, set[IConnection]] = {}

    # Connections

    def add(self, client: Client) -> bool:
        """Register C{client}; return whether it is its user's first connection."""
        conn = client.conn
        self._clients[conn] = client
        mine = self._by_user.setdefault(conn.principal.sub, set())
        mine.add(conn)
        return len(mine) == 1

    def remove(self, conn: IConnection) -> tuple[Client | None, bool]:
        """
        Forget C{conn} and every subscription it had.  Returns its client (C{None} when it was not
        registered) and whether it was its user's last connection.
        """
        client = self._clients.pop(conn, None)
        if client is None:
            return None, False
        self._live.discard(conn)
        for channel in tuple(client.channels):
            self.unsubscribe(client, channel)
        sub = conn.principal.sub
        mine = self._by_user.get(sub)
        last = False
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self._by_user[sub]
                last = True
        return client, last

    def get(self, conn: IConnection) -> Client | None:
        """The client of C{conn}, or C{None} when it is not registered."""
        return self._clients.get(conn)

    def find(self, connection_id: str) -> Client | None:
        """
        The client whose connection has the id C{connection_id}.  A rare, administrative lookup:
        a look through the clients, not an index to keep up to date on every connection.
        """
        return next((client for client in self._clients.values()
                     if client.conn.connection_id == connection_id), None)

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[IConnection]:
        return iter(self._clients)

    def is_connected(self, user_id: str) -> bool:
        """Whether C{user_id} has at least one open connection."""
        return user_id in self._by_user

    def connection_count_of(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def connections_of(self, user_id: str) -> frozenset[IConnection]:
        return frozenset(self._by_user.get(user_id, ()))

    def users(self) -> list[dict]:
        """C{[{"id", "connections"}]}: who is connected and how often, by user id."""
        return [{"id": user, "connections": len(conns)}
                for user, conns in sorted(self._by_user.items())]

    def iter_connection_details(self) -> Iterator[dict]:
        """One entry per connection, for operators (who, from where, since when, how far), made
        when it is reached, oldest connection first."""
        ordered = sorted(self._clients.items(),
                         key=lambda item: (item[1].connected_at, item[0].connection_id))
        for conn, client in ordered:
            yield {
                "id": conn.connection_id,
                "user": conn.principal.sub,
                "role": conn.principal.role,
                "client": client.request.client,
                "peer": client.request.peer,
                "connectedAt": events.format_timestamp(client.connected_at),
                "ackedSeq": client.acked_seq,
                "bytesWaiting": conn.bytes_waiting(),
                "replaying": not client.live,
            }

    # Subscriptions and the live set

    def subscribe(self, client: Client, channel: str) -> None:
        """
        Add C{channel} to what C{client} is subscribed to; it receives the channel at once when
        it is live (or the channel is presence and it is watching presence).
        """
        client.channels.add(channel)
        if client.live or (channel == channels.PRESENCE and client.presence_watched):
            self._subscribers.setdefault(channel, set()).add(client.conn)

    def unsubscribe(self, client: Client, channel: str) -> None:
        client.channels.discard(channel)
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(client.conn)
            if not subscribers:
                del self._subscribers[channel]

    def watch_presence(self, client: Client) -> None:
        """C{client} is catching up: it receives presence from now on (see the module docstring)."""
        client.presence_watched = True
        if channels.PRESENCE in client.channels:
            self._subscribers.setdefault(channels.PRESENCE, set()).add(client.conn)

    def go_live(self, client: Client) -> None:
        """C{client} has caught up: from now on it receives every channel it is subscribed to."""
        client.live = True
        self._live.add(client.conn)
        for channel in client.channels:
            self._subscribers.setdefault(channel, set()).add(client.conn)

    def live(self) -> tuple[IConnection, ...]:
        """Every live connection (a copy: delivering may close one, which removes it)."""
        return tuple(self._live)

    def subscribers(self, names: Iterable[str]) -> Collection[IConnection]:
        """
        The connections that receive any of the channels C{names}, each once, found through the
        channel index (not by scanning every connection); a copy, as L{live} is.
        """
        found = [self._subscribers[name] for name in names if name in self._subscribers]
        if not found:
            return ()
        return set().union(*found) if len(found) > 1 else tuple(found[0])

    def channels_heard(self) -> set[str]:
        """The channels at least one connection receives now."""
        return set(self._subscribers)

# -*- test-case-name: tests.test_store_redis_pubsub -*-
"""
Hearing of every append, whichever node made it: the message the append scripts publish, and a
subscription that stays subscribed across reconnects.

The message.  Every script run that appended anything publishes one message on the channel
C{{<prefix>}:appended}: a JSON object

    {"epoch": "<epoch>", "created": <seconds>, "first": F, "last": L,
     "events": [{"seq": F, "type": "...", "ts": "...", "payload": {...}}, ...]}

covering the seqs C{F..L}, which have no gap (one script appends them all, and nothing runs
between its commands).  C{events} is left out when the payloads together pass the inline limit
(64 KiB unless the log says otherwise): the receiver then reads C{F..L} from the stream.  A
receiver that last saw seq C{n} and is handed C{first > n + 1} has missed messages, and reads
the seqs between from the stream too (L{RedisLog.events_after}).

Why at-most-once is enough: Redis pub/sub drops what is published while a subscriber is
disconnected, or slow past the server's output buffer limit.  The seqs make any loss visible
at the next message, and the stream holds what was lost; after a reconnect, C{on_connected} is
the moment to read from the last seq seen, since nothing says whether something was missed.

The subscription.  Subscriptions die with their TCP connection, so the subscriber subscribes
again each time a connection is made, and calls C{on_connected} once the server has confirmed
it: every message published from then on reaches C{on_message}.  It uses a connection of its
own (a subscribed connection accepts no other commands), and pings the server on it every
C{ping_interval} seconds: an answer later than C{ping_timeout} drops the connection, which is
then made again, so a silently dead link is noticed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeGuard, cast

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mission_control.events import STORED_TYPES
from mission_control.store.interface import StoredEvent
from mission_control.store.redis_connection import Closing, ConnectingFactory
from mission_control.store.redis_scripts import RedisKeys
from mission_control.store.redis_url import RedisURL

log = Logger()


@dataclass(frozen=True)
class Appended:
    """
    One message of the channel: the seqs C{first..last} were appended to the history of
    C{epoch} at C{created} (seconds).

    @ivar events: those events in seq order, or C{None} when the message was too large to carry
        them: read them from the stream.
    """

    epoch: str
    first: int
    last: int
    created: float
    events: Optional[list[StoredEvent]]


def parse_appended(message: bytes) -> Appended:
    """
    Read one message of the channel.

    @raise ValueError: for anything that is not such a message (someone else's, on our
        channel): the seqs must be a range, and the events exactly those seqs, in order.
    """
    try:
        body = json.loads(message)
    except (TypeError, ValueError):
        raise ValueError("not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    epoch, first, last, created = (body.get(name) for name in ("epoch", "first", "last",
                                                                  "created"))
    if not isinstance(epoch, str) or not epoch:
        raise ValueError("no epoch")
    if not _is_seq(first) or not _is_seq(last) or first > last:
        raise ValueError("first and last must be seqs, first <= last")
    if (isinstance(created, bool) or not isinstance(created, (int, float))
            or not math.isfinite(created)):
        raise ValueError("no created time")
    if "events" not in body:
        return Appended(epoch, first, last, float(created), None)
    raw = body["events"]
    if not isinstance(raw, list) or len(raw) != last - first + 1:
        raise ValueError("the events must be the seqs first..last")
    events = [_event(item, first + index) for index, item in enumerate(raw)]
    return Appended(epoch, first, last, float(created), events)


def _is_seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _event(item: object, seq: int) -> StoredEvent:
    if not isinstance(item, dict) or item.get("seq") != seq:
        raise ValueError("the events must be the seqs first..last, in order")
    kind, ts, payload = item.get("type"), item.get("ts"), item.get("payload")
    if kind not in STORED_TYPES or not isinstance(ts, str) or not isinstance(payload, dict):
        raise ValueError("an event needs a stored type, a ts and a payload object")
    return StoredEvent(seq=seq, type=str(kind), payload=payload, ts=ts)


#: How a canary message begins: a node's proof that its own subscription delivers.
CANARY_HEAD = b'{"canary":'
#: How a presence message begins: a node's news of who is connected to it.
PRESENCE_HEAD = b'{"presence":'


def canary(node: str, number: int) -> bytes:
    """
    The canary message C{number} of C{node}: a node publishes one on its channel now and then
    and expects it back through its own subscription, which proves the subscription delivers
    (not just that its socket is open).  It is not an append: receivers that are not its node
    ignore it.
    """
    return CANARY_HEAD + json.dumps(node).encode() + b',"n":' + str(int(number)).encode() + b"}"


def parse_canary(message: bytes) -> Optional[tuple[str, int]]:
    """C{(node, number)} of a canary message, or C{None} for anything else."""
    try:
        body = json.loads(message)
    except (TypeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    node, number = body.get("canary"), body.get("n")
    if not isinstance(node, str) or not _is_seq(number):
        return None
    return node, number


class SubscriberProtocol(txredisapi.SubscriberProtocol):
    """
    A subscribed connection: subscribes each time it is made (after AUTH and SELECT), hands
    every message to its L{RedisSubscription}, and pings to notice a dead link.
    """

    factory: SubscriptionFactory
    _pinging: Optional[LoopingCall] = None

    def connectionMade(self) -> Any:
        ready = super().connectionMade()
        self.whenConnected().addCallback(self._subscribe)
        return ready

    def _subscribe(self, _: object) -> Deferred[None]:
        subscription = self.factory.subscription
        subscribed: Deferred[Any] = self.subscribe(subscription.channel)

        def confirmed(_: object) -> None:
            if not self.connected:
                return
            self._pinging = LoopingCall(self._ping)
            self._pinging.clock = subscription.clock
            self._pinging.start(subscription.ping_interval, now=False)
            subscription.subscribed()

        return subscribed.addCallbacks(confirmed, _ignore_lost)

    def _ping(self) -> None:
        if self.connected:
            self.execute_command("PING").addErrback(_ignore_lost)

    def messageReceived(self, pattern: Optional[bytes], channel: bytes, message: bytes) -> None:
        self.factory.subscription.received(message)

    def connectionLost(self, why: Failure) -> None:
        if self._pinging is not None and self._pinging.running:
            self._pinging.stop()
        super().connectionLost(why)
        self.factory.subscription.lost()


def _ignore_lost(failure: Failure) -> None:
    """A command cut short by the connection's end: the reconnect takes it from there."""
    failure.trap(txredisapi.ConnectionError)


class SubscriptionFactory(ConnectingFactory):
    """The factory of a subscription's connections."""

    def __init__(self, subscription: RedisSubscription, url: RedisURL,
                 ping_timeout: float, initial_delay: float, max_delay: float) -> None:
        super().__init__(url, SubscriberProtocol, ping_timeout, initial_delay, max_delay)
        self.subscription = subscription


class RedisSubscription:
    """
    The channel of the hub at C{url} (its prefix), subscribed to until L{stop}, over a
    connection of its own that is made again whenever it is lost.

    @param on_message: called with each L{Appended} message, in the order Redis sent them.
        A message that cannot be read is logged and skipped: the next one shows the gap.
    @param on_connected: called each time the subscription is confirmed, the first time and
        after each reconnect: what was published while it was down was not received.
    @param on_lost: called each time a confirmed subscription's connection is lost.
    @param on_canary: called with C{(node, number)} for each canary message (L{canary}).
    @param on_presence: called with the object of each presence message (one that begins
        with L{PRESENCE_HEAD}: see L{mission_control.cluster.presence}).
    """

    def __init__(self, url: RedisURL, reactor: IReactorTCP,
                 on_message: Callable[[Appended], None],
                 on_connected: Callable[[], None],
                 on_lost: Callable[[], None] = lambda: None,
                 on_canary: Callable[[str, int], None] = lambda node, number: None,
                 on_presence: Callable[[dict], None] = lambda body: None,
                 ping_interval: float = 10.0, ping_timeout: float = 10.0,
                 connect_timeout: float = 10.0, initial_delay: float = 1.0,
                 max_delay: float = 10.0, clock: Optional[IReactorTime] = None) -> None:
        self.url = url
        self.channel = RedisKeys(url.prefix).channel
        self.clock = clock if clock is not None else cast(IReactorTime, reactor)
        self.ping_interval = ping_interval
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.on_canary = on_canary
        self.on_presence = on_presence
        #: Whether a subscription is confirmed and its connection up.
        self.active = False
        #: Why connecting failed for good (a wrong password, a missing database), or C{None}.
        self.refused: Optional[str] = None
        self._factory = SubscriptionFactory(self, url, ping_timeout, initial_delay, max_delay)
        self._factory.on_refused = self._refused
        self._factory.startConnecting(url.endpoint(reactor, connect_timeout))
        self._closing = Closing(self._factory, self.clock)

    def __repr__(self) -> str:
        return f"<RedisSubscription {self.url.redacted()} {'active' if self.active else 'down'}>"

    def subscribed(self) -> None:
        """The server confirmed the subscription (called by the protocol)."""
        self.active = True
        self._call(self.on_connected)

    def received(self, message: bytes) -> None:
        """A message of the channel arrived (called by the protocol)."""
        if message.startswith(CANARY_HEAD):
            canary = parse_canary(message)
            if canary is not None:
                self._call(self.on_canary, *canary)
            return
        if message.startswith(PRESENCE_HEAD):
            try:
                body = json.loads(message)
            except ValueError:
                return
            if isinstance(body, dict):
                self._call(self.on_presence, body)
            return
        try:
            appended = parse_appended(message)
        except ValueError as e:
            log.warn("skipped a message of {channel} that is not an append: {why}",
                     channel=self.channel, why=str(e))
            return
        self._call(self.on_message, appended)

    def lost(self) -> None:
        """The connection ended (called by the protocol)."""
        if self.active:
            self.active = False
            self._call(self.on_lost)

    def _refused(self, why: str) -> None:
        self.refused = why
        log.error("Redis refused the subscription's connection for good: {why}", why=why)

    def stop(self) -> Deferred[None]:
        """Unsubscribe for good: close the connection and stop reconnecting.  Idempotent."""
        return self._closing.close()

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        # A failing callback must not take the connection's parser down with it.
        try:
            callback(*args)
        except Exception:
            log.failure("a Redis subscription callback failed")

# -*- test-case-name: tests.test_cluster_shared -*-
"""
A node's part of a history shared through Redis: its connections, its replica and its broker,
started and stopped with the hub.

L{SharedHistory} builds what C{--store redis://...} needs: a command connection and a
L{RedisLog} over it, the L{Replica} the hub reads, the L{ClusterBroker} it appends through, and a
subscription to the log's channel.  Starting loads the replica; until that has worked the hub
refuses connections (503 C{starting}) and appends fail, and while Redis cannot be reached at
start it tries again with backoff, saying so once.  Running, it trims the shared history by the
retention limits (every node does; trimming is idempotent) and writes each client position it
saves to Redis as well, so that it outlives the node.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mission_control.cluster.broker import ClusterBroker
from mission_control.cluster.presence import ClusterPresence
from mission_control.metrics import Metrics
from mission_control.store.interface import Retention
from mission_control.store.redis_connection import RedisConnection
from mission_control.store.redis_log import RedisLog
from mission_control.store.redis_pubsub import RedisSubscription, canary
from mission_control.store.redis_url import RedisURL
from mission_control.store.replica import Replica


class SharedHistory:
    """
    The Redis side of one node.

    @ivar replica: the store the hub reads (empty, epoch C{""}, until started).
    @ivar broker: the broker the hub appends through.
    """

    log = Logger()
    #: Seconds between trims of the shared history.
    trim_interval = 10.0
    #: Seconds before loading is tried again after a failure, doubled up to L{max_retry}.
    retry = 0.5
    max_retry = 10.0
    #: Seconds between canaries, and how late one may come back before pub/sub is stalled.
    canary_interval = 2.0
    canary_timeout = 5.0
    #: Seconds after start without a loaded history before the log says so.
    slow_start = 2.0

    def __init__(self, reactor: Any, url: RedisURL, retention: Retention,
                 node_id: Optional[str] = None, metrics: Optional[Metrics] = None) -> None:
        """
        Build the parts; the command connection starts connecting at once.  C{metrics} is
        told each canary's round trip through Redis and each time the subscription is made
        again.
        """
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics(process=False)
        self._subscriptions = 0
        #: This node's name among the nodes on the same Redis (random unless given).
        self.node_id = node_id or secrets.token_hex(6)
        self.url = url
        self.connection = RedisConnection(url, reactor)
        self.redis = RedisLog(self.connection, url.prefix, retention)
        self.replica = Replica("", retention)
        self.replica.write_position = self._write_position
        self.broker = ClusterBroker(reactor, self.redis, self.replica)
        self.presence = ClusterPresence(reactor, self.connection, self.redis.keys.base,
                                        self.redis.keys.channel, self.node_id)
        self.subscription: Optional[RedisSubscription] = None
        self._trim = LoopingCall(self._trim_shared)
        self._trim.clock = reactor
        self._canaries = LoopingCall(self._send_canary)
        self._canaries.clock = reactor
        # The number of the last canary sent, and (number, when) of the first one sent since
        # the last one heard back (None when every one sent was heard).
        self._canary_number = 0
        self._canary_sent: dict[int, float] = {}
        self._unheard: Optional[tuple[int, float]] = None
        self._retry_call: Optional[IDelayedCall] = None
        self._slow_call: Optional[IDelayedCall] = None
        self._stopped = False

    @property
    def ready(self) -> bool:
        """Whether the replica is loaded and the node can serve."""
        return self.broker.ready

    def start(self, on_ready: Callable[[], None]) -> None:
        """
        Subscribe and load the replica; call C{on_ready()} once it is loaded.  Loading is tried
        again, with backoff, until it works or L{stop} is called.
        """
        self.subscription = RedisSubscription(self.url, self.reactor, self.broker.received,
                                              self._subscribed, on_canary=self._heard,
                                              on_presence=self.presence.received)
        self._load(on_ready, self.retry, first=True)
        self._canaries.start(self.canary_interval, now=True)
        self._slow_call = self.reactor.callLater(self.slow_start, self._say_slow)

    def _say_slow(self) -> None:
        self._slow_call = None
        if not self.ready and not self._stopped:
            why = self.connection.refused or "no connection yet"
            self.log.warn("cannot load the shared history from {url} yet ({why}); still "
                          "trying, and refusing clients with 503 meanwhile",
                          url=self.url.redacted(), why=why)

    def _load(self, on_ready: Callable[[], None], delay: float, first: bool = False) -> None:
        d = self.connection.when_connected()
        d.addCallback(lambda _: self.broker.start())

        def loaded(_: object) -> None:
            self.log.info("shared history {url} loaded: epoch {epoch}, last seq {seq}",
                          url=self.url.redacted(), epoch=self.replica.epoch,
                          seq=self.replica.last_seq)
            self._trim.start(self.trim_interval, now=False)
            self.presence.start()
            # What was appended between the load and the subscription is read back now.
            self.broker.subscribed()
            on_ready()

        def failed(failure: Any) -> None:
            if self._stopped:
                return
            if first:
                self.log.warn("cannot load the shared history from {url} yet ({why}); "
                              "trying again", url=self.url.redacted(),
                              why=failure.getErrorMessage())
            self._retry_call = self.reactor.callLater(
                delay, self._load, on_ready, min(delay * 2, self.max_retry))

        d.addCallbacks(loaded, failed)

    def _subscribed(self) -> None:
        """The subscription is (again) made: read back what it may have missed."""
        self._subscriptions += 1
        if self._subscriptions > 1:
            self.metrics.redis_reconnected()
        self.broker.subscribed()
        if self.ready:
            self.presence.resync().addErrback(
                lambda f: self.log.warn("reading the cluster's presence failed: {why}",
                                        why=f.getErrorMessage()))

    # Health

    def health(self) -> Optional[str]:
        """
        Why this node cannot serve as part of the cluster now, or C{None}: the history in Redis
        is not the one it loaded (C{"history_lost"}: its keys were lost; restart the node), Redis
        out of reach
        for commands (C{"redis_unreachable"}), the subscription down (C{"pubsub_down"}), or up
        but not delivering: the last canary this node published has not come back through it
        within L{canary_timeout} seconds (C{"pubsub_stalled"}).
        """
        if self.broker.history_lost is not None:
            return "history_lost"
        if not self.connection.connected:
            return "redis_unreachable"
        if self.subscription is None or not self.subscription.active:
            return "pubsub_down"
        if (self._unheard is not None
                and self.reactor.seconds() - self._unheard[1] > self.canary_timeout):
            return "pubsub_stalled"
        return None

    def _send_canary(self) -> None:
        if not (self.connection.connected and self.subscription is not None
                and self.subscription.active):
            return
        self._canary_number += 1
        self._canary_sent[self._canary_number] = self.reactor.seconds()
        while len(self._canary_sent) > 16:
            del self._canary_sent[min(self._canary_sent)]
        if self._unheard is None:
            self._unheard = (self._canary_number, self.reactor.seconds())
        d = self.connection.execute("PUBLISH", self.redis.keys.channel,
                                    canary(self.node_id, self._canary_number))
        d.addErrback(lambda f: None)  # the connection's state says what health needs

    def _heard(self, node: str, number: int) -> None:
        if node != self.node_id:
            return
        sent = self._canary_sent.pop(number, None)
        if sent is not None:
            self.metrics.redis_roundtrip(self.reactor.seconds() - sent)
        if self._unheard is not None and number >= self._unheard[0]:
            self._unheard = None

    def _write_position(self, user: str, client: str, seq: int, now: float) -> None:
        if not self.ready:
            return
        d = self.redis.save_position(user, client, seq, now)
        d.addErrback(lambda f: self.log.debug("saving a position to Redis failed: {why}",
                                              why=f.getErrorMessage()))

    def _trim_shared(self) -> Deferred[Any]:
        d = self.redis.trim(self.reactor.seconds())
        d.addErrback(lambda f: self.log.warn("trimming the shared history failed: {why}",
                                             why=f.getErrorMessage()))
        return d

    def stop(self) -> Deferred[Any]:
        """
        Stop loading, trimming and hearing; leave the cluster's presence (the others are told
        at once); close the connections to Redis.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for call in (self._retry_call, self._slow_call):
            if call is not None and call.active():
                call.cancel()
        for loop in (self._trim, self._canaries):
            if loop.running:
                loop.stop()
        self.broker.stop()
        await self.presence.stop()
        closing: list[Deferred[Any]] = [self.connection.close()]
        if self.subscription is not None:
            closing.append(self.subscription.stop())
        await defer.gatherResults(closing, consumeErrors=True)

# -*- test-case-name: tests.test_cluster_broker -*-
"""
The broker of a node that shares its history with other nodes through Redis.

Appends go to the shared log (L{RedisLog}: one script each, atomic across every node).  Every
node hears of every append on the log's channel (L{RedisSubscription}), and applies the events,
its own and the others', to its L{Replica} and tells its listeners (the node's fan-out), in seq
order, each once: the L{Sequencer} orders what arrives from the three sources (the answers to
this node's appends, the channel's messages, and the stream read back to fill a gap).

What the caller of an append is promised, as of any L{IBroker}: its Deferred fires only once
the appended events are in Redis and this node has applied and fanned them out, after every
event with a lower seq.  When the answer to this node's append carries seq 12 and the message
of another node's seq 11 has not arrived yet, the answer waits for it; when it does not arrive
within L{ClusterBroker.repair_delay} (a message lost with a dropped subscription), the missing
seqs are read from the stream.  After the subscription is made again, the node reads from its
last seq too: what was published meanwhile was not received.

Starting (L{ClusterBroker.start}) loads the latest state and the retained history into the
replica, after subscribing, so nothing appended meanwhile is missed: messages that arrive while
it loads wait in the sequencer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mission_control.cluster.sequencer import Sequencer
from mission_control.hub.broker import IBroker, Listener
from mission_control.store import EachItem, EachResult, StoredEvent, StoreUnavailable
from mission_control.store.redis_log import EpochChanged, RedisLog
from mission_control.store.redis_pubsub import Appended
from mission_control.store.replica import Replica

#: An event with the time it was appended (for the replica's retention by age).
Timed = tuple[StoredEvent, float]


class Stale(StoreUnavailable):
    """The shared history is not the one this node loaded (its epoch changed)."""


@implementer(IBroker)
class ClusterBroker:
    """
    Appends to the shared log; applies every node's events to the replica and tells the
    listeners, in seq order.

    @ivar replica: the node's copy of the shared history, the store the hub reads.
    @ivar ready: whether L{start} has loaded the replica (appends wait for nothing before it,
        they fail).
    """

    log = Logger()
    #: Seconds a known seq may be missing before it is read from the stream.
    repair_delay = 0.05
    #: Events per read from the stream.
    page = 1000

    def __init__(self, clock: IReactorTime, log: RedisLog, replica: Replica) -> None:
        self.clock = clock
        self.redis = log
        self.replica = replica
        self.sequencer: Sequencer[Timed] = Sequencer(replica.last_seq)
        self.ready = False
        #: The epoch Redis holds when it is not this node's (its history was lost), else None.
        self.history_lost: Optional[str] = None
        self._listeners: list[Listener] = []
        # (seq, fire): answers that wait until every seq up to theirs is applied, in order;
        # fire(exception) fails one instead.
        self._waiting: list[tuple[int, Callable[..., None]]] = []
        # Messages that came while loading: offered once the replica is loaded.
        self._early: list[Appended] = []
        self._repair: Optional[IDelayedCall] = None
        self._repairing = False

    # Starting

    def start(self) -> Deferred[None]:
        """
        Load the replica from Redis: the latest state, the owners, then the retained history
        page by page; then go on with whatever arrived meanwhile.  Call it once the subscription
        is made (or being made): what is appended after the load is heard of that way.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        snapshot = await self.redis.load()
        history: list[Timed] = []
        now = self.clock.seconds()
        cursor = snapshot.first_seq - 1
        while True:
            page = await self.redis.events_after(cursor, self.page)
            history.extend((event, now) for event in page)
            if len(page) < self.page:
                break
            cursor = page[-1].seq
        last_seq = max(snapshot.last_seq, history[-1][0].seq if history else 0)
        self.replica.epoch = snapshot.epoch
        self.replica.load(history, snapshot.agents, snapshot.sessions, snapshot.owners,
                          last_seq)
        self.sequencer.restart(self.replica.last_seq)
        self.ready = True
        early, self._early = self._early, []
        for message in early:
            self.received(message)
        self._check_gap()

    def stop(self) -> None:
        """
        Stop reading back missing seqs and refuse appends from now on; an answer still waiting
        for an earlier seq fails with L{Stale} (its events are in Redis; this node will not
        fan them out).
        """
        self.ready = False
        if self._repair is not None and self._repair.active():
            self._repair.cancel()
        self._repair = None
        waiting, self._waiting = self._waiting, []
        for _, fire in waiting:
            fire(Stale("the node stopped before an earlier seq arrived"))

    # Appending

    def append(self, event_type: str, payload: dict, ts: str, now: float,
               idempotency: Any = None,
               claimant: Optional[str] = None) -> Deferred[tuple[StoredEvent, bool]]:
        d = self.append_each([(event_type, payload, idempotency, claimant)], ts, now)

        def one(results: list[EachResult]) -> tuple[StoredEvent, bool]:
            result = results[0]
            if isinstance(result, Exception):
                raise result
            return result

        return d.addCallback(one)

    def append_many(self, items: Sequence[tuple[str, dict]], ts: str, now: float,
                    idempotency: Any = None,
                    claimant: Optional[str] = None) -> Deferred[tuple[list[StoredEvent], bool]]:
        if not self.ready:
            return _not_ready()
        d = self.redis.append_many(items, ts, now, idempotency, claimant)

        def applied(answer: tuple[list[StoredEvent], bool]) -> Any:
            stored, created = answer
            if not created:
                return answer
            return self._after([(event, now) for event in stored], answer)

        return d.addCallbacks(applied, self._append_failed)

    def _append_failed(self, failure: Any) -> Any:
        if failure.check(EpochChanged):
            self._lost_history("(unknown until a restart)")
        return failure

    def append_each(self, items: Sequence[EachItem], ts: str,
                    now: float) -> Deferred[list[EachResult]]:
        if not self.ready:
            return _not_ready()
        d = self.redis.append_each(items, ts, now)

        def applied(results: list[EachResult]) -> Any:
            created = [(r[0], now) for r in results if isinstance(r, tuple) and r[1]]
            return self._after(created, results)

        return d.addCallbacks(applied, self._append_failed)

    def _after(self, created: list[Timed], answer: Any) -> Deferred[Any]:
        """Offer this node's new events; fire with C{answer} once they are all applied."""
        for timed in created:
            self._offer(timed)
        if not created:
            return succeed(answer)
        newest = max(event.seq for event, _ in created)
        if newest <= self.sequencer.last_seq:
            return succeed(answer)
        d: Deferred[Any] = Deferred()

        def fire(failure: Optional[Exception] = None) -> None:
            if failure is None:
                d.callback(answer)
            else:
                d.errback(failure)

        self._waiting.append((newest, fire))
        self._waiting.sort(key=lambda waiting: waiting[0])
        self._check_gap()
        return d

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # Hearing of appends

    def received(self, message: Appended) -> None:
        """A message of the channel: the seqs C{first..last} were appended, by some node."""
        if not self.ready:
            self._early.append(message)
            return
        if message.epoch != self.replica.epoch:
            self._lost_history(message.epoch)
            return
        if message.events is None:
            self.sequencer.note(message.last)
        else:
            for event in message.events:
                self._offer((event, message.created))
        self._check_gap()

    def _lost_history(self, epoch: str) -> None:
        """Redis holds another history than this node loaded: say so, once."""
        if self.history_lost is None:
            self.history_lost = epoch
            self.log.error("the shared history in Redis is not the one this node loaded (new "
                           "epoch {epoch}: its keys were lost); this node refuses publishes and "
                           "answers /healthz 503 history_lost until it is restarted",
                           epoch=epoch)

    def subscribed(self) -> None:
        """
        The subscription was made (again): what was appended while it was down was not heard
        of, so read from the last seq applied up to the log's last seq.
        """
        if not self.ready:
            return
        d = self.redis.last_seq()
        d.addCallback(self._noted)
        d.addErrback(lambda f: self.log.failure("reading the shared last seq failed", f))

    def _noted(self, last_seq: int) -> None:
        self.sequencer.note(last_seq)
        self._check_gap()

    def _offer(self, timed: Timed) -> None:
        for event, created in self.sequencer.offer(timed[0].seq, timed):
            self.replica.apply(event, created)
            for listener in tuple(self._listeners):
                try:
                    listener(event)
                except Exception:
                    self.log.failure("a listener of the broker failed on seq {seq}",
                                     seq=event.seq)
        last = self.sequencer.last_seq
        while self._waiting and self._waiting[0][0] <= last:
            _, fire = self._waiting.pop(0)
            fire()

    # Filling gaps

    def _check_gap(self) -> None:
        """Read the missing seqs from the stream if they are still missing after a moment."""
        if self.sequencer.missing() is None or self._repair is not None or self._repairing:
            return
        self._repair = self.clock.callLater(self.repair_delay, self._read_missing)

    def _read_missing(self) -> None:
        self._repair = None
        missing = self.sequencer.missing()
        if missing is None:
            return
        first, last = missing
        self._repairing = True
        d = self.redis.events_after(first - 1, min(self.page, last - first + 1))

        def got(events: list[StoredEvent]) -> None:
            now = self.clock.seconds()
            for event in events:
                self._offer((event, now))
            if not events or events[0].seq != first:
                # Retention removed them before this node read them: it cannot replay them.
                self.log.error("seqs {first} to {last} left the shared history before this "
                               "node read them", first=first, last=last)

        def done(result: object) -> object:
            self._repairing = False
            self._check_gap()
            return result

        d.addCallback(got)
        d.addErrback(lambda f: self.log.failure("reading missing seqs failed", f))
        d.addBoth(done)


def _not_ready() -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Stale("the shared history is still loading"))
    return d

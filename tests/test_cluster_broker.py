# -*- test-case-name: tests.test_cluster_broker -*-
"""
L{ClusterBroker} against the real Redis on 127.0.0.1:6379: nodes that share one history hear
every node's appends, apply them in seq order once each, answer their own appends only after
everything before them, load what was there when they start, and read back what a dropped
subscription missed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from mission_control.cluster.broker import ClusterBroker, Stale
from mission_control.store import IdempotencyConflict, SessionTaken, StoredEvent
from mission_control.store.redis_log import RedisLog
from mission_control.store.replica import Replica
from tests.helpers import T0, TS, activity, status
from tests.redis_helpers import RedisTestMixin, eventually, sleep


class Node:
    """One node's broker, its replica, and what its listener was told."""

    def __init__(self, broker: ClusterBroker) -> None:
        self.broker = broker
        self.replica = broker.replica
        self.told: list[StoredEvent] = []
        broker.subscribe(self.told.append)

    def seqs(self) -> list[int]:
        return [event.seq for event in self.told]


class ClusterBrokerTests(RedisTestMixin, TestCase):
    """Two or more nodes on one prefix behave as one history."""

    timeout = 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.redis_setup())

    async def node(self, **options: Any) -> Node:
        """A started node: its own connections to Redis, a subscription, a loaded replica."""
        log = RedisLog(await self.connect(), self.prefix)
        broker = ClusterBroker(reactor, log, Replica(""))
        for name, value in options.items():
            setattr(broker, name, value)
        node = Node(broker)
        self.addCleanup(broker.stop)
        subscription = self.subscribe(broker.received, broker.subscribed)
        node.subscription = subscription  # type: ignore[attr-defined]
        await eventually(lambda: subscription.active)
        await broker.start()
        return node

    async def test_every_node_hears_every_append_in_order(self) -> None:
        """
        Appends from two nodes, many in flight at once, reach both nodes' listeners as one
        gap-free sequence of seqs, in order, once each; both replicas read the same.
        """
        a, b = await self.node(), await self.node()
        appends = []
        for i in range(40):
            node = (a, b)[i % 2]
            appends.append(node.broker.append("agent:status", status(f"agent-{i % 5}"), TS,
                                              T0))
        answers = await gatherResults(appends)
        self.assertEqual(sorted(event.seq for event, _ in answers), list(range(1, 41)))
        await eventually(lambda: len(a.told) == 40 and len(b.told) == 40)
        self.assertEqual(a.seqs(), list(range(1, 41)))
        self.assertEqual(b.seqs(), list(range(1, 41)))
        self.assertEqual(a.replica.agents(), b.replica.agents())
        self.assertEqual(a.replica.events_after(0, 100), b.replica.events_after(0, 100))

    async def test_answer_waits_for_earlier_seqs(self) -> None:
        """
        When a node's append is answered, its listener has been told of that event and of every
        event before it, whichever node appended those.
        """
        a, b = await self.node(), await self.node()
        checked = []
        for i in range(20):
            d = (a, b)[i % 2].broker.append("agent:status", status("agent-1"), TS, T0)
            node = (a, b)[i % 2]

            def check(answer: tuple[StoredEvent, bool], node: Node = node) -> None:
                event, _ = answer
                checked.append(node.seqs()[-1] >= event.seq
                               and node.seqs() == list(range(1, len(node.seqs()) + 1)))

            d.addCallback(check)
            await sleep(0) if i % 3 else None
        await eventually(lambda: len(checked) == 20)
        self.assertEqual(checked, [True] * 20)

    async def test_node_started_later_loads_the_history(self) -> None:
        """
        A node that starts after events were appended serves them from its replica: history,
        latest state, session owners, last seq; then it hears the next append like the others.
        """
        a = await self.node()
        await a.broker.append("agent:status", status("a1"), TS, T0)
        await a.broker.append("session:activity", activity("s1", agentId="a1"), TS, T0)
        await a.broker.append("agent:status", status("a1", "busy"), TS, T0)
        b = await self.node()
        self.assertEqual(b.replica.epoch, a.replica.epoch)
        self.assertEqual(b.replica.last_seq, 3)
        self.assertEqual([e.seq for e in b.replica.events_after(0, 10)], [1, 2, 3])
        self.assertEqual(b.replica.agent("a1"), status("a1", "busy"))
        self.assertEqual(b.replica.session_owner("s1"), "a1")
        self.assertEqual(b.told, [])
        await a.broker.append("agent:status", status("a2"), TS, T0)
        await eventually(lambda: b.seqs() == [4])

    async def test_missed_messages_read_back_after_resubscribing(self) -> None:
        """
        Events appended by another node while a node's subscription is down reach that node
        once it subscribes again, read from the stream, in order, once each.
        """
        a, b = await self.node(), await self.node()
        await a.broker.append("agent:status", status("a1"), TS, T0)
        await eventually(lambda: b.seqs() == [1])
        b_subscription = b.subscription  # type: ignore[attr-defined]
        await self.kill_subscription(b_subscription)
        for i in range(5):
            await a.broker.append("agent:status", status(f"a{i}"), TS, T0)
        await eventually(lambda: b_subscription.active)
        await eventually(lambda: b.seqs() == [1, 2, 3, 4, 5, 6])
        self.assertEqual(a.seqs(), [1, 2, 3, 4, 5, 6])

    async def test_gap_in_the_messages_read_back(self) -> None:
        """
        A message that names seqs after a gap (one message lost) makes the node read the
        missing ones from the stream: its listener is told of all of them, in order.
        """
        a, b = await self.node(), await self.node()
        b.broker.unsubscribe(b.told.append)
        b_received = b.broker.received
        dropped: list[Any] = []

        def lose_the_second(message: Any) -> None:
            if message.first == 2 and not dropped:
                dropped.append(message)  # as if Redis had dropped it
                return
            b_received(message)

        b.broker.received = lose_the_second  # type: ignore[method-assign]
        b.subscription.on_message = lose_the_second  # type: ignore[attr-defined]
        b.broker.subscribe(b.told.append)
        for i in range(3):
            await a.broker.append("agent:status", status(f"a{i}"), TS, T0)
        await eventually(lambda: b.seqs() == [1, 2, 3])
        self.assertEqual(len(dropped), 1)

    async def test_idempotent_repeat_across_nodes(self) -> None:
        """
        A key used on one node is the same key on another: the repeat answers the first event
        and tells nobody; a different request under it is a conflict.
        """
        a, b = await self.node(), await self.node()
        key = ("alice", "k1", "fp1")
        first, created = await a.broker.append("agent:status", status("a1"), TS, T0, key)
        self.assertTrue(created)
        again, created = await b.broker.append("agent:status", status("a1"), TS, T0, key)
        self.assertEqual((again.seq, created), (first.seq, False))
        failure = b.broker.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "fp2"))
        with self.assertRaises(IdempotencyConflict):
            await failure
        await eventually(lambda: b.seqs() == [1])
        self.assertEqual(a.seqs(), [1])

    async def test_batch_applied_in_order_on_every_node(self) -> None:
        """A batch appended on one node reaches every node's listener, its seqs in order."""
        a, b = await self.node(), await self.node()
        items = [("agent:status", status(f"a{i}")) for i in range(5)]
        stored, created = await a.broker.append_many(items, TS, T0)
        self.assertTrue(created)
        self.assertEqual(a.seqs(), [1, 2, 3, 4, 5])  # told before the answer
        await eventually(lambda: b.seqs() == [1, 2, 3, 4, 5])

    async def test_append_before_start_fails(self) -> None:
        """A broker that has not loaded its replica refuses to append: Stale, nothing stored."""
        log = RedisLog(await self.connect(), self.prefix)
        broker = ClusterBroker(reactor, log, Replica(""))
        self.addCleanup(broker.stop)
        with self.assertRaises(Stale):
            await broker.append("agent:status", status("a1"), TS, T0)
        await log.load()
        self.assertEqual(await log.last_seq(), 0)

    async def test_session_claim_race_across_nodes(self) -> None:
        """
        Two agents' first activity in one session, appended at once on two nodes (each node's
        own check saw the session free), stores one: the other append is refused SessionTaken;
        every node's replica names the winner as the owner.
        """
        a, b = await self.node(), await self.node()
        results = await gatherResults([
            a.broker.append("session:activity", activity("s1", agentId="a1"), TS, T0,
                            None, "a1").addErrback(lambda f: f.value),
            b.broker.append("session:activity", activity("s1", agentId="a2"), TS, T0,
                            None, "a2").addErrback(lambda f: f.value),
        ])
        refused = [r for r in results if isinstance(r, SessionTaken)]
        stored = [r for r in results if isinstance(r, tuple)]
        self.assertEqual((len(refused), len(stored)), (1, 1))
        winner = stored[0][0].payload["agentId"]
        self.assertEqual(refused[0].owner, winner)
        await eventually(lambda: b.replica.session_owner("s1") == winner
                         and a.replica.session_owner("s1") == winner)

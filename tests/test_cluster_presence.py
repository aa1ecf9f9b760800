# -*- test-case-name: tests.test_cluster_presence -*-
"""
L{ClusterPresence} against the real Redis on 127.0.0.1:6379: nodes that share a prefix count
each user's connections across all of them, tell their own subscribers of a user's join and
leave once, forget a node that leaves or dies, and exactly one of them tells of a dead node's
agents.
"""

from __future__ import annotations


from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from mission_control.cluster.presence import ClusterPresence
from mission_control.policy import Principal
from tests.redis_helpers import RedisTestMixin, eventually, sleep

ALICE = Principal(sub="alice", role="viewer", name="Alice", expires_at=0.0)
AGENT = Principal(sub="a1", role="agent", name="Agent One", expires_at=0.0)


class Node:
    """One node's presence and what it was told."""

    def __init__(self, presence: ClusterPresence) -> None:
        self.presence = presence
        self.changes: list[tuple[str, str, int]] = []
        self.gone: list[list[str]] = []
        self.subscription: Any = None
        presence.on_change = lambda kind, info, count: self.changes.append(
            (kind, info["id"], count))
        presence.on_node_gone = lambda entries: self.gone.append([e["id"] for e in entries])


class ClusterPresenceTests(RedisTestMixin, TestCase):
    """Presence shared by nodes on one prefix."""

    timeout = 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.redis_setup())

    async def node(self, name: str, **timing: float) -> Node:
        """A started node: its own command connection and subscription."""
        connection = await self.connect()
        presence = ClusterPresence(reactor, connection, self.keys.base, self.keys.channel, name)
        for attribute, value in timing.items():
            setattr(presence, attribute, value)
        node = Node(presence)
        subscription = node.subscription = self.subscribe(lambda message: None, lambda: None,
                                                          on_presence=presence.received)
        await eventually(lambda: subscription.active)
        presence.start()
        self.addCleanup(lambda: presence.stop() if presence._beat.running else None)
        await eventually(lambda: node.presence.node_id in node.presence.nodes())
        await sleep(0.05)  # its first heartbeat's read of the others
        return node

    async def test_counts_span_nodes_and_changes_are_told_once(self) -> None:
        """
        A user with a connection on each of two nodes counts 2 on both; each node tells its
        own subscribers of the join once and of the leave once, when the last connection goes,
        wherever that was.
        """
        a, b = await self.node("a"), await self.node("b")
        a.presence.connected(ALICE, 1.0)
        await eventually(lambda: b.presence.count("alice") == 1)
        b.presence.connected(ALICE, 2.0)
        await eventually(lambda: a.presence.count("alice") == 2)
        self.assertEqual(b.presence.count("alice"), 2)
        self.assertEqual([e["id"] for e in b.presence.entries()], ["alice"])
        a.presence.disconnected(ALICE)
        await eventually(lambda: b.presence.count("alice") == 1)
        b.presence.disconnected(ALICE)
        await eventually(lambda: a.presence.count("alice") == 0)
        for node in (a, b):
            self.assertEqual([c[:2] for c in node.changes],
                             [("presence:join", "alice"), ("presence:leave", "alice")])

    async def test_node_that_stops_is_forgotten_at_once(self) -> None:
        """A node that stops cleanly tells the others: its users leave there at once."""
        a, b = await self.node("a"), await self.node("b")
        b.presence.connected(AGENT, 1.0)
        await eventually(lambda: a.presence.count("a1") == 1)
        await b.presence.stop()
        await eventually(lambda: a.presence.count("a1") == 0)
        self.assertEqual(a.changes, [("presence:join", "a1", 1), ("presence:leave", "a1", 0)])
        self.assertEqual(a.gone, [])  # a clean stop is not a death: its agents left themselves

    async def test_dead_node_reaped_once(self) -> None:
        """
        A node that stops renewing its entry (killed: no word to anyone) is dropped by every
        other node after its entry expires, and exactly one of them is told of its agents.
        """
        timing = {"heartbeat": 0.1, "ttl": 0.4}
        a, c = await self.node("a", **timing), await self.node("c", **timing)
        b = await self.node("b", **timing)
        b.presence.connected(AGENT, 1.0)
        await eventually(lambda: a.presence.count("a1") == 1 and c.presence.count("a1") == 1)
        b.presence._beat.stop()  # dies: no heartbeat, no goodbye
        await eventually(lambda: a.presence.count("a1") == 0 and c.presence.count("a1") == 0)
        await eventually(lambda: len(a.gone) + len(c.gone) == 1)
        await sleep(0.5)
        self.assertEqual(a.gone + c.gone, [["a1"]])
        self.assertNotIn("b", a.presence.nodes())

    async def test_missed_messages_made_good_by_resync(self) -> None:
        """
        Changes on a node while another's subscription was down reach it when it reads the
        cluster again (what the node does when its subscription is back).
        """
        a, b = await self.node("a"), await self.node("b")
        b.subscription.on_presence = lambda body: None  # what a dropped subscription misses
        a.presence.connected(ALICE, 1.0)
        await sleep(0.1)
        self.assertEqual(b.presence.count("alice"), 0)
        await b.presence.resync()
        self.assertEqual(b.presence.count("alice"), 1)
        self.assertEqual(b.changes, [("presence:join", "alice", 1)])

    async def test_node_reaped_while_alive_tells_again(self) -> None:
        """
        A node whose entry expired while it still ran (paused past the ttl) tells the others
        of its connections again at its next heartbeat.
        """
        a, b = await self.node("a"), await self.node("b")
        b.presence.connected(ALICE, 1.0)
        await eventually(lambda: a.presence.count("alice") == 1)
        await self.admin.execute("ZREM", self.keys.base + "nodes", "b")
        a.presence._drop("b")  # as a reaper would
        self.assertEqual(a.presence.count("alice"), 0)
        await eventually(lambda: a.presence.count("alice") == 1, timeout=5)



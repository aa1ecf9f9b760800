# -*- test-case-name: tests.test_cluster_shared -*-
"""
L{SharedHistory} against the real Redis on 127.0.0.1:6379: it loads the replica, says when it
is ready, writes the client positions it saves through to Redis, trims the shared history, and
closes its connections when stopped; against an address where nothing listens it keeps trying
and its broker refuses appends meanwhile.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from mission_control.cluster.broker import Stale
from mission_control.cluster.shared import SharedHistory
from mission_control.store import Retention, StoreUnavailable
from mission_control.store.redis_url import parse_redis_url
from tests.helpers import T0, TS, free_port, status
from tests.redis_helpers import RedisProxy, RedisTestMixin, delete_keys, eventually, sleep


class SharedHistoryTests(RedisTestMixin, TestCase):
    """One node's Redis side, started and stopped."""

    timeout = 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.redis_setup())

    def shared(self, url: Any = None, retention: Retention = Retention()) -> SharedHistory:
        shared = SharedHistory(reactor, url or self.url, retention)
        self.addCleanup(shared.stop)
        return shared

    async def test_ready_after_load(self) -> None:
        """
        Started, it calls on_ready once the replica holds the shared history: its epoch, its
        events; appends through its broker then work and reach the replica.
        """
        log = await self.open_log()
        await log.append_each([("agent:status", status("a1"), None)], TS, T0)
        shared = self.shared()
        ready: list[bool] = []
        shared.start(lambda: ready.append(True))
        await eventually(lambda: ready == [True])
        self.assertEqual(shared.replica.epoch, log.epoch)
        self.assertEqual(shared.replica.agent("a1"), status("a1"))
        event, created = await shared.broker.append("agent:status", status("a2"), TS, T0)
        self.assertEqual((event.seq, created), (2, True))
        self.assertEqual(shared.replica.last_seq, 2)

    async def test_positions_written_through(self) -> None:
        """A position saved on the replica is in Redis too, for any node to read."""
        shared = self.shared()
        shared.start(lambda: None)
        await eventually(lambda: shared.ready)
        shared.replica.save_position("alice", "board", 7, T0)
        self.assertEqual(shared.replica.position("alice", "board"), 7)
        log = await self.open_log()
        await eventually(lambda: log.connection.connected)
        position = None
        for _ in range(100):
            position = await log.position("alice", "board")
            if position is not None:
                break
            await sleep(0.01)
        self.assertEqual(position, 7)

    async def test_unreachable_redis_refuses_appends_until_stopped(self) -> None:
        """
        With nothing listening where the URL points, the node is not ready, its broker refuses
        appends with Stale (a StoreUnavailable), and stopping ends the attempts cleanly.
        """
        url = parse_redis_url(f"redis://127.0.0.1:{free_port()}/0?prefix={self.prefix}")
        shared = self.shared(url)
        shared.start(lambda: self.fail("ready without Redis"))
        self.assertFalse(shared.ready)
        with self.assertRaises(Stale):
            await shared.broker.append("agent:status", status("a1"), TS, T0)
        await shared.stop()

    async def test_health_says_whether_pubsub_delivers(self) -> None:
        """
        health() is None while the node's own canaries come back through its subscription;
        on a link that stops carrying anything (frozen, still open) it says pubsub_stalled
        within the canary timeout, and None again once the link carries again.
        """
        proxy = RedisProxy()
        port = await proxy.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(lambda: Deferred.fromCoroutine(proxy.stop()))
        url = parse_redis_url(f"redis://127.0.0.1:{port}/0?prefix={self.prefix}")
        shared = self.shared(url)
        shared.canary_interval, shared.canary_timeout = 0.05, 0.3
        shared.start(lambda: None)
        await eventually(lambda: shared.ready)
        await eventually(lambda: shared.health() is None)
        await sleep(0.2)
        self.assertIsNone(shared.health())
        roundtrips = shared.metrics.registry.get_sample_value(
            "mission_control_redis_roundtrip_seconds_count")
        self.assertGreater(roundtrips, 0)  # each canary heard back is one round trip
        proxy.frozen = True
        await eventually(lambda: shared.health() == "pubsub_stalled")
        proxy.frozen = False
        await eventually(lambda: shared.health() is None, timeout=15)

    async def test_health_before_start_and_unreachable(self) -> None:
        """With nothing listening, health() says redis_unreachable."""
        url = parse_redis_url(f"redis://127.0.0.1:{free_port()}/0?prefix={self.prefix}")
        shared = self.shared(url)
        shared.start(lambda: None)
        self.assertEqual(shared.health(), "redis_unreachable")

    async def test_resubscribing_is_counted(self) -> None:
        """A subscription made again after its connection was killed counts one reconnect."""
        shared = self.shared()
        shared.start(lambda: None)
        await eventually(lambda: shared.ready and shared.health() is None)
        reconnects = "mission_control_redis_reconnects_total"
        self.assertEqual(shared.metrics.registry.get_sample_value(reconnects), 0.0)
        assert shared.subscription is not None
        await self.kill_subscription(shared.subscription)
        await eventually(lambda: shared.metrics.registry.get_sample_value(reconnects) == 1.0)

    async def test_lost_history_is_unhealthy(self) -> None:
        """
        When Redis loses the history this node loaded (its keys deleted, as a Redis restarted
        without persistence does), appends fail and health() says history_lost: the node must
        be restarted, and says so rather than numbering a new history under the old name.
        """
        shared = self.shared()
        shared.start(lambda: None)
        await eventually(lambda: shared.ready and shared.health() is None)
        await shared.broker.append("agent:status", status("a1"), TS, T0)
        await delete_keys(self.admin, self.keys.pattern)
        with self.assertRaises(StoreUnavailable):
            await shared.broker.append("agent:status", status("a2"), TS, T0)
        self.assertEqual(shared.health(), "history_lost")

"""
Tests for L{mission_control.store.redis_pubsub}: the message every append publishes (read
without Redis), and a subscription to the real Redis on 127.0.0.1:6379 that hears every append
of every node in seq order, subscribes again after its connection was killed or died silently,
and tells its owner each time.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mission_control.store.interface import StoredEvent
from mission_control.store.redis_log import RedisLog
from mission_control.store.redis_pubsub import (
    Appended,
    RedisSubscription,
    canary,
    parse_appended,
    parse_canary,
)
from mission_control.store.redis_scripts import message_head
from mission_control.store.redis_url import parse_redis_url
from tests.redis_helpers import RedisProxy, RedisTestMixin, eventually, sleep
from tests.helpers import T0, TS, activity, status


def message(**fields: object) -> bytes:
    """A message with C{fields} over a valid one covering seq 3 without events."""
    body: dict = {"epoch": "e1", "created": T0, "first": 3, "last": 3}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


class ParseTests(SynchronousTestCase):
    def test_message_with_events(self) -> None:
        """A message with its events gives them as StoredEvents, in seq order."""
        events = [{"seq": 7, "type": "agent:status", "ts": TS, "payload": status("a1")},
                  {"seq": 8, "type": "session:activity", "ts": TS, "payload": activity("s1")}]
        appended = parse_appended(message(first=7, last=8, events=events))
        self.assertEqual(appended, Appended("e1", 7, 8, T0, [
            StoredEvent(7, "agent:status", status("a1"), TS),
            StoredEvent(8, "session:activity", activity("s1"), TS)]))

    def test_canary_round_trip(self) -> None:
        """A canary message parses back to its node and number; anything else is None."""
        self.assertEqual(parse_canary(canary("node-1", 7)), ("node-1", 7))
        for other in (b"not json", b"[]", b'{"canary": 3, "n": 1}', b'{"canary": "x", "n": 0}',
                      message(first=1, last=1)):
            self.assertIsNone(parse_canary(other))

    def test_message_without_events(self) -> None:
        """A message without events names the seqs to read from the stream: events is None."""
        self.assertEqual(parse_appended(message(first=3, last=9)), Appended("e1", 3, 9, T0, None))

    def test_head_is_what_the_scripts_continue(self) -> None:
        """The head the scripts are given, continued as they continue it, parses."""
        text = message_head("e1", T0) + b',"first":1,"last":1}'
        self.assertEqual(parse_appended(text), Appended("e1", 1, 1, T0, None))

    def test_not_an_append(self) -> None:
        """Anything but a well-formed append message is a ValueError, never another error."""
        bad = [
            b"not json", b"[1, 2]", b"\xff\xfe", message(epoch=""), message(epoch=7),
            message(first=0), message(first=True), message(first=4, last=3), message(last="3"),
            message(created="now"), message(created=None),
            message(events={}), message(events=[]),
            message(events=[{"seq": 4, "type": "agent:status", "ts": TS, "payload": {}}]),
            message(events=[{"seq": 3, "type": "presence:join", "ts": TS, "payload": {}}]),
            message(events=[{"seq": 3, "type": "agent:status", "ts": 1, "payload": {}}]),
            message(events=[{"seq": 3, "type": "agent:status", "ts": TS, "payload": []}]),
            message(events=["x"]),
        ]
        for text in bad:
            self.assertRaises(ValueError, parse_appended, text)


class SubscriptionTests(RedisTestMixin, TestCase):
    timeout = 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.redis_setup())

    async def subscribed(self, **options: object) -> tuple[RedisSubscription, list[Appended],
                                                           list[int]]:
        """A confirmed subscription, the messages it heard and its on_connected calls."""
        messages: list[Appended] = []
        connected: list[int] = []
        subscription = self.subscribe(messages.append, lambda: connected.append(1), **options)
        await eventually(lambda: connected)
        return subscription, messages, connected

    def client_address(self, subscription: RedisSubscription) -> str:
        """The address Redis sees the subscription's connection come from."""
        host = subscription._factory.pool[0].transport.getHost()
        return f"{host.host}:{host.port}"

    async def test_every_append_heard_in_seq_order(self) -> None:
        """
        Appends of two nodes at once, groups and batches, each publish one message; the
        subscriber hears them in seq order, each covering the seqs after the last one's, and
        carrying the events exactly as the history holds them.
        """
        _, messages, _ = await self.subscribed()
        one, two = await self.open_log(), await self.open_log()
        sent = []
        for round in range(10):
            sent.append(one.append_each([("agent:status", status(f"a{round}-{i}"), None)
                                         for i in range(3)], TS, T0))
            sent.append(two.append_many([("session:activity", activity(f"s{round}")),
                                         ("agent:status", status(f"b{round}"))], TS, T0))
        await gatherResults(sent)
        await eventually(lambda: messages and messages[-1].last == 50)
        self.assertEqual(len(messages), 20)
        expected_first = 1
        for appended in messages:
            self.assertEqual((appended.epoch, appended.first, appended.created),
                             (one.epoch, expected_first, T0))
            expected_first = appended.last + 1
        heard = [event for appended in messages for event in appended.events or []]
        self.assertEqual(heard, await one.events_after(0, 100))

    async def test_large_appends_name_their_seqs_only(self) -> None:
        """
        Past the inline limit a message carries no events, only the seqs: the subscriber
        reads them from the stream.
        """
        _, messages, _ = await self.subscribed()
        log = await self.open_log(inline_limit=100)
        await log.append_each([("agent:status", status("a1"), None)], TS, T0)
        await log.append_each([("agent:status", status("a2", message="x" * 100), None),
                               ("agent:status", status("a3"), None)], TS, T0)
        await eventually(lambda: len(messages) == 2)
        self.assertEqual([(m.first, m.last, m.events is None) for m in messages],
                         [(1, 1, False), (2, 3, True)])

    async def test_nothing_appended_nothing_published(self) -> None:
        """
        A group that appends nothing (a repeat, a conflict, a refused claim) publishes
        nothing: the next message is the next append's.
        """
        _, messages, _ = await self.subscribed()
        log = await self.open_log()
        key = ("alice", "k", "f")
        await log.append_each([("session:activity", activity("s1", agentId="a1"), key)], TS, T0)
        await log.append_each([("session:activity", activity("s1", agentId="a1"), key),
                               ("session:activity", activity("s1"), ("alice", "k", "g")),
                               ("session:activity", activity("s1", agentId="a2"), None, "a2")],
                              TS, T0)
        await log.append_each([("agent:status", status("a1"), None)], TS, T0)
        await eventually(lambda: len(messages) == 2)
        await sleep(0.05)
        self.assertEqual([(m.first, m.last) for m in messages], [(1, 1), (2, 2)])

    async def test_subscribes_again_after_the_server_kills_it(self) -> None:
        """
        When Redis drops the subscriber's connection, on_lost is called, the subscriber
        connects and subscribes again by itself, on_connected is called again, and appends
        after that are heard.
        """
        lost: list[int] = []
        subscription, messages, connected = await self.subscribed(
            on_lost=lambda: lost.append(1))
        log = await self.open_log()
        await log.append_each([("agent:status", status("a1"), None)], TS, T0)
        await eventually(lambda: len(messages) == 1)
        killed = await self.admin.execute("CLIENT", "KILL", "ADDR",
                                          self.client_address(subscription))
        self.assertEqual(killed, 1)
        await eventually(lambda: len(connected) == 2)
        self.assertEqual((len(lost), subscription.active), (1, True))
        await log.append_each([("agent:status", status("a2"), None)], TS, T0)
        await eventually(lambda: len(messages) == 2)
        self.assertEqual(messages[1].first, 2)

    async def test_dead_link_noticed(self) -> None:
        """
        A link that stops carrying anything, without a close, is noticed by the pings: past
        ping_timeout the connection is dropped and made again, and on_connected called again.
        """
        proxy = RedisProxy()
        port = await proxy.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(lambda: Deferred.fromCoroutine(proxy.stop()))
        self.url = parse_redis_url(f"redis://127.0.0.1:{port}/0?prefix={self.prefix}")
        lost: list[int] = []
        subscription, _, connected = await self.subscribed(
            ping_interval=0.05, ping_timeout=0.2, on_lost=lambda: lost.append(1))
        proxy.frozen = True
        await eventually(lambda: lost)
        self.assertFalse(subscription.active)
        proxy.frozen = False
        await eventually(lambda: len(connected) == 2)
        self.assertTrue(subscription.active)

    async def test_keeps_pinging(self) -> None:
        """A live subscription pings the server on its connection every ping_interval."""
        subscription, _, _ = await self.subscribed(ping_interval=0.05)
        address = self.client_address(subscription)

        async def last_command() -> str:
            listing = (await self.admin.execute("CLIENT", "LIST", "TYPE", "pubsub")).decode()
            for line in listing.splitlines():
                fields = dict(field.split("=", 1) for field in line.split(" ") if "=" in field)
                if fields.get("addr") == address:
                    return fields["cmd"]
            return ""

        self.assertEqual(await last_command(), "subscribe")
        await sleep(0.2)
        self.assertEqual(await last_command(), "ping")

    async def test_stop_unsubscribes_for_good(self) -> None:
        """After stop the connection is closed and not made again; stopping twice is harmless."""
        subscription, messages, connected = await self.subscribed()
        address = self.client_address(subscription)
        await subscription.stop()
        await subscription.stop()
        await sleep(0.2)
        listing = (await self.admin.execute("CLIENT", "LIST", "TYPE", "pubsub")).decode()
        self.assertNotIn(f"addr={address} ", listing)
        self.assertEqual((len(connected), subscription.active), (1, False))

    async def test_foreign_message_skipped(self) -> None:
        """
        A message on the channel that is not an append (someone else's) is skipped; the
        messages after it are delivered.
        """
        _, messages, _ = await self.subscribed()
        await self.admin.execute("PUBLISH", self.keys.channel, "hello")
        log = await self.open_log()
        await log.append_each([("agent:status", status("a1"), None)], TS, T0)
        await eventually(lambda: messages)
        self.assertEqual([(m.first, m.last) for m in messages], [(1, 1)])

    async def test_failing_callback_does_not_stop_delivery(self) -> None:
        """A callback that raises is logged; the subscription goes on with the next message."""
        heard: list[int] = []

        def on_message(appended: Appended) -> None:
            heard.append(appended.first)
            if appended.first == 1:
                raise RuntimeError("a bug in the caller")

        connected: list[int] = []
        subscription = self.subscribe(on_message, lambda: connected.append(1))
        await eventually(lambda: connected)
        log = await self.open_log()
        for agent in ("a1", "a2"):
            await log.append_each([("agent:status", status(agent), None)], TS, T0)
        await eventually(lambda: len(heard) == 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(subscription.active)


class Replica:
    """
    The part of a node the gap test needs: the seqs it applied, in order, from messages when
    they follow on, else from the stream.
    """

    def __init__(self, log: RedisLog, last_seq: int) -> None:
        self.log = log
        self.last_seq = last_seq
        self.applied: list[int] = []
        self.connected = 0

    def apply(self, events: list[StoredEvent]) -> None:
        for event in events:
            if event.seq == self.last_seq + 1:
                self.applied.append(event.seq)
                self.last_seq = event.seq

    def on_message(self, appended: Appended) -> None:
        if appended.first == self.last_seq + 1 and appended.events is not None:
            self.apply(appended.events)
        else:
            self.repair()

    def on_connected(self) -> None:
        self.connected += 1
        self.repair()

    def repair(self) -> None:
        self.log.events_after(self.last_seq, 1000).addCallback(self.apply)


class LogAndSubscriptionTests(RedisTestMixin, TestCase):
    """A node's loop: load, subscribe, and repair a gap from the stream."""

    timeout = 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.redis_setup())

    async def test_gap_repaired_from_the_stream(self) -> None:
        """
        What was appended while a node's subscription was down is read back from the stream
        after on_connected, so the node ends with every seq once, in order.
        """
        writer = await self.open_log()
        reader = RedisLog(await self.connect(), self.prefix)
        replica = Replica(reader, (await reader.load()).last_seq)
        subscription = self.subscribe(replica.on_message, replica.on_connected)
        await eventually(lambda: replica.connected == 1)
        await writer.append_each([("agent:status", status("a1"), None)], TS, T0)
        await eventually(lambda: replica.applied == [1])
        await subscription.stop()
        for agent in ("a2", "a3"):
            await writer.append_each([("agent:status", status(agent), None)], TS, T0)
        self.subscribe(replica.on_message, replica.on_connected)
        await eventually(lambda: replica.connected == 2)
        await writer.append_each([("agent:status", status("a4"), None)], TS, T0)
        await eventually(lambda: replica.applied == [1, 2, 3, 4])

"""
Tests for L{mission_control.store.redis_log} and its scripts, against the real Redis on
127.0.0.1:6379: the semantics of IEventStore's appends, reads and retention, made shared by
several nodes (two logs over two connections stand for two hub processes), plus what only a
shared log has: a session claimed by two nodes at once, the epoch kept in Redis, and scripts the
server may have forgotten.  Where a rule is the memory store's, the memory store is run beside
the log and the two must agree.
"""

from __future__ import annotations

import json

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.trial.unittest import TestCase

from mission_control.ids import is_valid_epoch
from mission_control.store import redis_log
from mission_control.store.interface import (
    IDEMPOTENCY_WINDOW,
    IdempotencyConflict,
    Retention,
)
from mission_control.store.memory import MemoryStore
from mission_control.store.redis_log import EpochChanged, RedisLog, SessionTaken
from tests.redis_helpers import RedisTestMixin, count_keys, delete_keys, reconnected
from tests.helpers import T0, TS, activity, status


class RedisLogTestCase(RedisTestMixin, TestCase):
    """A trial TestCase with Redis set up for each test (see L{RedisTestMixin})."""

    timeout = 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.redis_setup())

    async def publish(self, log: RedisLog, n: int, now: float = T0, start: int = 0) -> list[int]:
        """Append C{n} agent statuses of agents C{a<start>}... in one group; their seqs."""
        results = await log.append_each(
            [("agent:status", status(f"a{i}"), None) for i in range(start, start + n)], TS, now)
        return [result[0].seq for result in results]  # type: ignore[index]

    async def seqs(self, log: RedisLog, after: int = 0, limit: int = 1000) -> list[int]:
        """The seqs of the retained events after C{after}."""
        return [event.seq for event in await log.events_after(after, limit)]

    async def owners_and_state(self, log: RedisLog) -> tuple:
        """What a node loading now would get: agents, sessions (payloads) and owners."""
        snapshot = await log.load()
        return ([entry.payload for entry in snapshot.agents],
                [entry.payload for entry in snapshot.sessions], snapshot.owners)


class LoadTests(RedisLogTestCase):
    async def test_first_load_creates_the_epoch(self) -> None:
        """
        The first load of a prefix begins a history: a new epoch (an epoch the hub accepts
        back), created true, last_seq 0, first_seq 1, no state and no owners.
        """
        log = RedisLog(await self.connect(), self.prefix)
        snapshot = await log.load()
        self.assertTrue(is_valid_epoch(snapshot.epoch))
        self.assertEqual((snapshot.created, snapshot.last_seq, snapshot.first_seq),
                         (True, 0, 1))
        self.assertEqual((snapshot.agents, snapshot.sessions, snapshot.owners), ([], [], {}))
        self.assertEqual(log.epoch, snapshot.epoch)

    async def test_later_loads_share_the_epoch(self) -> None:
        """Another node loading the same prefix gets the same epoch, not created by it."""
        first = await (await self.open_log()).load()
        other = RedisLog(await self.connect(), self.prefix)
        second = await other.load()
        self.assertEqual((second.epoch, second.created), (first.epoch, False))

    async def test_prefixes_are_separate_histories(self) -> None:
        """Two prefixes on one Redis are two hubs: their own epochs and seqs."""
        log = await self.open_log()
        await self.publish(log, 3)
        other_prefix = self.prefix + "-other"
        self.addCleanup(lambda: Deferred.fromCoroutine(
            delete_keys(self.admin, "{" + other_prefix + "}:*")))
        other = RedisLog(await self.connect(), other_prefix)
        snapshot = await other.load()
        self.assertNotEqual(snapshot.epoch, log.epoch)
        self.assertEqual(await self.publish(other, 1), [1])

    async def test_load_reads_the_state_in_order(self) -> None:
        """
        load gives the latest state of agents and sessions least recently updated first, each
        entry's encoding the payload's JSON, and the owners.
        """
        log = await self.open_log()
        await log.append_each([
            ("agent:status", status("a1"), None),
            ("session:activity", activity("s1", agentId="a1"), None),
            ("agent:status", status("a2", message="Résumé ✓"), None),
            ("session:activity", activity("s2"), None),
            ("agent:status", status("a1", "busy"), None),
        ], TS, T0)
        snapshot = await (await self.open_log()).load()
        self.assertEqual([entry.payload for entry in snapshot.agents],
                         [status("a2", message="Résumé ✓"), status("a1", "busy")])
        self.assertEqual([json.loads(entry.encoded) for entry in snapshot.agents],
                         [entry.payload for entry in snapshot.agents])
        self.assertEqual([entry.payload for entry in snapshot.sessions],
                         [activity("s1", agentId="a1"), activity("s2")])
        self.assertEqual((snapshot.owners, snapshot.last_seq, snapshot.first_seq),
                         ({"s1": "a1"}, 5, 1))

    async def test_epoch_stable_across_reconnect(self) -> None:
        """
        The epoch lives in Redis: a node whose connection was killed by the server reconnects
        and appends under the same epoch, and a node started later loads that same epoch.
        """
        connection = await self.connect()
        log = RedisLog(connection, self.prefix)
        epoch = (await log.load()).epoch
        await self.publish(log, 2)
        client_id = await connection.execute("CLIENT", "ID")
        self.assertEqual(await self.admin.execute("CLIENT", "KILL", "ID", client_id), 1)
        await reconnected(connection, client_id)
        self.assertEqual(await self.publish(log, 1, start=5), [3])
        again = await (await self.open_log()).load()
        self.assertEqual((again.epoch, again.created, again.last_seq), (epoch, False, 3))

    async def test_lost_keys_begin_a_new_history(self) -> None:
        """
        When the keys are lost (a Redis restarted without persistence), an append under the
        old epoch fails with EpochChanged and appends nothing; loading again begins a new
        history, with a new epoch and seqs from 1.
        """
        log = await self.open_log()
        old = log.epoch
        await self.publish(log, 3)
        await delete_keys(self.admin, self.keys.pattern)
        failure = await self.failing(log.append_each([("agent:status", status("a1"), None)],
                                                     TS, T0))
        self.assertIsInstance(failure, EpochChanged)
        self.assertEqual(str(failure), "the history in Redis is not the one this node loaded")
        self.assertEqual(await count_keys(self.admin, self.keys.pattern), 0)
        snapshot = await log.load()
        self.assertNotEqual(snapshot.epoch, old)
        self.assertEqual((snapshot.created, snapshot.last_seq), (True, 0))
        self.assertEqual(await self.publish(log, 1), [1])

    async def test_seq_counter_repaired_from_the_stream(self) -> None:
        """
        A seq counter lost alone (or behind the stream) is set back to the stream's newest id
        by the next load, so the next event still gets the next seq.
        """
        log = await self.open_log()
        await self.publish(log, 4)
        await self.admin.execute("DEL", self.keys.seq)
        snapshot = await log.load()
        self.assertEqual((snapshot.last_seq, snapshot.created), (4, False))
        self.assertEqual(await self.publish(log, 1, start=9), [5])

    async def test_append_before_load_refused(self) -> None:
        """A log that has not loaded its epoch refuses to append: it cannot check the epoch."""
        log = RedisLog(await self.connect(), self.prefix)
        failure = await self.failing(log.append_each([("agent:status", status("a1"), None)],
                                                     TS, T0))
        self.assertIsInstance(failure, RuntimeError)


class AppendTests(RedisLogTestCase):
    async def test_append_each_consecutive_seqs(self) -> None:
        """
        A group takes the next seqs, consecutive and in order, each item answered with its
        event (the group's ts) and created true; the history holds exactly those events.
        """
        log = await self.open_log()
        await self.publish(log, 1)
        items = [("agent:status", status("b1"), None),
                 ("session:activity", activity("s1", agentId="a1"), ("alice", "k1", "f")),
                 ("session:activity", activity("s1", "message", agentId="a2"), None)]
        results = await log.append_each(items, TS, T0)
        self.assertEqual([(e.seq, e.type, e.payload, e.ts, created) for e, created in results],
                         [(2 + i, kind, payload, TS, True)
                          for i, (kind, payload, _) in enumerate(items)])
        self.assertEqual(await log.events_after(1, 10), [e for e, _ in results])
        self.assertEqual((await log.session_owner("s1"), await log.last_seq()), ("a1", 4))

    async def test_seqs_gap_free_across_two_nodes(self) -> None:
        """
        Two logs over two connections appending at once, many groups each in flight together,
        get every seq from 1 exactly once: the history is 1..N in order, each event once.
        """
        one, two = await self.open_log(), await self.open_log()
        sent = []
        for round in range(25):
            for name, log in (("one", one), ("two", two)):
                items = [("agent:status", status(f"{name}-{round}-{i}"), None) for i in range(3)]
                sent.append(log.append_each(items, TS, T0))
        groups = await gatherResults(sent)
        seqs = sorted(result[0].seq for group in groups for result in group)
        self.assertEqual(seqs, list(range(1, 151)))
        history = await one.events_after(0, 1000)
        self.assertEqual([event.seq for event in history], seqs)
        self.assertEqual(len({event.payload["agentId"] for event in history}), 150)
        for group in groups:
            first = group[0][0].seq
            self.assertEqual([result[0].seq for result in group], [first, first + 1, first + 2])

    async def test_item_fails_alone(self) -> None:
        """
        An item whose key was used for another request, or that cannot be stored (not JSON, no
        agentId), is answered with its exception and appends nothing; the items around it are
        appended with consecutive seqs.
        """
        log = await self.open_log()
        await log.append_each([("agent:status", status("a1"), ("alice", "used", "f1"))], TS, T0)
        results = await log.append_each([
            ("agent:status", status("b1"), None),
            ("agent:status", status("a1", "busy"), ("alice", "used", "f2")),
            ("agent:status", status("x", x={1}), None),
            ("agent:status", {"status": "online"}, None),
            ("agent:status", status("x", message="\ud800"), None),
            ("agent:status", status("b2"), None),
        ], TS, T0)
        self.assertIsInstance(results[1], IdempotencyConflict)
        for index in (2, 3, 4):
            self.assertIsInstance(results[index], (TypeError, ValueError))
        self.assertEqual([(results[i][0].seq, results[i][1]) for i in (0, 5)],  # type: ignore
                         [(2, True), (3, True)])
        self.assertEqual(await self.seqs(log), [1, 2, 3])
        agents, _, _ = await self.owners_and_state(log)
        self.assertEqual([a["agentId"] for a in agents], ["a1", "b1", "b2"])

    async def test_group_of_failures_sends_nothing(self) -> None:
        """A group whose every item fails before Redis is answered without a script run."""
        log = await self.open_log()
        results = await log.append_each([("agent:status", {"status": "idle"}, None)], TS, T0)
        self.assertIsInstance(results[0], ValueError)
        self.assertEqual(await log.last_seq(), 0)

    async def test_payload_round_trip(self) -> None:
        """Nested objects, non-ASCII text and numbers come back exactly as appended."""
        log = await self.open_log()
        payload = activity(
            "s1", "tool_call", agentId="a1", summary="Résumé ✓ 日本",
            detail={"args": [1, 2.5, None, True, -0.0, 10**20], "nested": {"q": "\"'\\"}},
        )
        await log.append_each([("session:activity", payload, ("u", "k", "f"))], TS, T0)
        self.assertEqual((await log.events_after(0, 1))[0].payload, payload)
        [(again, created)] = await log.append_each(
            [("session:activity", payload, ("u", "k", "f"))], TS, T0)
        self.assertEqual((again.payload, created), (payload, False))
        _, sessions, _ = await self.owners_and_state(log)
        self.assertEqual(sessions, [payload])

    async def test_append_many_consecutive_seqs(self) -> None:
        """
        A batch takes the next seqs, consecutive and in order; every event carries the batch's
        ts and is in the history as returned; the next append follows it.
        """
        log = await self.open_log()
        await self.publish(log, 2)
        items = [("agent:status", status("b1")), ("session:activity", activity("s1")),
                 ("agent:status", status("b2", "busy"))]
        stored, created = await log.append_many(items, TS, T0)
        self.assertTrue(created)
        self.assertEqual([(e.seq, e.type, e.payload, e.ts) for e in stored],
                         [(3 + i, kind, payload, TS) for i, (kind, payload) in enumerate(items)])
        self.assertEqual(await log.events_after(2, 10), stored)
        self.assertEqual(await self.publish(log, 1, start=9), [6])

    async def test_append_many_bad_event_appends_nothing(self) -> None:
        """
        A batch with an event that cannot be stored raises and appends none of them: no seq, no
        state, no owner.  An empty batch is refused too.
        """
        log = await self.open_log()
        for bad in (("agent:status", {"status": "online"}), ("agent:status", status("x", x={1})),
                    ("presence:join", {"userId": "u"})):
            items = [("session:activity", activity("s1", agentId="a1")), bad,
                     ("agent:status", status("a9"))]
            failure = await self.failing(log.append_many(items, TS, T0))
            self.assertIsInstance(failure, (TypeError, ValueError))
        self.assertIsInstance(await self.failing(log.append_many([], TS, T0)), ValueError)
        self.assertEqual(await log.last_seq(), 0)
        self.assertEqual(await self.owners_and_state(log), ([], [], {}))

    async def test_owners_claimed_within_a_batch(self) -> None:
        """
        The first activity of a session in a batch that names an agent makes it the owner, and
        a later one naming another agent does not change that.
        """
        log = await self.open_log()
        await log.append_many([("session:activity", activity("s1")),
                               ("session:activity", activity("s1", agentId="a1")),
                               ("session:activity", activity("s1", "message", agentId="a2")),
                               ("session:activity", activity("s2", agentId="a2"))], TS, T0)
        self.assertEqual(await log.session_owner("s1"), "a1")
        self.assertEqual((await self.owners_and_state(log))[2], {"s1": "a1", "s2": "a2"})


class IdempotencyTests(RedisLogTestCase):
    async def test_repeat_returns_the_first_event(self) -> None:
        """
        A repeat of a key with the same fingerprint, from any node, returns the first event
        with created false and appends nothing: no seq, no history, no state change.
        """
        one, two = await self.open_log(), await self.open_log()
        [(first, created)] = await one.append_each(
            [("agent:status", status("a1"), ("alice", "k1", "f1"))], TS, T0)
        self.assertTrue(created)
        [again] = await two.append_each(
            [("agent:status", status("a1", "error"), ("alice", "k1", "f1"))], "later", T0 + 5)
        self.assertEqual(again, (first, False))
        self.assertEqual((await one.last_seq(), await self.seqs(one)), (1, [1]))
        self.assertEqual((await self.owners_and_state(one))[0], [status("a1")])

    async def test_conflict_per_item(self) -> None:
        """The same key with another fingerprint is a conflict for that item alone."""
        log = await self.open_log()
        await log.append_each([("agent:status", status("a1"), ("alice", "k1", "f1"))], TS, T0)
        results = await log.append_each([
            ("agent:status", status("a2"), ("alice", "k1", "f2")),
            ("agent:status", status("a3"), ("bob", "k1", "f2")),
        ], TS, T0)
        self.assertIsInstance(results[0], IdempotencyConflict)
        self.assertEqual((results[1][0].seq, results[1][1]), (2, True))  # type: ignore[index]

    async def test_key_repeated_within_the_group(self) -> None:
        """
        An item that repeats an earlier item's key with the same fingerprint is answered with
        that item's event, created false; another fingerprint is a conflict; a batch's key is
        one too.
        """
        log = await self.open_log()
        await log.append_many([("agent:status", status("a9"))], TS, T0, ("alice", "batch", "f"))
        results = await log.append_each([
            ("agent:status", status("a1"), ("alice", "k", "f")),
            ("agent:status", status("a1"), ("alice", "k", "f")),
            ("agent:status", status("a1", "idle"), ("alice", "k", "g")),
            ("agent:status", status("a1"), ("bob", "k", "f")),
            ("agent:status", status("a1"), ("alice", "batch", "f")),
        ], TS, T0)
        self.assertEqual(results[1], (results[0][0], False))  # type: ignore[index]
        self.assertIsInstance(results[2], IdempotencyConflict)
        self.assertEqual(results[3][0].seq, 3)  # type: ignore[index]
        self.assertIsInstance(results[4], IdempotencyConflict)
        self.assertEqual(await log.last_seq(), 3)

    async def test_batch_and_single_keys_do_not_mix(self) -> None:
        """
        A key first used by a batch is a conflict for a single append, and the other way
        round, even with the same fingerprint.
        """
        log = await self.open_log()
        await log.append_many([("agent:status", status("a1"))], TS, T0, ("alice", "kb", "f"))
        await log.append_each([("agent:status", status("a1"), ("alice", "ks", "f"))], TS, T0)
        [single] = await log.append_each([("agent:status", status("a1"), ("alice", "kb", "f"))],
                                         TS, T0)
        self.assertIsInstance(single, IdempotencyConflict)
        failure = await self.failing(
            log.append_many([("agent:status", status("a1"))], TS, T0, ("alice", "ks", "f")))
        self.assertIsInstance(failure, IdempotencyConflict)
        self.assertEqual(await log.last_seq(), 2)

    async def test_batch_repeat_returns_every_event(self) -> None:
        """
        A batch's key repeated with the same fingerprint returns every event of the first
        batch (their ts, types and payloads), created false, even after retention dropped
        them from the history; another fingerprint is a conflict.
        """
        log = await self.open_log(Retention(max_events=1))
        items = [("agent:status", status("a1")), ("session:activity", activity("s1"))]
        first, _ = await log.append_many(items, TS, T0, ("alice", "k1", "f1"))
        await self.publish(log, 2)
        await log.trim(T0)
        again = await log.append_many([("agent:status", status("a7"))], "later", T0 + 5,
                                      ("alice", "k1", "f1"))
        self.assertEqual(again, (first, False))
        failure = await self.failing(log.append_many(items, TS, T0, ("alice", "k1", "f2")))
        self.assertIsInstance(failure, IdempotencyConflict)
        self.assertEqual(await log.last_seq(), 4)

    async def test_key_expires_after_the_window(self) -> None:
        """
        IDEMPOTENCY_WINDOW seconds after the first use (by the callers' clock), a key is new
        again: it appends, even with another fingerprint, and its repeats return the new event.
        """
        log = await self.open_log()
        key = ("alice", "k1", "f1")
        await log.append_each([("agent:status", status("a1"), key)], TS, T0)
        [(_, created)] = await log.append_each([("agent:status", status("a1"), key)], TS,
                                               T0 + IDEMPOTENCY_WINDOW - 1)
        self.assertFalse(created)
        later = T0 + IDEMPOTENCY_WINDOW
        [(second, created)] = await log.append_each(
            [("agent:status", status("a1"), ("alice", "k1", "f2"))], TS, later)
        self.assertEqual((second.seq, created), (2, True))
        [again] = await log.append_each([("agent:status", status("a9"), ("alice", "k1", "f2"))],
                                        TS, later + 1)
        self.assertEqual(again, (second, False))

    async def test_keys_expire_in_redis(self) -> None:
        """
        An idempotency key's Redis key carries a TTL of the window and a minute of slack, so
        Redis forgets it without a trim; keys of users whose names hold colons stay apart.
        """
        log = await self.open_log()
        await log.append_each([("agent:status", status("a1"), ("a:b", "c", "f")),
                               ("agent:status", status("a2"), ("a", "b:c", "f"))], TS, T0)
        for user, key in (("a:b", "c"), ("a", "b:c")):
            ttl = await self.admin.execute("TTL", self.keys.idempotency(user, key))
            self.assertTrue(IDEMPOTENCY_WINDOW <= ttl <= IDEMPOTENCY_WINDOW + 60, ttl)
        self.assertEqual(await log.last_seq(), 2)


class ClaimTests(RedisLogTestCase):
    async def test_two_nodes_claim_one_session(self) -> None:
        """
        Two nodes that both saw a session unowned let two agents claim it at the same moment:
        exactly one is appended and owns it; the other item is refused with SessionTaken naming
        the winner, and appends nothing.  Over many sessions, whichever wins, never both.
        """
        one, two = await self.open_log(), await self.open_log()
        races = []
        for i in range(30):
            session = f"s{i}"
            races.append(DeferredList([
                one.append_each([("session:activity", activity(session, agentId="a1"), None,
                                  "a1")], TS, T0),
                two.append_each([("session:activity", activity(session, agentId="a2"), None,
                                  "a2")], TS, T0),
            ], fireOnOneErrback=True, consumeErrors=True))
        outcomes = await gatherResults(races)
        for i, outcome in enumerate(outcomes):
            [[first], [second]] = [results for _, results in outcome]
            won = [result for result in (first, second) if isinstance(result, tuple)]
            lost = [result for result in (first, second) if isinstance(result, SessionTaken)]
            self.assertEqual((len(won), len(lost)), (1, 1))
            winner = won[0][0].payload["agentId"]
            self.assertEqual((lost[0].owner, await one.session_owner(f"s{i}")), (winner, winner))
        self.assertEqual(await one.last_seq(), 30)

    async def test_claimant_joins_its_own_session(self) -> None:
        """A claimant's activity in a session it owns, or nobody owns, is appended."""
        log = await self.open_log()
        results = await log.append_each([
            ("session:activity", activity("s1", agentId="a1"), None, "a1"),
            ("session:activity", activity("s1", "message", agentId="a1"), None, "a1"),
            ("session:activity", activity("s2", agentId="a2"), None, "a2"),
        ], TS, T0)
        self.assertEqual([result[1] for result in results], [True] * 3)  # type: ignore

    async def test_unclaimed_items_are_appended_as_any_store_does(self) -> None:
        """
        Items without a claimant (an operator's) are appended into another agent's session,
        and the owner stays the first agent named, as every IEventStore keeps it.
        """
        log = await self.open_log()
        await log.append_each([("session:activity", activity("s1", agentId="a1"), None, "a1")],
                              TS, T0)
        [(event, created)] = await log.append_each(
            [("session:activity", activity("s1", agentId="a2"), None)], TS, T0)
        self.assertEqual((event.seq, created), (2, True))
        self.assertEqual(await log.session_owner("s1"), "a1")

    async def test_claimant_refused_in_a_batch(self) -> None:
        """
        A batch whose claimant meets another agent's session is refused whole with
        SessionTaken; one where an earlier item of the batch claims the session for the
        claimant is appended.
        """
        log = await self.open_log()
        await log.append_each([("session:activity", activity("s1", agentId="a1"), None)], TS, T0)
        failure = await self.failing(log.append_many(
            [("agent:status", status("a2")), ("session:activity", activity("s1", agentId="a2"))],
            TS, T0, claimant="a2"))
        self.assertIsInstance(failure, SessionTaken)
        self.assertEqual((failure.owner, await log.last_seq()), ("a1", 1))  # type: ignore
        stored, created = await log.append_many(
            [("session:activity", activity("s2", agentId="a2")),
             ("session:activity", activity("s2", "message", agentId="a2"))],
            TS, T0, claimant="a2")
        self.assertEqual(([e.seq for e in stored], created), ([2, 3], True))
        self.assertEqual(await log.session_owner("s2"), "a2")

    async def test_batch_claimed_by_another_earlier_in_it(self) -> None:
        """
        A claimant's batch in which an earlier item (naming another agent) claims the session
        is refused: the claim holds for the later items, as it would once stored.
        """
        log = await self.open_log()
        failure = await self.failing(log.append_many(
            [("session:activity", activity("s1", agentId="a1")),
             ("session:activity", activity("s1", agentId="a2"))], TS, T0, claimant="a2"))
        self.assertIsInstance(failure, SessionTaken)
        self.assertEqual((await log.last_seq(), await log.session_owner("s1")), (0, None))


class LatestStateTests(RedisLogTestCase):
    """The latest state in Redis is what a memory store with the same caps keeps."""

    async def assertSameAsMemory(self, retention: Retention, items: list) -> None:
        """Append C{items} one group each to both; the state and owners must agree."""
        memory = MemoryStore(retention)
        log = await self.open_log(retention)
        for item in items:
            memory.append_each([item], TS, T0)
            await log.append_each([item], TS, T0)
        await log.trim(T0)
        memory.trim(T0)
        agents, sessions, owners = await self.owners_and_state(log)
        self.assertEqual(agents, memory.agents())
        self.assertEqual(sessions, memory.sessions())
        named = {payload["sessionId"] for kind, payload, _ in items if "sessionId" in payload}
        self.assertEqual(owners, {session: memory.session_owner(session) for session in named
                                  if memory.session_owner(session) is not None})

    async def test_agent_cap_evicts_least_recently_updated(self) -> None:
        """Past max_agents the agent updated longest ago is forgotten."""
        await self.assertSameAsMemory(Retention(max_agents=2), [
            ("agent:status", status(agent), None) for agent in ("a1", "a2", "a1", "a3", "a2")])

    async def test_session_cap_evicts_least_recently_updated(self) -> None:
        """Past max_sessions the session updated longest ago is forgotten, its owner kept."""
        await self.assertSameAsMemory(Retention(max_sessions=2), [
            ("session:activity", activity(session, agentId="a1"), None)
            for session in ("s1", "s2", "s1", "s3", "s4")])

    async def test_sessions_capped_per_agent(self) -> None:
        """
        Past max_sessions_per_agent an agent's least recently updated session leaves the latest
        state; other agents' sessions and sessions naming no agent are not touched; a session
        whose latest activity names another agent counts for that one.
        """
        await self.assertSameAsMemory(Retention(max_sessions_per_agent=2), [
            ("session:activity", activity("x1", agentId="other"), None),
            ("session:activity", activity("n1"), None),
            *[("session:activity", activity(session, agentId="flood"), None)
              for session in ("s1", "s2", "s1", "s3", "s4")],
            ("session:activity", activity("s3", agentId="other"), None),
            ("session:activity", activity("s5", agentId="flood"), None),
            ("session:activity", activity("s4"), None),
            ("session:activity", activity("s6", agentId="flood"), None),
        ])

    async def test_zero_caps_keep_nothing(self) -> None:
        """Caps of zero keep no latest state at all, and still append."""
        await self.assertSameAsMemory(
            Retention(max_agents=0, max_sessions=0, max_sessions_per_agent=0),
            [("agent:status", status("a1"), None),
             ("session:activity", activity("s1", agentId="a1"), None)])

    async def test_no_keys_left_behind_by_eviction(self) -> None:
        """An agent whose sessions all left the state leaves no per-agent set behind."""
        log = await self.open_log(Retention(max_sessions=1))
        for session in ("s1", "s2"):
            await log.append_each([("session:activity", activity(session, agentId=session),
                                    None)], TS, T0)
        self.assertEqual(await count_keys(self.admin, self.keys.agent_sessions + "*"), 1)


class RetentionTests(RedisLogTestCase):
    async def test_retention_by_count(self) -> None:
        """
        At most max_events events are retained, the newest, as soon as the limit is passed;
        events_after from a trimmed seq gives the retained ones from first_seq.
        """
        log = await self.open_log(Retention(max_events=3))
        await self.publish(log, 5)
        self.assertEqual((await log.first_seq(), await self.seqs(log)), (3, [3, 4, 5]))
        self.assertEqual(await log.trim(T0), 3)
        self.assertEqual(await self.seqs(log, 1), [3, 4, 5])
        self.assertEqual(await self.seqs(log, 0, 1), [3])
        self.assertEqual(await self.seqs(log, 4, 10), [5])
        self.assertEqual((await log.load()).first_seq, 3)

    async def test_retention_by_age(self) -> None:
        """trim drops events older than max_age at the given now, and nothing before that."""
        log = await self.open_log(Retention(max_age=100))
        for offset in (0, 50, 100):
            await self.publish(log, 1, now=T0 + offset)
        self.assertEqual(await log.trim(T0 + 100), 1)
        self.assertEqual(await self.seqs(log), [1, 2, 3])
        self.assertEqual(await log.trim(T0 + 160), 3)
        self.assertEqual(await self.seqs(log), [3])

    async def test_age_retention_keeps_an_unbroken_range(self) -> None:
        """When the clock stepped back, trimming stops at the first event young enough."""
        log = await self.open_log(Retention(max_age=100))
        for offset in (0, 200, -100, 300):
            await self.publish(log, 1, now=T0 + offset)
        self.assertEqual(await log.trim(T0 + 150), 2)
        self.assertEqual(await self.seqs(log), [2, 3, 4])

    async def test_trim_in_bounded_steps(self) -> None:
        """
        Trimming more old events than one script looks at runs it again until done: the whole
        old range goes, and what is young stays.
        """
        self.patch(redis_log, "TRIM_BUDGET", 7)
        log = await self.open_log(Retention(max_age=100))
        await self.publish(log, 40, now=T0)
        await self.publish(log, 3, now=T0 + 500, start=40)
        self.assertEqual(await log.trim(T0 + 550), 41)
        self.assertEqual(await self.seqs(log), [41, 42, 43])

    async def test_last_seq_survives_trimming_everything(self) -> None:
        """
        When every event has aged out, last_seq stays, first_seq is last_seq + 1, and the next
        append continues the sequence.
        """
        log = await self.open_log(Retention(max_age=10))
        await self.publish(log, 3)
        self.assertEqual(await log.trim(T0 + 1000), 4)
        self.assertEqual((await log.last_seq(), await log.first_seq(), await self.seqs(log)),
                         (3, 4, []))
        self.assertEqual(await self.publish(log, 1, now=T0 + 1000), [4])
        self.assertEqual(await self.seqs(log), [4])

    async def test_trim_keeps_latest_state(self) -> None:
        """Trimming the history by age does not forget the latest state."""
        log = await self.open_log(Retention(max_age=10))
        await log.append_each([("agent:status", status("a1"), None),
                               ("session:activity", activity("s1"), None)], TS, T0)
        await log.trim(T0 + 1000)
        self.assertEqual(await self.owners_and_state(log), ([status("a1")], [activity("s1")], {}))

    async def test_session_owner_outlives_the_latest_state(self) -> None:
        """
        A session pushed out of the latest state keeps its owner while the history holds one
        of its events, and loses it once it does not.
        """
        log = await self.open_log(Retention(max_sessions=1, max_events=3))
        await log.append_each([("session:activity", activity("s1", agentId="a1"), None),
                               ("session:activity", activity("s1"), None),
                               ("session:activity", activity("s2", agentId="a2"), None)], TS, T0)
        await log.trim(T0)
        self.assertEqual(await log.session_owner("s1"), "a1")
        await self.publish(log, 2)
        await log.trim(T0)
        self.assertEqual((await log.session_owner("s1"), await log.session_owner("s2")),
                         (None, "a2"))

    async def test_session_owner_outlives_the_history(self) -> None:
        """A session whose events all aged out keeps its owner while its latest state is kept."""
        log = await self.open_log(Retention(max_age=10))
        await log.append_each([("session:activity", activity("s1", agentId="a1"), None)], TS, T0)
        await log.trim(T0 + 1000)
        self.assertEqual((await self.seqs(log), await log.session_owner("s1")), ([], "a1"))

    async def test_stale_position_trimmed(self) -> None:
        """trim forgets a position not saved within max_age, and keeps a recent one."""
        log = await self.open_log(Retention(max_age=100))
        await log.save_position("alice", "old", 1, T0)
        await log.save_position("alice", "new", 2, T0 + 150)
        await log.trim(T0 + 200)
        self.assertEqual((await log.position("alice", "old"), await log.position("alice", "new")),
                         (None, 2))


class PositionTests(RedisLogTestCase):
    async def test_positions(self) -> None:
        """
        A saved position is read back, by any node; a later save replaces it; positions are
        kept apart per user and client name (colons in names included); unknown is None.
        """
        one, two = await self.open_log(), await self.open_log()
        await one.save_position("alice", "wall", 41, T0)
        await one.save_position("alice", "laptop", 2, T0)
        await one.save_position("a:b", "c", 3, T0)
        await one.save_position("a", "b:c", 4, T0)
        await two.save_position("alice", "wall", 57, T0)
        found = [await one.position(user, client)
                 for user, client in [("alice", "wall"), ("alice", "laptop"), ("a:b", "c"),
                                      ("a", "b:c"), ("bob", "wall")]]
        self.assertEqual(found, [57, 2, 3, 4, None])


class ScriptTests(RedisLogTestCase):
    async def test_scripts_run_again_after_flush(self) -> None:
        """
        A server that forgot the scripts (SCRIPT FLUSH, a restart, a failover) answers
        NOSCRIPT to EVALSHA; the log sends the script itself, and goes on with EVALSHA.
        """
        log = await self.open_log()
        await self.publish(log, 1)
        await self.admin.execute("SCRIPT", "FLUSH")
        self.assertEqual(await self.publish(log, 1, start=1), [2])
        exists = await self.admin.execute("SCRIPT", "EXISTS", redis_log.APPEND_EACH.sha)
        self.assertEqual(exists, [1])

    async def test_pure_python_parser(self) -> None:
        """
        The log reads its replies alike with txredisapi's pure-Python parser (used when
        hiredis is not installed): appends, repeats, history and snapshot.
        """
        connection = await self.connect(protocol=txredisapi.BaseRedisProtocol)
        log = RedisLog(connection, self.prefix)
        await log.load()
        key = ("u", "k", "f")
        [(first, _)] = await log.append_each([("agent:status", status("a1", message="é"), key)],
                                             TS, T0)
        [again] = await log.append_each([("agent:status", status("a1"), key)], TS, T0)
        self.assertEqual(again, (first, False))
        self.assertEqual(await log.events_after(0, 10), [first])
        self.assertEqual((await log.load()).agents[0].payload, first.payload)
        self.assertEqual(await log.trim(T0), 1)
        self.assertEqual(await log.first_seq(), 1)

    async def test_events_are_stream_entries(self) -> None:
        """
        The history is a stream of entries <seq>-0 with the fields type, payload (its JSON),
        ts and created: what another tool reading Redis sees.
        """
        log = await self.open_log()
        await log.append_each([("agent:status", status("a1"), None)], TS, T0 + 0.25)
        [[entry_id, fields]] = await self.admin.execute("XRANGE", self.keys.events, "-", "+")
        self.assertEqual(entry_id, b"1-0")
        fields = dict(zip(fields[::2], fields[1::2]))
        self.assertEqual(fields, {b"type": b"agent:status",
                                  b"payload": json.dumps(status("a1"),
                                                         separators=(",", ":")).encode(),
                                  b"ts": TS.encode(), b"created": repr(T0 + 0.25).encode()})

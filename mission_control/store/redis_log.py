# -*- test-case-name: tests.test_store_redis_log -*-
"""
The shared event log on Redis, for several hub processes: one gap-free seq, one history, one
latest state, one set of idempotency keys and session owners, whichever node appends.

A node keeps its own replica of the history and the latest state for its synchronous reads
(fed by L{mission_control.store.redis_pubsub}); L{RedisLog} is what the replica is loaded from
(L{RedisLog.load}), repaired from (L{RedisLog.events_after}) and written through: every write
is one of the scripts of L{mission_control.store.redis_scripts}, so it is atomic however many
nodes write at once.  The semantics are those of L{IEventStore}'s C{append_each},
C{append_many}, C{events_after}, C{trim}, C{save_position} and C{position}, made asynchronous
(each answers a L{Deferred}), with one addition: a claimant.

The claimant.  The hub checks before it appends that an agent does not publish into another
agent's session, against its replica's owners.  Two nodes may both see a session unowned and
both let their agent claim it; so an item may name a claimant (the publishing agent), and the
script refuses it with L{SessionTaken}, as that item's result, when Redis says the session is
owned by another agent.  Items published by an administrator or operator name none and are
appended as any store appends them (the owner stays the first agent named).

The epoch.  L{load} creates the epoch the first time a prefix is used (C{SET NX}), and every
append checks it: when the keys were lost (a Redis restarted without persistence, a FLUSHDB)
appends fail with L{EpochChanged} until the node loads again, into the new history, rather
than numbering events from 1 under the old epoch's name.

Payloads are encoded in Python (L{mission_control.events.encode_json}), so the scripts only
store bytes; a payload that cannot be encoded, or has no agentId / sessionId, fails before
anything is sent, as it would in any store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred

from mission_control.events import SESSION_ACTIVITY, encode_json
from mission_control.store.interface import (
    IDEMPOTENCY_WINDOW,
    EachItem,
    EachResult,
    Idempotency,
    IdempotencyConflict,
    Retention,
    StateEntry,
    SessionTaken,
    StoredEvent,
    StoreUnavailable,
)
from mission_control.store.redis_connection import Argument, RedisConnection
from mission_control.store.redis_scripts import (
    APPEND_EACH,
    APPEND_MANY,
    APPENDED,
    CONFLICT,
    EPOCH_ERROR,
    LOAD,
    REPEATED,
    SAVE_POSITION,
    TAKEN,
    TRIM,
    RedisKeys,
    Script,
    message_head,
)
from mission_control.store.redis_url import DEFAULT_PREFIX
from mission_control.store.rules import check_retention, new_epoch, state_key

#: An item of L{RedisLog.append_each} that names its claimant: C{(event_type, payload,
#: idempotency or None, claimant or None)}.  A plain L{EachItem} names none.
ClaimedItem = Tuple[str, dict, Optional[Idempotency], Optional[str]]

#: How long an idempotency key stays in Redis: the window, and a minute for clocks that differ
#: between the nodes and Redis (the window itself is checked against the caller's C{now}).
KEY_TTL = int(math.ceil(IDEMPOTENCY_WINDOW)) + 60

#: The most events one L{RedisLog.trim} script looks at before it lets other clients run; the
#: call runs the script again until it is done.
TRIM_BUDGET = 10_000

#: The most payload bytes an append's message carries inline (see redis_pubsub).
INLINE_LIMIT = 64 * 1024


class EpochChanged(StoreUnavailable):
    """
    The history in Redis is not the one this log loaded (the keys were lost and a new
    history begun): nothing was appended; load again.
    """


@dataclass(frozen=True)
class RedisSnapshot:
    """
    What a starting node needs, read in one step (L{RedisLog.load}).

    @ivar created: this load began the history (the prefix's keys were empty or lost).
    @ivar agents: the latest state of each agent, least recently updated first.
    @ivar sessions: the latest state of each session, least recently updated first.
    @ivar owners: session id -> the agent that owns it.
    """

    epoch: str
    created: bool
    last_seq: int
    first_seq: int
    agents: list[StateEntry]
    sessions: list[StateEntry]
    owners: dict[str, str]


class RedisLog:
    """
    The shared log of the hub whose keys start with C{{prefix}:}, over C{connection}.

    @ivar epoch: the history's name, once L{load} has read it; C{None} before.
    """

    def __init__(self, connection: RedisConnection, prefix: str = DEFAULT_PREFIX,
                 retention: Retention = Retention(), inline_limit: int = INLINE_LIMIT) -> None:
        check_retention(retention)
        self.connection = connection
        self.keys = RedisKeys(prefix)
        self.retention = retention
        self.inline_limit = inline_limit
        self.epoch: Optional[str] = None

    # Starting

    def load(self) -> Deferred[RedisSnapshot]:
        """
        The epoch (created when there is none), last_seq, first_seq, the latest state and the
        session owners, as one consistent snapshot; the epoch is this log's from then on.
        """
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> RedisSnapshot:
        reply = await self.connection.evaluate(LOAD, self.keys.load_keys(), [new_epoch()])
        epoch, created, last, first, agents, sessions, owners = reply
        snapshot = RedisSnapshot(
            epoch=_text(epoch), created=bool(created), last_seq=int(last), first_seq=int(first),
            agents=_entries(agents), sessions=_entries(sessions),
            owners={_text(owners[i]): _text(owners[i + 1]) for i in range(0, len(owners), 2)},
        )
        self.epoch = snapshot.epoch
        return snapshot

    # Appending

    def append_each(self, items: Sequence[Union[EachItem, ClaimedItem]], ts: str,
                    now: float) -> Deferred[list[EachResult]]:
        """
        Append each of C{items} as L{IEventStore.append_each} does, in one script: each item
        succeeds or fails alone, its result C{(event, created)} or its exception
        (L{IdempotencyConflict}, L{SessionTaken} for an item whose claimant is refused,
        C{ValueError}/C{TypeError} for one that cannot be stored).  Fails as a whole, with
        nothing appended, with L{EpochChanged}; with L{RedisUnavailable} when the script may
        or may not have run.
        """
        return Deferred.fromCoroutine(self._append_each(items, ts, now))

    async def _append_each(self, items: Sequence[Union[EachItem, ClaimedItem]], ts: str,
                           now: float) -> list[EachResult]:
        results: list[Optional[EachResult]] = [None] * len(items)
        sent: list[int] = []
        args: list[Argument] = []
        for index, item in enumerate(items):
            event_type, payload, idempotency = item[0], item[1], item[2]
            claimant = item[3] if len(item) == 4 else None
            try:
                fields = _item_args(event_type, payload)
            except (TypeError, ValueError) as e:
                results[index] = e
                continue
            idem, fingerprint = self._idempotency_args(idempotency)
            args += [*fields, claimant or "", idem, fingerprint]
            sent.append(index)
        if sent:
            replies = await self._run_append(APPEND_EACH, ts, now, [len(sent), *args])
            for index, reply in zip(sent, replies):
                event_type, payload = items[index][0], items[index][1]
                results[index] = _each_result(reply, event_type, payload, ts)
        return [result for result in results if result is not None]

    def append_many(self, items: Sequence[Tuple[str, dict]], ts: str, now: float,
                    idempotency: Optional[Idempotency] = None,
                    claimant: Optional[str] = None) -> Deferred[Tuple[list[StoredEvent], bool]]:
        """
        Append C{items} as one batch, all or nothing, as L{IEventStore.append_many} does:
        C{(events, created)}.  With a C{claimant}, every session activity of the batch must be
        in a session that is free or the claimant's (owners claimed by earlier items of the
        batch count), else L{SessionTaken} and nothing is appended.  Fails with
        L{IdempotencyConflict}, C{ValueError} (an empty batch, an event that cannot be
        stored), L{EpochChanged} or L{RedisUnavailable}.
        """
        return Deferred.fromCoroutine(self._append_many(items, ts, now, idempotency, claimant))

    async def _append_many(self, items: Sequence[Tuple[str, dict]], ts: str, now: float,
                           idempotency: Optional[Idempotency],
                           claimant: Optional[str]) -> Tuple[list[StoredEvent], bool]:
        if not items:
            raise ValueError("a batch needs at least one event")
        args: list[Argument] = []
        for event_type, payload in items:
            args += _item_args(event_type, payload)
        idem, fingerprint = self._idempotency_args(idempotency)
        reply = await self._run_append(APPEND_MANY, ts, now,
                                       [idem, fingerprint, claimant or "", len(items), *args])
        code = reply[0]
        if code == APPENDED:
            first = int(reply[1])
            return [StoredEvent(seq=first + i, type=event_type, payload=payload, ts=ts)
                    for i, (event_type, payload) in enumerate(items)], True
        if code == REPEATED:
            return _repeated(reply), False
        if code == TAKEN:
            raise SessionTaken(_text(reply[1]))
        raise IdempotencyConflict("the Idempotency-Key was used for a different request")

    def _idempotency_args(self, idempotency: Optional[Idempotency]) -> tuple[str, str]:
        if idempotency is None:
            return "", ""
        user, key, fingerprint = idempotency
        return self.keys.idempotency(user, key), fingerprint

    async def _run_append(self, script: Script, ts: str, now: float,
                          tail: list[Argument]) -> Any:
        if self.epoch is None:
            raise RuntimeError("load() the log before appending to it")
        retention = self.retention
        header: list[Argument] = [
            self.epoch, repr(float(now)), ts, encode_json(ts), int(retention.max_events),
            int(retention.max_agents), int(retention.max_sessions),
            int(retention.max_sessions_per_agent), int(self.inline_limit), self.keys.agent_sessions, self.keys.channel,
            message_head(self.epoch, float(now)), repr(IDEMPOTENCY_WINDOW), KEY_TTL,
        ]
        try:
            return await self.connection.evaluate(script, self.keys.append_keys(),
                                                  header + tail)
        except Exception as e:
            if str(e).startswith(EPOCH_ERROR):
                raise EpochChanged(str(e)[len(EPOCH_ERROR):].strip()) from None
            raise

    # Reading

    def events_after(self, seq: int, limit: int) -> Deferred[list[StoredEvent]]:
        """Up to C{limit} retained events with a seq greater than C{seq}, oldest first."""
        return Deferred.fromCoroutine(self._events_after(seq, limit))

    async def _events_after(self, seq: int, limit: int) -> list[StoredEvent]:
        if limit <= 0:
            return []
        entries = await self.connection.execute("XRANGE", self.keys.events,
                                                str(max(seq, 0) + 1), "+", "COUNT", limit)
        return [_stream_event(entry) for entry in entries]

    def last_seq(self) -> Deferred[int]:
        """The seq of the newest event ever appended; 0 before the first."""
        return Deferred.fromCoroutine(self._last_seq())

    async def _last_seq(self) -> int:
        value = await self.connection.execute("GET", self.keys.seq)
        return 0 if value is None else int(value)

    def first_seq(self) -> Deferred[int]:
        """The seq of the oldest retained event; last_seq + 1 when none is."""
        return Deferred.fromCoroutine(self._first_seq())

    async def _first_seq(self) -> int:
        # One round trip for both, so that an append between them cannot be half seen.
        last, head = await self._pipelined(("GET", self.keys.seq),
                                           ("XRANGE", self.keys.events, "-", "+", "COUNT", 1))
        if head:
            return _seq_of(head[0][0])
        return (0 if last is None else int(last)) + 1

    async def _pipelined(self, *commands: tuple[Argument, ...]) -> list[Any]:
        sent = [self.connection.execute(*command) for command in commands]
        return [await reply for reply in sent]

    def session_owner(self, session_id: str) -> Deferred[Optional[str]]:
        """The agent that owns C{session_id} in Redis, or C{None}."""
        return Deferred.fromCoroutine(self._session_owner(session_id))

    async def _session_owner(self, session_id: str) -> Optional[str]:
        owner = await self.connection.execute("HGET", self.keys.owners, session_id)
        return None if owner is None else _text(owner)

    # Retention

    def trim(self, now: float) -> Deferred[int]:
        """
        Apply the retention limits as L{IEventStore.trim} does: events past C{max_events} or
        older than C{max_age} at C{now} leave the front of the stream, owners of sessions with
        neither an event nor a latest state left are forgotten, and so are positions not saved
        within C{max_age}.  Idempotency keys expire by themselves (their keys' TTL).  Runs the
        script as many times as it takes, each looking at a bounded number of events.

        @return: the new first_seq.
        """
        return Deferred.fromCoroutine(self._trim(now))

    async def _trim(self, now: float) -> int:
        cutoff = now - self.retention.max_age
        bound = repr(cutoff) if math.isfinite(cutoff) else "-inf"
        while True:
            first, more = await self.connection.evaluate(
                TRIM, self.keys.trim_keys(),
                [bound, int(self.retention.max_events), TRIM_BUDGET])
            if not more:
                return int(first)

    # Client positions

    def save_position(self, user: str, client: str, seq: int, now: float) -> Deferred[None]:
        """Remember that C{user}'s client named C{client} has processed everything up to C{seq}."""
        field = self.keys.position_field(user, client)
        saved = self.connection.evaluate(SAVE_POSITION,
                                         [self.keys.positions, self.keys.position_times],
                                         [field, seq, repr(float(now))])
        return saved.addCallback(lambda _: None)

    def position(self, user: str, client: str) -> Deferred[Optional[int]]:
        """The seq saved by L{save_position} for this user and client name, or C{None}."""
        field = self.keys.position_field(user, client)
        read = self.connection.execute("HGET", self.keys.positions, field)
        return read.addCallback(lambda value: None if value is None else int(value))


def _item_args(event_type: str, payload: dict) -> list[Argument]:
    """
    An event's ARGV for the scripts: its type, state key, encoded payload and agentId (for a
    session's activity: the agent that may claim it, and whose sessions it counts among).

    @raise ValueError: for a type that is not stored, a payload without its id, or one that
        is not JSON.
    @raise TypeError: for a payload that cannot be encoded.
    """
    key = state_key(event_type, payload)
    encoded = encode_json(payload)
    agent = payload.get("agentId") if event_type == SESSION_ACTIVITY else None
    return [event_type, key, encoded, agent if isinstance(agent, str) else ""]


def _each_result(reply: list, event_type: str, payload: dict, ts: str) -> EachResult:
    code = reply[0]
    if code == APPENDED:
        return StoredEvent(seq=int(reply[1]), type=event_type, payload=payload, ts=ts), True
    if code == REPEATED:
        return _repeated(reply)[0], False
    if code == TAKEN:
        return SessionTaken(_text(reply[1]))
    if code == CONFLICT:
        return IdempotencyConflict("the Idempotency-Key was used for a different request")
    raise ValueError(f"unexpected reply from the append script: {code!r}")


def _repeated(reply: list) -> list[StoredEvent]:
    """The events of an idempotent repeat: C{{2, first, ts, count, type, payload, ...}}."""
    first, ts, count = int(reply[1]), _text(reply[2]), int(reply[3])
    return [StoredEvent(seq=first + i, type=_text(reply[4 + 2 * i]),
                        payload=json.loads(reply[5 + 2 * i]), ts=ts)
            for i in range(count)]


def _stream_event(entry: list) -> StoredEvent:
    """A stream entry C{[id, [field, value, ...]]} as the event it holds."""
    entry_id, flat = entry
    fields = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
    return StoredEvent(seq=_seq_of(entry_id), type=_text(fields["type"]),
                       payload=json.loads(fields["payload"]), ts=_text(fields["ts"]))


def _entries(values: list) -> list[StateEntry]:
    """The latest state as L{StateEntry}s, in the order given (a missing value is left out)."""
    return [StateEntry(json.loads(value), bytes(value))
            for value in values if value is not None]


def _seq_of(entry_id: Union[bytes, str]) -> int:
    return int(_text(entry_id).partition("-")[0])


def _text(value: Union[bytes, str, int]) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)

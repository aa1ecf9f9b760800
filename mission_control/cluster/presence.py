# -*- test-case-name: tests.test_cluster_presence -*-
"""
Who is connected, across every hub process on one Redis prefix.

Each node keeps its own connections' counts per user, and a view of every other node's, so
that the node's questions stay synchronous (is this agent connected anywhere? how many
connections has this user? who is here?): the per-user connection limit, presence events and
agents' liveness then hold for the cluster, not for one process.

What a node tells the others, and how:

  - C{{P}:presence:<node>}, a hash: user id -> C{{"count", "name", "role", "since"}} of the
    user's connections on that node; it expires unless the node renews it.
  - C{{P}:nodes}, a sorted set: node id scored by when its entry expires; every node renews its
    own every L{ClusterPresence.heartbeat} seconds, for L{ClusterPresence.ttl} seconds.
  - A message on the log's channel for each change, C{{"presence": node, "user": ..., "count":
    n, ...}} (the node's count for that user now, so a message that is seen twice changes
    nothing), and C{{"presence": node, "gone": true}} when a node stops cleanly.

A node that dies without a word stops renewing: at its next heartbeat after the expiry each
other node drops it from its view (its users' leave is told to each node's own subscribers),
and one of them, the one that wins C{SET NX} on C{{P}:reaped:<node>}, is told of the dead
node's agents (L{ClusterPresence.on_node_gone}) so that they are marked offline once, by one
node.  The bound: an agent on a node killed with C{kill -9} is offline within C{ttl +
heartbeat} seconds.  A message lost while a subscription was down is made good by reading every
node's hash again when the subscription is back.

The counts are as fresh as the messages (milliseconds): two handshakes of one user on two
nodes in the same instant can both pass a per-user limit that has one connection left.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from mission_control.hub.presence import IPresenceManager, PresenceChange, entry_of
from mission_control.policy import Principal
from mission_control.store.redis_connection import RedisConnection

#: C{on_node_gone(entries)}: the presence entries (C{{"id", "name", "role", "since"}}) that a
#: dead node held and no other node does.
NodeGone = Callable[[list[dict]], None]


@implementer(IPresenceManager)
class ClusterPresence:
    """
    The presence of every node on one prefix, as this node sees it.

    @ivar node_id: this node's name.
    """

    log = Logger()
    #: Seconds between a node's renewals of its entry, and how long an entry lives unrenewed.
    heartbeat = 2.0
    ttl = 6.0

    def __init__(self, clock: IReactorTime, connection: RedisConnection, base: str,
                 channel: str, node_id: str) -> None:
        """
        @param base: the prefix of this hub's keys (C{{P}:}).
        @param channel: the channel every node hears (the log's).
        """
        self.clock = clock
        self.connection = connection
        self.node_id = node_id
        self.channel = channel
        self._key = f"{base}presence:{node_id}"
        self._base = base
        self._nodes_key = f"{base}nodes"
        self.on_change: PresenceChange = lambda event_type, info, count: None
        self.on_node_gone: NodeGone = lambda entries: None
        # This node's connections: user -> count, and their entries.
        self._counts: dict[str, int] = {}
        self._entries: dict[str, dict] = {}
        # The others: node -> user -> (count, entry).
        self._others: dict[str, dict[str, tuple[int, dict]]] = {}
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock
        self._stopped = False

    # IPresenceManager

    def connected(self, principal: Principal, now: float) -> None:
        user = principal.sub
        before = self.count(user)
        count = self._counts[user] = self._counts.get(user, 0) + 1
        if count == 1:
            self._entries[user] = entry_of(principal, now)
        self._tell(user)
        if before == 0:
            self.on_change("presence:join", self._entries[user], self.count(user))

    def disconnected(self, principal: Principal) -> None:
        user = principal.sub
        if user not in self._counts:
            return
        count = self._counts[user] - 1
        info = self._entries[user]
        if count > 0:
            self._counts[user] = count
        else:
            del self._counts[user], self._entries[user]
        self._tell(user)
        if self.count(user) == 0:
            self.on_change("presence:leave", info, 0)

    def count(self, user_id: str) -> int:
        total = self._counts.get(user_id, 0)
        for users in self._others.values():
            held = users.get(user_id)
            if held is not None:
                total += held[0]
        return total

    def get(self, user_id: str) -> dict | None:
        info = self._entries.get(user_id)
        if info is not None:
            return info
        for users in self._others.values():
            held = users.get(user_id)
            if held is not None:
                return held[1]
        return None

    def entries(self) -> Iterator[dict]:
        users = set(self._entries)
        for held in self._others.values():
            users.update(held)
        for user in sorted(users):
            info = self.get(user)
            if info is not None:
                yield info

    def nodes(self) -> list[str]:
        """The nodes this node knows to be alive, itself included, by id."""
        return sorted({self.node_id, *self._others})

    # Telling the others

    def _tell(self, user: str) -> None:
        """Write this node's count of C{user} to Redis and tell the other nodes."""
        count = self._counts.get(user, 0)
        body: dict[str, Any] = {"presence": self.node_id, "user": user, "count": count}
        if count:
            body.update(_held(count, self._entries[user]))
            write = self.connection.execute("HSET", self._key, user,
                                            json.dumps(_held(count, self._entries[user])))
        else:
            write = self.connection.execute("HDEL", self._key, user)
        write.addCallback(lambda _: self.connection.execute(
            "PUBLISH", self.channel, json.dumps(body, separators=(",", ":"))))
        write.addErrback(self._failed, "telling the other nodes of a connection")

    def _failed(self, failure: Any, what: str) -> None:
        # Redis out of reach: the subscription's return rewrites everything (see resync).
        self.log.debug("{what} failed: {why}", what=what, why=failure.getErrorMessage())

    # Hearing from the others

    def received(self, body: dict) -> None:
        """A presence message of some node (the subscription calls this)."""
        node = body.get("presence")
        if not isinstance(node, str) or node == self.node_id:
            return
        if body.get("gone") is True:
            self._drop(node)
            return
        user, count = body.get("user"), body.get("count")
        if not isinstance(user, str) or not isinstance(count, int) or isinstance(count, bool):
            return
        self._set(node, user, count, body)

    def _set(self, node: str, user: str, count: int, held: dict) -> None:
        before = self.count(user)
        users = self._others.setdefault(node, {})
        if count > 0:
            users[user] = (count, _entry(user, held))
        else:
            users.pop(user, None)
        after = self.count(user)
        if before == 0 and after > 0:
            self.on_change("presence:join", self.get(user) or _entry(user, held), after)
        elif before > 0 and after == 0:
            self.on_change("presence:leave", _entry(user, held), 0)

    def _drop(self, node: str) -> list[dict]:
        """Forget C{node}'s connections; the entries of its users now gone from everywhere."""
        users = self._others.pop(node, {})
        gone = []
        for user, (_, info) in sorted(users.items()):
            if self.count(user) == 0:
                self.on_change("presence:leave", info, 0)
                gone.append(info)
        return gone

    # The heartbeat, dead nodes, and making good what was missed

    def start(self) -> None:
        """Start renewing this node's entry and watching the others'; read them all now."""
        self._beat.start(self.heartbeat, now=True)

    def resync(self) -> Deferred[None]:
        """
        Write this node's whole state again and read every live node's: after the subscription
        was made again (messages were missed) or this node's entry had expired.
        """
        return Deferred.fromCoroutine(self._resync())

    async def _resync(self) -> None:
        execute = self.connection.execute
        await execute("DEL", self._key)
        for user, count in self._counts.items():
            await execute("HSET", self._key, user, json.dumps(_held(count, self._entries[user])))
            await execute("PUBLISH", self.channel, json.dumps(
                {"presence": self.node_id, "user": user, **_held(count, self._entries[user])}))
        await execute("PEXPIRE", self._key, int(self.ttl * 1000))
        now = self.clock.seconds()
        alive = await execute("ZRANGEBYSCORE", self._nodes_key, repr(now), "+inf")
        seen: dict[str, dict[str, tuple[int, dict]]] = {}
        for node in map(_text, alive):
            if node == self.node_id:
                continue
            fields = await execute("HGETALL", f"{self._base}presence:{node}")
            users = seen[node] = {}
            for i in range(0, len(fields), 2):
                user = fields[i].decode()
                try:
                    held = json.loads(fields[i + 1])
                    users[user] = (int(held["count"]), _entry(user, held))
                except (ValueError, KeyError, TypeError):
                    continue
        for node in set(self._others) - set(seen):
            self._drop(node)
        for node, users in seen.items():
            for user in set(self._others.get(node, {})) - set(users):
                self._set(node, user, 0, {})
            for user, (count, info) in users.items():
                self._set(node, user, count, info)

    def _heartbeat(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._beat_once())
        d.addErrback(self._failed, "the presence heartbeat")
        return d

    async def _beat_once(self) -> None:
        execute = self.connection.execute
        now = self.clock.seconds()
        added = await execute("ZADD", self._nodes_key, repr(now + self.ttl), self.node_id)
        await execute("PEXPIRE", self._key, int(self.ttl * 1000))
        if added:
            # New, or reaped by the others while this node did not renew: tell them again.
            await self._resync()
        dead = await execute("ZRANGEBYSCORE", self._nodes_key, "-inf", repr(now))
        for node in map(_text, dead):
            if node != self.node_id:
                await self._reap(node)
        # A node reaped by another node is no longer in the set at all.
        alive = set(map(_text, await execute("ZRANGEBYSCORE", self._nodes_key, repr(now),
                                             "+inf")))
        for node in set(self._others) - alive:
            self._drop(node)

    async def _reap(self, node: str) -> None:
        """A node's entry expired: forget it; the one node that claims it tells of its agents."""
        gone = self._drop(node)
        claimed = await self.connection.execute("SET", f"{self._base}reaped:{node}", "1", "NX",
                                                "EX", 60)
        if claimed is None:
            return
        await self.connection.execute("ZREM", self._nodes_key, node)
        await self.connection.execute("DEL", f"{self._base}presence:{node}")
        self.log.warn("hub node {node} stopped renewing its presence: its {count} users are "
                      "gone", node=node, count=len(gone))
        self.on_node_gone(gone)

    def stop(self) -> Deferred[Any]:
        """Stop the heartbeat and leave the cluster: remove this node's entry, tell the others."""
        self._stopped = True
        if self._beat.running:
            self._beat.stop()
        if not self.connection.connected:
            return defer.succeed(None)
        execute = self.connection.execute
        steps = [execute("DEL", self._key), execute("ZREM", self._nodes_key, self.node_id),
                 execute("PUBLISH", self.channel,
                         json.dumps({"presence": self.node_id, "gone": True}))]
        return defer.gatherResults(steps, consumeErrors=True).addErrback(
            self._failed, "leaving the cluster")


def _held(count: int, info: dict) -> dict:
    """What a node writes of one user: the count and the entry's fields."""
    return {"count": count, "name": info["name"], "role": info["role"], "since": info["since"]}


def _entry(user: str, held: dict) -> dict:
    """The presence entry of C{user} from what a node wrote of them."""
    return {"id": user, "name": held.get("name"), "role": held.get("role"),
            "since": held.get("since")}


def _text(value: Any) -> str:
    """A reply's bytes as text."""
    return value.decode() if isinstance(value, bytes) else str(value)

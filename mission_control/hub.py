# -*- test-case-name: tests.test_hub -*-
"""
The hub: the registry of live connections, publishing, fan-out, resume, heartbeats, token expiry,
and the replies to client frames.

It knows nothing of sockets.  A connection is anything with the L{IConnection} attributes; the
WebSocket protocol (L{mission_control.protocol}) is one, the tests' fakes are another.  Time comes
from an injected C{IReactorTime}.

Fan-out encodes each frame once: L{Hub.broadcast} turns the frame into bytes, hands them to the
injected C{prepare} (Autobahn's C{factory.prepareMessage}, which frames them once too) and passes
the same prepared object to every connection.

Resume without gaps or duplicates: a resuming connection is registered (it counts against the
limits) but is not in the live fan-out set while its history is replayed from the store, page by
page, one page per reactor turn and only while its transport takes data.  When a page reaches the
store's C{last_seq}, the connection joins the live set in that same turn: every event after that
is delivered live, every event before it came from the store.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from mission_control import auth, channels, events, policy, replay
from mission_control.auth import Refusal, TokenVerifier
from mission_control.policy import Principal
from mission_control.events import ValidationError
from mission_control.limits import RateLimits, TokenBucket
from mission_control.store import IdempotencyConflict


class IConnection(Interface):
    """One live client connection, as the hub sees it."""

    connection_id = Attribute("str: set by Hub.register")
    principal = Attribute("Principal: who is connected; replaced by a fresh token (auth frame)")
    paused = Attribute("bool: the transport is not taking more data right now (backpressure)")

    def deliver(prepared: Any) -> None:
        """Send a frame prepared by the hub's C{prepare}; a no-op unless the connection is open."""

    def send_frame(frame: Mapping) -> None:
        """Encode and send one frame to this connection alone."""

    def send_stream(chunks: Iterator[bytes], done: Callable[[], None]) -> None:
        """
        Send one text message made of C{chunks}, taking the next chunk only while the transport
        takes data; call C{done()} once the message is complete (not if the connection closes
        first).  Frames sent meanwhile wait for the message to end.
        """

    def close(code: int, reason: str) -> None:
        """Start a closing handshake with C{code}."""

    def bytes_waiting() -> int:
        """Bytes queued for this connection and not yet handed to the network."""


#: The close code of a connection an administrator closed (DELETE /api/connections/ID): the
#: client should not reconnect on its own, only after a person acts.
CLOSED_BY_ADMIN = 4009


@dataclass(frozen=True)
class ConnectRequest:
    """
    What a client asked for when it connected (query parameters of C{/ws}).

    @ivar since: resume after this seq (with C{epoch}).
    @ivar client: a client name: acks are kept per user and client name, and a connection of the
        same user and name without C{since} resumes from the last ack.
    """

    since: int | None = None
    epoch: str | None = None
    client: str | None = None
    peer: str = ""
    #: The channels asked for (C{channels=a,b}), or None for the default subscription.
    channels: tuple[str, ...] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, list], peer: str = "") -> "ConnectRequest":
        """
        Read C{since}, C{epoch} and C{client} from query parameters (lists of values).

        @raise Refusal: 400 with a fixed reason when one of them is malformed.
        """

        def one(name):
            values = params.get(name) or []
            return values[0] if values else None

        since, epoch, client = one("since"), one("epoch"), one("client")
        wanted = one("channels")
        if wanted is not None:
            names = tuple(name for name in wanted.split(",") if name)
            if len(names) > channels.MAX_SUBSCRIPTIONS or not all(
                channels.is_valid_channel(name) for name in names
            ):
                raise Refusal(400, "invalid channels")
            wanted = names
        if since is not None:
            if not (since.isascii() and since.isdigit() and len(since) <= 18):
                raise Refusal(400, "invalid since")
            since = int(since)
        if epoch is not None and not _EPOCH_RE.match(epoch):
            raise Refusal(400, "invalid epoch")
        if client is not None and not auth.is_valid_id(client):
            raise Refusal(400, "invalid client name")
        return cls(since=since, epoch=epoch, client=client, peer=peer, channels=wanted)


_EPOCH_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")


@dataclass(eq=False)
class _Session:
    """The hub's record of one connection."""

    conn: Any
    request: ConnectRequest
    connected_at: float
    bucket: TokenBucket
    acked_seq: int = 0
    live: bool = False
    replay_start: int | None = None
    replay_cursor: int | None = None
    replay_waiting: bool = False
    #: The replay answers a resume (it ends with a C{resumed} frame), rather than catching up
    #: on what was published while a large snapshot streamed.
    resuming: bool = False
    #: Presence frames reach it before it is live (see L{Hub._watch_presence}).
    presence_watched: bool = False
    closing: bool = False
    timers: list = field(default_factory=list)
    channels: set = field(default_factory=set)
    timed_out: bool = False
    #: The token expiry that C{auth:expiring} already warned of: an C{auth} frame that does not
    #: move it (the same token sent back) is not warned of again.
    warned_for: float | None = None


@dataclass(eq=False)
class _Liveness:
    """The hub's liveness bookkeeping of one agent (see L{Hub._liveness_changed})."""

    principal: Principal
    #: When the hub last published this agent's online or offline.
    published_at: float = float("-inf")
    #: The pending check, while one is due.
    call: Any = None
    timed_out: bool = False


class Hub:
    """
    @ivar store: an L{IEventStore}: seq, history, latest state, client positions.
    @ivar heartbeat_interval: seconds between C{heartbeat} frames; 0 turns them off.
    @ivar verifier: checks the tokens of C{auth} frames; its leeway also applies to expiry.
    """

    log = Logger()

    #: Events per replay page (one page per reactor turn).
    replay_batch = 500
    #: Seconds before a token's C{exp} that an C{auth:expiring} frame warns the client.
    expiry_warning = 60.0
    #: Connections closed per reactor turn by L{close_all}, so 10,000 do not stall the reactor.
    close_batch = 500
    #: Seconds between retention passes over the store.
    trim_interval = 2.0
    #: Seconds after start before agents that were online by their connection, and have not
    #: reconnected, are marked offline (see L{sweep_absent_agents}).
    reconnect_grace = 60.0
    #: Least seconds between two online/offline events the hub publishes for one agent: an agent
    #: that connects and disconnects in a loop costs the store and the audience one event per
    #: interval at most, and the last one always says where it ended.
    liveness_interval = 1.0

    def __init__(
        self,
        clock: IReactorTime,
        store,
        heartbeat_interval: float = 30.0,
        prepare: Callable[[bytes], Any] = lambda data: data,
        max_connections: int = 10000,
        max_connections_per_user: int = 20,
        verifier: TokenVerifier | None = None,
        message_rate: float = 20.0,
        message_burst: int = 40,
        handshake_rate: float = 5.0,
        handshake_burst: int | None = None,
    ) -> None:
        self.clock = clock
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.max_connections = max_connections
        self.max_connections_per_user = max_connections_per_user
        self.verifier = verifier
        self.message_rate = message_rate
        self.message_burst = message_burst
        self._prepare = prepare
        # Handshakes per user: a burst of a whole per-user allowance (a restart reconnects them
        # all at once), then handshake_rate a second.
        burst = handshake_burst or max(max_connections_per_user, int(handshake_rate * 2), 1)
        self._handshakes = RateLimits(handshake_rate, burst)
        self._agents_live: dict[str, _Liveness] = {}
        self._sessions: dict[Any, _Session] = {}
        self._live: set = set()
        self._subscribers: dict[str, set] = {}  # channel -> live connections subscribed to it
        self._by_user: dict[str, set] = {}
        self._presence: dict[str, dict] = {}  # user -> who, since when
        self._loops: list[LoopingCall] = []
        self._empty_waiters: list[Deferred] = []
        self.accepting = True

    # Lifecycle

    def start(self) -> None:
        """Start heartbeats (when the interval is not 0) and the store's retention passes."""
        if self._loops:
            return
        if self.heartbeat_interval > 0:
            self._loop(self.send_heartbeat, self.heartbeat_interval)
        self._loop(self._trim, self.trim_interval)
        self._sweep_call = self.clock.callLater(self.reconnect_grace, self.sweep_absent_agents)

    def _trim(self) -> None:
        """One retention pass; a failure (a locked database, say) is logged and retried later."""
        try:
            self.store.trim(self.clock.seconds())
        except Exception:
            self.log.failure("retention pass over the store failed; retrying")

    def _loop(self, function, interval) -> None:
        loop = LoopingCall(function)
        loop.clock = self.clock
        loop.start(interval, now=False)
        self._loops.append(loop)

    def stop(self) -> None:
        """Stop the periodic work and refuse new connections."""
        self.accepting = False
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        for entry in self._agents_live.values():
            if entry.call is not None and entry.call.active():
                entry.call.cancel()
        self._agents_live.clear()

    _sweep_call = None

    def sweep_absent_agents(self) -> None:
        """
        Mark offline the agents that the hub had marked online because of their connection and
        that have not connected again since this hub started: a hub restart does not publish
        offline for everyone (they reconnect), so an agent that died meanwhile is caught here.
        """
        self._sweep_call = None
        for payload in list(self.store.agents()):
            agent_id = payload.get("agentId")
            metadata = payload.get("metadata") or {}
            if (payload.get("status") == "online" and metadata.get("source") == "connection"
                    and agent_id not in self._by_user):
                body = {"status": "offline", "metadata": {"source": "connection"},
                        "message": "did not reconnect after the hub restarted"}
                if payload.get("name") is not None:
                    body["name"] = payload["name"]
                self.publish(events.AGENT_STATUS,
                             events.agent_status(body, self.clock.seconds(), agent_id))

    def close_all(self, code: int = 1001, reason: str = "server going away") -> None:
        """
        Close every connection (1001 by default: the server is going away), L{close_batch} per
        reactor turn.
        """
        pending = list(self._sessions)

        def batch():
            chunk, pending[:] = pending[: self.close_batch], pending[self.close_batch :]
            for conn in chunk:
                if conn in self._sessions:
                    conn.close(code, reason)
            if pending:
                self.clock.callLater(0, batch)

        batch()

    def when_empty(self) -> Deferred:
        """A Deferred that fires once no connection is registered (at once if none is)."""
        if not self._sessions:
            return succeed(None)
        d = Deferred()
        self._empty_waiters.append(d)
        return d

    def set_prepare(self, prepare: Callable[[bytes], Any]) -> None:
        """Use C{prepare} to turn encoded frames into what L{IConnection.deliver} takes."""
        self._prepare = prepare

    # The registry

    def admit(self, principal: Principal) -> None:
        """
        Check that C{principal} may open one more connection.

        @raise Refusal: 503 when the hub is stopping or full, 429 when the user is at their cap or
            opens connections faster than the handshake rate.
        """
        if not self.accepting:
            raise Refusal(503, "shutting down")
        if not self._handshakes.take(principal.sub, self.clock.seconds()):
            raise Refusal(429, "too many handshakes", code="rate_limited")
        if len(self._sessions) >= self.max_connections:
            raise Refusal(503, "too many connections")
        if len(self._by_user.get(principal.sub, ())) >= self.max_connections_per_user:
            raise Refusal(429, "too many connections for this user")

    def register(self, conn, request: ConnectRequest | None = None) -> None:
        """
        Add an open connection and send it its first frames: C{welcome}, then either a
        C{snapshot} (a fresh start) or the replay of what it missed (a resume, see the module
        docstring).
        """
        request = request or ConnectRequest()
        now = self.clock.seconds()
        conn.connection_id = uuid.uuid4().hex
        session = _Session(
            conn=conn,
            request=request,
            connected_at=now,
            bucket=TokenBucket(self.message_rate, self.message_burst, now),
        )
        self._sessions[conn] = session
        first = conn.principal.sub not in self._by_user
        self._by_user.setdefault(conn.principal.sub, set()).add(conn)
        wanted = request.channels
        if wanted is None:
            wanted = policy.default_subscription(conn.principal)
        forbidden = self._add_channels(session, wanted)
        # The audit line of an accepted handshake (refusals are logged by the protocol).
        self.log.info(
            "handshake accepted from {peer}: 101 {user} ({role}), connection {connection_id}",
            connection_id=conn.connection_id,
            user=conn.principal.sub,
            role=conn.principal.role,
            peer=request.peer,
        )
        self._schedule_expiry(session)
        conn.send_frame(
            events.envelope(
                "welcome",
                {
                    "connectionId": conn.connection_id,
                    "user": conn.principal.as_user(),
                    "heartbeatInterval": _number(self.heartbeat_interval),
                    "lastSeq": self.store.last_seq,
                    "epoch": self.store.epoch,
                    "channels": sorted(session.channels),
                },
                events.format_timestamp(now),
            )
        )
        if forbidden:
            conn.send_frame(self._forbidden_channels(forbidden))
        if first:
            self._user_arrived(conn.principal, now)
        since, epoch = request.since, request.epoch
        if since is None and request.client is not None:
            since = self.store.position(conn.principal.sub, request.client)
            epoch = self.store.epoch
        if since is None:
            self._send_snapshot(session)
            return
        reason = self._unrecoverable(since, epoch)
        if reason is not None:
            self._not_recovered(session, reason)
            return
        session.acked_seq = since
        session.replay_start = session.replay_cursor = since
        session.resuming = True
        self._watch_presence(session)
        self._replay(session)

    def _unrecoverable(self, since: int, epoch: str | None) -> str | None:
        store = self.store
        return replay.resume_problem(since, epoch, store.epoch, store.first_seq, store.last_seq)

    def _not_recovered(self, session: _Session, reason: str) -> None:
        session.replay_cursor = None
        session.conn.send_frame(
            self._frame("resumed", {"recovered": False, "reason": reason,
                                    "lastSeq": self.store.last_seq, "epoch": self.store.epoch})
        )
        self._send_snapshot(session)

    def _replay(self, session: _Session) -> None:
        """Send one page of history; schedule the next, or join the live set when caught up."""
        if self._sessions.get(session.conn) is not session:
            return  # closed meanwhile
        session.replay_waiting = False
        conn = session.conn
        cursor = session.replay_cursor
        page = self.store.events_after(cursor, self.replay_batch)
        if cursor < self.store.last_seq and (not page or page[0].seq != cursor + 1):
            # Retention removed events this client had not been sent yet: it must redraw.
            self._not_recovered(session, "too_old")
            return
        for event in page:
            if getattr(conn, "paused", False):
                break  # the rest of the page waits for writable(): a page is not a byte limit
            if channels.covers(session.channels, channels.event_channels(event.type, event.payload)):
                conn.send_frame(event.envelope())
            cursor = session.replay_cursor = event.seq
        if cursor >= self.store.last_seq:
            if session.resuming:
                conn.send_frame(
                    self._frame("resumed", {"recovered": True, "from": session.replay_start + 1,
                                            "to": cursor,
                                            "epoch": self.store.epoch})
                )
            session.replay_cursor = None
            self._go_live(session)
        elif getattr(conn, "paused", False):
            session.replay_waiting = True  # writable() picks it up
        else:
            self.clock.callLater(0, self._replay, session)

    def writable(self, conn) -> None:
        """The connection's transport takes data again: go on with a replay that waited for it."""
        session = self._sessions.get(conn)
        if session is not None and session.replay_waiting:
            session.replay_waiting = False
            self.clock.callLater(0, self._replay, session)

    def _watch_presence(self, session: _Session) -> None:
        """
        Presence frames carry no seq and are not replayed: a connection that is still catching
        up (a replay, a streamed snapshot) receives them from now on, rather than miss a join or
        leave.  They come among the replayed events, or after the snapshot (whose message is
        already under way: frames sent meanwhile wait for its end).
        """
        session.presence_watched = True
        if channels.PRESENCE in session.channels:
            self._subscribers.setdefault(channels.PRESENCE, set()).add(session.conn)

    def _go_live(self, session: _Session) -> None:
        session.live = True
        self._live.add(session.conn)
        for channel in session.channels:
            self._subscribers.setdefault(channel, set()).add(session.conn)

    # Channels

    def _owns_session(self, principal: Principal) -> Callable[[str], bool]:
        """Whether the session belongs to the agent C{principal} (the store keeps owners)."""
        return lambda session_id: self.store.session_owner(session_id) == principal.sub

    def _add_channels(self, session: _Session, wanted) -> list[str]:
        """Subscribe to what is allowed of C{wanted}; return the names refused."""
        principal = session.conn.principal
        owns = self._owns_session(principal)
        forbidden = []
        for channel in wanted:
            if channel in session.channels:
                continue
            if (len(session.channels) >= channels.MAX_SUBSCRIPTIONS
                    or not policy.may_subscribe(principal, channel, owns)):
                forbidden.append(channel)
                continue
            session.channels.add(channel)
            if session.live or (channel == channels.PRESENCE and session.presence_watched):
                self._subscribers.setdefault(channel, set()).add(session.conn)
        return forbidden

    def _remove_channels(self, session: _Session, names) -> None:
        for channel in names:
            session.channels.discard(channel)
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(session.conn)
                if not subscribers:
                    del self._subscribers[channel]

    def may_receive(self, principal: Principal, channel: str) -> bool:
        """Whether C{principal} may receive C{channel}, its own sessions counted (HTTP reads)."""
        return policy.may_subscribe(principal, channel, self._owns_session(principal))

    def may_see(self, principal: Principal, event_type: str, payload: dict) -> bool:
        """Whether C{principal} may receive this event on some channel (for the HTTP reads)."""
        owns = self._owns_session(principal)
        return any(policy.may_subscribe(principal, name, owns)
                   for name in channels.event_channels(event_type, payload))

    def _forbidden_channels(self, names, reply_to: str | None = None) -> dict:
        shown = ", ".join(sorted(names)[:10])
        return self.error_frame("forbidden", f"not allowed to subscribe to: {shown}", reply_to)

    # Presence and agent liveness

    def _user_arrived(self, principal: Principal, now: float) -> None:
        """A user's first connection opened: presence:join, and an agent is online."""
        self._presence[principal.sub] = {
            "id": principal.sub, "name": principal.name, "role": principal.role,
            "since": events.format_timestamp(now),
        }
        self._presence_event("presence:join", principal.sub)
        if principal.role == "agent":
            self._liveness_changed(principal)

    def _user_left(self, principal: Principal, session: _Session) -> None:
        """A user's last connection closed: presence:leave, and an agent is offline."""
        self._presence_event("presence:leave", principal.sub)
        del self._presence[principal.sub]
        if principal.role == "agent":
            self._liveness_changed(principal, session.timed_out)

    def _presence_event(self, event_type: str, user: str) -> None:
        info = self._presence[user]
        payload = {"userId": info["id"], "name": info["name"], "role": info["role"],
                   "connections": len(self._by_user.get(user, ()))}
        self._fan_out(events.envelope(event_type, payload, self._now()), (channels.PRESENCE,))

    def _latest_status(self, agent_id: str) -> dict | None:
        return self.store.agent(agent_id)

    def _liveness_changed(self, principal: Principal, timed_out: bool = False) -> None:
        """
        An agent's first connection opened or its last one closed: check its liveness now, or,
        when the hub published its online or offline less than L{liveness_interval} ago, once
        that interval is over.  A check publishes where the agent is then, so flapping costs one
        event per interval, never one per connection.
        """
        entry = self._agents_live.get(principal.sub)
        if entry is None:
            entry = self._agents_live[principal.sub] = _Liveness(principal)
        entry.principal, entry.timed_out = principal, timed_out
        if entry.call is not None and entry.call.active():
            return  # the pending check will see the state as it is then
        wait = entry.published_at + self.liveness_interval - self.clock.seconds()
        if wait > 0:
            entry.call = self.clock.callLater(wait, self._check_liveness, principal.sub)
        else:
            self._check_liveness(principal.sub)

    def _check_liveness(self, agent_id: str) -> None:
        """
        Publish C{online} for a connected agent the state shows offline (or not at all), and
        C{offline} for an agent with no connection the state does not show offline.  An agent that
        set its own status keeps it while connected.  Nothing is published while stopping: a
        restart does not mark every agent offline.
        """
        entry = self._agents_live[agent_id]
        entry.call = None
        connected = agent_id in self._by_user
        status = (self._latest_status(agent_id) or {}).get("status")
        now = self.clock.seconds()
        try:
            if self.accepting and connected and status in (None, "offline"):
                self._publish_liveness(entry.principal, "online", "connected")
                entry.published_at = now
            elif self.accepting and not connected and status != "offline":
                why = ("connection timed out (no answer to pings)" if entry.timed_out
                       else "connection closed")
                self._publish_liveness(entry.principal, "offline", why)
                entry.published_at = now
        except Exception:
            self.log.failure("publishing the liveness of agent {agent} failed", agent=agent_id)
        if not connected:
            if entry.published_at == now:
                # Kept for one interval, so that a quick reconnect is coalesced too.
                entry.call = self.clock.callLater(self.liveness_interval,
                                                  self._check_liveness, agent_id)
            else:
                del self._agents_live[agent_id]

    def _publish_liveness(self, principal: Principal, status: str, message: str) -> None:
        body = {"status": status, "message": message, "metadata": {"source": "connection"}}
        latest = self._latest_status(principal.sub) or {}
        name = principal.name or latest.get("name")  # keep the name the agent published
        if name is not None:
            body["name"] = name
        self.publish(events.AGENT_STATUS,
                     events.agent_status(body, self.clock.seconds(), principal.sub))

    def presence(self) -> list[dict]:
        """Who is connected now: one entry per user, with their connection count."""
        return list(self.iter_presence())

    def iter_presence(self) -> Iterator[dict]:
        """L{presence}, one entry at a time, each made when it is reached (for streaming)."""
        for user, info in sorted(self._presence.items()):
            yield dict(info, connections=len(self._by_user.get(user, ())))

    def timed_out(self, conn) -> None:
        """The connection is being dropped because it stopped answering pings."""
        session = self._sessions.get(conn)
        if session is not None:
            session.timed_out = True

    def unregister(self, conn) -> None:
        """Forget a connection; safe to call more than once, and for one never registered."""
        session = self._sessions.pop(conn, None)
        if session is None:
            return
        self._live.discard(conn)
        self._remove_channels(session, tuple(session.channels))
        for timer in session.timers:
            if timer.active():
                timer.cancel()
        sub = conn.principal.sub
        mine = self._by_user.get(sub)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self._by_user[sub]
                self._user_left(conn.principal, session)
        self.log.info(
            "connection {connection_id} of {user} closed",
            connection_id=conn.connection_id,
            user=sub,
        )
        if not self._sessions:
            waiters, self._empty_waiters = self._empty_waiters, []
            for d in waiters:
                d.callback(None)

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    def connections_of(self, user_id: str) -> frozenset:
        return frozenset(self._by_user.get(user_id, ()))

    def users(self) -> list[dict]:
        """C{[{"id", "connections"}]}: who is connected and how often, by user id."""
        return [
            {"id": user, "connections": len(conns)}
            for user, conns in sorted(self._by_user.items())
        ]

    def close_connection(self, connection_id: str, admin: Principal) -> bool:
        """
        Close the connection C{connection_id} with 4009 (closed by an administrator), on behalf
        of C{admin}, and leave one audit line.  It goes as any close goes: the hub forgets it,
        with its presence and counts, when the closing handshake ends (L{unregister}).  A
        connection already closing for another reason keeps the code it was given.

        @return: whether such a connection was registered.
        """
        # A rare, administrative act: a look through the sessions, not an index to keep.
        session = next((s for s in self._sessions.values()
                        if s.conn.connection_id == connection_id), None)
        if session is None:
            return False
        conn = session.conn
        self.log.info(
            "closing connection {connection_id} of {user} ({peer}): closed by administrator "
            "{admin}",
            connection_id=connection_id, user=conn.principal.sub, peer=session.request.peer,
            admin=admin.sub,
        )
        if not session.closing:
            self._close(session, CLOSED_BY_ADMIN, "closed by an administrator")
        return True

    def connection_details(self) -> list[dict]:
        """One entry per connection, for operators: who, from where, since when, how far."""
        return list(self.iter_connection_details())

    def iter_connection_details(self) -> Iterator[dict]:
        """L{connection_details}, one entry at a time, each made when it is reached."""
        ordered = sorted(self._sessions.items(),
                         key=lambda item: (item[1].connected_at, item[0].connection_id))
        for conn, session in ordered:
            yield {
                "id": conn.connection_id,
                "user": conn.principal.sub,
                "role": conn.principal.role,
                "client": session.request.client,
                "peer": session.request.peer,
                "connectedAt": events.format_timestamp(session.connected_at),
                "ackedSeq": session.acked_seq,
                "bytesWaiting": conn.bytes_waiting(),
                "replaying": not session.live,
            }

    # Token lifecycle

    def _schedule_expiry(self, session: _Session) -> None:
        """Warn a minute before the token's exp, close with 4001 at exp + leeway."""
        for timer in session.timers:
            if timer.active():
                timer.cancel()
        now = self.clock.seconds()
        principal = session.conn.principal
        leeway = self.verifier.leeway if self.verifier is not None else 0.0
        warn_in = principal.expires_at - self.expiry_warning - now
        session.timers = [
            self.clock.callLater(
                max(0.0, principal.expires_at + leeway - now),
                self._expired, session,
            )
        ]
        if principal.expires_at + leeway > now and session.warned_for != principal.expires_at:
            # A token with less than a minute left is warned at once, so it can still be renewed;
            # once per expiry time, else a client that answers each warning with a token of the
            # same exp (its own, back) would get a warning after every answer, in a loop.
            session.timers.append(
                self.clock.callLater(max(0.0, warn_in), self._expiring, session)
            )

    def _expiring(self, session: _Session) -> None:
        expires_at = session.conn.principal.expires_at
        session.warned_for = expires_at
        session.conn.send_frame(
            self._frame("auth:expiring", {
                "expiresAt": events.format_timestamp(expires_at),
                "secondsLeft": max(0, int(expires_at - self.clock.seconds())),
            })
        )

    def _expired(self, session: _Session) -> None:
        self.log.info("closing connection {connection_id} of {user}: token expired",
                      connection_id=session.conn.connection_id, user=session.conn.principal.sub)
        self._close(session, 4001, "token expired")

    # Publishing and fan-out

    def publish(self, event_type: str, payload: dict, idempotency=None) -> dict:
        """
        Store an already validated event, broadcast it and return its envelope.  With
        C{idempotency} (C{(user, key, fingerprint)}) a repeat returns the first event's envelope
        and broadcasts nothing.
        """
        now = self.clock.seconds()
        event, created = self.store.append(
            event_type, payload, events.format_timestamp(now), now, idempotency
        )
        frame = event.envelope()
        if created:
            self._fan_out(frame, channels.event_channels(event_type, payload))
        return frame

    def publish_for(
        self,
        principal: Principal,
        event_type: str,
        body: object,
        subject_id: str | None = None,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> dict:
        """
        Validate C{body} as an event of C{event_type} published by C{principal}, check that they
        may publish it, and publish it.  C{subject_id} is the agent or session id named by the
        URL, if any.

        @raise Refusal: 403 when the role does not allow it.
        @raise ValidationError: when the payload breaks a rule.
        @raise mission_control.store.IdempotencyConflict: the key was used for another request.
        """
        now = self.clock.seconds()
        if event_type == events.AGENT_STATUS:
            if subject_id is not None and not policy.may_publish_agent_status(
                principal, subject_id
            ):
                raise Refusal(403, "not allowed to publish for this agent")
            payload = events.agent_status(body, now, subject_id)
            if not policy.may_publish_agent_status(principal, payload["agentId"]):
                raise Refusal(403, "not allowed to publish for this agent")
        elif event_type == events.SESSION_ACTIVITY:
            if principal.role not in ("admin", "operator", "agent"):
                raise Refusal(403, "not allowed to publish session activity")
            if principal.role == "agent" and isinstance(body, dict) and "agentId" not in body:
                # An agent's activity is its own unless it says otherwise.
                body = dict(body, agentId=principal.sub)
            payload = events.session_activity(body, now, subject_id)
            if not policy.may_publish_session_activity(principal, payload.get("agentId")):
                raise Refusal(403, "not allowed to publish for this agent")
            owner = self.store.session_owner(payload["sessionId"])
            if principal.role == "agent" and owner is not None and owner != principal.sub:
                # Another agent's session: joining it would also let this agent read it.
                raise Refusal(403, "session belongs to another agent")
        else:
            raise ValidationError("unknown event type", code="unknown_type")
        idempotency = None
        if idempotency_key is not None:
            idempotency = (principal.sub, idempotency_key, fingerprint)
        return self.publish(event_type, payload, idempotency)

    def broadcast(self, frame: Mapping) -> int:
        """
        Encode C{frame} once and deliver it to every live connection.  Returns how many
        connections it was handed to.  Broadcasting to nobody is a no-op.
        """
        if not self._live:
            return 0
        prepared = self._prepare(events.encode_json(frame))
        # A copy: delivering may close a connection, which unregisters it.
        targets = tuple(self._live)
        for conn in targets:
            conn.deliver(prepared)
        return len(targets)

    def _fan_out(self, frame: Mapping, names) -> int:
        """
        Deliver C{frame}, encoded once, to every live connection subscribed to any of C{names},
        found through the channel index (not by scanning every connection).
        """
        found = [self._subscribers[name] for name in names if name in self._subscribers]
        if not found:
            return 0
        targets = set().union(*found) if len(found) > 1 else tuple(found[0])
        prepared = self._prepare(events.encode_json(frame))
        for conn in targets:
            conn.deliver(prepared)
        return len(targets)

    def send_heartbeat(self) -> None:
        ts = self._now()
        self.broadcast(
            events.envelope("heartbeat", {"timestamp": ts, "lastSeq": self.store.last_seq}, ts)
        )

    def _send_snapshot(self, session: _Session) -> None:
        """
        Send the snapshot frame, the latest state of what the connection is subscribed to as of
        one C{lastSeq}, then put the connection in the live set.

        The state's entries carry their encodings, so a snapshot is a join of ready bytes; the
        full one is joined once per state, not once per connection (after a restart every
        dashboard reconnects at once).  A snapshot larger than L{snapshot_stream_threshold} is
        streamed as one message the connection writes as its client reads
        (L{IConnection.send_stream}): a client that does not read then holds a list of references
        to the state, not a copy of it.  Events published while it streams are sent from the
        history once it is done, before the connection goes live, as a resume does.
        """
        conn = session.conn
        last_seq = self.store.last_seq
        full = {channels.AGENTS, channels.SESSIONS} <= session.channels
        cache = self._snapshot_cache
        if full and cache is not None and cache[0] == last_seq:
            conn.deliver(self._prepare(cache[1] + events.encode_json(self._now()) + b"}"))
            self._go_live(session)
            return
        agents = self._snapshot_entries(session.channels, events.AGENT_STATUS)
        sessions = self._snapshot_entries(session.channels, events.SESSION_ACTIVITY)
        size = sum(map(len, agents)) + sum(map(len, sessions))
        if size > self.snapshot_stream_threshold:
            chunks = snapshot_chunks(agents, sessions, last_seq, self._now())

            def streamed() -> None:
                if self._sessions.get(conn) is session:
                    session.replay_start = session.replay_cursor = last_seq
                    self._replay(session)

            conn.send_stream(chunks, streamed)
            self._watch_presence(session)
            return
        head = b"".join(snapshot_chunks(agents, sessions, last_seq, None))
        if full:
            self._snapshot_cache = (last_seq, head)
        conn.deliver(self._prepare(head + events.encode_json(self._now()) + b"}"))
        self._go_live(session)

    _snapshot_cache: tuple[int, bytes] | None = None
    #: Snapshots larger than this many bytes are streamed (see L{_send_snapshot}).
    snapshot_stream_threshold = 256 * 1024

    def _snapshot_entries(self, subscribed, event_type: str) -> list[bytes]:
        """The encoded latest state of C{event_type} that C{subscribed} channels carry."""
        entries = self.store.state(event_type)
        whole = channels.AGENTS if event_type == events.AGENT_STATUS else channels.SESSIONS
        if whole in subscribed:
            return [entry.encoded for entry in entries]
        return [entry.encoded for entry in entries
                if channels.covers(subscribed, channels.event_channels(event_type, entry.payload))]

    # Client frames

    #: Refused messages in a row (while the bucket is empty) before the connection is closed.
    @property
    def max_strikes(self) -> int:
        return self.message_burst

    def handle_frame(self, conn, data: bytes, is_binary: bool) -> dict | None:
        """
        Answer one client message.  Returns the reply frame for C{conn} (a reply to a good frame,
        or an C{error} frame for a bad one), or C{None} when the connection is being closed.
        Never raises for bad input.
        """
        session = self._sessions.get(conn)
        if session is None or session.closing:
            return None  # frames that arrive after the hub began closing are not answered
        if not session.bucket.take(self.clock.seconds()):
            if session.bucket.strikes > self.max_strikes:
                self._too_many(session)
                return None
            return self.error_frame("rate_limited", "too many messages; slow down")
        try:
            return self._answer(session, data, is_binary)
        except Exception:
            # Our failure, not the client's (a store error, say): logged, answered, never a drop.
            self.log.failure("answering a frame of connection {connection_id} failed",
                             connection_id=conn.connection_id)
            return self.error_frame("internal_error", "the hub could not process this frame")

    def allow_message(self, conn) -> bool:
        """
        Charge a frame the hub does not see as a message (a ping, a pong, a continuation frame)
        to the connection's rate limit; C{False} when it is over it (and closed once it keeps going).
        """
        session = self._sessions.get(conn)
        if session is None or session.closing:
            return False
        if session.bucket.take(self.clock.seconds()):
            return True
        if session.bucket.strikes > self.max_strikes:
            self._too_many(session)
        return False

    def _too_many(self, session: _Session) -> None:
        self.log.warn("closing connection {connection_id} of {user}: too many messages",
                      connection_id=session.conn.connection_id, user=session.conn.principal.sub)
        self._close(session, 4029, "too many messages")

    def _answer(self, session: _Session, data: bytes, is_binary: bool) -> dict | None:
        try:
            frame = events.parse_client_frame(data, is_binary)
        except ValidationError as e:
            return self.error_frame(e.code, e.message, e.frame_id)
        handler = self._frame_handlers.get(frame.type)
        if handler is None:
            return self.error_frame("unknown_type", "unknown frame type", frame.id)
        try:
            return handler(self, session, frame)
        except ValidationError as e:
            return self.error_frame(e.code, e.message, frame.id)
        except Refusal as e:
            return self.error_frame(e.code, e.reason, frame.id)

    def error_frame(self, code: str, message: str, reply_to: str | None = None) -> dict:
        return self._frame("error", {"code": code, "message": message}, reply_to)

    def _frame(self, frame_type: str, payload: dict, reply_to: str | None = None) -> dict:
        return events.envelope(frame_type, payload, self._now(), reply_to=reply_to)

    def _on_ping(self, session: _Session, frame: events.ClientFrame) -> dict:
        return self._frame("pong", {}, frame.id)

    def _on_ack(self, session: _Session, frame: events.ClientFrame) -> dict:
        seq = frame.fields.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValidationError("seq must be a non-negative integer")
        if seq > self.store.last_seq:
            raise ValidationError("seq is beyond the last event")
        if seq > session.acked_seq:
            session.acked_seq = seq
            client = session.request.client
            if client is not None:
                user = session.conn.principal.sub
                saved = self.store.position(user, client)
                # Never backwards: another connection of the same name may be further along.
                if saved is None or seq > saved:
                    self.store.save_position(user, client, seq, self.clock.seconds())
        return self._frame("ack", {"seq": session.acked_seq}, frame.id)

    def _on_auth(self, session: _Session, frame: events.ClientFrame) -> dict | None:
        conn = session.conn
        token = frame.fields.get("token")
        if not isinstance(token, str) or not token:
            raise ValidationError("token must be a non-empty string")
        if self.verifier is None:
            raise ValidationError("auth is not available", code="not_supported")
        try:
            principal = self.verifier.verify(token, self.clock.seconds())
        except Refusal as refusal:
            return self._refuse_auth(session, frame, "invalid_token", refusal.reason)
        if principal.sub != conn.principal.sub:
            return self._refuse_auth(session, frame, "forbidden", "token is for another user")
        conn.principal = principal
        self._schedule_expiry(session)
        # The new token may allow less (another role, a narrower claim): drop what it does not.
        owns = self._owns_session(principal)
        dropped = [c for c in session.channels if not policy.may_subscribe(principal, c, owns)]
        self._remove_channels(session, dropped)
        return self._frame(
            "auth:ok",
            {"user": principal.as_user(),
             "expiresAt": events.format_timestamp(principal.expires_at),
             "channels": sorted(session.channels)},
            frame.id,
        )

    def _refuse_auth(self, session, frame, code, message) -> None:
        conn = session.conn
        self.log.warn(
            "security: auth frame refused on connection {connection_id} of {user}: {reason}",
            connection_id=conn.connection_id, user=conn.principal.sub, reason=message,
        )
        conn.send_frame(self.error_frame(code, message, frame.id))
        self._close(session, 4003, "token not accepted")
        return None

    def _close(self, session: _Session, code: int, reason: str) -> None:
        session.closing = True
        session.conn.close(code, reason)

    @staticmethod
    def _channel_list(frame: events.ClientFrame) -> list[str]:
        names = frame.fields.get("channels")
        if (not isinstance(names, list) or not names
                or len(names) > channels.MAX_SUBSCRIPTIONS
                or not all(channels.is_valid_channel(name) for name in names)):
            raise ValidationError(
                "channels must be a non-empty list of channel names (agents, agents:<id>, "
                "sessions, sessions:<id>, presence)"
            )
        return names

    def _subscriptions(self, session: _Session, frame: events.ClientFrame) -> dict:
        return self._frame("subscribed", {"channels": sorted(session.channels)}, frame.id)

    def _on_subscribe(self, session: _Session, frame: events.ClientFrame) -> dict:
        forbidden = self._add_channels(session, self._channel_list(frame))
        if forbidden:
            # The allowed part applies; the refusal is its own error frame.
            session.conn.send_frame(self._forbidden_channels(forbidden, frame.id))
        return self._subscriptions(session, frame)

    def _on_unsubscribe(self, session: _Session, frame: events.ClientFrame) -> dict:
        self._remove_channels(session, self._channel_list(frame))
        return self._subscriptions(session, frame)

    def _on_publish(self, session: _Session, frame: events.ClientFrame) -> dict:
        event = frame.fields.get("event")
        if not isinstance(event, dict) or set(event) - {"type", "payload"}:
            raise ValidationError("event must be an object with type and payload")
        event_type, payload = event.get("type"), event.get("payload")
        if event_type not in events.STORED_TYPES:
            raise ValidationError("event type must be agent:status or session:activity",
                                  code="unknown_type")
        # An idempotencyKey makes a retried publish (after a reconnect, say) return the first
        # result, as Idempotency-Key does over HTTP; the two live in separate namespaces.
        key = frame.fields.get("idempotencyKey")
        fingerprint = ""
        if key is not None:
            if not isinstance(key, str) or not (1 <= len(key) <= 255) or not key.isprintable():
                raise ValidationError("idempotencyKey must be 1-255 printable characters")
            fingerprint = events.request_fingerprint(event_type, None, payload)
            key = "ws:" + key
        try:
            stored = self.publish_for(session.conn.principal, event_type, payload, None,
                                      key, fingerprint)
        except IdempotencyConflict:
            raise ValidationError("idempotencyKey was already used for a different event",
                                  code="idempotency_conflict") from None
        return self._frame("published", {"seq": stored["seq"], "type": stored["type"]}, frame.id)

    _frame_handlers: dict[str, Callable] = {
        "ping": _on_ping,
        "ack": _on_ack,
        "auth": _on_auth,
        "subscribe": _on_subscribe,
        "unsubscribe": _on_unsubscribe,
        "publish": _on_publish,
    }

    def _now(self) -> str:
        return events.format_timestamp(self.clock.seconds())


def snapshot_chunks(agents: list[bytes], sessions: list[bytes], last_seq: int,
                    ts: str | None, size: int = 64 * 1024) -> Iterator[bytes]:
    """
    The C{snapshot} frame, from the encoded entries of its two lists, in chunks of about C{size}
    bytes: C{{"type":"snapshot","payload":{"lastSeq":N,"agents":[...],"sessions":[...]},"ts":T}}.
    With C{ts} None the frame stops after C{"ts":}, for a caller that adds the time itself.
    """
    head = b'{"type":"snapshot","payload":{"lastSeq":%d,"agents":[' % last_seq
    tail = b']},"ts":' + (b"" if ts is None else events.encode_json(ts) + b"}")
    yield from events.json_array_chunks(head, agents, b"", size)
    yield from events.json_array_chunks(b'],"sessions":[', sessions, tail, size)


def _number(value: float) -> int | float:
    """C{30.0} as C{30}: whole seconds read better in JSON."""
    return int(value) if float(value).is_integer() else value

# -*- test-case-name: tests.test_hub -*-
"""
The node: one hub process, wiring the parts of the hub together.

It admits and registers connections (the L{Registry} indexes them, a L{Client} per connection
answers its frames, L{CatchUp} sends each new one its snapshot or replay), publishes events
through the L{IBroker} and fans each appended event out to the connections subscribed to its
channels, runs heartbeats and retention, and keeps presence and agents' liveness.  The HTTP API
and the WebSocket protocol talk to the node and to nothing else of the hub.

Fan-out encodes each frame once: the node turns the frame into bytes, hands them to the injected
C{prepare} (Autobahn's C{factory.prepareMessage}, which frames them once too) and passes the same
prepared object to every connection.  With a C{fanout_window} the connections queue it and write
the events of one window together (L{FanoutWindow}).  Time comes from an injected C{IReactorTime}.

Publishing is checked at once and stored later: L{Hub.publish}, L{Hub.publish_for} and
L{Hub.publish_many} raise a refusal or a rule break before anything is appended, and return a
C{Deferred} of the envelopes, which the broker fires once the event is stored and fanned out.

At about 540 lines this is the largest module of the hub (over 400 lines), for a reason: it is
the hub's whole surface for the adapters (C{protocol.py}, C{web/}, C{tap.py}), and many of its
methods are short delegations to the parts, kept so that no adapter reaches past the node.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mission_control import channels, events, policy
from mission_control.auth import Refusal, TokenVerifier
from mission_control.hub.broker import IBroker, InProcessBroker
from mission_control.hub.catchup import CatchUp
from mission_control.hub import publishing
from mission_control.hub.client import Client
from mission_control.hub.commits import Answer, GroupCommit, InFlight
from mission_control.hub.expiry import Deadlines
from mission_control.hub.outbox import FanoutWindow
from mission_control.hub.connection import CLOSED_BY_ADMIN, ConnectRequest, IConnection
from mission_control.hub.presence import IPresenceManager, Liveness, LocalPresence
from mission_control.hub.registry import Registry
from mission_control.hub.service import HubService
from mission_control.limits import RateLimits, TokenBucket
from mission_control.metrics import Metrics
from mission_control.policy import Principal
from mission_control.store import IEventStore, StoredEvent

_T = TypeVar("_T")


class Hub:
    """
    @ivar store: the L{IEventStore}: seq, history, latest state, client positions.
    @ivar broker: the L{IBroker} events are appended through (by default, straight to C{store}).
    @ivar heartbeat_interval: seconds between C{heartbeat} frames; 0 turns them off.
    @ivar verifier: checks the tokens of C{auth} frames; its leeway also applies to expiry.
    @ivar metrics: what this node counts (L{Metrics}), read by C{GET /metrics}.
    """

    log = Logger()

    #: Seconds before a token's C{exp} that an C{auth:expiring} frame warns the client.
    expiry_warning = 60.0
    #: Connections closed per reactor turn by L{close_all}, so 10,000 do not stall the reactor.
    close_batch = 500
    #: Seconds between retention passes over the store.
    trim_interval = 2.0
    #: Seconds after start before agents that were online by their connection, and have not
    #: reconnected, are marked offline (see L{Liveness.sweep_absent}).
    reconnect_grace = 60.0
    #: The fan-out window a hub process runs with (L{FanoutWindow}): events that follow one
    #: another within it reach each connection as one write, at most this many seconds late.
    FANOUT_WINDOW = 0.02

    def __init__(
        self,
        clock: IReactorTime,
        store: IEventStore,
        heartbeat_interval: float = 30.0,
        prepare: Callable[[bytes], Any] = lambda data: data,
        max_connections: int = 10000,
        max_connections_per_user: int = 20,
        verifier: TokenVerifier | None = None,
        message_rate: float = 20.0,
        message_burst: int = 40,
        handshake_rate: float = 5.0,
        handshake_burst: int | None = None,
        broker: IBroker | None = None,
        fanout_window: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.broker = broker if broker is not None else InProcessBroker(store)
        self.broker.subscribe(self._appended)
        # Session owners as the checks see them: the store's, and the claims of publishes
        # checked already and not stored yet (the broker answers later).
        self.owners = publishing.PendingOwners(lambda s: self.store.session_owner(s))
        # Appends handed to the broker and not answered yet (see when_stored).
        self.in_flight = InFlight()
        # WebSocket publishes of one reactor turn, stored as one transaction (see publish_later).
        self.commits = GroupCommit(clock, self.broker, self.owners, self.in_flight, self.metrics)
        self.heartbeat_interval = heartbeat_interval
        self.max_connections = max_connections
        self.max_connections_per_user = max_connections_per_user
        self.verifier = verifier
        self.message_rate = message_rate
        self.message_burst = message_burst
        self.prepare = prepare
        # Handshakes per user: a burst of a whole per-user allowance (a restart reconnects them
        # all at once), then handshake_rate a second.
        burst = handshake_burst or max(max_connections_per_user, int(handshake_rate * 2), 1)
        self.handshakes = RateLimits(handshake_rate, burst)
        self.registry: Registry[Client] = Registry()
        self.metrics.watch_connections(self.registry.__len__)  # read when scraped, never counted
        # Every client's token deadlines, on one timer (see Client.schedule_expiry).
        self.deadlines = Deadlines(clock)
        self.catchup = CatchUp(self)
        self.presence_manager: IPresenceManager = LocalPresence()
        self.presence_manager.on_change = self._presence_changed
        self.liveness = Liveness(clock, store, self.is_connected, self.publish,
                                 lambda: self.accepting)
        self.service: HubService | None = None
        self.window = FanoutWindow(clock, fanout_window)
        self._empty_waiters: list[Deferred] = []
        self.accepting = True
        #: Whether the hub waits for its store to be loaded (a shared history): it refuses
        #: connections with 503 "starting" until then.
        self.starting = False
        #: Whether agents that did not reconnect after a restart are marked offline
        #: (L{Liveness.sweep_absent}): only where this hub is the only one that knows who is
        #: connected.
        self.sweep_after_restart = True
        #: Why the store cannot serve now (a shared store out of reach), or C{None}.
        self.store_health: Callable[[], str | None] = lambda: None

    # Lifecycle

    def start(self) -> None:
        """Start the periodic work (L{HubService}: heartbeats, retention, the sweep)."""
        if self.service is None:
            self.service = HubService(
                self.clock, self.send_heartbeat, self.heartbeat_interval, self.trim,
                self.trim_interval, self._sweep_absent, self.reconnect_grace)
            self.service.startService()

    def _sweep_absent(self) -> None:
        if self.sweep_after_restart:
            self.liveness.sweep_absent()

    def health(self) -> str | None:
        """
        Why the hub cannot serve now (C{"stopping"}, C{"starting"}), or C{None} when it can:
        what C{/healthz} answers.
        """
        if not self.accepting:
            return "stopping"
        if self.starting:
            return "starting"
        return self.store_health()

    def stop(self) -> None:
        """
        Stop the periodic work and refuse new connections; store the publishes waiting for the
        end of the turn (at once, or as soon as the group in flight is answered: see
        L{when_stored}); send what the window holds.
        """
        self.accepting = False
        self.commits.commit()
        self.window.stop()
        if self.service is not None:
            self.service.stopService()
            self.service = None
        self.liveness.stop()

    def trim(self) -> None:
        """One retention pass; a failure (a locked database, say) is logged and retried later."""
        try:
            self.store.trim(self.clock.seconds())
        except Exception:
            self.log.failure("retention pass over the store failed; retrying")

    def close_all(self, code: int = 1001, reason: str = "server going away") -> None:
        """
        Close every connection (1001 by default: the server is going away), L{close_batch} per
        reactor turn.
        """
        pending = list(self.registry)

        def batch() -> None:
            chunk, pending[:] = pending[: self.close_batch], pending[self.close_batch :]
            for conn in chunk:
                if self.registry.get(conn) is not None:
                    conn.close(code, reason)
            if pending:
                self.clock.callLater(0, batch)

        batch()

    def when_empty(self) -> Deferred:
        """A Deferred that fires once no connection is registered (at once if none is)."""
        if not len(self.registry):
            return succeed(None)
        d: Deferred = Deferred()
        self._empty_waiters.append(d)
        return d

    def when_stored(self) -> Deferred[None]:
        """
        A Deferred that fires once every publish handed to the broker, or waiting for the end of
        the turn, has been answered (at once if none is): what stopping waits for before the
        store is closed.
        """
        self.commits.commit()
        return self.in_flight.when_none()

    def set_prepare(self, prepare: Callable[[bytes], Any]) -> None:
        """Use C{prepare} to turn encoded frames into what L{IConnection.deliver} takes."""
        self.prepare = prepare

    # Connections

    def admit(self, principal: Principal) -> None:
        """
        Check that C{principal} may open one more connection.

        @raise Refusal: 503 when the hub is stopping or full, 429 when the user is at their cap or
            opens connections faster than the handshake rate.
        """
        if not self.accepting:
            raise Refusal(503, "shutting down")
        if self.starting:
            raise Refusal(503, "starting")
        if not self.handshakes.take(principal.sub, self.clock.seconds()):
            self.metrics.refused_rate("handshake")
            raise Refusal(429, "too many handshakes", code="rate_limited")
        if len(self.registry) >= self.max_connections:
            raise Refusal(503, "too many connections")
        if self.presence_manager.count(principal.sub) >= self.max_connections_per_user:
            raise Refusal(429, "too many connections for this user")

    def register(self, conn: IConnection, request: ConnectRequest | None = None) -> None:
        """
        Add an open connection and send it its first frames: C{welcome}, then either a
        C{snapshot} (a fresh start) or the replay of what it missed (see L{CatchUp}).
        """
        request = request or ConnectRequest()
        now = self.clock.seconds()
        conn.connection_id = uuid.uuid4().hex
        client = Client(node=self, conn=conn, request=request, connected_at=now,
                         bucket=TokenBucket(self.message_rate, self.message_burst, now))
        first = self.registry.add(client)
        wanted = request.channels
        if wanted is None:
            wanted = policy.default_subscription(conn.principal)
        forbidden = client.add_channels(wanted)
        # The audit line of an accepted handshake (refusals are logged by the protocol).
        self.log.info(
            "handshake accepted from {peer}: 101 {user} ({role}), connection {connection_id}",
            connection_id=conn.connection_id, user=conn.principal.sub,
            role=conn.principal.role, peer=request.peer,
        )
        client.schedule_expiry()
        conn.send_frame(events.envelope("welcome", {
            "connectionId": conn.connection_id,
            "user": conn.principal.as_user(),
            "heartbeatInterval": _number(self.heartbeat_interval),
            "lastSeq": self.store.last_seq,
            "epoch": self.store.epoch,
            "channels": sorted(client.channels),
        }, events.format_timestamp(now)))
        if forbidden:
            conn.send_frame(client.forbidden_channels(forbidden))
        self.presence_manager.connected(conn.principal, now)
        if first and conn.principal.role == "agent":
            self.liveness.changed(conn.principal)
        self.catchup.start(client)

    def writable(self, conn: IConnection) -> None:
        """The connection's transport takes data again: go on with a replay that waited for it."""
        client = self.registry.get(conn)
        if client is not None:
            self.catchup.writable(client)

    def timed_out(self, conn: IConnection) -> None:
        """The connection is being dropped because it stopped answering pings."""
        client = self.registry.get(conn)
        if client is not None:
            client.timed_out = True

    def unregister(self, conn: IConnection) -> None:
        """Forget a connection; safe to call more than once, and for one never registered."""
        client, last = self.registry.remove(conn)
        if client is None:
            return
        client.cancel_expiry()
        principal = conn.principal
        self.presence_manager.disconnected(principal)
        if last and principal.role == "agent":
            self.liveness.changed(principal, client.timed_out)
        self.log.info("connection {connection_id} of {user} closed",
                      connection_id=conn.connection_id, user=principal.sub)
        if not len(self.registry):
            waiters, self._empty_waiters = self._empty_waiters, []
            for d in waiters:
                d.callback(None)

    def close_connection(self, connection_id: str, admin: Principal) -> bool:
        """
        Close the connection C{connection_id} with 4009 (closed by an administrator), on behalf
        of C{admin}, and leave one audit line.  It goes as any close goes: the hub forgets it,
        with its presence and counts, when the closing handshake ends (L{unregister}).  A
        connection already closing for another reason keeps the code it was given.

        @return: whether such a connection was registered.
        """
        client = self.registry.find(connection_id)
        if client is None:
            return False
        conn = client.conn
        self.log.info(
            "closing connection {connection_id} of {user} ({peer}): closed by administrator "
            "{admin}",
            connection_id=connection_id, user=conn.principal.sub, peer=client.request.peer,
            admin=admin.sub,
        )
        if not client.closing:
            client.close(CLOSED_BY_ADMIN, "closed by an administrator")
        return True

    @property
    def connection_count(self) -> int:
        return len(self.registry)

    def connections_of(self, user_id: str) -> frozenset:
        return self.registry.connections_of(user_id)

    def users(self) -> list[dict]:
        """C{[{"id", "connections"}]}: who is connected and how often, by user id."""
        return self.registry.users()

    def connection_details(self) -> list[dict]:
        """One entry per connection, for operators: who, from where, since when, how far."""
        return list(self.registry.iter_connection_details())

    def iter_connection_details(self) -> Iterator[dict]:
        """L{connection_details}, one entry at a time, each made when it is reached."""
        return self.registry.iter_connection_details()

    # Client frames

    @property
    def max_strikes(self) -> int:
        """Refused messages in a row (while the bucket is empty) before the connection is
        closed."""
        return self.message_burst

    def handle_frame(self, conn: IConnection, data: bytes, is_binary: bool) -> dict | None:
        """
        Answer one client message (L{Client.handle}): the reply frame for C{conn}, or C{None}
        when the connection is being closed or is not registered.  Never raises for bad input.
        """
        client = self.registry.get(conn)
        return None if client is None else client.handle(data, is_binary)

    def allow_message(self, conn: IConnection) -> bool:
        """
        Charge a frame the hub does not see as a message (a ping, a pong, a continuation frame)
        to the connection's rate limit; C{False} when it is over it (and closed once it keeps going).
        """
        client = self.registry.get(conn)
        return client is not None and not client.closing and client.take_message()

    def error_frame(self, code: str, message: str, reply_to: str | None = None) -> dict:
        return self.frame("error", {"code": code, "message": message}, reply_to)

    def frame(self, frame_type: str, payload: dict, reply_to: str | None = None) -> dict:
        """A frame of the hub's own, stamped with the hub's time."""
        return events.envelope(frame_type, payload, self.now(), reply_to=reply_to)

    def now(self) -> str:
        return events.format_timestamp(self.clock.seconds())

    # Who may receive what

    def owns_session(self, principal: Principal) -> Callable[[str], bool]:
        """Whether a session belongs to the agent C{principal} (the store keeps owners)."""
        return lambda session_id: self.store.session_owner(session_id) == principal.sub

    def may_receive(self, principal: Principal, channel: str) -> bool:
        """Whether C{principal} may receive C{channel}, its own sessions counted (HTTP reads)."""
        return policy.may_subscribe(principal, channel, self.owns_session(principal))

    def may_see(self, principal: Principal, event_type: str, payload: dict) -> bool:
        """Whether C{principal} may receive this event on some channel (for the HTTP reads)."""
        owns = self.owns_session(principal)
        return any(policy.may_subscribe(principal, name, owns)
                   for name in channels.event_channels(event_type, payload))

    # Presence

    def presence(self) -> list[dict]:
        """Who is connected now: one entry per user, with their connection count."""
        return list(self.iter_presence())

    def iter_presence(self) -> Iterator[dict]:
        """L{presence}, one entry at a time, each made when it is reached (for streaming)."""
        for info in self.presence_manager.entries():
            yield dict(info, connections=self.presence_manager.count(info["id"]))

    def use_presence(self, manager: IPresenceManager) -> None:
        """Keep presence in C{manager} (one shared by several nodes) from now on."""
        self.presence_manager = manager
        manager.on_change = self._presence_changed

    def agents_gone(self, entries: list[dict]) -> None:
        """
        The users of C{entries} were connected only to a node that died: mark its agents
        offline (the node that noticed first does this, once).
        """
        for info in entries:
            if info.get("role") == "agent":
                principal = Principal(sub=info["id"], role="agent", name=info.get("name"),
                                      expires_at=0.0)
                self.liveness.changed(principal, why="its hub node stopped answering")

    def is_connected(self, user_id: str) -> bool:
        """Whether C{user_id} has a connection, here or on any node sharing the history."""
        return self.presence_manager.count(user_id) > 0

    def _presence_changed(self, event_type: str, info: dict, count: int) -> None:
        """A user came or went (anywhere): tell this node's presence subscribers."""
        payload = {"userId": info["id"], "name": info["name"], "role": info["role"],
                   "connections": count}
        self.fan_out(events.envelope(event_type, payload, self.now()), (channels.PRESENCE,))

    # Publishing and fan-out

    def publish(self, event_type: str, payload: dict, idempotency: Any = None,
                claimant: str | None = None) -> Deferred[dict]:
        """
        Store an already validated event and fan it out; the Deferred fires with its envelope
        once the broker answers (the event fanned out by then), or fails with the broker's
        failure.  With C{idempotency} (C{(user, key, fingerprint)}) a repeat fires with the first
        event's envelope and sends nothing (a key used for another request fails with
        L{mission_control.store.IdempotencyConflict}).  C{claimant}: the agent that publishes
        it (see L{mission_control.store.EachItem}; L{claimant_of}).
        """
        now = self.clock.seconds()
        # A session it claims is taken for the checks of later publishes until it is stored.
        release = self.owners.hold(
            publishing.claims_of([(event_type, payload)], self.commits.session_owner))
        started = self.metrics.timer()
        d = self.broker.append(event_type, payload, events.format_timestamp(now), now,
                               idempotency, claimant)
        d.addBoth(self._counted, started)
        return _released(self.in_flight.track(d), release).addCallback(_envelope)

    def _counted(self, result: _T, started: float) -> _T:
        """An append answered: its time, and the events it created (one or a batch)."""
        self.metrics.appended(started)
        if isinstance(result, tuple) and result[1]:
            stored = result[0]
            for event in stored if isinstance(stored, list) else (stored,):
                self.metrics.published(event.type)
        return result

    def _appended(self, event: StoredEvent) -> None:
        """The broker appended C{event}: deliver it to every connection subscribed to it."""
        self.fan_out(event.envelope(), channels.event_channels(event.type, event.payload))

    def publish_for(
        self,
        principal: Principal,
        event_type: str,
        body: object,
        subject_id: str | None = None,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Deferred[dict]:
        """
        Check C{body} as an event of C{event_type} that C{principal} publishes
        (L{publishing.checked_payload}), at once, and publish it (L{publish}): the Deferred
        fires with its envelope once it is stored.  C{subject_id} is the agent or session id
        named by the URL, if any.

        @raise Refusal: 403 when the role does not allow it (nothing is stored).
        @raise ValidationError: when the payload breaks a rule (nothing is stored).
        @return: a Deferred that fails with L{mission_control.store.IdempotencyConflict} when the
            key was used for another request, or with the broker's failure.
        """
        payload = publishing.checked_payload(principal, event_type, body, subject_id,
                                             self.clock.seconds(), self.commits.session_owner)
        idempotency = None
        if idempotency_key is not None:
            idempotency = (principal.sub, idempotency_key, fingerprint)
        return self.publish(event_type, payload, idempotency, claimant_of(principal))

    def publish_later(self, principal: Principal, event_type: str, body: object,
                      idempotency_key: str | None, fingerprint: str, answer: Answer) -> None:
        """
        Check a publish as L{publish_for} does, at once, then store it with the other publishes
        of this reactor turn, as one transaction (L{GroupCommit}); C{answer} is told its event
        (with whether it was created) or its own failure once that is committed and fanned out.

        @raise Refusal: 403 when the role does not allow it.
        @raise ValidationError: when the payload breaks a rule.
        """
        payload = publishing.checked_payload(principal, event_type, body, None,
                                             self.clock.seconds(), self.commits.session_owner)
        idempotency = None
        if idempotency_key is not None:
            idempotency = (principal.sub, idempotency_key, fingerprint)
        self.commits.add(event_type, payload, idempotency, answer, claimant_of(principal))

    def commit_publishes(self) -> None:
        """Store and answer the publishes waiting for the end of the turn, now."""
        self.commits.commit()

    def publish_many(
        self,
        principal: Principal,
        items: object,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Deferred[list[dict]]:
        """
        Check every event of a batch as L{publish_for} checks one (L{publishing.checked_batch}),
        at once, then store them all as one atomic append and fan each out, in seq order.
        Nothing is stored when any is refused.  With C{idempotency_key}, a repeat of the batch
        fires with the first one's envelopes and sends nothing.

        @param items: the batch as the caller sent it: a list of C{{"type", "payload"}}.
        @return: a Deferred that fires with the envelopes, in seq order, or fails with
            L{mission_control.store.IdempotencyConflict} (the key was used for another request)
            or the broker's failure.
        @raise Refusal: 403 for the first event the role does not allow (C{events[i]: ...}).
        @raise ValidationError: the first event that breaks a rule (C{events[i]: ...}).
        """
        now = self.clock.seconds()
        checked = publishing.checked_batch(principal, items, now, self.commits.session_owner)
        idempotency = None
        if idempotency_key is not None:
            idempotency = (principal.sub, idempotency_key, fingerprint)
        release = self.owners.hold(publishing.claims_of(checked, self.commits.session_owner))
        started = self.metrics.timer()
        d = self.broker.append_many(checked, events.format_timestamp(now), now, idempotency,
                                    claimant_of(principal))
        d.addBoth(self._counted, started)
        return _released(self.in_flight.track(d), release).addCallback(_envelopes)

    def broadcast(self, frame: Mapping) -> int:
        """
        Encode C{frame} once and deliver it to every live connection.  Returns how many
        connections it was handed to.  Broadcasting to nobody is a no-op.
        """
        return self._deliver(frame, self.registry.live())

    def fan_out(self, frame: Mapping, names: Iterable[str]) -> int:
        """Deliver C{frame}, encoded once, to every connection that receives any of C{names}."""
        return self._deliver(frame, self.registry.subscribers(names))

    def _deliver(self, frame: Mapping, targets: Collection[IConnection]) -> int:
        if not targets:
            return 0
        self.window.fan_out(self.prepare(events.encode_json(frame)), targets)
        self.metrics.delivered(len(targets))  # once per event, never per connection
        return len(targets)

    def send_heartbeat(self) -> None:
        ts = self.now()
        self.broadcast(
            events.envelope("heartbeat", {"timestamp": ts, "lastSeq": self.store.last_seq}, ts)
        )


def _released(d: Deferred[_T], release: Callable[[], None]) -> Deferred[_T]:
    """C{d}, which releases the claims of its append when it fires, whatever its result."""

    def both(result: object) -> object:
        release()
        return result

    d.addBoth(both)
    return d


def _envelope(result: tuple[StoredEvent, bool]) -> dict:
    return result[0].envelope()


def _envelopes(result: tuple[list[StoredEvent], bool]) -> list[dict]:
    return [event.envelope() for event in result[0]]


def _number(value: float) -> int | float:
    """C{30.0} as C{30}: whole seconds read better in JSON."""
    return int(value) if float(value).is_integer() else value


def claimant_of(principal: Principal) -> str | None:
    """
    Who claims the sessions that C{principal}'s publishes name: an agent claims for itself;
    an administrator's or operator's activity claims for nobody (it may name any agent).
    """
    return principal.sub if principal.role == "agent" else None

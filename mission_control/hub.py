# -*- test-case-name: tests.test_hub -*-
"""
The hub: the registry of live connections, publishing, fan-out, heartbeats and the replies to
client frames.

It knows nothing of sockets.  A connection is anything with the L{IConnection} attributes; the
WebSocket protocol (L{mission_control.protocol}) is one, the tests' fakes are another.  Time comes
from an injected C{IReactorTime}.

Fan-out encodes each frame once: L{Hub.broadcast} turns the frame into bytes, hands them to the
injected C{prepare} (Autobahn's C{factory.prepareMessage}, which frames them once too) and passes
the same prepared object to every connection.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from mission_control import auth, events
from mission_control.auth import Principal, Refusal
from mission_control.events import ValidationError


class IConnection(Interface):
    """One live client connection, as the hub sees it."""

    connection_id = Attribute("str: set by Hub.register")
    principal = Attribute("Principal: who is connected")

    def deliver(prepared: Any) -> None:
        """Send a frame prepared by the hub's C{prepare}; a no-op unless the connection is open."""

    def send_frame(frame: Mapping) -> None:
        """Encode and send one frame to this connection alone."""

    def close(code: int, reason: str) -> None:
        """Start a closing handshake with C{code}."""


class Hub:
    """
    @ivar store: where seq and latest state live (see L{mission_control.store}).
    @ivar heartbeat_interval: seconds between C{heartbeat} frames; 0 turns them off.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store,
        heartbeat_interval: float = 30.0,
        prepare: Callable[[bytes], Any] = lambda data: data,
        max_connections: int = 10000,
        max_connections_per_user: int = 20,
    ) -> None:
        self.clock = clock
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.max_connections = max_connections
        self.max_connections_per_user = max_connections_per_user
        self._prepare = prepare
        self._connections: set = set()
        self._by_user: dict[str, set] = {}
        self._heartbeat: LoopingCall | None = None
        self._empty_waiters: list[Deferred] = []
        self.accepting = True

    # Lifecycle

    def start(self) -> None:
        """Start sending heartbeats (when the interval is not 0)."""
        if self.heartbeat_interval > 0 and self._heartbeat is None:
            self._heartbeat = LoopingCall(self.send_heartbeat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(self.heartbeat_interval, now=False)

    def stop(self) -> None:
        """Stop heartbeats and refuse new connections."""
        self.accepting = False
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None

    def close_all(self, code: int = 1001, reason: str = "server going away") -> None:
        """Close every connection (1001 by default: the server is going away)."""
        for conn in tuple(self._connections):
            conn.close(code, reason)

    def when_empty(self) -> Deferred:
        """A Deferred that fires once no connection is registered (at once if none is)."""
        if not self._connections:
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

        @raise Refusal: 503 when the hub is stopping or full, 429 when the user is at their cap.
        """
        if not self.accepting:
            raise Refusal(503, "shutting down")
        if len(self._connections) >= self.max_connections:
            raise Refusal(503, "too many connections")
        if len(self._by_user.get(principal.sub, ())) >= self.max_connections_per_user:
            raise Refusal(429, "too many connections for this user")

    def register(self, conn) -> list[dict]:
        """
        Add an open connection to the registry.  Returns the frames it must receive first, in
        order: C{welcome}, then C{snapshot}.
        """
        conn.connection_id = uuid.uuid4().hex
        self._connections.add(conn)
        self._by_user.setdefault(conn.principal.sub, set()).add(conn)
        self.log.info(
            "connection {connection_id} opened by {user} ({role})",
            connection_id=conn.connection_id,
            user=conn.principal.sub,
            role=conn.principal.role,
        )
        ts = self._now()
        welcome = events.envelope(
            "welcome",
            {
                "connectionId": conn.connection_id,
                "user": conn.principal.as_user(),
                "heartbeatInterval": _number(self.heartbeat_interval),
                "lastSeq": self.store.last_seq,
                "epoch": self.store.epoch,
            },
            ts,
        )
        return [welcome, self.snapshot(ts)]

    def unregister(self, conn) -> None:
        """Forget a connection; safe to call more than once, and for one never registered."""
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        sub = conn.principal.sub
        mine = self._by_user.get(sub)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self._by_user[sub]
        if not self._connections:
            waiters, self._empty_waiters = self._empty_waiters, []
            for d in waiters:
                d.callback(None)
        self.log.info(
            "connection {connection_id} of {user} closed",
            connection_id=conn.connection_id,
            user=sub,
        )

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def connections_of(self, user_id: str) -> frozenset:
        return frozenset(self._by_user.get(user_id, ()))

    def users(self) -> list[dict]:
        """C{[{"id", "connections"}]}: who is connected and how often, by user id."""
        return [
            {"id": user, "connections": len(conns)}
            for user, conns in sorted(self._by_user.items())
        ]

    # Publishing and fan-out

    def publish(self, event_type: str, payload: dict) -> dict:
        """
        Store an already validated event, broadcast it and return its envelope.
        """
        seq = self.store.append(event_type, payload)
        frame = events.envelope(event_type, payload, self._now(), seq=seq)
        self.broadcast(frame)
        return frame

    def publish_for(
        self,
        principal: Principal,
        event_type: str,
        body: object,
        subject_id: str | None = None,
    ) -> dict:
        """
        Validate C{body} as an event of C{event_type} published by C{principal}, check that they
        may publish it, and publish it.  C{subject_id} is the agent or session id named by the
        URL, if any.

        @raise Refusal: 403 when the role does not allow it.
        @raise ValidationError: when the payload breaks a rule.
        """
        now = self.clock.seconds()
        if event_type == events.AGENT_STATUS:
            if subject_id is not None and not auth.may_publish_agent_status(
                principal, subject_id
            ):
                raise Refusal(403, "not allowed to publish for this agent")
            payload = events.agent_status(body, now, subject_id)
            if not auth.may_publish_agent_status(principal, payload["agentId"]):
                raise Refusal(403, "not allowed to publish for this agent")
        elif event_type == events.SESSION_ACTIVITY:
            if principal.role not in ("admin", "operator", "agent"):
                raise Refusal(403, "not allowed to publish session activity")
            if principal.role == "agent" and isinstance(body, dict) and "agentId" not in body:
                # An agent's activity is its own unless it says otherwise.
                body = dict(body, agentId=principal.sub)
            payload = events.session_activity(body, now, subject_id)
            if not auth.may_publish_session_activity(principal, payload.get("agentId")):
                raise Refusal(403, "not allowed to publish for this agent")
        else:
            raise ValidationError("unknown event type", code="unknown_type")
        return self.publish(event_type, payload)

    def broadcast(self, frame: Mapping) -> int:
        """
        Encode C{frame} once and deliver it to every registered connection.  Returns how many
        connections it was handed to.  Broadcasting to nobody is a no-op.
        """
        if not self._connections:
            return 0
        prepared = self._prepare(events.encode_json(frame))
        # A copy: delivering may close a connection, which unregisters it.
        targets = tuple(self._connections)
        for conn in targets:
            conn.deliver(prepared)
        return len(targets)

    def send_heartbeat(self) -> None:
        ts = self._now()
        self.broadcast(
            events.envelope("heartbeat", {"timestamp": ts, "lastSeq": self.store.last_seq}, ts)
        )

    def snapshot(self, ts: str | None = None) -> dict:
        return events.envelope(
            "snapshot",
            {
                "agents": self.store.agents(),
                "sessions": self.store.sessions(),
                "lastSeq": self.store.last_seq,
            },
            ts or self._now(),
        )

    # Client frames

    def handle_frame(self, conn, data: bytes, is_binary: bool) -> dict:
        """
        Answer one client message.  Returns the reply frame for C{conn}: a reply to a good frame,
        or an C{error} frame for a bad one.  Never raises for bad input.
        """
        try:
            frame = events.parse_client_frame(data, is_binary)
        except ValidationError as e:
            return self.error_frame(e.code, e.message, e.frame_id)
        handler = self._frame_handlers.get(frame.type)
        if handler is None:
            return self.error_frame("unknown_type", "unknown frame type", frame.id)
        try:
            return handler(self, conn, frame)
        except ValidationError as e:
            return self.error_frame(e.code, e.message, frame.id)
        except Refusal as e:
            return self.error_frame(e.code, e.reason, frame.id)

    def error_frame(self, code: str, message: str, reply_to: str | None = None) -> dict:
        return events.envelope(
            "error", {"code": code, "message": message}, self._now(), reply_to=reply_to
        )

    def _on_ping(self, conn, frame: events.ClientFrame) -> dict:
        return events.envelope("pong", {}, self._now(), reply_to=frame.id)

    def _on_ack(self, conn, frame: events.ClientFrame) -> dict:
        seq = frame.fields.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValidationError("seq must be a non-negative integer")
        if seq > self.store.last_seq:
            raise ValidationError("seq is beyond the last event")
        conn.acked_seq = max(getattr(conn, "acked_seq", 0), seq)
        return events.envelope("ack", {"seq": conn.acked_seq}, self._now(), reply_to=frame.id)

    def _not_yet(self, conn, frame: events.ClientFrame) -> dict:
        raise ValidationError(
            f"{frame.type} is not supported by this version of the hub", code="not_supported"
        )

    _frame_handlers: dict[str, Callable] = {
        "ping": _on_ping,
        "ack": _on_ack,
        "auth": _not_yet,
        "subscribe": _not_yet,
        "unsubscribe": _not_yet,
        "publish": _not_yet,
    }

    def _now(self) -> str:
        return events.format_timestamp(self.clock.seconds())


def _number(value: float) -> int | float:
    """C{30.0} as C{30}: whole seconds read better in JSON."""
    return int(value) if float(value).is_integer() else value

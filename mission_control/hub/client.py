# -*- test-case-name: tests.test_hub_client -*-
"""
The client: the hub's side of one connection.

A L{Client} holds what the hub keeps per connection (what it asked for, how far it has acked,
its channels, whether it is live or catching up, its message rate bucket and its token's next
deadline) and answers the frames the connection sends: C{ping}, C{ack}, C{auth}, C{subscribe},
C{unsubscribe} and C{publish}.  Everything it shares with other connections (the store, the
registry, publishing) it reaches through its L{Hub}, the node.

A C{publish} is answered once its group of publishes is committed, at the end of the reactor
turn (L{mission_control.hub.commits}); the connection's replies still go out in the order of its
frames: a reply ready earlier (a refused publish) waits behind the publishes before it, and a
frame of another kind first has the waiting publishes handed to the store, so it is handled after
them, as when each publish was stored on its own (with a broker that answers later, its reply
waits for theirs).  That ordering, beside the six frame handlers, is why the module is a little
over 400 lines: the handlers and the order of their replies belong together.

("Session" means an agent's work session everywhere else in mission-control, so the hub's record
of a connection is a client, as in centrifuge.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mission_control import channels, events, policy
from mission_control.auth import Refusal, TokenVerifier
from mission_control.events import ValidationError
from mission_control.hub.connection import ConnectRequest, IConnection
from mission_control.hub.expiry import Deadline, Deadlines
from mission_control.hub.registry import Registry
from mission_control.limits import TokenBucket
from mission_control.metrics import Metrics
from mission_control.policy import Principal
from mission_control.store import (
    EachResult,
    IdempotencyConflict,
    IEventStore,
    SessionTaken,
    StoreUnavailable,
)

#: Close codes the client uses.
TOKEN_EXPIRED = 4001
TOKEN_NOT_ACCEPTED = 4003
TOO_MANY_MESSAGES = 4029

_CHANNEL_LIST_RULE = (
    "channels must be a non-empty list of channel names (agents, agents:<id>, sessions, "
    "sessions:<id>, presence)"
)


class ClientNode(Protocol):
    """What a client needs of its node (L{mission_control.hub.node.Hub} is one)."""

    clock: IReactorTime
    store: IEventStore
    verifier: TokenVerifier | None
    registry: Registry[Client]
    #: Where the clients' token deadlines are kept (one timer for all of them).
    deadlines: Deadlines
    #: Seconds before a token's C{exp} that C{auth:expiring} warns.
    expiry_warning: float
    #: Where messages refused for the rate are counted.
    metrics: Metrics

    @property
    def max_strikes(self) -> int: ...

    def frame(self, frame_type: str, payload: dict, reply_to: str | None = None) -> dict: ...

    def error_frame(self, code: str, message: str, reply_to: str | None = None) -> dict: ...

    def owns_session(self, principal: Principal) -> Callable[[str], bool]: ...

    def publish_later(self, principal: Principal, event_type: str, body: object,
                      idempotency_key: str | None, fingerprint: str,
                      answer: Callable[[EachResult], None]) -> None: ...

    def commit_publishes(self) -> None: ...


class _Reply:
    """A reply in the order of its connection's frames: a frame, or C{None} until it is known."""

    __slots__ = ("frame",)

    def __init__(self, frame: dict | None = None) -> None:
        self.frame = frame


@dataclass(eq=False, slots=True)
class Client:
    """The hub's record of one connection, and the answers to its frames."""

    node: ClientNode
    conn: IConnection
    request: ConnectRequest
    connected_at: float
    bucket: TokenBucket
    acked_seq: int = 0
    #: In the fan-out (it has caught up), rather than still receiving a snapshot or a replay.
    live: bool = False
    #: Where the replay in progress started (its C{resumed} frame says C{from}) and has got to.
    replay_start: int | None = None
    replay_cursor: int | None = None
    #: The replay waits for the transport to take data again (see L{Hub.writable}).
    replay_waiting: bool = False
    #: The replay answers a resume (it ends with a C{resumed} frame), rather than catching up
    #: on what was published while a large snapshot streamed.
    resuming: bool = False
    #: Presence frames reach it before it is live (see L{Registry.watch_presence}).
    presence_watched: bool = False
    closing: bool = False
    #: The token's next deadline in the node's L{Deadlines} (the warning or the close), and
    #: when the warning is due (None once sent, or when none is owed).
    expiry: Deadline | None = None
    warn_at: float | None = None
    channels: set[str] = field(default_factory=set)
    #: It is being dropped because it stopped answering pings.
    timed_out: bool = False
    #: The token expiry that C{auth:expiring} already warned of: an C{auth} frame that does not
    #: move it (the same token sent back) is not warned of again.
    warned_for: float | None = None
    #: The replies owed, oldest first, while a publish of this connection waits for its commit
    #: (None otherwise: most connections never publish).
    replies: deque[_Reply] | None = None

    log = Logger()

    # Channels

    def add_channels(self, wanted: Any) -> list[str]:
        """Subscribe to what is allowed of C{wanted}; return the names refused."""
        principal = self.conn.principal
        owns = self.node.owns_session(principal)
        forbidden = []
        for channel in wanted:
            if channel in self.channels:
                continue
            if (len(self.channels) >= channels.MAX_SUBSCRIPTIONS
                    or not policy.may_subscribe(principal, channel, owns)):
                forbidden.append(channel)
                continue
            self.node.registry.subscribe(self, channel)
        return forbidden

    def remove_channels(self, names: Any) -> None:
        for channel in tuple(names):
            self.node.registry.unsubscribe(self, channel)

    def forbidden_channels(self, names: list[str], reply_to: str | None = None) -> dict:
        """The C{error} frame that refuses C{names} (the first ten, sorted)."""
        shown = ", ".join(sorted(names)[:10])
        return self.node.error_frame("forbidden", f"not allowed to subscribe to: {shown}",
                                     reply_to)

    # Token lifetime

    def schedule_expiry(self) -> None:
        """Warn L{Hub.expiry_warning} seconds before the token's exp; close with 4001 at exp +
        leeway (one deadline in the node's L{Deadlines}, for whichever comes first)."""
        self.cancel_expiry()
        now = self.node.clock.seconds()
        expires_at = self.conn.principal.expires_at
        close_at = max(now, self._close_at())
        self.warn_at = None
        if close_at > now and self.warned_for != expires_at:
            # A token with less than a minute left is warned at once, so it can still be renewed;
            # once per expiry time, else a client that answers each warning with a token of the
            # same exp (its own, back) would get a warning after every answer, in a loop.
            self.warn_at = max(now, expires_at - self.node.expiry_warning)
        self._next_expiry(close_at)

    def _close_at(self) -> float:
        verifier = self.node.verifier
        return self.conn.principal.expires_at + (verifier.leeway if verifier is not None else 0.0)

    def _next_expiry(self, close_at: float) -> None:
        warn_at = self.warn_at
        when = close_at if warn_at is None or close_at <= warn_at else warn_at
        self.expiry = self.node.deadlines.at(when, self._expiry_due)

    def _expiry_due(self) -> None:
        """The warning, then the close, each once its time has come (the close first if both
        fall at the same time, as when each had its own timer)."""
        self.expiry = None
        now = self.node.clock.seconds()
        close_at = self._close_at()
        warn_at = self.warn_at
        if warn_at is not None and warn_at <= now and warn_at < close_at:
            self.warn_at = None
            self._expiring()
        if close_at <= now:
            self.warn_at = None
            self._expired()
        elif self.expiry is None and self.node.registry.get(self.conn) is self:
            self._next_expiry(close_at)  # the close, unless the warning's send closed it

    def cancel_expiry(self) -> None:
        """Forget the token's deadlines (the connection closed, or a fresh token moves them)."""
        if self.expiry is not None:
            self.node.deadlines.cancel(self.expiry)
            self.expiry = None
        self.warn_at = None

    def _expiring(self) -> None:
        expires_at = self.conn.principal.expires_at
        self.warned_for = expires_at
        self.conn.send_frame(
            self.node.frame("auth:expiring", {
                "expiresAt": events.format_timestamp(expires_at),
                "secondsLeft": max(0, int(expires_at - self.node.clock.seconds())),
            })
        )

    def _expired(self) -> None:
        self.log.info("closing connection {connection_id} of {user}: token expired",
                      connection_id=self.conn.connection_id, user=self.conn.principal.sub)
        self.close(TOKEN_EXPIRED, "token expired")

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection; frames that arrive from now on are not answered."""
        self.closing = True
        self.conn.close(code, reason)

    # Frames

    def take_message(self) -> bool:
        """
        Charge one message to the rate bucket.  C{False} when it is over the limit; a client that
        keeps going past L{Hub.max_strikes} refusals in a row is closed with 4029.
        """
        if self.bucket.take(self.node.clock.seconds()):
            return True
        self.node.metrics.refused_rate("message")
        if self.bucket.strikes > self.node.max_strikes:
            self.log.warn("closing connection {connection_id} of {user}: too many messages",
                          connection_id=self.conn.connection_id, user=self.conn.principal.sub)
            self.close(TOO_MANY_MESSAGES, "too many messages")
        return False

    def handle(self, data: bytes, is_binary: bool) -> dict | None:
        """
        Answer one message: the reply frame (a reply to a good frame, an C{error} frame for a bad
        one or one over the rate limit), or C{None} when the connection is being closed.  Never
        raises.
        """
        if self.closing:
            return None  # frames that arrive after the hub began closing are not answered
        if not self.take_message():
            if self.closing:
                return None
            return self._in_order(self.node.error_frame("rate_limited",
                                                        "too many messages; slow down"))
        try:
            return self._in_order(self.answer(data, is_binary))
        except Exception:
            # Our failure, not the client's (a store error, say): logged, answered, never a drop.
            self.log.failure("answering a frame of connection {connection_id} failed",
                             connection_id=self.conn.connection_id)
            return self._in_order(self.node.error_frame(
                "internal_error", "the hub could not process this frame"))

    def _in_order(self, reply: dict | None) -> dict | None:
        """C{reply} to send now, or C{None} when it must wait behind a publish before it."""
        if reply is not None and self.replies:
            self.replies.append(_Reply(reply))
            return None
        return reply

    def _send_ready(self) -> None:
        """Send the replies owed that are known, up to the first still waiting for its commit."""
        replies = self.replies
        while replies and replies[0].frame is not None:
            frame = replies.popleft().frame
            assert frame is not None
            self.conn.send_frame(frame)
        if not replies:
            self.replies = None

    def answer(self, data: bytes, is_binary: bool) -> dict | None:
        """The reply to one message (an C{error} frame for a bad one), or C{None} for none."""
        try:
            frame = events.parse_client_frame(data, is_binary)
        except ValidationError as e:
            return self.node.error_frame(e.code, e.message, e.frame_id)
        if self.replies and frame.type != "publish":
            # Handled after this connection's waiting publishes are handed to the store, as if
            # each were stored at once; its reply still goes after theirs (_in_order).
            self.node.commit_publishes()
        handler = _HANDLERS.get(frame.type)
        if handler is None:
            return self.node.error_frame("unknown_type", "unknown frame type", frame.id)
        try:
            return handler(self, frame)
        except ValidationError as e:
            return self.node.error_frame(e.code, e.message, frame.id)
        except Refusal as e:
            return self.node.error_frame(e.code, e.reason, frame.id)

    def on_ping(self, frame: events.ClientFrame) -> dict:
        return self.node.frame("pong", {}, frame.id)

    def on_ack(self, frame: events.ClientFrame) -> dict:
        seq = frame.fields.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValidationError("seq must be a non-negative integer")
        store = self.node.store
        if seq > store.last_seq:
            raise ValidationError("seq is beyond the last event")
        if seq > self.acked_seq:
            self.acked_seq = seq
            name = self.request.client
            if name is not None:
                user = self.conn.principal.sub
                saved = store.position(user, name)
                # Never backwards: another connection of the same name may be further along.
                if saved is None or seq > saved:
                    store.save_position(user, name, seq, self.node.clock.seconds())
        return self.node.frame("ack", {"seq": self.acked_seq}, frame.id)

    def on_auth(self, frame: events.ClientFrame) -> dict | None:
        conn = self.conn
        token = frame.fields.get("token")
        if not isinstance(token, str) or not token:
            raise ValidationError("token must be a non-empty string")
        verifier = self.node.verifier
        if verifier is None:
            raise ValidationError("auth is not available", code="not_supported")
        try:
            principal = verifier.verify(token, self.node.clock.seconds())
        except Refusal as refusal:
            self._refuse_auth(frame, "invalid_token", refusal.reason)
            return None
        if principal.sub != conn.principal.sub:
            self._refuse_auth(frame, "forbidden", "token is for another user")
            return None
        conn.principal = principal
        self.schedule_expiry()
        # The new token may allow less (another role, a narrower claim): drop what it does not.
        owns = self.node.owns_session(principal)
        self.remove_channels([c for c in self.channels
                              if not policy.may_subscribe(principal, c, owns)])
        return self.node.frame(
            "auth:ok",
            {"user": principal.as_user(),
             "expiresAt": events.format_timestamp(principal.expires_at),
             "channels": sorted(self.channels)},
            frame.id,
        )

    def _refuse_auth(self, frame: events.ClientFrame, code: str, message: str) -> None:
        conn = self.conn
        self.log.warn(
            "security: auth frame refused on connection {connection_id} of {user}: {reason}",
            connection_id=conn.connection_id, user=conn.principal.sub, reason=message,
        )
        conn.send_frame(self.node.error_frame(code, message, frame.id))
        self.close(TOKEN_NOT_ACCEPTED, "token not accepted")

    @staticmethod
    def _channel_list(frame: events.ClientFrame) -> list[str]:
        names = frame.fields.get("channels")
        if (not isinstance(names, list) or not names
                or len(names) > channels.MAX_SUBSCRIPTIONS
                or not all(channels.is_valid_channel(name) for name in names)):
            raise ValidationError(_CHANNEL_LIST_RULE)
        return names

    def _subscriptions(self, frame: events.ClientFrame) -> dict:
        return self.node.frame("subscribed", {"channels": sorted(self.channels)}, frame.id)

    def on_subscribe(self, frame: events.ClientFrame) -> dict:
        forbidden = self.add_channels(self._channel_list(frame))
        if forbidden:
            # The allowed part applies; the refusal is its own error frame.
            self.conn.send_frame(self.forbidden_channels(forbidden, frame.id))
        return self._subscriptions(frame)

    def on_unsubscribe(self, frame: events.ClientFrame) -> dict:
        self.remove_channels(self._channel_list(frame))
        return self._subscriptions(frame)

    def on_publish(self, frame: events.ClientFrame) -> None:
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
        reply = _Reply()

        def answer(result: EachResult) -> None:
            reply.frame = self._published(result, frame.id)
            self._send_ready()

        # Checked now (a refusal is answered at once); stored with the turn's other publishes,
        # and answered once they are committed.
        self.node.publish_later(self.conn.principal, event_type, payload, key, fingerprint,
                                answer)
        if self.replies is None:
            self.replies = deque()
        self.replies.append(reply)
        return None

    def _published(self, result: EachResult, frame_id: str | None) -> dict:
        """The reply to a stored publish: C{published} with its seq, or its C{error}."""
        if isinstance(result, IdempotencyConflict):
            return self.node.error_frame(
                "idempotency_conflict", "idempotencyKey was already used for a different event",
                frame_id)
        if isinstance(result, SessionTaken):
            return self.node.error_frame("forbidden", "session belongs to another agent",
                                         frame_id)
        if isinstance(result, StoreUnavailable):
            return self.node.error_frame("unavailable",
                                         "the event could not be stored; retry later", frame_id)
        if isinstance(result, Exception):  # logged where it was stored (GroupCommit)
            return self.node.error_frame("internal_error",
                                         "the hub could not process this frame", frame_id)
        event = result[0]
        return self.node.frame("published", {"seq": event.seq, "type": event.type}, frame_id)


_HANDLERS: dict[str, Callable[[Client, events.ClientFrame], dict | None]] = {
    "ping": Client.on_ping,
    "ack": Client.on_ack,
    "auth": Client.on_auth,
    "subscribe": Client.on_subscribe,
    "unsubscribe": Client.on_unsubscribe,
    "publish": Client.on_publish,
}

# -*- test-case-name: tests.test_api -*-
"""
The JSON HTTP API under C{/api} (docs/http-api.md).

    POST /api/agents/{agentId}/status         admin, operator; agent for itself
    GET  /api/agents                          any role
    POST /api/sessions/{sessionId}/activity   admin, operator; agent for its own agentId
    GET  /api/sessions                        any role
    GET  /api/events?since=SEQ&limit=N        any role: stored events after SEQ, oldest first
         [&channel=C]                         ... of one channel only (agents, sessions:<id>, ...)
    POST /api/events                          a batch of publishes, as each one's own POST allows
    GET  /api/presence                        any role: who is connected, one entry per user
    GET  /api/connections                     admin, operator
    DELETE /api/connections/{connectionId}    admin: close it with 4009
    GET  /api/me                              any role: the token's user, expiry and channels

The same authentication guards C{GET /metrics}, outside C{/api} (L{Api.authorize}).

POSTs are limited per user (C{--max-publishes-per-second}, 429 past it; a batch costs one per
event) and take an
C{Idempotency-Key} header: a repeat of the same request with the same key within
ten minutes returns the first result instead of storing a duplicate.  A publish is checked at
once (every 4xx but a key's conflict is answered before anything is stored) and answered once the
hub has stored it (L{mission_control.web.later}): 200, 409 for a key used for another request,
or 503 when the store could not take it.

A thin adapter: it routes, authenticates with the same L{TokenVerifier} as the WebSocket, parses
JSON, and hands the rest to the L{Hub}.  Every client mistake is a 4xx with
C{{"error": {"code", "message"}}}; nothing from the request is echoed except field names.
One route is one short method here, so the module is as long as the API is wide: about 510
lines, over 400 lines because each route, with the answers a publish can get once it is stored,
belongs with the others.  What a batch's body is, is in L{mission_control.web.batch}; how an
answer that comes later is written, in L{mission_control.web.later}; what the routes share with
the WebSocket lives in the hub and the rules, not here.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any, Callable, TypeVar, Union

from autobahn.twisted.util import peer2str
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import Request

from mission_control import channels, events, ids, policy, replay
from mission_control.auth import Refusal, TokenVerifier, token_from_request
from mission_control.policy import Principal
from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY, ValidationError, encode_json
from mission_control.ids import ID_RULE
from mission_control.text import NotText, decode_json
from mission_control.hub import Hub
from mission_control.limits import RateLimits
from mission_control.store import IdempotencyConflict, SessionTaken, StoreUnavailable
from mission_control.web import batch
from mission_control.web.later import Rendered, render_when_fired
from mission_control.web.redaction import redact
from mission_control.web.site import MAX_BODY_SIZE, error_body
from mission_control.web.streaming import StreamedBody


#: What a handler answers with: a JSON value to encode, bytes ready to send, or a streamed body.
Body = Union[dict[str, Any], bytes, StreamedBody]
#: What a handler answers: C{(status, body)}, or a Deferred of it (a publish, once stored).
Answer = tuple[int, Body]
#: A handler: C{(request, principal, *ids) -> (status, body)} or a Deferred of it.
Handler = Callable[..., Union[Answer, "Deferred[Answer]"]]
_T = TypeVar("_T")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class Api(resource.Resource):
    """The whole C{/api} subtree, routed by path segments."""

    isLeaf = True
    log = Logger()

    #: Users whose publish rate is tracked at once (least recently seen forgotten first).
    max_tracked_publishers = 10_000

    def __init__(self, hub: Hub, verifier: TokenVerifier, publish_rate: float = 200.0,
                 read_rate: float = 20.0) -> None:
        super().__init__()
        self.hub = hub
        self.verifier = verifier
        self.publish_rate = publish_rate
        self._publishes = RateLimits(publish_rate, max(1, int(publish_rate * 2)),
                                     self.max_tracked_publishers)
        self._reads = RateLimits(read_rate, max(1, int(read_rate * 2)),
                                 self.max_tracked_publishers)
        # (path shape) -> {method: handler}; "*" in a shape matches one id segment.
        self._routes: list[tuple[tuple[str, ...], dict[bytes, Handler]]] = [
            (("agents",), {b"GET": self._list_agents}),
            (("agents", "*", "status"), {b"POST": self._post_status}),
            (("sessions",), {b"GET": self._list_sessions}),
            (("sessions", "*", "activity"), {b"POST": self._post_activity}),
            (("events",), {b"GET": self._list_events, b"POST": self._post_events}),
            (("presence",), {b"GET": self._list_presence}),
            (("connections",), {b"GET": self._list_connections}),
            (("connections", "*"), {b"DELETE": self._close_connection}),
            (("me",), {b"GET": self._me}),
        ]

    def render(self, request: Request) -> Rendered:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            answer = self._dispatch(request)
        except ApiError as e:
            return self._error(request, e)
        if isinstance(answer, Deferred):
            return render_when_fired(request, answer, partial(self._respond, request),
                                     partial(self._failed, request))
        return self._respond(request, answer)

    @staticmethod
    def _respond(request: Request, answer: Answer) -> Rendered:
        status, body = answer
        request.setResponseCode(status)
        if isinstance(body, StreamedBody):
            return body.write_to(request)
        return encode_json(body) if not isinstance(body, bytes) else body

    def _error(self, request: Request, e: ApiError) -> Rendered:
        for name, value in e.headers.items():
            request.setHeader(name, value)
        return self._respond(request, (e.status, error_body(e.code, e.message)))

    def _failed(self, request: Request, failure: Failure) -> Rendered:
        """The answer to a request whose Deferred failed: its L{ApiError}, else a JSON 500."""
        if isinstance(failure.value, ApiError):
            return self._error(request, failure.value)
        # A fault of ours, answered as HubRequest.processingFailed answers one raised at once.
        self.log.failure("request failed: {method} {path}", failure,
                         method=redact(request.method), path=redact(request.path))
        return self._respond(request, (500, error_body("internal_error", "internal server error")))

    def _dispatch(self, request: Request) -> Answer | Deferred[Answer]:
        segments = self._segments(request)
        for shape, methods in self._routes:
            if len(shape) == len(segments) and all(
                s == "*" or s == seg for s, seg in zip(shape, segments)
            ):
                handler = methods.get(request.method)
                if handler is None:
                    if request.method == b"HEAD" and b"GET" in methods:
                        handler = methods[b"GET"]
                    else:
                        allowed = set(methods) | ({b"HEAD"} if b"GET" in methods else set())
                        allow = b", ".join(sorted(allowed))
                        raise ApiError(
                            405, "method_not_allowed", "method not allowed", {b"Allow": allow}
                        )
                ids = [seg for s, seg in zip(shape, segments) if s == "*"]
                principal = self._authenticate(request)
                if request.method in (b"GET", b"HEAD"):
                    self._charge(self._reads, principal, "reads")
                return handler(request, principal, *ids)
        raise ApiError(404, "not_found", "no such resource")

    @staticmethod
    def _segments(request: Request) -> list[str]:
        parts = list(request.postpath or [])
        if parts and parts[-1] == b"":
            parts.pop()
        try:
            return [p.decode("utf-8") for p in parts]
        except UnicodeDecodeError:
            raise ApiError(404, "not_found", "no such resource") from None

    def _authenticate(self, request: Request) -> Principal:
        headers = {}
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) > 1:
            # Which one would count differs between proxies and servers: refuse, never guess.
            raise ApiError(400, "bad_request", "more than one Authorization header")
        if values:
            headers["authorization"] = values[0].decode("latin-1")
        try:
            token = token_from_request(headers)
            return self.verifier.verify(token, self.hub.clock.seconds())
        except Refusal as refusal:
            self.log.warn(
                "security: API request refused from {peer}: {status} {reason}",
                peer=_peer(request),
                status=refusal.status,
                reason=refusal.reason,
            )
            raise ApiError(
                401,
                "unauthorized",
                refusal.reason,
                {b"WWW-Authenticate": b'Bearer realm="mission-control"'},
            ) from None

    def authorize(self, request: Request, may: Callable[[Principal], bool],
                  refusal: str) -> Principal:
        """
        The caller of a page outside C{/api} that API tokens guard (C{GET /metrics}), as a read
        under C{/api} has it: authenticated (401), charged one read (429), then allowed by
        C{may(principal)}, else a 403 saying C{refusal}.

        @raise ApiError: with the answer to give instead.
        """
        principal = self._authenticate(request)
        self._charge(self._reads, principal, "reads")
        if not may(principal):
            self.log.warn("security: {user} ({role}) refused: {reason}", user=principal.sub,
                          role=principal.role, reason=refusal)
            raise ApiError(403, "forbidden", refusal)
        return principal

    @staticmethod
    def _json_body(request: Request) -> object:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
        content = request.content
        assert content is not None  # twisted.web sets it before the request is rendered
        content.seek(0)
        raw = content.read(MAX_BODY_SIZE + 1)
        if len(raw) > MAX_BODY_SIZE:
            raise ApiError(413, "payload_too_large", f"request body over {MAX_BODY_SIZE} bytes")
        try:
            return decode_json(raw)
        except NotText as e:
            raise ApiError(400, "bad_request", f"malformed JSON: {e}") from None
        except (ValueError, RecursionError):
            raise ApiError(400, "bad_request", "malformed JSON") from None

    def _charge(self, limits: RateLimits, principal: Principal, what: str, cost: int = 1) -> None:
        """
        One request (or C{cost} events) against the user's rate in C{limits}: publishes
        (C{publish_rate} a second) and reads (C{read_rate}), bursts of twice that, shared by all
        of a user's HTTP clients: one token must not flood everyone's history, nor the hub with
        reads.  C{Retry-After} is the longest the bucket can take to refill C{cost}.
        """
        if not limits.take(principal.sub, self.hub.clock.seconds(), cost):
            self.hub.metrics.refused_rate("publish" if limits is self._publishes else "read")
            wait = b"%d" % max(1, -(-cost // max(1, int(limits.rate))))
            raise ApiError(429, "rate_limited", f"too many {what}; slow down",
                           {b"Retry-After": wait})

    def _publish(self, request: Request, principal: Principal, event_type: str,
                 subject_id: str) -> Deferred[Answer]:
        self._charge(self._publishes, principal, "publishes")
        body = self._json_body(request)
        key = self._idempotency_key(request)
        fingerprint = events.request_fingerprint(event_type, subject_id, body) if key else ""
        stored = self._checked(principal, self.hub.publish_for, principal, event_type, body,
                               subject_id, key, fingerprint)
        return self._when_stored(stored, _one_event)

    def _post_events(self, request: Request, principal: Principal) -> Deferred[Answer]:
        """
        A batch (L{batch}): charged one publish as any POST, then one more per further event
        once the body says how many (all or none of them), then checked whole by the hub and
        stored in one commit.
        """
        self._charge(self._publishes, principal, "publishes")
        body = self._json_body(request)
        items = self._checked(principal, batch.events_of, body)
        if len(items) > self._publishes.burst:
            raise ApiError(413, "payload_too_large", "a batch may hold at most "
                           f"{int(self._publishes.burst)} events on this hub (its publish burst)")
        if len(items) > 1:
            self._charge(self._publishes, principal, "publishes", len(items) - 1)
        key = self._idempotency_key(request)
        fingerprint = batch.fingerprint(body) if key else ""
        stored = self._checked(principal, self.hub.publish_many, principal, items, key,
                               fingerprint)
        return self._when_stored(stored, _events)

    def _when_stored(self, stored: Deferred[_T],
                     answer: Callable[[_T], Answer]) -> Deferred[Answer]:
        """
        The answer to a publish once the hub has stored it: C{answer(result)}; a 409 when its
        Idempotency-Key was used for another request; a 503 when the store could not take it
        (logged here, once: the client may retry), or a 500 for an event the store refused (a
        fault of the hub's own checks, which a retry does not mend).
        """

        def failed(failure: Failure) -> Answer:
            if failure.check(SessionTaken):
                raise ApiError(403, "forbidden", "session belongs to another agent")
            if failure.check(IdempotencyConflict):
                raise ApiError(409, "idempotency_conflict",
                               "Idempotency-Key was already used for a different request")
            if failure.check(ValueError):
                return failure.raiseException()  # a JSON 500, logged (see _failed)
            if failure.check(StoreUnavailable):
                self.log.warn("a publish could not be stored: {why}",
                              why=failure.getErrorMessage())
            else:
                self.log.failure("storing a publish failed", failure)
            raise ApiError(503, "unavailable", "the event could not be stored; retry later")

        return stored.addCallbacks(answer, failed)

    def _checked(self, principal: Principal, call: Callable[..., _T], *args: Any) -> _T:
        """C{call(*args)}, its refusals and rule breaks answered as a publish answers them."""
        try:
            return call(*args)
        except Refusal as refusal:
            self.log.warn(
                "security: {user} ({role}) refused: {reason}",
                user=principal.sub,
                role=principal.role,
                reason=refusal.reason,
            )
            raise ApiError(refusal.status, refusal.code, refusal.reason) from None
        except ValidationError as e:
            raise ApiError(400, e.code, e.message) from None

    @staticmethod
    def _idempotency_key(request: Request) -> str | None:
        """The Idempotency-Key header, checked, or C{None}."""
        raw = request.getHeader(b"idempotency-key")
        if raw is None:
            return None
        try:
            key = raw.decode("ascii")
        except UnicodeDecodeError:
            key = None
        if key is None or not _IDEMPOTENCY_KEY_RE.match(key):
            raise ApiError(400, "bad_request",
                           "Idempotency-Key must be 1-255 printable ASCII characters")
        return key

    def _subject_id(self, value: str, field: str) -> str:
        if not ids.is_valid_id(value):
            raise ApiError(400, "bad_request", f"{field} must be {ID_RULE}")
        return value

    # Handlers: (request, principal, *ids) -> (status, body)

    def _post_status(self, request: Request, principal: Principal,
                     agent_id: str) -> Deferred[Answer]:
        return self._publish(
            request, principal, AGENT_STATUS, self._subject_id(agent_id, "agentId")
        )

    def _post_activity(self, request: Request, principal: Principal,
                       session_id: str) -> Deferred[Answer]:
        return self._publish(
            request, principal, SESSION_ACTIVITY, self._subject_id(session_id, "sessionId")
        )

    # Reads show what the caller could receive over the WebSocket: their role and channels claim.

    def _list_agents(self, request: Request, principal: Principal) -> tuple[int, Body]:
        return 200, self._latest(principal, AGENT_STATUS, b"agents")

    def _list_sessions(self, request: Request, principal: Principal) -> tuple[int, Body]:
        return 200, self._latest(principal, SESSION_ACTIVITY, b"sessions")

    def _latest(self, principal: Principal, event_type: str, name: bytes) -> StreamedBody:
        """
        The latest state the caller may see, from the store's ready encodings, streamed: what a
        client that does not read holds in the hub is a list of references, not a copy.
        """
        store = self.hub.store
        visible = [entry.encoded for entry in store.state(event_type)
                   if self.hub.may_see(principal, event_type, entry.payload)]
        tail = b'],"lastSeq":%d,"epoch":%s}' % (store.last_seq, encode_json(store.epoch))
        return StreamedBody(b'{"' + name + b'":[', visible, tail)

    def _list_events(self, request: Request, principal: Principal) -> tuple[int, Body]:
        since = _int_arg(request, b"since", 0, 0, 10**18)
        limit = _int_arg(request, b"limit", DEFAULT_EVENTS_LIMIT, 1, MAX_EVENTS_LIMIT)
        wanted = self._channel_arg(request, principal)
        store = self.hub.store
        through = None
        if wanted is None:
            page = store.events_after(since, limit)
        else:
            # The events of one channel among at most MAX_EVENTS_SCAN seqs: a rare channel costs
            # a bounded look at the history per request, and `next` says where to look on.
            event_type, subject = wanted
            page, through = store.events_matching(since, limit, MAX_EVENTS_SCAN, event_type,
                                                  subject)
        # A page is also bounded in bytes, so one request holds about MAX_PAGE_BYTES at most:
        # `more` and `next` tell the caller to ask again.
        encoded: list[bytes] = []
        size, last, full = 0, since, False
        for event in page:
            if encoded and size >= MAX_PAGE_BYTES:
                full = True
                break
            last = event.seq
            # Every event of a channel the caller may receive is one it may see.
            if wanted is not None or self.hub.may_see(principal, event.type, event.payload):
                item = encode_json(event.envelope())
                encoded.append(item)
                size += len(item)
        if through is not None and not full:
            last = through
        elif not page:
            # Where the next page starts: past a stretch retention removed, or where it was.
            last = store.last_seq if since < store.last_seq else since
        gap = replay.history_gap(since, store.first_seq, store.last_seq)
        fields = {
            "epoch": store.epoch,
            "firstSeq": store.first_seq,
            "lastSeq": store.last_seq,
            # `next` and `more` count every seq, also those of events the caller may not see.
            "next": last,
            "more": last < store.last_seq,
            # Events after `since` that retention already dropped (the caller missed them), or
            # `since` beyond the last event (from another epoch, or a restored older database).
            "truncated": gap == replay.TOO_OLD,
            "ahead": gap == replay.AHEAD,
        }
        return 200, StreamedBody(b'{"events":[', encoded, b"]," + encode_json(fields)[1:])

    def _channel_arg(self, request: Request,
                     principal: Principal) -> tuple[str, str | None] | None:
        """
        The C{channel} query argument of an events read, as the stored events it carries
        (L{channels.stored_events_of}), or C{None} without one: a 400 when it is not a channel of
        stored events, a 403 when the caller may not receive it.
        """
        values = request.args.get(b"channel")
        if not values:
            return None
        try:
            name = values[0].decode("ascii")
        except UnicodeDecodeError:
            name = None
        wanted = channels.stored_events_of(name) if channels.is_valid_channel(name) else None
        if wanted is None:
            raise ApiError(400, "bad_request", "channel must be agents, agents:<agentId>, "
                                               "sessions or sessions:<sessionId>")
        if not self.hub.may_receive(principal, name):
            raise ApiError(403, "forbidden", "not allowed to receive this channel")
        return wanted

    def _list_presence(self, request: Request, principal: Principal) -> tuple[int, Body]:
        if not policy.may_subscribe(principal, channels.PRESENCE):
            raise ApiError(403, "forbidden", "not allowed to see presence")
        return 200, StreamedBody(b'{"presence":[', map(encode_json, self.hub.iter_presence()),
                                 b"]}")

    def _close_connection(self, request: Request, principal: Principal,
                          connection_id: str) -> tuple[int, Body]:
        """
        Close one WebSocket with 4009.  The role is checked before the id is looked up, so that
        only an admin learns whether a connection exists; the hub logs who closed what.
        """
        if not policy.may_close_connections(principal):
            self.log.warn("security: {user} ({role}) refused: admin role required to close "
                          "a connection", user=principal.sub, role=principal.role)
            raise ApiError(403, "forbidden", "admin role required")
        if not self.hub.close_connection(connection_id, principal):
            raise ApiError(404, "not_found", "no such connection")
        return 200, {"closed": connection_id}

    def _me(self, request: Request, principal: Principal) -> tuple[int, Body]:
        """
        Who the token says the caller is, and until when: a browser cannot read why a WebSocket
        handshake was refused, so a page asks here to tell a refused token (401, with the
        handshake's reason) from a hub that is down.
        """
        claim = list(principal.channels) if principal.channels is not None else None
        return 200, {"user": principal.as_user(),
                     "expiresAt": events.format_timestamp(principal.expires_at),
                     "channels": claim}

    def _list_connections(self, request: Request, principal: Principal) -> tuple[int, Body]:
        if not policy.may_list_connections(principal):
            raise ApiError(403, "forbidden", "admin or operator role required")
        head = b'{"total":%d,"users":%s,"connections":[' % (
            self.hub.connection_count, encode_json(self.hub.users()))
        return 200, StreamedBody(head, map(encode_json, self.hub.iter_connection_details()),
                                 b"]}")


def _one_event(envelope: dict) -> Answer:
    return 200, {"event": envelope}


def _events(envelopes: list[dict]) -> Answer:
    return 200, {"events": envelopes}


DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000
#: Seqs one page of GET /api/events?channel=... looks at, however few of them match.
MAX_EVENTS_SCAN = 10_000
#: A page of GET /api/events stops after the event that takes it past this many bytes.
MAX_PAGE_BYTES = 1024 * 1024
_IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}\Z")


def _int_arg(request: Request, name: bytes, default: int, low: int, high: int) -> int:
    """A whole-number query argument within C{[low, high]}, or a 400 naming it."""
    values = request.args.get(name)
    if not values:
        return default
    text = values[0]
    if not (text.isdigit() and len(text) <= 19 and low <= int(text) <= high):
        raise ApiError(400, "bad_request",
                       f"{name.decode()} must be a whole number from {low} to {high}")
    return int(text)


def _peer(request: Request) -> str:
    """The client's address as every log line of the hub writes it: C{tcp4:host:port}."""
    transport = request.transport
    # peer2str answers "unknown" for a transport it cannot map, and so for none.
    return peer2str(transport) if transport is not None else "unknown"

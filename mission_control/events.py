# -*- test-case-name: tests.test_events -*-
"""
The envelope, the payload rules of each event type, and the JSON encoding of frames.

Every event, whether it came from the HTTP API, a client frame or the demo fleet, goes through
the validators here before the hub stores and broadcasts it, so one set of rules guards them all.
Validators take the raw JSON-decoded body and return a new, normalized payload dict, or raise
L{ValidationError} with a message that names the field but never echoes its value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping

from mission_control.ids import ID_RULE, is_valid_id
from mission_control.text import NotText, decode_json, has_control_characters, is_display_text

AGENT_STATUS = "agent:status"
SESSION_ACTIVITY = "session:activity"
#: Event types that are stored and carry a C{seq}.
STORED_TYPES = (AGENT_STATUS, SESSION_ACTIVITY)

STATUSES = ("online", "busy", "idle", "offline", "error")

MAX_TEXT_LENGTH = 1024  # message, summary
MAX_NAME_LENGTH = 256
MAX_OBJECT_BYTES = 8 * 1024  # metadata, detail, encoded as JSON
MAX_ID_LENGTH = 128  # a client frame's id

_ACTIVITY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}\Z")


class ValidationError(ValueError):
    """
    A payload or frame broke a rule.  C{code} is the C{error} frame / JSON error code,
    C{message} a short explanation safe to send back (it names fields, never their values).
    """

    def __init__(
        self, message: str, code: str = "bad_request", frame_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: the C{id} of the client frame at fault, when it could be read, for the C{error} reply
        self.frame_id = frame_id


# Time


def format_timestamp(seconds: float) -> str:
    """C{seconds} since the epoch as ISO 8601 UTC with milliseconds: C{2026-11-27T15:04:05.123Z}."""
    millis = int(round(seconds * 1000))
    moment = datetime.fromtimestamp(millis // 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


def parse_timestamp(value: object, field: str) -> str:
    """
    Check that C{value} is an ISO 8601 timestamp with a zone and return it normalized to UTC
    (L{format_timestamp}'s form), so that every timestamp a dashboard sees sorts as text.
    """
    if not isinstance(value, str) or not (10 <= len(value) <= 64):
        raise ValidationError(f"{field} must be an ISO 8601 timestamp with a time zone")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{field} must be an ISO 8601 timestamp with a time zone") from None
    if moment.tzinfo is None or "T" not in value.upper():
        raise ValidationError(f"{field} must be an ISO 8601 timestamp with a time zone")
    try:
        # Years near 1 or 9999 shift out of range once converted to UTC.
        return format_timestamp(moment.timestamp())
    except (ValueError, OverflowError):
        raise ValidationError(f"{field} is out of range") from None


# Payload rules


def _check_fields(body: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        # Field names are echoed only when they are short and printable.
        shown = [k for k in unknown if len(k) <= 64 and not has_control_characters(k)]
        if shown and len(shown) == len(unknown):
            raise ValidationError(f"unknown field: {', '.join(shown[:5])}")
        raise ValidationError("unknown field")


def _id(value: object, field: str) -> str:
    if not is_valid_id(value):
        raise ValidationError(f"{field} must be {ID_RULE}")
    return value


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string")
    if len(value) > limit:
        raise ValidationError(f"{field} must be at most {limit} characters")
    return value


#: How deeply metadata and detail may nest: enough for any real use, far from the recursion limit
#: of the encoder that sends them to every dashboard.
MAX_DEPTH = 32


def _check_shape(value: object, field: str) -> None:
    """No nesting deeper than L{MAX_DEPTH}, no NaN or Infinity (not JSON; browsers refuse them)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValidationError(f"{field} must not hold NaN or Infinity")
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValidationError(f"{field} must not nest more than {MAX_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _object(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a JSON object")
    _check_shape(value, field)
    if len(encode_json(value)) > MAX_OBJECT_BYTES:
        raise ValidationError(f"{field} must be at most {MAX_OBJECT_BYTES} bytes of JSON")
    return value


def _timestamp(body: Mapping, now: float) -> str:
    if "timestamp" in body and body["timestamp"] is not None:
        return parse_timestamp(body["timestamp"], "timestamp")
    return format_timestamp(now)


def _require_object(body: object) -> Mapping:
    if not isinstance(body, dict):
        raise ValidationError("payload must be a JSON object")
    return body


AGENT_STATUS_FIELDS = ("agentId", "status", "timestamp", "name", "message", "metadata")
SESSION_ACTIVITY_FIELDS = (
    "sessionId",
    "activity",
    "timestamp",
    "agentId",
    "summary",
    "detail",
)


def agent_status(body: object, now: float, agent_id: str | None = None) -> dict:
    """
    Validate an C{agent:status} payload.  C{agent_id}, when given (the URL's), wins over the body,
    which then must not name another agent.  C{timestamp} defaults to C{now}.
    """
    body = _require_object(body)
    _check_fields(body, AGENT_STATUS_FIELDS)
    if agent_id is not None:
        if "agentId" in body and body["agentId"] != agent_id:
            raise ValidationError("agentId in the body differs from the one in the path")
    else:
        if "agentId" not in body:
            raise ValidationError("agentId is required")
        agent_id = body["agentId"]
    payload: dict[str, Any] = {"agentId": _id(agent_id, "agentId")}
    status = body.get("status")
    if status is None:
        raise ValidationError("status is required")
    if status not in STATUSES:
        raise ValidationError("status must be one of " + ", ".join(STATUSES))
    payload["status"] = status
    payload["timestamp"] = _timestamp(body, now)
    if body.get("name") is not None:
        name = _text(body["name"], "name", MAX_NAME_LENGTH)
        if not is_display_text(name):
            raise ValidationError("name must not contain control or invisible characters")
        payload["name"] = name
    if body.get("message") is not None:
        payload["message"] = _text(body["message"], "message", MAX_TEXT_LENGTH)
    if body.get("metadata") is not None:
        payload["metadata"] = _object(body["metadata"], "metadata")
    return payload


def session_activity(body: object, now: float, session_id: str | None = None) -> dict:
    """Validate a C{session:activity} payload; C{session_id} as C{agent_id} in L{agent_status}."""
    body = _require_object(body)
    _check_fields(body, SESSION_ACTIVITY_FIELDS)
    if session_id is not None:
        if "sessionId" in body and body["sessionId"] != session_id:
            raise ValidationError("sessionId in the body differs from the one in the path")
    else:
        if "sessionId" not in body:
            raise ValidationError("sessionId is required")
        session_id = body["sessionId"]
    payload: dict[str, Any] = {"sessionId": _id(session_id, "sessionId")}
    activity = body.get("activity")
    if activity is None:
        raise ValidationError("activity is required")
    if not isinstance(activity, str) or _ACTIVITY_RE.match(activity) is None:
        raise ValidationError(
            "activity must be a short word (1-64 characters of A-Z a-z 0-9 _ . -, a letter first)"
        )
    payload["activity"] = activity
    payload["timestamp"] = _timestamp(body, now)
    if body.get("agentId") is not None:
        payload["agentId"] = _id(body["agentId"], "agentId")
    if body.get("summary") is not None:
        payload["summary"] = _text(body["summary"], "summary", MAX_TEXT_LENGTH)
    if body.get("detail") is not None:
        payload["detail"] = _object(body["detail"], "detail")
    return payload



# Envelopes and encoding


def envelope(
    event_type: str,
    payload: Mapping,
    ts: str,
    seq: int | None = None,
    reply_to: str | None = None,
) -> dict:
    """
    A server frame: C{{"type", "payload", "ts"}}, plus C{seq} for stored events and C{id} for a
    reply to a client frame that carried one.
    """
    frame: dict[str, Any] = {"type": event_type}
    if reply_to is not None:
        frame["id"] = reply_to
    frame["payload"] = payload
    frame["ts"] = ts
    if seq is not None:
        frame["seq"] = seq
    return frame


def request_fingerprint(event_type: str, subject_id: str | None, body: object) -> str:
    """
    What an idempotency key is compared by: the event type, the agent or session id the request
    named (its URL's, decoded), and the body as a JSON value in canonical form.  White space, the
    order of fields and a top-level field set to C{null} (which counts as absent) do not make
    another request; any other difference does.  One rule for HTTP and the WebSocket.
    """
    if isinstance(body, dict):
        body = {name: value for name, value in body.items() if value is not None}
    canonical = json.dumps([event_type, subject_id, body], sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def json_array_chunks(head: bytes, items: Iterable[bytes], tail: bytes,
                      size: int = 16 * 1024) -> Iterator[bytes]:
    """
    C{head}, the C{items} (each one encoded JSON value) separated by commas, then C{tail}, in
    non-empty chunks of about C{size} bytes: the writer of large frames and bodies made of ready
    encodings.  C{head} usually ends with an opening bracket and C{tail} starts with the closing
    one: C{b'{"agents":['} and C{b'],"lastSeq":3}'}.
    """
    parts, length, first = [head], len(head), True
    for item in items:
        if not first:
            parts.append(b",")
            length += 1
        first = False
        parts.append(item)
        length += len(item)
        if length >= size:
            yield b"".join(parts)
            parts, length = [], 0
    parts.append(tail)
    last = b"".join(parts)
    if last:
        yield last


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON; the one encoder for frames and HTTP bodies (strict: no NaN)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# Client frames


@dataclass(frozen=True)
class ClientFrame:
    """A decoded client frame: its C{type}, optional C{id}, and the whole object."""

    type: str
    id: str | None
    fields: Mapping[str, Any]


def parse_client_frame(data: bytes, is_binary: bool) -> ClientFrame:
    """
    Decode one client message.

    @raise ValidationError: for binary frames, bad UTF-8 or JSON, a non-object, a missing or
        non-string C{type}, or a bad C{id}.
    """
    if is_binary:
        raise ValidationError("binary frames are not accepted; send JSON text")
    try:
        value = decode_json(data)
    except NotText as e:
        raise ValidationError(f"malformed JSON: {e}") from None
    except (ValueError, RecursionError):
        raise ValidationError("malformed JSON") from None
    if not isinstance(value, dict):
        raise ValidationError("a frame must be a JSON object")
    frame_id = value.get("id")
    if frame_id is not None and (
        not isinstance(frame_id, str) or not (1 <= len(frame_id) <= MAX_ID_LENGTH)
    ):
        raise ValidationError("id must be a string of 1-128 characters")
    frame_type = value.get("type")
    if not isinstance(frame_type, str) or not frame_type:
        raise ValidationError("type is required and must be a string", frame_id=frame_id)
    return ClientFrame(type=frame_type, id=frame_id, fields=value)

# -*- test-case-name: tests.test_hub_publishing -*-
"""
What may be published: one pure function that turns what a caller sent into the payload to
store, or refuses it.  The HTTP API and the WebSocket C{publish} frame both reach it through
L{Hub.publish_for}, so an event is checked the same way whichever way it came.  A batch
(L{checked_batch}, through L{Hub.publish_many}) is every one of its events checked by that same
function, in order, before any is stored.
"""

from __future__ import annotations

from typing import Callable

from mission_control import events, policy
from mission_control.auth import Refusal
from mission_control.events import ValidationError
from mission_control.policy import Principal
from mission_control.text import has_control_characters


def checked_payload(
    principal: Principal,
    event_type: str,
    body: object,
    subject_id: str | None,
    now: float,
    session_owner: Callable[[str], str | None],
) -> dict:
    """
    Validate C{body} as an event of C{event_type} that C{principal} publishes, and check that
    they may: the payload rules are L{events}', who may publish what is L{policy}'s.
    C{subject_id} is the agent or session id named by the URL, if any; C{session_owner} tells
    the agent that owns a session, if any (the store keeps owners).

    @return: the payload to store.
    @raise Refusal: 403 when the role does not allow it.
    @raise ValidationError: when the payload breaks a rule, or the type is unknown.
    """
    if event_type == events.AGENT_STATUS:
        if subject_id is not None and not policy.may_publish_agent_status(principal, subject_id):
            raise Refusal(403, "not allowed to publish for this agent")
        payload = events.agent_status(body, now, subject_id)
        if not policy.may_publish_agent_status(principal, payload["agentId"]):
            raise Refusal(403, "not allowed to publish for this agent")
        return payload
    if event_type == events.SESSION_ACTIVITY:
        if not policy.may_publish_sessions(principal):
            raise Refusal(403, "not allowed to publish session activity")
        if principal.role == "agent" and isinstance(body, dict) and "agentId" not in body:
            # An agent's activity is its own unless it says otherwise.
            body = dict(body, agentId=principal.sub)
        payload = events.session_activity(body, now, subject_id)
        if not policy.may_publish_session_activity(principal, payload.get("agentId")):
            raise Refusal(403, "not allowed to publish for this agent")
        if not policy.may_join_session(principal, session_owner(payload["sessionId"])):
            # Another agent's session: joining it would also let this agent read it.
            raise Refusal(403, "session belongs to another agent")
        return payload
    raise ValidationError("unknown event type", code="unknown_type")


#: The most events one batch may hold.
MAX_BATCH = 1000
#: The fields of one event of a batch: all required, no other.
BATCH_ITEM_FIELDS = ("type", "payload")


def checked_batch(
    principal: Principal,
    items: object,
    now: float,
    session_owner: Callable[[str], str | None],
) -> list[tuple[str, dict]]:
    """
    Check a batch: a list of 1 to L{MAX_BATCH} objects C{{"type", "payload"}}, each checked by
    L{checked_payload} as a publish of its own (no subject: the payload names its agent or
    session), in order, all before anything is stored.

    Session owners are seen as they will be once the earlier events of the batch are stored:
    an activity that names an agent in a session nobody owns yet makes that agent its owner for
    the events after it, exactly as the store records it (L{BatchOwners}).

    @return: C{(event_type, payload)} of each event, in order, for L{IEventStore.append_many}.
    @raise ValidationError: the batch is not such a list, or an event breaks a rule; the
        message starts with C{events[i]: } naming the first event at fault.
    @raise Refusal: 403 for the first event the role does not allow, named the same way.
    """
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ValidationError(f"events must be a list of 1 to {MAX_BATCH} events")
    owners = BatchOwners(session_owner)
    checked = []
    for index, item in enumerate(items):
        try:
            event_type, body = _batch_item(item)
            payload = checked_payload(principal, event_type, body, None, now, owners)
        except ValidationError as e:
            raise ValidationError(f"events[{index}]: {e.message}", e.code) from None
        except Refusal as refusal:
            raise Refusal(refusal.status, f"events[{index}]: {refusal.reason}",
                          refusal.code) from None
        owners.stored(event_type, payload)
        checked.append((event_type, payload))
    return checked


def _batch_item(item: object) -> tuple[str, object]:
    """The type and body of one event of a batch, or a L{ValidationError} for its shape."""
    if not isinstance(item, dict):
        raise ValidationError("an event must be a JSON object with type and payload")
    unknown = sorted(name for name in item if name not in BATCH_ITEM_FIELDS)
    if unknown:
        # Echoed as the payload rules echo field names: only short, printable ones.
        shown = all(len(name) <= 64 and not has_control_characters(name) for name in unknown)
        raise ValidationError(f"unknown field: {', '.join(unknown[:5])}" if shown
                              else "unknown field")
    for name in BATCH_ITEM_FIELDS:
        if item.get(name) is None:
            raise ValidationError(f"{name} is required")
    if not isinstance(item["type"], str):
        raise ValidationError("unknown event type", code="unknown_type")
    return item["type"], item["payload"]


class BatchOwners:
    """
    The session owners a batch's checks see: the store's, and for a session it has no owner
    of, the first agent an earlier activity of the batch named, as the store will record it.
    """

    def __init__(self, session_owner: Callable[[str], str | None]) -> None:
        self._session_owner = session_owner
        self._claimed: dict[str, str] = {}

    def __call__(self, session_id: str) -> str | None:
        owner = self._session_owner(session_id)
        return owner if owner is not None else self._claimed.get(session_id)

    def stored(self, event_type: str, payload: dict) -> None:
        """C{payload} passed its checks and will be stored before the batch's later events."""
        if event_type == events.SESSION_ACTIVITY and payload.get("agentId") is not None:
            session = payload["sessionId"]
            if self(session) is None:
                self._claimed[session] = payload["agentId"]

# -*- test-case-name: tests.test_hub_publishing -*-
"""
What may be published: one pure function that turns what a caller sent into the payload to
store, or refuses it.  The HTTP API and the WebSocket C{publish} frame both reach it through
L{Hub.publish_for}, so an event is checked the same way whichever way it came.  A batch
(L{checked_batch}, through L{Hub.publish_many}) is every one of its events checked by that same
function, in order, before any is stored.

A publish checked now may be stored later (a broker on a shared backbone answers when it can):
the sessions it claims (an agent's first activity in a session nobody owns) are held by
L{PendingOwners} until its append is answered, so the checks of the publishes after it see them.
"""

from __future__ import annotations

from typing import Callable, Mapping

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

    @property
    def claimed(self) -> Mapping[str, str]:
        """The sessions the batch claims, each for the agent it will belong to once stored."""
        return self._claimed


def claims_of(checked: list[tuple[str, dict]],
              session_owner: Callable[[str], str | None]) -> Mapping[str, str]:
    """
    The sessions that storing C{checked} (C{(event_type, payload)} in order) claims: those
    C{session_owner} knows no owner of, each for the first agent an activity of it names.
    """
    owners = BatchOwners(session_owner)
    for event_type, payload in checked:
        owners.stored(event_type, payload)
    return owners.claimed


class PendingOwners:
    """
    The session owners every check sees while appends are in flight: the store's, and for a
    session it has no owner of, the agent an append not yet stored claims it for (the oldest
    such append's, as the store will record it).  A claim is held from the moment its publish
    passed its checks until its append is answered (L{hold}), so that no other agent's publish
    slips into the session meanwhile, whichever way it comes.
    """

    def __init__(self, session_owner: Callable[[str], str | None]) -> None:
        self._session_owner = session_owner
        # Claims of appends in flight, by a number given in the order they began.
        self._held: dict[int, Mapping[str, str]] = {}
        self._next = 0

    def __call__(self, session_id: str) -> str | None:
        owner = self._session_owner(session_id)
        if owner is not None or not self._held:
            return owner
        for claimed in self._held.values():  # oldest first
            agent = claimed.get(session_id)
            if agent is not None:
                return agent
        return None

    def hold(self, claimed: Mapping[str, str]) -> Callable[[], None]:
        """
        Keep C{claimed} (session to agent) visible until the function returned is called, when
        the append that claims them has been answered (stored or not).  Calling it again is
        harmless.
        """
        if not claimed:
            return _nothing
        number, self._next = self._next, self._next + 1
        self._held[number] = claimed

        def release() -> None:
            self._held.pop(number, None)

        return release

    def __len__(self) -> int:
        """How many appends hold claims."""
        return len(self._held)


def _nothing() -> None:
    """Release no claim."""

# -*- test-case-name: tests.test_hub_publishing -*-
"""
What may be published: one pure function that turns what a caller sent into the payload to
store, or refuses it.  The HTTP API and the WebSocket C{publish} frame both reach it through
L{Hub.publish_for}, so an event is checked the same way whichever way it came.
"""

from __future__ import annotations

from typing import Callable

from mission_control import events, policy
from mission_control.auth import Refusal
from mission_control.events import ValidationError
from mission_control.policy import Principal


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

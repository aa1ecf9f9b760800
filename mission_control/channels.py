# -*- test-case-name: tests.test_channels -*-
"""
Channels: their names, and which events each carries (who may receive them: L{policy}).

    agents                every agent:status
    agents:<agentId>      that agent's agent:status
    sessions              every session:activity
    sessions:<sessionId>  that session's session:activity
    presence              presence:join, presence:leave

Being allowed C{agents} allows every C{agents:<id>} (likewise C{sessions}).  Roles decide by
default: admin and operator everything; viewer C{agents}, C{sessions}, C{presence}; agent its own
C{agents:<sub>} and the C{sessions:<id>} of sessions it publishes.  A token's C{channels} claim
(names, or C{prefix:*} patterns that match every channel starting with C{prefix:} but not the bare
C{prefix}) narrows that further; it never widens it.

Pure functions of their inputs; the hub keeps the index from channel to connections.
"""

from __future__ import annotations

from typing import Iterable

from mission_control.ids import is_valid_id

AGENTS = "agents"
SESSIONS = "sessions"
PRESENCE = "presence"
TOP_LEVEL = (AGENTS, SESSIONS, PRESENCE)
#: Channels one connection may be subscribed to at once.
MAX_SUBSCRIPTIONS = 256
#: Entries a token's channels claim may hold.
MAX_CLAIM_ENTRIES = 64


def is_valid_channel(name: object) -> bool:
    """C{agents}, C{sessions}, C{presence}, or C{agents:<id>} / C{sessions:<id>} with a valid id."""
    if not isinstance(name, str):
        return False
    if name in TOP_LEVEL:
        return True
    prefix, sep, rest = name.partition(":")
    return bool(sep) and prefix in (AGENTS, SESSIONS) and is_valid_id(rest)


def is_valid_pattern(entry: object) -> bool:
    """A claim entry: a channel name, or C{agents:*} / C{sessions:*}."""
    if isinstance(entry, str) and entry in (f"{AGENTS}:*", f"{SESSIONS}:*"):
        return True
    return is_valid_channel(entry)


def parse_claim(value: object) -> tuple[str, ...] | None:
    """
    A token's C{channels} claim, checked: C{None} when absent.

    @raise ValueError: when it is not a list of at most L{MAX_CLAIM_ENTRIES} names or patterns.
    """
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_CLAIM_ENTRIES:
        raise ValueError("channels claim must be a list")
    if not all(is_valid_pattern(entry) for entry in value):
        raise ValueError("channels claim holds an invalid entry")
    return tuple(value)


def event_channels(event_type: str, payload: dict) -> tuple[str, ...]:
    """The channels an event is published on."""
    if event_type == "agent:status":
        return (AGENTS, f"{AGENTS}:{payload['agentId']}")
    if event_type == "session:activity":
        return (SESSIONS, f"{SESSIONS}:{payload['sessionId']}")
    if event_type.startswith("presence:"):
        return (PRESENCE,)
    return ()


def stored_events_of(name: str) -> tuple[str, str | None] | None:
    """
    Which stored events the channel C{name} carries, as C{(event type, id)}: C{id} is the agent or
    session the channel names, or C{None} for every one (C{agents}, C{sessions}).  C{None} for
    C{presence}, whose frames are never stored.  The history reads filter with it, so that a
    channel means the same events there as over the WebSocket (L{event_channels}).
    """
    prefix, _, rest = name.partition(":")
    event_type = {AGENTS: "agent:status", SESSIONS: "session:activity"}.get(prefix)
    if event_type is None:
        return None
    return event_type, (rest or None)


def covers(subscription: Iterable[str], channels: Iterable[str]) -> bool:
    """Whether a connection subscribed to C{subscription} receives an event on C{channels}."""
    subscribed = set(subscription)
    return any(channel in subscribed for channel in channels)

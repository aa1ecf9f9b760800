# -*- test-case-name: tests.test_policy -*-
"""
Who may do what: the rules of roles, token claims and channels, as pure functions of a
L{Principal} and what it asks for.  The HTTP API, the WebSocket and the hub all ask here, so a
rule is written once.

Roles: C{admin} and C{operator} publish anything and receive every channel (only an admin closes
other people's connections); C{viewer} receives C{agents}, C{sessions} and C{presence}; C{agent}
publishes its own status and the activity that names it, and receives its own C{agents:<sub>} and
the C{sessions:<id>} it owns.  A token's C{channels} claim only narrows what the role allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from mission_control import channels

ROLES = ("admin", "operator", "viewer", "agent")
#: The role of a token without a C{role} claim.
DEFAULT_ROLE = "viewer"


@dataclass(frozen=True)
class Principal:
    """
    A verified caller: the token's claims that the hub acts on.

    @ivar sub: the user id (for role C{agent}, the agent id).
    @ivar expires_at: the token's C{exp}, seconds since the epoch.
    """

    sub: str
    role: str
    name: str | None
    expires_at: float
    #: The token's C{channels} claim (names and C{prefix:*} patterns), or None: see L{channels}.
    channels: tuple[str, ...] | None = None

    def as_user(self) -> dict:
        """The C{user} object of the C{welcome} frame."""
        return {"id": self.sub, "name": self.name, "role": self.role}


def may_publish_agent_status(principal: Principal, agent_id: str) -> bool:
    """Admins and operators publish for any agent; an agent only for itself."""
    if principal.role in ("admin", "operator"):
        return True
    return principal.role == "agent" and principal.sub == agent_id


def may_publish_session_activity(principal: Principal, agent_id: str | None) -> bool:
    """Admins and operators publish any activity; an agent only activity that names it."""
    if principal.role in ("admin", "operator"):
        return True
    return principal.role == "agent" and agent_id == principal.sub


def may_publish_sessions(principal: Principal) -> bool:
    """Whether C{principal}'s role publishes session activity at all (viewers do not)."""
    return principal.role in ("admin", "operator", "agent")


def may_join_session(principal: Principal, owner: str | None) -> bool:
    """
    Whether C{principal} may add activity to a session owned by C{owner} (C{None}: no owner yet).
    An agent may not join another agent's session: that would also let it read the session.
    """
    return principal.role != "agent" or owner is None or owner == principal.sub


def may_list_connections(principal: Principal) -> bool:
    return principal.role in ("admin", "operator")


def may_close_connections(principal: Principal) -> bool:
    """Only admins close other people's connections (operators may look at them)."""
    return principal.role == "admin"


def may_read_metrics(principal: Principal) -> bool:
    """Only admins read C{GET /metrics} on the main listener (it tells about every user)."""
    return principal.role == "admin"


def _claim_allows(claim: Sequence[str], channel: str) -> bool:
    parent = channel.partition(":")[0]
    for entry in claim:
        if entry == channel:
            return True
        if entry == parent and parent in (channels.AGENTS, channels.SESSIONS):
            return True  # "agents" allows every "agents:<id>"
        if entry.endswith(":*") and channel.startswith(entry[:-1]):
            return True
    return False


def may_subscribe(
    principal: Principal,
    channel: str,
    owns_session: Callable[[str], bool] = lambda session_id: False,
) -> bool:
    """
    Whether C{principal} may receive C{channel}.  C{owns_session(id)} tells whether the agent
    C{principal} publishes the session C{id} (the hub asks its store).
    """
    role = principal.role
    parent, _, rest = channel.partition(":")
    if role in ("admin", "operator"):
        allowed = True
    elif role == "viewer":
        allowed = parent in channels.TOP_LEVEL
    elif role == "agent":
        allowed = (parent == channels.AGENTS and rest == principal.sub) or (
            parent == channels.SESSIONS and bool(rest) and owns_session(rest)
        )
    else:
        allowed = False
    if allowed and principal.channels is not None:
        allowed = _claim_allows(principal.channels, channel)
    return allowed


def default_subscription(principal: Principal) -> tuple[str, ...]:
    """What a connection receives when it chose nothing: C{agents} and C{sessions}, as allowed."""
    if principal.role == "agent":
        wanted: Iterable[str] = (f"{channels.AGENTS}:{principal.sub}",)
    else:
        wanted = (channels.AGENTS, channels.SESSIONS)
    return tuple(c for c in wanted if may_subscribe(principal, c))

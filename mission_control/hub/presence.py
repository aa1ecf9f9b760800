# -*- test-case-name: tests.test_hub_presence -*-
"""
Who is here, and which agents are alive.

L{IPresenceManager} is what the node asks about presence: who is connected, since when, under
which name and role.  L{LocalPresence} keeps it for one process; a shared backbone can keep it
for many behind the same interface.

L{Liveness} turns an agent's connections into its C{agent:status}: C{online} when its first
connection opens, C{offline} when its last one closes (or stops answering pings).  A check
publishes where the agent is then, and at most once per L{Liveness.interval}, so an agent that
connects and disconnects in a loop costs the store and the audience one event per interval, and
the last one always says where it ended.  An agent that set its own status keeps it while
connected.  Time is the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from mission_control import events
from mission_control.policy import Principal
from mission_control.store import IEventStore


#: C{on_change(event_type, info, count)}: a user's first connection anywhere opened
#: (C{"presence:join"}) or their last one closed (C{"presence:leave"}); C{info} is their entry,
#: C{count} their connections now.
PresenceChange = Callable[[str, dict, int], None]


class IPresenceManager(Interface):
    """
    Who is connected: one entry per user, however many connections they have, on however many
    hub processes share the history.
    """

    on_change: PresenceChange = Attribute("told when a user comes or goes (L{PresenceChange})")

    def connected(principal: Principal, now: float) -> None:
        """A connection of C{principal} opened on this node at C{now}."""

    def disconnected(principal: Principal) -> None:
        """A connection of C{principal} on this node closed."""

    def count(user_id: str) -> int:
        """How many connections C{user_id} has, on every node."""

    def get(user_id: str) -> dict | None:
        """C{{"id", "name", "role", "since"}} of a present user, or C{None}."""

    def entries() -> Iterator[dict]:
        """Every present user's entry, by user id."""


@implementer(IPresenceManager)
class LocalPresence:
    """The presence of one hub process, in memory."""

    def __init__(self) -> None:
        self._here: dict[str, dict] = {}
        self._counts: dict[str, int] = {}
        self.on_change: PresenceChange = lambda event_type, info, count: None

    def connected(self, principal: Principal, now: float) -> None:
        count = self._counts[principal.sub] = self._counts.get(principal.sub, 0) + 1
        if count == 1:
            info = self._here[principal.sub] = entry_of(principal, now)
            self.on_change("presence:join", info, 1)

    def disconnected(self, principal: Principal) -> None:
        count = self._counts.get(principal.sub, 0) - 1
        if count > 0:
            self._counts[principal.sub] = count
            return
        self._counts.pop(principal.sub, None)
        info = self._here.pop(principal.sub, None)
        if info is not None:
            self.on_change("presence:leave", info, 0)

    def count(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)

    def get(self, user_id: str) -> dict | None:
        return self._here.get(user_id)

    def entries(self) -> Iterator[dict]:
        for _, info in sorted(self._here.items()):
            yield info


def entry_of(principal: Principal, now: float) -> dict:
    """The presence entry of C{principal}, present since C{now}."""
    return {"id": principal.sub, "name": principal.name, "role": principal.role,
            "since": events.format_timestamp(now)}


@dataclass(eq=False)
class _Agent:
    """The liveness bookkeeping of one agent."""

    principal: Principal
    #: When its online or offline was last published.
    published_at: float = float("-inf")
    #: The pending check, while one is due.
    call: IDelayedCall | None = None
    timed_out: bool = False
    #: Why it is offline, when not its own connection's end (its hub node died).
    why: str | None = None


class Liveness:
    """
    Publishes agents' C{online} and C{offline} from their connections (see the module docstring).

    @ivar store: where an agent's latest C{agent:status} is read.
    @ivar is_connected: whether an agent has a connection now.
    @ivar publish: C{publish(event_type, payload)}: stores and sends an event (L{Hub.publish});
        its Deferred fires once the event is stored.  A failure is logged here, once.
    @ivar accepting: whether the hub still runs; nothing is published while it stops, so a
        restart does not mark every agent offline.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: IEventStore,
        is_connected: Callable[[str], bool],
        publish: Callable[[str, dict], Deferred[Any]],
        accepting: Callable[[], bool],
        interval: float = 1.0,
    ) -> None:
        self.clock = clock
        self.store = store
        self.is_connected = is_connected
        self.publish = publish
        self.accepting = accepting
        #: Least seconds between two online/offline events for one agent.
        self.interval = interval
        self.agents: dict[str, _Agent] = {}

    def changed(self, principal: Principal, timed_out: bool = False,
                why: str | None = None) -> None:
        """
        An agent's first connection opened or its last one closed: check its liveness now, or,
        when its online or offline was published less than L{interval} ago, once that interval
        is over.
        """
        entry = self.agents.get(principal.sub)
        if entry is None:
            entry = self.agents[principal.sub] = _Agent(principal)
        entry.principal, entry.timed_out, entry.why = principal, timed_out, why
        if entry.call is not None and entry.call.active():
            return  # the pending check will see the state as it is then
        wait = entry.published_at + self.interval - self.clock.seconds()
        if wait > 0:
            entry.call = self.clock.callLater(wait, self.check, principal.sub)
        else:
            self.check(principal.sub)

    def check(self, agent_id: str) -> None:
        """
        Publish C{online} for a connected agent the state shows offline (or not at all), and
        C{offline} for an agent with no connection the state does not show offline.
        """
        entry = self.agents[agent_id]
        entry.call = None
        connected = self.is_connected(agent_id)
        status = (self.store.agent(agent_id) or {}).get("status")
        now = self.clock.seconds()
        try:
            if self.accepting() and connected and status in (None, "offline"):
                if self._publish(entry.principal, "online", "connected"):
                    entry.published_at = now
            elif self.accepting() and not connected and status != "offline":
                why = entry.why or ("connection timed out (no answer to pings)"
                                    if entry.timed_out else "connection closed")
                if self._publish(entry.principal, "offline", why):
                    entry.published_at = now
        except Exception:
            self.log.failure("publishing the liveness of agent {agent} failed", agent=agent_id)
        if not connected:
            if entry.published_at == now:
                # Kept for one interval, so that a quick reconnect is coalesced too.
                entry.call = self.clock.callLater(self.interval, self.check, agent_id)
            else:
                del self.agents[agent_id]

    def _publish(self, principal: Principal, status: str, message: str) -> bool:
        """Publish C{principal}'s C{status}; whether it has not failed (yet)."""
        body: dict[str, Any] = {"status": status, "message": message,
                                "metadata": {"source": "connection"}}
        latest = self.store.agent(principal.sub) or {}
        name = principal.name or latest.get("name")  # keep the name the agent published
        if name is not None:
            body["name"] = name
        return self._stored(
            self.publish(events.AGENT_STATUS,
                         events.agent_status(body, self.clock.seconds(), principal.sub)),
            principal.sub)

    def _stored(self, d: Deferred[Any], agent_id: str) -> bool:
        """
        Log, once, that storing the liveness of C{agent_id} failed, if it does; whether it has
        not failed yet (a store that fails at once counts as no publish, as a raise did).
        """
        failed: list[Failure] = []

        def logged(failure: Failure) -> None:
            failed.append(failure)
            self.log.failure("publishing the liveness of agent {agent} failed", failure,
                             agent=agent_id)

        d.addErrback(logged)
        return not failed

    def sweep_absent(self) -> None:
        """
        Mark offline the agents that were marked online because of their connection and that
        have not connected again since this hub started: a hub restart does not publish offline
        for everyone (they reconnect), so an agent that died meanwhile is caught here.
        """
        for payload in list(self.store.agents()):
            agent_id = payload["agentId"]
            metadata = payload.get("metadata") or {}
            if (payload.get("status") == "online" and metadata.get("source") == "connection"
                    and not self.is_connected(agent_id)):
                body = {"status": "offline", "metadata": {"source": "connection"},
                        "message": "did not reconnect after the hub restarted"}
                if payload.get("name") is not None:
                    body["name"] = payload["name"]
                self._stored(self.publish(events.AGENT_STATUS,
                                          events.agent_status(body, self.clock.seconds(),
                                                              agent_id)),
                             agent_id)

    def stop(self) -> None:
        """Cancel every pending check and forget the bookkeeping."""
        for entry in self.agents.values():
            if entry.call is not None and entry.call.active():
                entry.call.cancel()
        self.agents.clear()

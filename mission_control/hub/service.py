# -*- test-case-name: tests.test_hub -*-
"""
The hub's periodic work, as services: heartbeats and retention passes are C{TimerService}s on the
hub's clock, and one sweep, L{Hub.reconnect_grace} after start, marks offline the agents that did
not come back after a restart (L{Liveness.sweep_absent}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.interfaces import IDelayedCall

if TYPE_CHECKING:
    from mission_control.hub.node import Hub


class HubService(MultiService):
    """
    Heartbeats every L{Hub.heartbeat_interval} (none when it is 0) and a retention pass every
    L{Hub.trim_interval}, each first at start; the sweep once, after L{Hub.reconnect_grace}.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        self._sweep: IDelayedCall | None = None
        if hub.heartbeat_interval > 0:
            self._every(hub.heartbeat_interval, hub.send_heartbeat)
        self._every(hub.trim_interval, hub.trim)

    def _every(self, interval: float, function: Callable[[], None]) -> None:
        timer = TimerService(interval, function)
        timer.clock = self.hub.clock
        timer.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self._sweep = self.hub.clock.callLater(self.hub.reconnect_grace, self._sweep_absent)

    def _sweep_absent(self) -> None:
        self._sweep = None
        self.hub.liveness.sweep_absent()

    def stopService(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        super().stopService()

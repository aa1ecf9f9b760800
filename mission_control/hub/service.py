# -*- test-case-name: tests.test_hub_service -*-
"""
The hub's periodic work, as services: heartbeats and retention passes are C{TimerService}s on the
hub's clock, and one sweep, L{Hub.reconnect_grace} after start, marks offline the agents that did
not come back after a restart (L{Liveness.sweep_absent}).  It is given the functions to call, and
knows nothing else of the hub.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class HubService(MultiService):
    """
    C{heartbeat} every C{heartbeat_interval} seconds (none when it is 0) and C{trim} every
    C{trim_interval}, each first at start; C{sweep} once, C{grace} seconds after start.
    """

    def __init__(self, clock: IReactorTime, heartbeat: Callable[[], None],
                 heartbeat_interval: float, trim: Callable[[], None], trim_interval: float,
                 sweep: Callable[[], None], grace: float) -> None:
        super().__init__()
        self.clock = clock
        self._sweep_absent = sweep
        self._grace = grace
        self._sweep: IDelayedCall | None = None
        if heartbeat_interval > 0:
            self._every(heartbeat_interval, heartbeat)
        self._every(trim_interval, trim)

    def _every(self, interval: float, function: Callable[[], None]) -> None:
        timer = TimerService(interval, function)
        timer.clock = self.clock
        timer.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self._sweep = self.clock.callLater(self._grace, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        self._sweep_absent()

    def stopService(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        super().stopService()

"""twistd plugin: ``twistd mission-control``. All the work is in L{mission_control.tap}."""

from twisted.application.service import ServiceMaker

missionControl = ServiceMaker(
    "mission-control",
    "mission_control.tap",
    "Real-time hub for fleets of AI agents (JWT-authenticated WebSocket broadcasting).",
    "mission-control",
)

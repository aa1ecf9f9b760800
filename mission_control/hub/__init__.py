# -*- test-case-name: tests.test_hub -*-
"""
The hub: live connections, publishing and fan-out, catching up, presence and liveness.

One object per thing it models (see docs/architecture.md):

  - L{node.Hub}: one hub process; wires the rest together, publishes and fans out;
  - L{registry.Registry}: the index of connections by id, user and channel;
  - L{client.Client}: one connection's state and the answers to its frames;
  - L{catchup.CatchUp}: a new connection's snapshot, or the replay of what it missed;
  - L{presence}: who is here (L{presence.IPresenceManager}), and agents' online/offline;
  - L{broker.IBroker}: appends events and tells the node of every appended one;
  - L{connection}: L{IConnection}, what the hub needs of a connection, and L{ConnectRequest}.

It knows nothing of sockets: the WebSocket protocol (L{mission_control.protocol}) is one
L{IConnection}, the unit tests' fakes are another.
"""

from mission_control.hub.broker import IBroker, InProcessBroker
from mission_control.hub.catchup import snapshot_chunks
from mission_control.hub.client import Client
from mission_control.hub.connection import CLOSED_BY_ADMIN, ConnectRequest, IConnection
from mission_control.hub.node import Hub

__all__ = [
    "CLOSED_BY_ADMIN",
    "Client",
    "ConnectRequest",
    "Hub",
    "IBroker",
    "IConnection",
    "InProcessBroker",
    "snapshot_chunks",
]

"""
The hub's own cost of one publish and its fan-out, in process: no sockets, no HTTP, no framing.

    python benchmarks/hub_fanout.py [--subscribers 1000] [--events 10000] [--repeat 5]
                                    [--window 0] [--rate 200]

Registers ``--subscribers`` connections (fakes that count what they are handed, spread over 50
users, all on the default subscription) with a ``Hub`` on a memory store, then has an operator
publish ``--events`` ``agent:status`` events through ``Hub.publish_for``, as the HTTP API and the
WebSocket ``publish`` frame do: validation, the publishing rules, the append, the fan-out to every
subscriber.  Checks that every subscriber got every event, and prints the microseconds per
publish and per delivery, the median of ``--repeat`` runs.

With ``--window`` (seconds; 0 by default, every event delivered as it is published) the hub runs
with that fan-out window, and its clock moves ``1 / --rate`` seconds after each publish, so the
events of one window are queued and flushed together as in a hub process (``Hub.FANOUT_WINDOW``
is 0.02).

It isolates what the hub's Python does per event, the part a change of the hub's shape can move;
the cost of the network and Autobahn's framing (the rest of a real delivery) is measured end to end
by the other benchmarks.  Figures compare versions on one machine; they are not promises.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.task import Clock  # noqa: E402
from zope.interface import implementer  # noqa: E402

from mission_control.hub import Hub, IConnection  # noqa: E402
from mission_control.policy import Principal  # noqa: E402
from mission_control.store import MemoryStore  # noqa: E402


@implementer(IConnection)
class CountingConnection:
    """
    Counts deliveries; takes every frame at once (never paused), through C{fast_send} after a
    quiet window as an open connection in the common case does.
    """

    paused = False

    def __init__(self, sub: str) -> None:
        self.principal = Principal(sub=sub, role="viewer", name=None, expires_at=4e9)
        self.connection_id: str | None = None
        self.delivered = 0
        self.queued: list[Any] = []
        self.fast_send = self._send

    def _send(self, data: bytes) -> int:
        self.delivered += 1
        return len(data)

    def write_rest(self, data: bytes, sent: int) -> None:
        raise AssertionError("the kernel takes everything here")

    def deliver(self, prepared: Any) -> None:
        self.delivered += 1

    def enqueue(self, prepared: Any) -> None:
        self.queued.append(prepared)

    def flush(self) -> None:
        if self.queued:
            self.delivered += len(self.queued)
            self.queued = []

    def send_frame(self, frame: Any) -> None:
        pass

    def send_stream(self, chunks: Any, done: Any) -> None:
        done()

    def close(self, code: int, reason: str) -> None:
        pass

    def bytes_waiting(self) -> int:
        return 0


def run(subscribers: int, count: int, window: float = 0.0, rate: float = 200.0) -> float:
    """Seconds to publish C{count} events to C{subscribers} live connections."""
    clock = Clock()
    clock.advance(1.8e9)
    hub = Hub(clock, MemoryStore(), max_connections=subscribers + 1,
              max_connections_per_user=subscribers + 1, fanout_window=window)
    step = 1 / rate if window else 0.0
    conns = [CountingConnection(f"user-{i % 50}") for i in range(subscribers)]
    for conn in conns:
        hub.register(conn)  # the snapshot is one delivery
    operator = Principal(sub="ops", role="operator", name=None, expires_at=4e9)
    failed: list = []
    started = time.perf_counter()
    for i in range(count):
        hub.publish_for(operator, "agent:status", {"status": "busy", "message": f"step {i}"},
                        f"agent-{i % 100}").addErrback(failed.append)
        if step:
            clock.advance(step)
    hub.window.flush()
    elapsed = time.perf_counter() - started
    if failed:
        raise SystemExit(f"{len(failed)} publishes failed: {failed[0].getErrorMessage()}")
    missing = [conn for conn in conns if conn.delivered != count + 1]
    if missing:
        raise SystemExit(f"{len(missing)} subscribers missed events")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--window", type=float, default=0.0,
                        help="the fan-out window, seconds (0: every event at once)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="events a second of the hub's clock, with --window")
    args = parser.parse_args(argv)
    runs = [run(args.subscribers, args.events, args.window, args.rate)
            for _ in range(args.repeat)]
    median = statistics.median(runs)
    print(json.dumps({
        "subscribers": args.subscribers,
        "events": args.events,
        "runs": args.repeat,
        "window": args.window,
        "us_per_publish": round(median / args.events * 1e6, 1),
        "us_per_delivery": round(median / (args.events * args.subscribers) * 1e6, 3),
    }))


if __name__ == "__main__":
    main()

# -*- test-case-name: tests.test_cluster_redis_restart -*-
"""
A hub node whose Redis goes away under load and comes back: a Redis server of the test's own
(C{redis-server} on a free port, append-only file fsynced on every write, in a temporary
directory), killed with SIGKILL while events are published and started again on the same files.
No event answered 200 is lost; publishes while Redis is away are answered 503; the dashboard's
WebSocket stays open and receives every answered event, in order, once Redis is back.  Skipped,
with the reason, where there is no C{redis-server} to run.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mission_control import keys
from tests.helpers import (
    ChildProcess,
    RemoteServer,
    connect,
    free_port,
    http_request,
    raw_request,
    spawn_process,
    spawn_twistd,
    wait_until,
)

REDIS_SERVER = shutil.which("redis-server")


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisRestartTests(unittest.TestCase):
    """Redis killed and started again under publishing."""

    skip = None if REDIS_SERVER else "no redis-server to run (apt-get install redis-server)"
    timeout = 120

    @defer.inlineCallbacks
    def start_redis(self) -> Any:
        assert REDIS_SERVER is not None
        proc = spawn_process(self, ChildProcess("redis"), [
            REDIS_SERVER, "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--dir", self.redis_dir, "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--maxmemory-policy", "noeviction"], dict(os.environ), self.redis_dir)
        yield wait_until(lambda: answers_ping(self.redis_port) or proc.ended.called,
                         timeout=15, interval=0.05)
        self.assertFalse(proc.ended.called, proc.output)
        return proc

    @defer.inlineCallbacks
    def test_redis_killed_under_load_loses_no_answered_event(self) -> Any:
        """
        Every event answered 200, before the kill and after the restart, is in the history with
        its seq, and the viewer received all of them in seq order; publishes while Redis was
        away were answered 503 unavailable (never 200); /healthz said 503 meanwhile and 200
        after; the viewer's connection stayed open throughout.
        """
        self.redis_port, port = free_port(), free_port()
        self.redis_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.redis_dir)
        redis = yield self.start_redis()
        data_dir = os.path.abspath(self.mktemp())
        hub = spawn_twistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                           "--data-dir", data_dir, "--heartbeat-interval", "0",
                           "--store", f"redis://127.0.0.1:{self.redis_port}/0",
                           "--max-publishes-per-second", "1000")
        yield wait_until(lambda: "shared history" in hub.output or hub.ended.called, timeout=20)
        server = RemoteServer(port, keys.read_secret(os.path.join(data_dir, "jwt-secret")))
        admin = server.token("root", role="admin")
        viewer = yield connect(self, server, server.token("viewer"))
        yield viewer.next_of("snapshot")

        answered: list[dict] = []
        refused: list[int] = []
        state = {"publishing": True, "n": 0}

        @defer.inlineCallbacks
        def publish_forever() -> Any:
            while state["publishing"]:
                state["n"] += 1
                response = yield raw_request(port, http_request(
                    "POST", f"/api/agents/agent-{state['n'] % 5}/status",
                    {"status": "busy", "message": f"event {state['n']}"}, token=admin))
                if response.status == 200:
                    answered.append(response.json()["event"])
                else:
                    self.assertEqual(response.status, 503, response.body)
                    self.assertEqual(response.json()["error"]["code"], "unavailable")
                    refused.append(state["n"])
                    yield deferLater(reactor, 0.05, lambda: None)

        publishing = publish_forever()
        yield wait_until(lambda: len(answered) >= 30, timeout=20)
        redis.transport.signalProcess("KILL")
        yield redis.ended
        before_restart = len(answered)
        yield wait_until(lambda: len(refused) >= 3, timeout=20)
        response = yield raw_request(port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 503)
        self.assertIn(response.json()["status"], ("redis_unreachable", "pubsub_down",
                                                  "pubsub_stalled"))
        yield self.start_redis()
        yield wait_until(lambda: len(answered) >= before_restart + 30, timeout=40)
        state["publishing"] = False
        yield publishing

        response = yield raw_request(port, http_request(
            "GET", "/api/events?since=0&limit=1000", token=admin))
        history = {event["seq"]: event for event in response.json()["events"]}
        for event in answered:
            self.assertEqual(history.get(event["seq"]), event)
        seqs = sorted(history)
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))  # gap-free
        seen: list[int] = []
        while len(seen) < len(seqs):
            frame = yield viewer.next_of("agent:status")
            seen.append(frame["seq"])
        self.assertEqual(seen, seqs)
        self.assertIsNone(viewer.close_code)
        yield wait_until(lambda: self.healthy(port), timeout=15, interval=0.2)

    def healthy(self, port: int) -> bool:
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

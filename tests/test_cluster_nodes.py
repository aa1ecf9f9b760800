# -*- test-case-name: tests.test_cluster_nodes -*-
"""
Several real hub processes (C{twistd -n mission-control --store redis://...}) on the Redis of
127.0.0.1:6379, as one hub: an event published on any node reaches the clients of every node
once, in order, with one seq sequence; a client that moves to another node resumes there with
nothing missing; killing a node loses no answered event.  Skipped, with the reason, where no
Redis answers.
"""

from __future__ import annotations

import os
import secrets
import signal
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from mission_control import keys
from tests.helpers import (
    RemoteServer,
    connect,
    free_port,
    http_request,
    raw_request,
    spawn_twistd,
    upgrade_request,
    wait_until,
)
from tests.redis_helpers import RedisTestMixin


def status_request(token: str, agent: str, message: str) -> bytes:
    return http_request("POST", f"/api/agents/{agent}/status",
                        {"status": "busy", "message": message}, token=token)


class ClusterNodesTests(RedisTestMixin, unittest.TestCase):
    """Two hub processes on one Redis prefix serve one history."""

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield defer.Deferred.fromCoroutine(self.redis_setup())
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.secret_path = os.path.join(self.dir, "jwt-secret")
        with open(os.open(self.secret_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(48))
        self.secret = keys.read_secret(self.secret_path)
        self.store = f"redis://127.0.0.1:6379/0?prefix={self.prefix}"

    @defer.inlineCallbacks
    def node(self, port: int | None = None) -> Any:
        """Start a node on a port of its own; fires with (process, RemoteServer) once it serves."""
        port = port or free_port()
        data_dir = os.path.join(self.dir, f"node-{port}")
        proc = spawn_twistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                            "--data-dir", data_dir, "--jwt-secret-file", self.secret_path,
                            "--store", self.store, "--heartbeat-interval", "0")
        yield wait_until(lambda: "shared history" in proc.output and "loaded" in proc.output
                         or proc.ended.called, timeout=20)
        self.assertFalse(proc.ended.called, proc.output)
        return proc, RemoteServer(port, self.secret)

    @defer.inlineCallbacks
    def publish(self, server: RemoteServer, token: str, agent: str, message: str) -> Any:
        response = yield raw_request(server.port, status_request(token, agent, message))
        self.assertEqual(response.status, 200, response.body)
        return response.json()["event"]

    @defer.inlineCallbacks
    def test_every_client_on_every_node_gets_every_event_once_in_order(self) -> Any:
        """
        Events published alternately on two nodes reach a client of each node once each, in
        one gap-free seq order, the same on both.
        """
        (_, a), (_, b) = (yield self.node()), (yield self.node())
        admin = a.token("root", role="admin")
        on_a = yield connect(self, a, a.token("viewer-a"))
        on_b = yield connect(self, b, b.token("viewer-b"))
        yield on_a.next_of("snapshot")
        yield on_b.next_of("snapshot")
        answered = []
        for i in range(20):
            event = yield self.publish((a, b)[i % 2], admin, f"agent-{i % 3}", f"event {i}")
            answered.append(event["seq"])
        self.assertEqual(answered, list(range(1, 21)))
        for client in (on_a, on_b):
            seen = []
            for _ in range(20):
                frame = yield client.next_of("agent:status")
                seen.append((frame["seq"], frame["payload"]["message"]))
            self.assertEqual(seen, [(i + 1, f"event {i}") for i in range(20)])

    @defer.inlineCallbacks
    def test_client_moves_to_another_node_and_resumes(self) -> Any:
        """
        A client that saw events on node A, then reconnects to node B with since and epoch after
        more were published, gets exactly what it missed, then resumed (recovered), then live
        events.
        """
        (_, a), (_, b) = (yield self.node()), (yield self.node())
        admin = a.token("root", role="admin")
        client = yield connect(self, a, a.token("mover"))
        welcome = yield client.next_of("welcome")
        epoch = welcome["payload"]["epoch"]
        for i in range(3):
            yield self.publish(a, admin, "agent-1", f"before {i}")
        last = None
        for _ in range(3):
            last = (yield client.next_of("agent:status"))["seq"]
        client.sendClose()
        yield client.closed
        for i in range(4):
            yield self.publish(b if i % 2 else a, admin, "agent-2", f"missed {i}")
        moved = yield connect(self, b, b.token("mover"), query=f"since={last}&epoch={epoch}")
        replayed = []
        while True:
            frame = yield moved.next_of("agent:status", "resumed")
            if frame["type"] == "resumed":
                break
            replayed.append(frame["payload"]["message"])
        self.assertEqual(replayed, [f"missed {i}" for i in range(4)])
        self.assertEqual(frame["payload"]["recovered"], True)
        yield self.publish(a, admin, "agent-3", "live")
        frame = yield moved.next_of("agent:status")
        self.assertEqual((frame["seq"], frame["payload"]["message"]), (8, "live"))

    @defer.inlineCallbacks
    def test_kill_9_loses_no_answered_event(self) -> Any:
        """
        Every event node A answered 200 before it was killed with SIGKILL is in the history
        node B serves, same seqs; B goes on with the next seq.
        """
        (proc_a, a), (_, b) = (yield self.node()), (yield self.node())
        admin = a.token("root", role="admin")
        answered = []
        for i in range(60):
            answered.append((yield self.publish(a, admin, f"agent-{i % 4}", f"event {i}")))
        proc_a.process.signalProcess("KILL")
        reason = yield proc_a.ended
        self.assertEqual(reason.signal, signal.SIGKILL)
        response = yield raw_request(b.port, http_request("GET", "/api/events?since=0&limit=1000",
                                                          token=admin))
        self.assertEqual(response.json()["events"], answered)
        after = yield self.publish(b, admin, "agent-1", "after")
        self.assertEqual(after["seq"], 61)

    @defer.inlineCallbacks
    def test_node_started_later_serves_the_history(self) -> Any:
        """
        A node started after events were published answers /healthz 200 once its shared
        history is loaded, and serves the latest state that was there before it started.
        """
        (_, a) = yield self.node()
        admin = a.token("root", role="admin")
        yield self.publish(a, admin, "agent-1", "first")
        (_, b) = yield self.node()
        response = yield raw_request(b.port, http_request("GET", "/healthz"))
        self.assertEqual((response.status, response.json()), (200, {"status": "ok"}))
        response = yield raw_request(b.port, http_request("GET", "/api/agents", token=admin))
        self.assertEqual([agent["message"] for agent in response.json()["agents"]], ["first"])




class UnreachableRedisTests(unittest.TestCase):
    """A node whose Redis cannot be reached at start says so and refuses, without a crash."""

    timeout = 60

    @defer.inlineCallbacks
    def test_starting_node_refuses_with_503(self) -> Any:
        """
        While the shared history cannot be loaded, /healthz answers 503 starting, a WebSocket
        handshake 503, a publish 503 with a JSON error; the log says why, without a traceback.
        """
        port, nothing = free_port(), free_port()
        data_dir = os.path.abspath(self.mktemp())
        proc = spawn_twistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                            "--data-dir", data_dir,
                            "--store", f"redis://:hunter2@127.0.0.1:{nothing}/0")
        yield wait_until(lambda: "cannot load the shared history" in proc.output
                         or proc.ended.called, timeout=20)
        self.assertFalse(proc.ended.called, proc.output)
        secret = keys.read_secret(os.path.join(data_dir, "jwt-secret"))
        server = RemoteServer(port, secret)
        admin = server.token("root", role="admin")
        response = yield raw_request(port, http_request("GET", "/healthz"))
        self.assertEqual((response.status, response.json()), (503, {"status": "starting"}))
        response = yield raw_request(port, status_request(admin, "agent-1", "lost?"))
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["error"]["code"], "unavailable")
        response = yield raw_request(port, upgrade_request(f"/ws?token={admin}"))
        self.assertEqual(response.status, 503)
        self.assertNotIn("Traceback", proc.output)
        self.assertNotIn("hunter2", proc.output)

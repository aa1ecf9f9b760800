# -*- test-case-name: tests.test_cluster_nodes -*-
"""
Several real hub processes (C{twistd -n mission-control --store redis://...}) on the Redis of
127.0.0.1:6379, as one hub: an event published on any node reaches the clients of every node
once, in order, with one seq sequence; a client that moves to another node resumes there with
nothing missing; killing a node loses no answered event.  Skipped, with the reason, where no
Redis answers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from typing import Any

from twisted.internet import defer, reactor
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
    def node(self, port: int | None = None, extra: tuple[str, ...] = ()) -> Any:
        """Start a node on a port of its own; fires with (process, RemoteServer) once it serves."""
        port = port or free_port()
        data_dir = os.path.join(self.dir, f"node-{port}")
        proc = spawn_twistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                            "--data-dir", data_dir, "--jwt-secret-file", self.secret_path,
                            "--store", self.store, "--heartbeat-interval", "0", *extra)
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
    def test_per_user_limit_spans_nodes(self) -> Any:
        """
        With --max-connections-per-user 1, a user connected to node A is refused 429 by node
        B; once that connection closes, B accepts them.
        """
        (_, a), (_, b) = (yield self.node(extra=("--max-connections-per-user", "1"))), \
            (yield self.node(extra=("--max-connections-per-user", "1")))
        first = yield connect(self, a, a.token("dana"))
        yield first.next_of("snapshot")
        yield wait_until(lambda: self.presence_count(b, "dana") == 1, timeout=5, interval=0.2)
        response = yield raw_request(b.port, upgrade_request(f"/ws?token={b.token('dana')}"))
        self.assertEqual(response.status, 429)
        first.sendClose()
        yield first.closed
        yield wait_until(lambda: self.presence_count(b, "dana") == 0, timeout=5, interval=0.2)
        second = yield connect(self, b, b.token("dana"))
        yield second.next_of("snapshot")

    @defer.inlineCallbacks
    def test_presence_spans_nodes(self) -> Any:
        """
        A viewer on node B sees presence:join when a user connects to node A, and
        presence:leave when they go; /api/presence on B lists them meanwhile.
        """
        (_, a), (_, b) = (yield self.node()), (yield self.node())
        watcher = yield connect(self, b, b.token("watcher", role="admin"),
                                query="channels=presence")
        yield watcher.next_of("welcome")
        visitor = yield connect(self, a, a.token("visitor", name="Visitor"))
        frame = yield watcher.next_of("presence:join")
        self.assertEqual((frame["payload"]["userId"], frame["payload"]["name"],
                          frame["payload"]["connections"]), ("visitor", "Visitor", 1))
        yield wait_until(lambda: self.presence_count(b, "visitor") == 1, timeout=5, interval=0.2)
        visitor.sendClose()
        yield visitor.closed
        frame = yield watcher.next_of("presence:leave")
        self.assertEqual(frame["payload"]["userId"], "visitor")

    @defer.inlineCallbacks
    def test_agents_of_a_killed_node_go_offline(self) -> Any:
        """
        An agent connected to node A, which is killed with SIGKILL, is marked offline by the
        other node within the presence bound (ttl + heartbeat: 8 s), once; an agent connected
        to the surviving node stays online.
        """
        (proc_a, a), (_, b) = (yield self.node()), (yield self.node())
        admin = a.token("root", role="admin")
        doomed = yield connect(self, a, a.token("agent-a", role="agent"))
        survivor = yield connect(self, b, b.token("agent-b", role="agent"))
        yield doomed.next_of("snapshot")
        yield survivor.next_of("snapshot")
        yield wait_until(lambda: self.agent_status(b, admin, "agent-a") == "online",
                         timeout=5, interval=0.2)
        proc_a.process.signalProcess("KILL")
        yield proc_a.ended
        killed = reactor.seconds()
        yield wait_until(lambda: self.agent_status(b, admin, "agent-a") == "offline",
                         timeout=12, interval=0.2)
        self.assertLess(reactor.seconds() - killed, 9.5)
        self.assertEqual(self.agent_status(b, admin, "agent-b"), "online",
                         self.get_json(b, "/api/events?since=0", admin))
        response = yield raw_request(b.port, http_request(
            "GET", "/api/events?since=0&limit=1000", token=admin))
        offline = [e for e in response.json()["events"]
                   if e["payload"]["agentId"] == "agent-a" and e["payload"]["status"] == "offline"]
        self.assertEqual(len(offline), 1)
        self.assertEqual(offline[0]["payload"]["message"], "its hub node stopped answering")

    def presence_count(self, server: RemoteServer, user: str) -> int:
        """The connections /api/presence of C{server} says C{user} has (0 when absent)."""
        body = self.get_json(server, "/api/presence", server.token("probe", role="admin"))
        for entry in body["presence"]:
            if entry["id"] == user:
                return int(entry["connections"])
        return 0

    def agent_status(self, server: RemoteServer, token: str, agent: str) -> str | None:
        """The status of C{agent} in C{server}'s latest state, or None."""
        for payload in self.get_json(server, "/api/agents", token).get("agents", []):
            if payload["agentId"] == agent:
                return str(payload["status"])
        return None

    def get_json(self, server: RemoteServer, path: str, token: str) -> Any:
        """GET C{path} on C{server}, blocking (for polling in wait_until)."""
        import urllib.error
        import urllib.request
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

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

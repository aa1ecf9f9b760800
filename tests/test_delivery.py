"""
End-to-end tests of delivery you can trust: durable events that survive SIGKILL, resume after a
reconnect without gaps or duplicates, acks and named clients, token expiry and refresh, graceful
shutdown, slow consumers, message rate limits and idempotent publishing.  Real sockets, a real
SQLite file, real processes.
"""

from __future__ import annotations

import os
import signal
import socket

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mission_control import keys, tokens
from tests.helpers import (
    bearer,
    connect,
    fill_sessions,
    free_port,
    http_request,
    RemoteServer,
    raw_request,
    spawn_twistd,
    start_server,
    upgrade_request,
    wait_until,
)


def status_request(token, agent="a1", status="busy", key=None, message=None):
    body = {"status": status}
    if message is not None:
        body["message"] = message
    headers = {"Idempotency-Key": key} if key else None
    return http_request("POST", f"/api/agents/{agent}/status", body, token=token, headers=headers)


class ResumeTests(unittest.TestCase):
    """since + epoch on reconnect."""

    def setUp(self):
        self.server = start_server(self)
        self.admin = self.server.token("root", role="admin")

    def publish(self, count, start=0):
        for i in range(count):
            self.successResultOf(self.server.hub.publish("agent:status", {
                "agentId": f"a{(start + i) % 7}", "status": "busy",
                "timestamp": "2026-01-01T00:00:00.000Z"}))

    @defer.inlineCallbacks
    def test_resume_during_concurrent_publishing(self):
        """
        A client resuming 2,000 events behind while others keep publishing sees every seq after
        its position exactly once, in order, the replay before the resumed frame and live events
        after it.
        """
        first = yield connect(self, self.server, self.server.token())
        welcome = yield first.next_of("welcome")
        epoch = welcome["payload"]["epoch"]
        self.publish(5)
        seen = []
        for _ in range(5):
            seen.append((yield first.next_of("agent:status"))["seq"])
        first.sendClose(1000)
        yield first.closed
        self.publish(2000, start=5)

        publisher = task.LoopingCall(self.publish, 5)
        publisher.start(0.001)
        self.addCleanup(lambda: publisher.running and publisher.stop())
        again = yield connect(self, self.server, self.server.token(),
                              query=f"since={seen[-1]}&epoch={epoch}")
        resumed = yield again.next_of("resumed")
        publisher.stop()
        yield wait_until(lambda: again.received[-1].get("seq", 0) >= self.server.hub.store.last_seq
                         or False, timeout=10)
        seqs = [f["seq"] for f in again.received if "seq" in f]
        self.assertEqual(seqs, list(range(6, self.server.hub.store.last_seq + 1)))
        self.assertTrue(resumed["payload"]["recovered"])
        self.assertEqual(resumed["payload"]["from"], 6)
        types = [f["type"] for f in again.received]
        self.assertEqual(types[0], "welcome")
        self.assertNotIn("snapshot", types)
        position = types.index("resumed")
        replayed = [f["seq"] for f in again.received[:position] if "seq" in f]
        self.assertEqual(replayed[-1], resumed["payload"]["to"])

    @defer.inlineCallbacks
    def test_other_epoch_redraws(self):
        """A resume with another epoch gets recovered false and a fresh snapshot."""
        self.publish(3)
        client = yield connect(self, self.server, self.server.token(), query="since=1&epoch=old")
        yield client.next_of("welcome")
        resumed = yield client.frames.get()
        snapshot = yield client.frames.get()
        self.assertEqual((resumed["type"], resumed["payload"]["recovered"],
                          resumed["payload"]["reason"]), ("resumed", False, "epoch"))
        self.assertEqual(snapshot["type"], "snapshot")
        self.assertEqual(snapshot["payload"]["lastSeq"], 3)

    @defer.inlineCallbacks
    def test_bad_resume_parameters(self):
        """Malformed since, epoch or client are refused at the handshake with 400."""
        token = self.server.token()
        for query in ("since=abc", "since=-3", "epoch=a%20b", "client=bad%20name"):
            response = yield raw_request(
                self.server.port, upgrade_request(path=f"/ws?{query}", headers=bearer(token)))
            self.assertEqual(response.status, 400, query)

    @defer.inlineCallbacks
    def test_named_client_acks(self):
        """A named client that acked resumes from its ack on the next connection without since."""
        self.publish(3)
        client = yield connect(self, self.server, self.server.token(), query="client=wall-1")
        yield client.next_of("snapshot")
        client.send_json({"type": "ack", "seq": 2})
        ack = yield client.next_of("ack")
        self.assertEqual(ack["payload"], {"seq": 2})
        response = yield raw_request(self.server.port,
                                     http_request("GET", "/api/connections", token=self.admin))
        (detail,) = response.json()["connections"]
        self.assertEqual((detail["client"], detail["ackedSeq"]), ("wall-1", 2))
        client.sendClose(1000)
        yield client.closed
        self.publish(2, start=3)
        again = yield connect(self, self.server, self.server.token(), query="client=wall-1")
        resumed = yield again.next_of("resumed")
        self.assertEqual([f["seq"] for f in again.received if "seq" in f], [3, 4, 5])
        self.assertEqual((resumed["payload"]["from"], resumed["payload"]["to"]), (3, 5))


class RestartTests(unittest.TestCase):
    """State, history and epoch survive a restart on the same SQLite file."""

    @defer.inlineCallbacks
    def test_restart_keeps_history(self):
        """After a clean restart a client resumes with its old seq and epoch, and state is there."""
        data_dir = os.path.abspath(self.mktemp())
        first = start_server(self, ["--data-dir", data_dir])
        token = first.token("root", role="admin")
        for status in ("online", "busy", "idle"):
            yield raw_request(first.port, status_request(token, status=status))
        epoch = first.hub.store.epoch
        yield first.service.stopService()

        second = start_server(self, ["--data-dir", data_dir])
        self.assertEqual(second.hub.store.epoch, epoch)
        client = yield connect(self, second, second.token(), query=f"since=1&epoch={epoch}")
        resumed = yield client.next_of("resumed")
        self.assertEqual((resumed["payload"]["recovered"], resumed["payload"]["to"]), (True, 3))
        response = yield raw_request(second.port, http_request("GET", "/api/agents", token=token))
        self.assertEqual(response.json()["agents"][0]["status"], "idle")

    @defer.inlineCallbacks
    def test_deleted_database_is_a_new_epoch(self):
        """A deleted database means a new epoch: a resuming client is told to redraw."""
        data_dir = os.path.abspath(self.mktemp())
        first = start_server(self, ["--data-dir", data_dir])
        yield raw_request(first.port, status_request(first.token("root", role="admin")))
        epoch = first.hub.store.epoch
        yield first.service.stopService()
        for name in os.listdir(data_dir):
            if name.startswith("mission-control.sqlite3"):
                os.remove(os.path.join(data_dir, name))
        second = start_server(self, ["--data-dir", data_dir])
        self.assertNotEqual(second.hub.store.epoch, epoch)
        client = yield connect(self, second, second.token(), query=f"since=1&epoch={epoch}")
        resumed = yield client.next_of("resumed")
        self.assertEqual(resumed["payload"]["recovered"], False)


class KillTests(unittest.TestCase):
    """A publish answered 200 survives SIGKILL of the server process."""

    timeout = 60

    @defer.inlineCallbacks
    def start(self, data_dir, port):
        proc = spawn_twistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                            "--data-dir", data_dir, "--heartbeat-interval", "0")
        yield wait_until(lambda: f"ws://127.0.0.1:{port}/ws" in proc.output or proc.ended.called,
                         timeout=20)
        self.assertFalse(proc.ended.called, proc.output)
        return proc

    @defer.inlineCallbacks
    def test_sigkill_loses_nothing_acknowledged(self):
        """Every event answered 200 before kill -9 is there after the restart, same seq, same epoch."""
        data_dir = os.path.abspath(self.mktemp())
        port = free_port()
        proc = yield self.start(data_dir, port)
        secret = keys.read_secret(os.path.join(data_dir, "jwt-secret"))
        token = tokens.mint_token(secret, "root", reactor.seconds(), role="admin")
        answered = []
        for i in range(200):
            response = yield raw_request(port, status_request(token, agent=f"a{i % 9}",
                                                              message=f"event {i}"))
            self.assertEqual(response.status, 200)
            answered.append(response.json()["event"])
        proc.process.signalProcess("KILL")
        reason = yield proc.ended
        self.assertEqual(reason.signal, signal.SIGKILL)

        yield self.start(data_dir, port)
        response = yield raw_request(port, http_request("GET", "/api/events?since=0&limit=1000",
                                                        token=token))
        body = response.json()
        self.assertEqual(body["events"], answered)
        self.assertEqual(body["lastSeq"], 200)
        response = yield raw_request(port, status_request(token, agent="a1", message="after"))
        self.assertEqual(response.json()["event"]["seq"], 201)


class GracefulShutdownTests(unittest.TestCase):
    """SIGTERM: every client hears 1001, the process exits well within 10 s, nothing is lost."""

    timeout = 60

    @defer.inlineCallbacks
    def test_sigterm(self):
        """
        On SIGTERM twistd closes every WebSocket with 1001 and exits within 10 s; the events
        published before are all there on the next start.
        """
        data_dir = os.path.abspath(self.mktemp())
        port = free_port()
        args = ("--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir)
        proc = spawn_twistd(self, *args)
        yield wait_until(lambda: f"ws://127.0.0.1:{port}/ws" in proc.output or proc.ended.called,
                         timeout=20)
        secret = keys.read_secret(os.path.join(data_dir, "jwt-secret"))
        token = tokens.mint_token(secret, "root", reactor.seconds(), role="admin")
        server = RemoteServer(port, secret)
        clients = []
        for i in range(20):
            clients.append((yield connect(self, server, server.token(f"u{i % 4}"))))
        for i in range(50):
            yield raw_request(port, status_request(token, agent=f"a{i % 5}"))
        started = reactor.seconds()
        proc.process.signalProcess("TERM")
        yield proc.ended
        self.assertLess(reactor.seconds() - started, 10)
        for client in clients:
            yield client.closed
        self.assertEqual({c.close_code for c in clients}, {1001})
        self.assertNotIn("Traceback", proc.output)

        again = spawn_twistd(self, *args)
        yield wait_until(lambda: f"ws://127.0.0.1:{port}/ws" in again.output, timeout=20)
        response = yield raw_request(port, http_request("GET", "/api/events?since=0&limit=1000",
                                                        token=token))
        self.assertEqual(response.json()["lastSeq"], 50)


class TokenLifecycleTests(unittest.TestCase):
    """Expiry closes with 4001; a fresh token over the socket keeps it open."""

    def setUp(self):
        self.server = start_server(self, ["--jwt-leeway", "0"])

    @defer.inlineCallbacks
    def test_expired_token_closes_4001(self):
        """A connection whose token expires is closed with 4001 at exp."""
        client = yield connect(self, self.server, self.server.token(ttl=1.5))
        yield client.closed
        self.assertEqual(client.close_code, 4001)

    @defer.inlineCallbacks
    def test_fresh_token_keeps_it_open(self):
        """auth with a fresh token for the same sub is answered auth:ok and moves the deadline."""
        client = yield connect(self, self.server, self.server.token(ttl=1.5))
        client.send_json({"type": "auth", "id": "a1", "token": self.server.token(ttl=600)})
        reply = yield client.next_of("auth:ok", "error")
        self.assertEqual((reply["type"], reply["id"]), ("auth:ok", "a1"))
        yield task.deferLater(reactor, 2.5, lambda: None)
        self.assertIsNone(client.close_code)
        client.send_json({"type": "ping", "id": "still"})
        self.assertEqual((yield client.next_of("pong"))["id"], "still")

    @defer.inlineCallbacks
    def test_token_for_someone_else_closes_4003(self):
        """auth with a token for another sub gets an error and close 4003."""
        client = yield connect(self, self.server, self.server.token("alice"))
        client.send_json({"type": "auth", "token": self.server.token("mallory")})
        error = yield client.next_of("error")
        self.assertEqual(error["payload"]["code"], "forbidden")
        yield client.closed
        self.assertEqual(client.close_code, 4003)


class RateLimitTests(unittest.TestCase):
    """A chatty client gets error frames, then 4029; others are not affected."""

    @defer.inlineCallbacks
    def test_flood(self):
        """Flooding pings: rate_limited errors, then close 4029, while a calm client is served."""
        server = start_server(self, ["--max-messages-per-second", "5"])
        calm = yield connect(self, server, server.token("calm"))
        noisy = yield connect(self, server, server.token("noisy"))
        for i in range(100):
            noisy.send_json({"type": "ping", "id": f"p{i}"})
        yield noisy.closed
        codes = [f["payload"]["code"] for f in noisy.received if f["type"] == "error"]
        self.assertIn("rate_limited", codes)
        self.assertEqual(noisy.close_code, 4029)
        calm.send_json({"type": "ping", "id": "c"})
        self.assertEqual((yield calm.next_of("pong"))["id"], "c")


class IdempotencyTests(unittest.TestCase):
    """Idempotency-Key on POST."""

    @defer.inlineCallbacks
    def test_repeat_and_conflict(self):
        """A repeat returns the first event (no second seq, no second broadcast), also when its
        JSON is spaced differently; a different body with the same key is a 409; a bad key is a
        400."""
        server = start_server(self)
        token = server.token("root", role="admin")
        watcher = yield connect(self, server, server.token())
        yield watcher.next_of("snapshot")
        first = yield raw_request(server.port, status_request(token, key="k-1"))
        again = yield raw_request(server.port, status_request(token, key="k-1"))
        self.assertEqual((first.status, again.status), (200, 200))
        self.assertEqual(first.json(), again.json())
        conflict = yield raw_request(server.port, status_request(token, status="idle", key="k-1"))
        self.assertEqual((conflict.status, conflict.json()["error"]["code"]),
                         (409, "idempotency_conflict"))
        respaced = http_request("POST", "/api/agents/a1/status", b'{ "status" :  "busy" }',
                                token=token, headers={"Idempotency-Key": "k-1"})
        same = yield raw_request(server.port, respaced)
        self.assertEqual(same.json(), first.json())
        # The same agent written %-encoded, and a null field (absent): still the same request.
        encoded = http_request("POST", "/api/agents/%61%31/status",
                               {"status": "busy", "message": None},
                               token=token, headers={"Idempotency-Key": "k-1"})
        same = yield raw_request(server.port, encoded)
        self.assertEqual(same.json(), first.json())
        bad = yield raw_request(server.port, status_request(token, key="x" * 300))
        self.assertEqual(bad.status, 400)
        later = yield raw_request(server.port, status_request(token, key="k-2"))
        self.assertEqual(later.json()["event"]["seq"], 2)
        yield watcher.next_of("agent:status")
        second = yield watcher.next_of("agent:status")
        self.assertEqual(second["seq"], 2)


class EventsApiTests(unittest.TestCase):
    """GET /api/events pages through the stored history."""

    @defer.inlineCallbacks
    def test_paging(self):
        """since and limit page through every event once, oldest first; bad values are 400."""
        server = start_server(self)
        token = server.token("v")
        for i in range(25):
            self.successResultOf(server.hub.publish(
                "agent:status", {"agentId": "a1", "status": "idle",
                                 "timestamp": "2026-01-01T00:00:00.000Z"}))
        seqs, since = [], 0
        while True:
            response = yield raw_request(server.port, http_request(
                "GET", f"/api/events?since={since}&limit=10", token=token))
            body = response.json()
            seqs += [e["seq"] for e in body["events"]]
            since = body["next"]
            if not body["more"]:
                break
        self.assertEqual(seqs, list(range(1, 26)))
        self.assertEqual((body["epoch"], body["lastSeq"]), (server.hub.store.epoch, 25))
        for query in ("since=x", "limit=0", "limit=5000", "since=-1"):
            response = yield raw_request(server.port, http_request(
                "GET", f"/api/events?{query}", token=token))
            self.assertEqual(response.status, 400, query)


class _Stalled(Protocol):
    """Completes a WebSocket handshake, then stops reading with a tiny receive buffer."""

    def __init__(self, request):
        self.request = request
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(self.request)
        reactor.callLater(0.2, self.transport.pauseProducing)

    def connectionLost(self, reason):
        self.lost.callback(None)


class SlowConsumerTests(unittest.TestCase):
    """A client that stops reading is cut off alone."""

    timeout = 60

    @defer.inlineCallbacks
    def test_stalled_client_closed_with_4008(self):
        """
        A client that stops reading is closed with 4008 once more than --max-outbound-bytes wait
        for it, while a reading client receives every event.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = start_server(self, ["--max-outbound-bytes", "262144"])
        fast = yield connect(self, server, server.token("fast"))
        yield fast.next_of("snapshot")
        stalled = _Stalled(upgrade_request(headers=bearer(server.token("slow"))))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), stalled)
        yield wait_until(lambda: server.hub.connection_count == 2)
        yield task.deferLater(reactor, 0.3, lambda: None)
        big = {"blob": "x" * 7000}
        published = 0

        def too_slow():
            return any("too slow" in formatEvent(e) for e in events)

        while not too_slow() and published < 5000:
            for _ in range(5):
                self.successResultOf(server.hub.publish(
                    "agent:status", {"agentId": "a1", "status": "busy",
                                     "timestamp": "2026-01-01T00:00:00.000Z",
                                     "metadata": big}))
                published += 1
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertTrue(too_slow(), f"not closed after {published} events of 7 KB")
        self.assertEqual(sum("too slow" in formatEvent(e) for e in events), 1)
        last = server.hub.store.last_seq
        yield wait_until(lambda: fast.received and fast.received[-1].get("seq") == last, timeout=20)
        seqs = [f["seq"] for f in fast.received if "seq" in f]
        self.assertEqual(seqs, list(range(1, last + 1)))
        yield wait_until(lambda: server.hub.connection_count == 1, timeout=10)
        stalled.transport.abortConnection()
        yield stalled.lost


class LargeSnapshotTests(unittest.TestCase):
    """A snapshot of megabytes is streamed as the client reads, whole, and then the live stream."""

    timeout = 60

    @defer.inlineCallbacks
    def test_large_snapshot_whole_then_events_in_order(self):
        """
        A 3 MB snapshot arrives as one message holding the whole latest state at its lastSeq;
        events published while it streams follow it, each once, in seq order, with no resumed
        frame, and then live events.
        """
        server = start_server(self)
        fill_sessions(server, 400)
        client = yield connect(self, server, server.token("root", role="admin"))
        for i in range(5):  # while the snapshot is (most likely) still streaming
            yield raw_request(server.port, status_request(server.token("op", role="operator"),
                                                          agent=f"during-{i}"))
        snapshot = yield client.next_of("snapshot")
        self.assertEqual(snapshot["payload"]["lastSeq"], 400)
        self.assertEqual(len(snapshot["payload"]["sessions"]), 400)
        self.assertEqual(snapshot["payload"]["sessions"][-1]["sessionId"], "s399")
        yield raw_request(server.port, status_request(server.token("op", role="operator"),
                                                      agent="after"))
        yield wait_until(lambda: client.received[-1].get("seq") == 406)
        after = client.received[client.received.index(snapshot) + 1:]
        self.assertEqual([f["type"] for f in after], ["agent:status"] * 6)
        self.assertEqual([f["seq"] for f in after], list(range(401, 407)))

    @defer.inlineCallbacks
    def test_client_that_does_not_read_its_snapshot_holds_little(self):
        """
        A client that connects to a hub holding 10 MB of state and never reads costs the hub
        about one transport buffer, not its snapshot.
        """
        server = start_server(self)
        fill_sessions(server, 1200)
        stalled = _Stalled(upgrade_request(headers=bearer(server.token("slow"))))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), stalled)
        yield wait_until(lambda: server.hub.connection_count == 1)
        yield task.deferLater(reactor, 0.5, lambda: None)
        (conn,) = server.hub.connections_of("slow")
        self.assertLess(conn.bytes_waiting(), 512 * 1024)
        stalled.transport.abortConnection()
        yield stalled.lost

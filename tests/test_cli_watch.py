# -*- test-case-name: tests.test_cli_watch -*-
"""
Tests for C{mission-control watch}: the L{cli.Watcher}'s reconnect loop, timed with a
L{task.Clock} and a fake endpoint; the watcher against a real server on a loopback port, over
TLS too, reconnecting to a server restarted on the same port; and the console script as a process.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from datetime import timezone

from OpenSSL.SSL import Error as OpenSSLError
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mission_control import cli, events
from mission_control.cli.connection import Ending, judge_ending
from tests import certs
from tests.cli_helpers import (
    AUTH_OK,
    EXPIRING,
    FAST_RETRY,
    agent_status,
    claims,
    encode,
    event,
    heartbeat,
    history_lost,
    make_certificates,
    printed_seqs,
    publish,
    secret_dir,
    secret_file,
    snapshot,
    verify,
    welcome,
)
from tests.helpers import ChildProcess, start_server, tmp_path, wait_until


# watch: the reconnect loop, with a clock


class FakeConnection:
    """What the watcher needs of a WebSocket client protocol; C{sent} holds the frames sent."""

    STATE_OPEN = 3
    STATE_CLOSING = 4
    state = STATE_OPEN
    refusal = None
    opened = True
    wasNotCleanReason = None

    def __init__(self):
        self.closed_with = None
        self.sent = []

    def sendClose(self, code):
        self.closed_with = code
        self.state = self.STATE_CLOSING

    def sendMessage(self, payload, isBinary=False):
        assert not isBinary
        self.sent.append(json.loads(payload))


class FakeEndpoint:
    """
    Hands out scripted outcomes, one per C{connect}, recording when and with what header
    (C{attempts}) and to which URL (C{urls}).
    """

    def __init__(self, clock, outcomes):
        self.clock = clock
        self.outcomes = list(outcomes)
        self.attempts = []
        self.urls = []

    def connect(self, factory):
        self.attempts.append((self.clock.seconds(), factory.headers["Authorization"]))
        self.urls.append(factory.url)
        outcome = self.outcomes.pop(0) if self.outcomes else ConnectionRefusedError()
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)


class WatcherLoopTests(SynchronousTestCase):
    """L{cli.Watcher}'s reconnect loop, on a L{task.Clock}."""

    def watcher(self, outcomes=(), secret=b"s" * 32, token=None, url="ws://127.0.0.1:9/ws",
                **settings):
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.endpoint = FakeEndpoint(self.clock, outcomes)
        self.out, self.err = io.StringIO(), io.StringIO()
        if token is None:
            credentials = cli.Credentials(key=cli.SigningKey(secret, "secret-path"), role="viewer")
        else:
            credentials = cli.Credentials(given=token)
        printer = cli.FramePrinter(self.out, self.err, tz=timezone.utc)
        policy = backoffPolicy(initialDelay=1.0, maxDelay=8.0, factor=2.0, jitter=lambda: 0.0)
        return cli.Watcher(self.clock, url, credentials, printer, self.err,
                           retry_policy=policy, endpoint=self.endpoint, **settings)

    def receive(self, watcher, connection, *frames):
        """C{connection} of C{watcher} receives C{frames}."""
        for frame in frames:
            watcher.frame_received(connection, encode(frame), False)

    def attempt_times(self):
        start = 1_000_000
        return [when - start for when, _ in self.endpoint.attempts]

    def test_backoff_grows_to_its_ceiling(self):
        """Failed attempts are retried after 1, 2, 4, 8, 8 s, with one stderr line each."""
        watcher = self.watcher()
        watcher.run()
        for delay in (1, 2, 4, 8, 8):
            self.clock.advance(delay)
        self.assertEqual(self.attempt_times(), [0, 1, 3, 7, 15, 23])
        lines = self.err.getvalue().splitlines()
        self.assertEqual(len(lines), 6)
        self.assertIn("connection refused", lines[0])
        self.assertTrue(lines[0].endswith("reconnecting in 1.0 s (attempt 1)"), lines[0])
        self.assertTrue(lines[4].endswith("reconnecting in 8.0 s (attempt 5)"), lines[4])

    def test_open_connection_resets_backoff(self):
        """After a successful handshake, the next retry starts again at the first delay."""
        connection = FakeConnection()
        watcher = self.watcher([ConnectionRefusedError(), ConnectionRefusedError(), connection])
        watcher.run()
        self.clock.advance(1)
        self.clock.advance(2)
        self.assertEqual(self.attempt_times(), [0, 1, 3])
        watcher.connection_opened(connection)
        watcher.connection_closed(connection, 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.attempt_times(), [0, 1, 3, 4])
        self.assertIn("closed (1006 gone); reconnecting in 1.0 s", self.err.getvalue())

    def test_fresh_token_per_attempt(self):
        """Each attempt carries a token minted at that moment from the local secret."""
        watcher = self.watcher()
        watcher.run()
        self.clock.advance(1)
        [(first_at, first), (second_at, second)] = self.endpoint.attempts
        self.assertNotEqual(first, second)
        for at, header in self.endpoint.attempts:
            token = header[len("Bearer "):]
            self.assertEqual(claims(token)["iat"], int(at))
            principal = verify(token, b"s" * 32, now=at)
            self.assertEqual((principal.sub, principal.role), (cli.LOCAL_TOKEN_SUBJECT, "viewer"))
            self.assertEqual(principal.expires_at, at + cli.LOCAL_TOKEN_TTL)

    def test_stop_while_waiting(self):
        """stop() while waiting to reconnect cancels the wait and ends with 0."""
        watcher = self.watcher()
        result = []
        watcher.run().addCallback(result.append)
        watcher.stop()
        self.assertEqual(result, [0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_closes_an_open_connection(self):
        """stop() closes an open connection with 1000 and ends with 0 once it is closed."""
        connection = FakeConnection()
        watcher = self.watcher([connection])
        result = []
        watcher.run().addCallback(result.append)
        watcher.connection_opened(connection)
        stopped = watcher.stop()
        self.assertEqual((connection.closed_with, result), (1000, []))
        watcher.connection_closed(connection, 1000, "")
        self.assertEqual(result, [0])
        self.assertEqual(self.successResultOf(stopped), 0)
        self.assertEqual(self.endpoint.attempts[1:], [])

    def test_final_refusals_and_4003_end_the_watch(self):
        """401/403/404 refusals, a URL that is no WebSocket (200), a 4003 close and a 4009 close
        (an administrator's) end with 1; 429 and 503 are retried."""
        for refusal, code, expected in [((401, "invalid token"), None, 1),
                                        ((403, "origin not allowed"), None, 1),
                                        ((404, "Not Found"), None, 1),
                                        ((200, "OK"), None, 1),
                                        (None, 4003, 1),
                                        (None, 4009, 1),
                                        ((429, "too many connections for this user"), None, None),
                                        ((503, "shutting down"), None, None)]:
            connection = FakeConnection()
            connection.opened = refusal is None
            connection.refusal = refusal
            watcher = self.watcher([connection])
            result = []
            watcher.run().addCallback(result.append)
            watcher.connection_closed(connection, code or 1006, "")
            self.assertEqual(result, [expected] if expected else [], refusal or code)
            if expected is None:
                self.assertIn("reconnecting in", self.err.getvalue())
                watcher.stop()

    def test_reconnect_resumes_where_it_left_off(self):
        """Each reconnect asks for what came after the last seq seen, in its epoch, keeping the
        URL's own query parameters."""
        first, second = FakeConnection(), FakeConnection()
        watcher = self.watcher([first, second], url="ws://127.0.0.1:9/ws?x=1")
        watcher.run()
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome("e"), snapshot(40), event(41), event(42))
        watcher.connection_closed(first, 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.endpoint.urls, ["ws://127.0.0.1:9/ws?x=1",
                                              "ws://127.0.0.1:9/ws?x=1&since=42&epoch=e"])

    def test_position_moves_only_with_proof(self):
        """A connection that ends right after its welcome leaves since and epoch as they were;
        after history is lost, the next connection resumes in the new epoch."""
        connections = [FakeConnection() for _ in range(4)]
        watcher = self.watcher(connections)
        watcher.run()
        watcher.connection_opened(connections[0])
        self.receive(watcher, connections[0], welcome("e"), snapshot(40), event(41))
        for index, frames in [(1, [welcome("f", 90)]),
                              (2, [welcome("f", 3), history_lost("epoch", 3), snapshot(3)])]:
            watcher.connection_closed(connections[index - 1], 1006, "gone")
            self.clock.advance(1)
            watcher.connection_opened(connections[index])
            self.receive(watcher, connections[index], *frames)
        watcher.connection_closed(connections[2], 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.endpoint.urls[1:], ["ws://127.0.0.1:9/ws?since=41&epoch=e",
                                                  "ws://127.0.0.1:9/ws?since=41&epoch=e",
                                                  "ws://127.0.0.1:9/ws?since=3&epoch=f"])

    def test_named_watcher_sends_its_name_every_time(self):
        """With a client name, the first connection carries it alone (the hub resumes from the
        position it kept) and later ones carry it with since and epoch."""
        first = FakeConnection()
        watcher = self.watcher([first], client="wall-1")
        watcher.run()
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome("e"), snapshot(40))
        watcher.connection_closed(first, 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.endpoint.urls, [
            "ws://127.0.0.1:9/ws?client=wall-1",
            "ws://127.0.0.1:9/ws?since=40&epoch=e&client=wall-1"])
        watcher.stop()

    def test_acks_at_most_once_a_second_and_on_stop(self):
        """A named watcher acks its last seq once a second when it grew, never in between, and
        once more when stopped cleanly, before the close."""
        connection = FakeConnection()
        watcher = self.watcher([connection], client="wall-1")
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(40), event(41), event(42))
        self.assertEqual(connection.sent, [])
        self.clock.advance(1)
        self.assertEqual(connection.sent, [{"type": "ack", "seq": 42}])
        self.receive(watcher, connection, heartbeat(42))
        self.clock.advance(1)
        self.assertEqual(len(connection.sent), 1)
        self.receive(watcher, connection, event(43), event(44))
        self.clock.advance(0.5)
        self.assertEqual(len(connection.sent), 1)
        self.clock.advance(0.5)
        self.assertEqual(connection.sent[-1], {"type": "ack", "seq": 44})
        self.receive(watcher, connection, event(45))
        watcher.stop()
        self.assertEqual((connection.sent[-1], connection.closed_with),
                         ({"type": "ack", "seq": 45}, 1000))
        watcher.connection_closed(connection, 1000, "")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_sends_no_ack_when_nothing_new(self):
        """Stopping right after an ack does not repeat it."""
        connection = FakeConnection()
        watcher = self.watcher([connection], client="wall-1")
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(40))
        self.clock.advance(1)
        watcher.stop()
        self.assertEqual(connection.sent, [{"type": "ack", "seq": 40}])

    def test_no_acks_without_a_name(self):
        """Without --client nothing is acked: the hub would keep no position for it."""
        connection = FakeConnection()
        watcher = self.watcher([connection])
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(40), event(41))
        self.clock.advance(5)
        watcher.stop()
        self.assertEqual((connection.sent, connection.closed_with), ([], 1000))

    def test_ack_names_a_seq_of_the_hub_at_the_other_end(self):
        """After a reconnect nothing is acked until the new connection has placed the watcher in
        its hub's history (a seq not acked before the drop is not sent to a hub that may be in
        another epoch); after history was lost, the new, lower seq is acked."""
        first, second = FakeConnection(), FakeConnection()
        watcher = self.watcher([first, second], client="wall-1")
        watcher.run()
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome("e"), snapshot(40))
        self.clock.advance(1)
        self.receive(watcher, first, event(41))
        watcher.connection_closed(first, 1006, "gone")
        self.clock.advance(1)
        watcher.connection_opened(second)
        self.receive(watcher, second, welcome("f", 3))
        self.clock.advance(1)
        self.assertEqual(second.sent, [])
        self.receive(watcher, second, history_lost("epoch", 3), snapshot(3))
        self.clock.advance(1)
        self.assertEqual(second.sent, [{"type": "ack", "seq": 3}])
        watcher.stop()

    def test_minted_token_renewed_before_it_expires(self):
        """On auth:expiring a watcher that mints its tokens sends a fresh one over the connection
        and prints nothing, nor the auth:ok that answers it."""
        connection = FakeConnection()
        watcher = self.watcher([connection])
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot())
        self.clock.advance(240)
        self.receive(watcher, connection, EXPIRING, AUTH_OK)
        [frame] = connection.sent
        self.assertEqual(set(frame), {"type", "token"})
        self.assertEqual(frame["type"], "auth")
        principal = verify(frame["token"], b"s" * 32, now=self.clock.seconds())
        self.assertEqual(principal.expires_at, int(self.clock.seconds()) + cli.LOCAL_TOKEN_TTL)
        self.assertEqual((len(self.out.getvalue().splitlines()), self.err.getvalue()), (1, ""))
        watcher.stop()

    def test_fixed_token_expiring(self):
        """With a fixed --token, auth:expiring is one warning line on stderr and nothing is sent;
        the 4001 close that follows ends the watch with 1, since the same token cannot help."""
        connection = FakeConnection()
        watcher = self.watcher([connection], token="x.y.z")
        result = []
        watcher.run().addCallback(result.append)
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(), EXPIRING)
        self.assertEqual(connection.sent, [])
        self.assertEqual(self.err.getvalue().splitlines(), [
            "mission-control watch: the token given expires in 60 s (at 16:05:05); the hub will "
            "close the connection then and watch will end: pass a token that lives longer"])
        watcher.connection_closed(connection, 4001, "token expired")
        self.assertEqual(result, [1])
        self.assertEqual(self.err.getvalue().splitlines()[1],
                         "mission-control watch: the token given has expired and the hub closed "
                         "the connection (4001); not reconnecting with it: pass a fresh --token")
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_expired_minted_token_reconnects(self):
        """A 4001 close of a watcher that mints its tokens is retried with a fresh token,
        resuming."""
        first, second = FakeConnection(), FakeConnection()
        watcher = self.watcher([first, second])
        result = []
        watcher.run().addCallback(result.append)
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome(), snapshot(40))
        self.clock.advance(300)
        watcher.connection_closed(first, 4001, "token expired")
        self.clock.advance(1)
        self.assertEqual(result, [])
        (_, old), (_, fresh) = self.endpoint.attempts
        self.assertNotEqual(old, fresh)
        verify(fresh[len("Bearer "):], b"s" * 32, now=self.clock.seconds())
        self.assertEqual(self.endpoint.urls[1], "ws://127.0.0.1:9/ws?since=40&epoch=e")
        watcher.stop()

    def test_closes_for_own_behaviour_keep_backing_off(self):
        """4008 (too slow) and 4029 (too many messages) are retried, but the backoff keeps
        growing across them (1, 2, 4 s); any other close, 1001 here, starts again at 1 s."""
        connections = [FakeConnection() for _ in range(5)]
        watcher = self.watcher(connections)
        watcher.run()
        for connection, code, delay in zip(connections, [4008, 4029, 4008, 1001],
                                           [1, 2, 4, 1]):
            watcher.connection_opened(connection)
            watcher.connection_closed(connection, code, "")
            self.clock.advance(delay)
        self.assertEqual(self.attempt_times(), [0, 1, 3, 7, 8])
        self.assertIn("closed (4029); reconnecting in 2.0 s", self.err.getvalue())
        watcher.stop()


# watch against a real server


class WatchTests(TestCase):
    """C{mission-control watch} against a running hub."""

    timeout = 30

    def watch(self, url, *args, ttl=None, **settings):
        """
        Parse a watch command line and start its watcher on the reactor; stopped at clean-up.
        C{ttl} is the lifetime of the tokens it mints.
        """
        options = cli.parse_command_line(["watch", "--url", url, *args], {}).subOptions
        if ttl is not None:
            options["credentials"] = dataclasses.replace(options["credentials"], ttl=ttl)
        self.out, self.err = io.StringIO(), io.StringIO()
        settings.setdefault("retry_policy", FAST_RETRY)
        watcher = cli.build_watcher(reactor, options, self.out, self.err, **settings)
        self.result = watcher.run()
        self.addCleanup(watcher.stop)
        return watcher

    def lines(self):
        return self.out.getvalue().splitlines()

    @defer.inlineCallbacks
    def test_prints_welcome_and_events(self):
        """With no token it mints a viewer token from the data dir, prints the connected line,
        then each event published, and stop() closes the connection cleanly with exit code 0."""
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        self.successResultOf(
            server.hub.publish(events.AGENT_STATUS, agent_status("agent-old", "idle")))
        watcher = self.watch(server.url(), "--data-dir", data_dir)
        yield wait_until(lambda: self.lines())
        self.assertRegex(self.lines()[0], r"^\d\d:\d\d:\d\d connected as mission-control-cli "
                                          r"\(viewer\), 1 agents, 0 sessions, lastSeq=1$")
        self.successResultOf(server.hub.publish(
            events.AGENT_STATUS, agent_status("agent-atlas", "busy", message="working on a task")))
        yield wait_until(lambda: len(self.lines()) == 2)
        self.assertRegex(self.lines()[1], r'^\d\d:\d\d:\d\d agent:status  agent-atlas  busy  '
                                          r'"working on a task"  seq=2$')
        code = yield watcher.stop()
        self.assertEqual(code, 0)
        self.assertEqual((yield self.result), 0)
        yield wait_until(lambda: server.hub.connection_count == 0)
        self.assertEqual(self.err.getvalue(), "")

    @defer.inlineCallbacks
    def test_json_mode(self):
        """--json prints the frames themselves, one JSON object per line, from welcome on."""
        server = start_server(self)
        watcher = self.watch(server.url(), "--json", "--token", server.token("alice"))
        yield wait_until(lambda: len(self.lines()) == 2)
        self.successResultOf(server.hub.publish(events.SESSION_ACTIVITY, events.session_activity(
            {"activity": "started"}, reactor.seconds(), "sess-1")))
        yield wait_until(lambda: len(self.lines()) == 3)
        frames = [json.loads(line) for line in self.lines()]
        self.assertEqual([f["type"] for f in frames], ["welcome", "snapshot", "session:activity"])
        self.assertEqual(frames[0]["payload"]["user"]["id"], "alice")
        self.assertEqual(frames[2]["seq"], 1)
        yield watcher.stop()

    def publish(self, server, *agents):
        """Publish an agent:status for each of C{agents} through C{server}'s hub."""
        for agent in agents:
            self.successResultOf(
                server.hub.publish(events.AGENT_STATUS, agent_status(agent, "online")))

    @defer.inlineCallbacks
    def restart(self, server, *args):
        """Stop C{server} (clients hear 1001) and start another on its port with C{args}."""
        ports = [port for _, port in server.service.ports]
        yield server.service.stopService()
        yield wait_until(lambda: server.hub.connection_count == 0
                         and not any(port.connected for port in ports))
        yield wait_until(lambda: "connection refused" in self.err.getvalue())
        return start_server(self, [*args, "--listen", f"tcp:{server.port}:interface=127.0.0.1"])

    @defer.inlineCallbacks
    def test_resumes_after_the_server_restarts(self):
        """
        When the hub goes away it says so on stderr and retries while nothing listens.  Back on
        the same port and data dir, the hub replays what was published while the watcher was
        away: each event is printed once, then the range replayed, then live events.
        """
        data_dir, _ = secret_dir(self)
        first = start_server(self, ["--data-dir", data_dir])
        self.watch(first.url(), "--data-dir", data_dir)
        yield wait_until(lambda: len(self.lines()) == 1)
        self.publish(first, "agent-1", "agent-2", "agent-3")
        yield wait_until(lambda: len(self.lines()) == 4)

        second = yield self.restart(first, "--data-dir", data_dir)
        self.assertIn("closed (1001 server going away); reconnecting in",
                      self.err.getvalue().splitlines()[0])
        # The reactor has not run since the start: the watcher cannot be back yet.
        self.publish(second, "agent-4", "agent-5", "agent-6")
        yield wait_until(lambda: any("resumed" in line for line in self.lines()))
        self.publish(second, "agent-live")
        yield wait_until(lambda: "seq=7" in self.lines()[-1])

        lines = self.lines()
        self.assertEqual(printed_seqs(lines), [1, 2, 3, 4, 5, 6, 7])
        self.assertRegex(lines[4], r"^\d\d:\d\d:\d\d connected as mission-control-cli "
                                   r"\(viewer\), lastSeq=6$")
        self.assertIn("agent:status  agent-4  online  seq=4", lines[5])
        self.assertRegex(lines[8], r"^\d\d:\d\d:\d\d resumed: replayed seq 4-6$")
        self.assertIn("agent:status  agent-live  online  seq=7", lines[9])
        self.assertEqual(len(lines), 10)
        self.assertEqual(second.hub.connection_count, 1)

    @defer.inlineCallbacks
    def test_lost_history_is_announced(self):
        """
        A hub back with another data dir (a new epoch, sharing only the secret) cannot replay:
        the watcher says the history was lost, shows the fresh snapshot as the usual connected
        line, and follows the new history from there.
        """
        secret_path, _ = secret_file(self)
        first = start_server(self, ["--data-dir", tmp_path(self), "--jwt-secret-file", secret_path])
        watcher = self.watch(first.url(), "--jwt-secret-file", secret_path)
        yield wait_until(lambda: len(self.lines()) == 1)
        self.publish(first, "agent-1", "agent-2")
        yield wait_until(lambda: len(self.lines()) == 3)

        second = yield self.restart(first, "--data-dir", tmp_path(self),
                                    "--jwt-secret-file", secret_path)
        self.assertNotEqual(second.hub.store.epoch, first.hub.store.epoch)
        self.publish(second, "agent-new")
        yield wait_until(lambda: len(self.lines()) == 5)
        lines = self.lines()
        self.assertRegex(lines[3], r"^\d\d:\d\d:\d\d history lost \(epoch\): "
                                   r"showing a fresh snapshot$")
        self.assertRegex(lines[4], r"^\d\d:\d\d:\d\d connected as mission-control-cli "
                                   r"\(viewer\), 1 agents, 0 sessions, lastSeq=1$")
        self.assertEqual((watcher.position.seq, watcher.position.epoch),
                         (1, second.hub.store.epoch))
        self.publish(second, "agent-live")
        yield wait_until(lambda: len(self.lines()) == 6)
        self.assertIn("agent-live  online  seq=2", self.lines()[5])

    @defer.inlineCallbacks
    def test_named_watcher_resumes_across_restarts_of_watch(self):
        """
        With --client the hub's stored position follows what was printed (acked on a timer);
        a watch started again with the same name prints what was published while none ran, each
        once, and its ack on a clean stop records the last seq it printed.
        """
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        store, user = server.hub.store, cli.LOCAL_TOKEN_SUBJECT
        argv = ["--data-dir", data_dir, "--client", "wall-1"]
        watcher = self.watch(server.url(), *argv, ack_interval=0.05)
        yield wait_until(lambda: len(self.lines()) == 1)
        self.publish(server, "agent-1", "agent-2", "agent-3")
        yield wait_until(lambda: store.position(user, "wall-1") == 3)
        self.assertEqual(printed_seqs(self.lines()), [1, 2, 3])
        self.assertEqual((yield watcher.stop()), 0)

        self.publish(server, "agent-4", "agent-5")
        watcher = self.watch(server.url(), *argv, ack_interval=60)
        yield wait_until(lambda: any("resumed" in line for line in self.lines()))
        lines = self.lines()
        self.assertEqual(printed_seqs(lines), [4, 5])
        self.assertRegex(lines[-1], r"^\d\d:\d\d:\d\d resumed: replayed seq 4-5$")
        self.assertEqual(store.position(user, "wall-1"), 3)
        self.assertEqual((yield watcher.stop()), 0)
        self.assertEqual(store.position(user, "wall-1"), 5)
        self.assertEqual(self.err.getvalue(), "")

    @defer.inlineCallbacks
    def test_sub_makes_another_user_whose_comings_and_goings_show(self):
        """
        --sub mints the watcher's tokens for that user: a watch subscribed to presence as carol
        prints a presence:join line, with who, name, role and count, when the default watch
        (another user) connects, and a presence:leave line when it stops.
        """
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        self.watch(server.url(query="channels=presence"), "--data-dir", data_dir,
                   "--sub", "carol")
        yield wait_until(lambda: server.hub.connections_of("carol"))
        carol_out = self.out
        other = cli.build_watcher(
            reactor, cli.parse_command_line(
                ["watch", "--url", server.url(), "--data-dir", data_dir], {}).subOptions,
            io.StringIO(), io.StringIO(), retry_policy=FAST_RETRY)
        other.run()
        self.addCleanup(other.stop)
        yield wait_until(lambda: "presence:join" in carol_out.getvalue())
        yield other.stop()
        yield wait_until(lambda: "presence:leave" in carol_out.getvalue())
        lines = carol_out.getvalue().splitlines()
        self.assertRegex(lines[0], r"^\d\d:\d\d:\d\d connected as carol \(viewer\), 0 agents")
        self.assertRegex(lines[1], r'^\d\d:\d\d:\d\d presence:join  mission-control-cli  '
                                   r'"mission-control CLI"  \(viewer\)  connections=1$')
        self.assertRegex(lines[2], r'^\d\d:\d\d:\d\d presence:leave  mission-control-cli  '
                                   r'"mission-control CLI"  \(viewer\)  connections=0$')

    @defer.inlineCallbacks
    def test_minted_token_renewed_over_the_connection(self):
        """
        A watcher minting short-lived tokens answers auth:expiring with a fresh one, and the same
        connection stays open past the first token's expiry (the hub allows no leeway here),
        printing nothing about it.
        """
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir, "--jwt-leeway", "0"])
        server.hub.expiry_warning = 1.0
        self.watch(server.url(), "--data-dir", data_dir, ttl=2)
        yield wait_until(lambda: self.lines() and server.hub.connection_count == 1)
        [connection] = server.hub.connections_of(cli.LOCAL_TOKEN_SUBJECT)
        first_expiry = connection.principal.expires_at
        yield wait_until(lambda: connection.principal.expires_at > first_expiry, timeout=3)
        yield wait_until(lambda: reactor.seconds() > first_expiry + 0.3, timeout=3)
        self.assertEqual(server.hub.connections_of(cli.LOCAL_TOKEN_SUBJECT),
                         frozenset([connection]))
        self.assertEqual(connection.state, connection.STATE_OPEN)
        self.assertEqual((len(self.lines()), self.err.getvalue()), (1, ""))

    @defer.inlineCallbacks
    def test_refused_token_ends_with_exit_1(self):
        """A 401 ends the watch with exit code 1 and one line with the status and reason, without
        retrying and without showing the token."""
        server = start_server(self)
        expired = server.token("alice", ttl=-60)
        self.watch(server.url(), "--token", expired)
        code = yield self.result
        self.assertEqual(code, 1)
        self.assertEqual(self.err.getvalue(),
                         "mission-control watch: the hub refused the connection: "
                         "401 token expired\n")
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(server.hub.connection_count, 0)

    @defer.inlineCallbacks
    def test_foreign_secret_hint(self):
        """A minted token the hub does not accept ends with 1 and names the secret it came from."""
        server = start_server(self)
        other_dir, _ = secret_dir(self)
        self.watch(server.url(), "--data-dir", other_dir)
        self.assertEqual((yield self.result), 1)
        self.assertIn("401 invalid token (the token was minted from "
                      + os.path.join(other_dir, "jwt-secret"), self.err.getvalue())

    @defer.inlineCallbacks
    def test_tls_with_cafile(self):
        """Over wss:// and https:// the hub's certificate is checked against --cafile; without it
        the private CA is not trusted."""
        directory = tmp_path(self)
        ca, key, cert = make_certificates(directory)
        server = start_server(self, ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}"
                                                 f":certKey={cert}"])
        token = server.token("alice", role="admin")
        self.watch(server.url(), "--token", token, "--cafile", ca)
        yield wait_until(lambda: self.lines())
        self.assertIn("connected as alice (admin)", self.lines()[0])

        base = ["publish", "status", "agent-tls", "online", "--token", token,
                "--url", f"https://127.0.0.1:{server.port}"]
        code, out, err = yield publish(base + ["--cafile", ca])
        self.assertEqual((code, out, err), (0, "published agent:status seq=1\n", ""))
        yield wait_until(lambda: len(self.lines()) == 2)
        self.assertIn("agent-tls  online", self.lines()[1])
        code, out, err = yield publish(base)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("certificate is not trusted", err)


class WatchCertificateTests(TestCase):
    """
    C{mission-control watch} against a TLS hub whose certificate it cannot verify: retrying cannot
    change the certificate, so it says what to do, once, and ends with exit code 1.
    """

    timeout = 30

    @defer.inlineCallbacks
    def watch_tls(self, interface="127.0.0.1", *args):
        """Start a TLS hub on C{interface}, watch it with C{args}; fires with the exit code."""
        self.files = certs.write_certificates(self)
        listen = certs.ssl_listen(self.files).replace("127.0.0.1", interface)
        server = start_server(self, ["--listen", listen])
        self.url = f"wss://{interface}:{server.port}/ws"
        options = cli.parse_command_line(
            ["watch", "--url", self.url, "--token", server.token("alice"), *args], {}).subOptions
        self.out, self.err = io.StringIO(), io.StringIO()
        watcher = cli.build_watcher(reactor, options, self.out, self.err, retry_policy=FAST_RETRY)
        result = watcher.run()
        self.addCleanup(watcher.stop)
        yield wait_until(lambda: self.err.getvalue() or result.called)
        self.assertTrue(result.called, self.err.getvalue())
        self.assertEqual(server.hub.connection_count, 0)
        self.assertEqual(self.out.getvalue(), "")
        return (yield result)

    def assertOneLine(self, *fragments):
        """stderr holds one line, with each of C{fragments}, and no retry."""
        lines = self.err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertNotIn("reconnecting", lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])

    @defer.inlineCallbacks
    def test_certificate_of_an_unknown_ca(self):
        """
        Without --cafile a hub whose certificate comes from a private CA is not trusted: one line
        that says so and names --cafile, exit code 1, no second attempt.
        """
        code = yield self.watch_tls()
        self.assertEqual(code, 1)
        self.assertOneLine("mission-control watch: cannot connect to " + self.url,
                           "certificate is not trusted", "certificate verify failed",
                           "--cafile")

    @defer.inlineCallbacks
    def test_cafile_of_another_ca(self):
        """With --cafile of another CA the certificate is not trusted either, and the line names
        the CA file that did not vouch for it."""
        other = tmp_path(self, "other-ca.pem")
        with open(other, "wb") as f:
            f.write(certs.other_certificate_authority().pem)
        code = yield self.watch_tls("127.0.0.1", "--cafile", other)
        self.assertEqual(code, 1)
        self.assertOneLine("certificate is not trusted", f"--cafile {other}")

    @defer.inlineCallbacks
    def test_certificate_for_another_host(self):
        """A certificate from the trusted CA but for other names (localhost, 127.0.0.1 here, the
        hub reached as 127.0.0.2) ends the watch too, saying whose names are wrong."""
        code = yield self.watch_tls("127.0.0.2", "--cafile", certs.write_certificates(self).ca)
        self.assertEqual(code, 1)
        self.assertOneLine("certificate is not valid for 127.0.0.2")


class WatchProcessTests(TestCase):
    """The console script's C{watch} as a process: signals end it cleanly."""

    timeout = 60

    @defer.inlineCallbacks
    def assertSignalEndsCleanly(self, signal_name):
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        process = ChildProcess()
        reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-m", "mission_control.cli", "watch", "--url", server.url(),
             "--data-dir", data_dir],
            env=dict(os.environ),
        )
        try:
            yield wait_until(lambda: b"connected as" in process.out, timeout=20)
            yield wait_until(lambda: server.hub.connection_count == 1)
        finally:
            process.transport.signalProcess(signal_name)
        exit_code = yield process.ended
        self.assertEqual(exit_code, 0, process.err.decode(errors="replace"))
        self.assertEqual(process.err, b"")
        yield wait_until(lambda: server.hub.connection_count == 0)

    def test_sigterm(self):
        """SIGTERM closes the connection and exits with 0, printing nothing on stderr."""
        return self.assertSignalEndsCleanly("TERM")

    def test_ctrl_c(self):
        """Ctrl-C (SIGINT) closes the connection and exits with 0, without a traceback."""
        return self.assertSignalEndsCleanly("INT")


class JudgeEndingTests(SynchronousTestCase):
    """L{judge_ending}: how the watch goes on after a connection ended, without a connection."""

    url = "wss://hub.example:8443/ws?token=secret"

    def judge(self, code=1006, reason="", minted=True, refusal=None, opened=True,
              lost_reason=None, not_clean=None, cafile=None):
        connection = FakeConnection()
        connection.refusal, connection.opened = refusal, opened
        connection.lost_reason, connection.wasNotCleanReason = lost_reason, not_clean
        if minted:
            credentials = cli.Credentials(key=cli.SigningKey(b"s" * 32, "/data/jwt-secret"))
        else:
            credentials = cli.Credentials(given="x.y.z")
        return judge_ending(connection, code, reason, credentials, self.url, cafile)

    def test_final_endings(self):
        """Final refusals (with the secret's path for a 401 of a minted token), 4003, 4009, 4001
        of a given token and an untrusted certificate end the watch; the URL's query (which may
        hold a token) is never shown."""
        self.assertEqual(self.judge(refusal=(401, "invalid token"), opened=False), Ending(
            "the hub refused the connection: 401 invalid token (the token was minted from "
            "/data/jwt-secret: does the server use that secret? Otherwise pass --token)",
            final=True))
        self.assertEqual(self.judge(refusal=(403, "origin not allowed"), minted=False,
                                    opened=False),
                         Ending("the hub refused the connection: 403 origin not allowed",
                                final=True))
        self.assertTrue(self.judge(4003).final)
        self.assertTrue(self.judge(4009).final)
        self.assertTrue(self.judge(4001, minted=False).final)
        untrusted = Failure(OpenSSLError([("SSL routines", "", "certificate verify failed")]))
        ending = self.judge(opened=False, lost_reason=untrusted, cafile="ca.pem")
        self.assertTrue(ending.final)
        self.assertEqual(ending.message,
                         "cannot connect to wss://hub.example:8443/ws: the hub's certificate is "
                         "not trusted by --cafile ca.pem (certificate verify failed); is that the "
                         "certificate of the CA that signed the hub's?")

    def test_retried_endings(self):
        """Refusals worth asking again, 4001 of a minted token, other closes and failed
        handshakes are retried; only 4008 and 4029 keep the backoff growing."""
        self.assertEqual(self.judge(refusal=(503, "shutting down"), opened=False),
                         Ending("the hub refused the connection: 503 shutting down"))
        self.assertEqual(self.judge(4001, "token expired"), Ending(
            "connection to wss://hub.example:8443/ws closed (4001 token expired)"))
        self.assertEqual(self.judge(4008, "too slow"), Ending(
            "connection to wss://hub.example:8443/ws closed (4008 too slow)", keep_backoff=True))
        self.assertTrue(self.judge(4029).keep_backoff)
        self.assertFalse(self.judge(1001, "\x1b[2J").keep_backoff)
        self.assertIn("closed (1001 \\x1b[2J)", self.judge(1001, "\x1b[2J").message)
        self.assertEqual(self.judge(None, opened=False, not_clean="peer dropped"), Ending(
            "WebSocket handshake with wss://hub.example:8443/ws failed: peer dropped"))

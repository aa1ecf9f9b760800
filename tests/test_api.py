"""
Tests for the HTTP API (L{mission_control.web.api}) over real loopback HTTP: publishing (also
through a broker that answers late, and a store that fails), reading, roles, and every kind of
bad input getting the right 4xx with a JSON error.
"""

from __future__ import annotations

import gc
import os
import socket
import sqlite3

import jwt

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mission_control import events
from mission_control.store import IdempotencyConflict, SessionTaken
from mission_control.web import api
from mission_control.web import site
from mission_control.web.site import HubHTTPChannel
from tests.helpers import (
    LogCapture,
    RawExchange,
    connect,
    fill_sessions,
    http_request,
    raw_request,
    start_server,
    wait_until,
)
from tests.hubfakes import DeferredBroker


class ApiTestCase(unittest.TestCase):
    def setUp(self):
        self.server = start_server(self)
        self.admin = self.server.token("root", role="admin")
        self.operator = self.server.token("op", role="operator")
        self.viewer = self.server.token("v", role="viewer")
        self.agent = self.server.token("a1", role="agent")

    def call(self, method, path, body=None, token=None, **kwargs):
        return raw_request(self.server.port, http_request(method, path, body, token=token, **kwargs))

    @defer.inlineCallbacks
    def error(self, status, code, method, path, body=None, token="admin", **kwargs):
        token = getattr(self, token) if token in ("admin", "operator", "viewer", "agent") else token
        response = yield self.call(method, path, body, token=token, **kwargs)
        self.assertEqual(response.status, status, response.raw)
        self.assertEqual(response.headers["content-type"], "application/json")
        error = response.json()["error"]
        self.assertEqual(error["code"], code)
        self.assertTrue(error["message"])
        for leak in (b"Traceback", b"twisted", b"autobahn", b"python"):
            self.assertNotIn(leak, response.raw)
        return response


class PublishTests(ApiTestCase):
    """POST /api/agents/{id}/status and /api/sessions/{id}/activity."""

    @defer.inlineCallbacks
    def test_post_status(self):
        """A status post is stored, returned as its envelope, and listed by GET /api/agents."""
        response = yield self.call("POST", "/api/agents/a1/status",
                                   {"status": "busy", "message": "indexing"}, token=self.operator)
        self.assertEqual(response.status, 200)
        event = response.json()["event"]
        self.assertEqual((event["type"], event["seq"]), ("agent:status", 1))
        self.assertEqual(event["payload"]["agentId"], "a1")
        self.assertEqual(event["payload"]["message"], "indexing")
        listing = yield self.call("GET", "/api/agents", token=self.viewer)
        self.assertEqual(listing.json(), {"agents": [event["payload"]], "lastSeq": 1,
                                          "epoch": self.server.hub.store.epoch})

    @defer.inlineCallbacks
    def test_post_activity(self):
        """An activity post is stored and listed by GET /api/sessions."""
        response = yield self.call("POST", "/api/sessions/s-1/activity",
                                   {"activity": "started", "agentId": "a1"}, token=self.admin)
        self.assertEqual(response.status, 200)
        listing = yield self.call("GET", "/api/sessions", token=self.agent)
        self.assertEqual(listing.json()["sessions"], [response.json()["event"]["payload"]])

    @defer.inlineCallbacks
    def test_publish_reaches_websocket(self):
        """A publish answered 200 has been delivered to a connected client."""
        client = yield connect(self, self.server, self.viewer)
        yield client.next_of("snapshot")
        response = yield self.call("POST", "/api/agents/a9/status", {"status": "error"},
                                   token=self.admin)
        frame = yield client.next_of("agent:status")
        self.assertEqual(frame, response.json()["event"])

    @defer.inlineCallbacks
    def test_agent_publishes_for_itself(self):
        """An agent may post its own status and its own sessions' activity."""
        response = yield self.call("POST", "/api/agents/a1/status", {"status": "online"},
                                   token=self.agent)
        self.assertEqual(response.status, 200)
        response = yield self.call("POST", "/api/sessions/s1/activity", {"activity": "started"},
                                   token=self.agent)
        self.assertEqual(response.json()["event"]["payload"]["agentId"], "a1")

    @defer.inlineCallbacks
    def test_forbidden(self):
        """A viewer may not publish; an agent may not publish for another agent: 403."""
        yield self.error(403, "forbidden", "POST", "/api/agents/a1/status", {"status": "online"},
                         token="viewer")
        yield self.error(403, "forbidden", "POST", "/api/agents/a2/status", {"status": "online"},
                         token="agent")
        yield self.error(403, "forbidden", "POST", "/api/sessions/s1/activity",
                         {"activity": "started", "agentId": "a2"}, token="agent")
        yield self.error(403, "forbidden", "POST", "/api/sessions/s1/activity",
                         {"activity": "started"}, token="viewer")
        listing = yield self.call("GET", "/api/agents", token=self.viewer)
        self.assertEqual(listing.json()["agents"], [])

    @defer.inlineCallbacks
    def test_connections_for_admins_and_operators(self):
        """GET /api/connections: admin and operator see it, viewer and agent get 403."""
        yield connect(self, self.server, self.viewer)
        for token in (self.admin, self.operator):
            response = yield self.call("GET", "/api/connections", token=token)
            body = response.json()
            self.assertEqual((body["total"], body["users"]), (1, [{"id": "v", "connections": 1}]))
            (detail,) = body["connections"]
            self.assertEqual((detail["user"], detail["role"], detail["client"], detail["ackedSeq"]),
                             ("v", "viewer", None, 0))
            self.assertTrue(detail["peer"].startswith("tcp4:127.0.0.1:"), detail["peer"])
            self.assertIsInstance(detail["bytesWaiting"], int)
        yield self.error(403, "forbidden", "GET", "/api/connections", token="viewer")
        yield self.error(403, "forbidden", "GET", "/api/connections", token="agent")


class CloseConnectionTests(ApiTestCase):
    """DELETE /api/connections/{id}: an admin closes one WebSocket with 4009, over real sockets."""

    @defer.inlineCallbacks
    def open(self, token):
        """An Autobahn client connected with C{token}, and its connection id."""
        client = yield connect(self, self.server, token)
        welcome = yield client.next_of("welcome")
        return client, welcome["payload"]["connectionId"]

    @defer.inlineCallbacks
    def test_admin_closes_with_4009(self):
        """
        The admin's DELETE answers 200 {"closed": id}; that client sees close 4009 "closed by an
        administrator", another client of the same user stays open, and the counts and presence
        go as after any close.
        """
        watcher = yield connect(self, self.server, self.server.token("w"), query="channels=presence")
        target, target_id = yield self.open(self.viewer)
        other, _ = yield self.open(self.viewer)
        response = yield self.call("DELETE", f"/api/connections/{target_id}", token=self.admin)
        self.assertEqual((response.status, response.json()), (200, {"closed": target_id}))
        self.assertEqual(response.headers["cache-control"], "no-store")
        was_clean, code, reason = yield target.closed
        self.assertEqual((was_clean, code, reason), (True, 4009, "closed by an administrator"))
        yield wait_until(lambda: self.server.hub.connection_count == 2)
        self.assertEqual(len(self.server.hub.connections_of("v")), 1)
        self.assertEqual(other.state, other.STATE_OPEN)
        listing = yield self.call("GET", "/api/connections", token=self.admin)
        self.assertNotIn(target_id, [c["id"] for c in listing.json()["connections"]])
        self.assertFalse([f for f in watcher.received if f["type"] == "presence:leave"])
        response = yield self.call("DELETE", f"/api/connections/{target_id}", token=self.admin)
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_last_connection_leaves_presence(self):
        """Closing a user's last connection sends presence:leave, as any other close does."""
        watcher = yield connect(self, self.server, self.server.token("w"), query="channels=presence")
        target, target_id = yield self.open(self.viewer)
        yield self.call("DELETE", f"/api/connections/{target_id}", token=self.admin)
        leave = yield watcher.next_of("presence:leave")
        self.assertEqual((leave["payload"]["userId"], leave["payload"]["connections"]), ("v", 0))
        yield wait_until(lambda: self.server.hub.users() == [{"id": "w", "connections": 1}])

    @defer.inlineCallbacks
    def test_only_admins(self):
        """Operators, viewers and agents get 403 and the connection stays open and answered."""
        client, connection_id = yield self.open(self.viewer)
        for role in ("operator", "viewer", "agent"):
            response = yield self.error(403, "forbidden", "DELETE",
                                        f"/api/connections/{connection_id}", token=role)
            self.assertEqual(response.json()["error"]["message"], "admin role required")
        client.send_json({"type": "ping", "id": "p1"})
        pong = yield client.next_of("pong")
        self.assertEqual(pong["id"], "p1")
        self.assertEqual((client.state, client.close_code), (client.STATE_OPEN, None))
        self.assertEqual(self.server.hub.connection_count, 1)

    @defer.inlineCallbacks
    def test_unknown_and_malformed_ids(self):
        """An id no connection has, or one that cannot be an id, is 404 not_found."""
        client, connection_id = yield self.open(self.viewer)
        for bad in ("0" * 32, "nope", connection_id.upper(), "%FF", "a" * 5000,
                    connection_id + "%0A"):
            response = yield self.error(404, "not_found", "DELETE", f"/api/connections/{bad}")
            self.assertNotIn(b"aaaaaaaaaa", response.body)
        self.assertEqual(client.state, client.STATE_OPEN)

    @defer.inlineCallbacks
    def test_methods_and_tokens(self):
        """Another method on a connection is 405 with Allow: DELETE; no token is 401."""
        response = yield self.error(405, "method_not_allowed", "GET", "/api/connections/x")
        self.assertEqual(response.headers["allow"], "DELETE")
        yield self.error(401, "unauthorized", "DELETE", "/api/connections/x", token=None)

    @defer.inlineCallbacks
    def test_logged_without_token(self):
        """The close is logged on one line naming the admin, the connection, its user and peer;
        no token is in any line."""
        logged = LogCapture(self)
        client, connection_id = yield self.open(self.viewer)
        yield self.call("DELETE", f"/api/connections/{connection_id}", token=self.admin)
        yield client.closed
        [line] = logged.matching("closed by administrator")
        self.assertIn(f"connection {connection_id} of v (tcp4:127.0.0.1:", line)
        self.assertTrue(line.endswith("closed by administrator root"), line)
        for line in logged.lines():
            for token in (self.admin, self.viewer):
                self.assertNotIn(token, line)


class VisibilityTests(ApiTestCase):
    """HTTP reads show what the caller could receive over the WebSocket."""

    @defer.inlineCallbacks
    def test_claims_and_roles_filter_reads(self):
        """A narrowed viewer sees only its agents; an agent only itself; presence needs the role."""
        for agent in ("a1", "a2"):
            yield self.call("POST", f"/api/agents/{agent}/status", {"status": "idle"},
                            token=self.admin)
        narrowed = self.server.token("v2", channels=["agents:a2"])
        listing = yield self.call("GET", "/api/agents", token=narrowed)
        self.assertEqual([a["agentId"] for a in listing.json()["agents"]], ["a2"])
        events = yield self.call("GET", "/api/events?since=0", token=narrowed)
        self.assertEqual([e["payload"]["agentId"] for e in events.json()["events"]], ["a2"])
        self.assertEqual(events.json()["next"], 2)
        mine = yield self.call("GET", "/api/agents", token=self.agent)
        self.assertEqual([a["agentId"] for a in mine.json()["agents"]], ["a1"])
        yield self.error(403, "forbidden", "GET", "/api/presence", token="agent")
        response = yield self.call("GET", "/api/presence", token=self.viewer)
        self.assertEqual(response.status, 200)


class MeTests(ApiTestCase):
    """GET /api/me: what the token says, for a page that must tell a refused token from a hub
    that is down."""

    @defer.inlineCallbacks
    def test_every_role(self):
        """Any valid token gets 200 with its user (id, name, role), exp as ISO 8601 and its
        channels claim (null without one)."""
        now = int(reactor.seconds())
        cases = [(self.server.token("root", role="admin", name="Root", ttl=600), "root", "Root",
                  "admin", None),
                 (self.server.token("v2", channels=["agents:*", "presence"], ttl=600), "v2", None,
                  "viewer", ["agents:*", "presence"]),
                 (self.server.token("a1", role="agent", ttl=600), "a1", None, "agent", None)]
        for token, sub, name, role, claim in cases:
            response = yield self.call("GET", "/api/me", token=token)
            self.assertEqual(response.status, 200, response.raw)
            self.assertEqual(response.headers["cache-control"], "no-store")
            body = response.json()
            self.assertEqual(body["user"], {"id": sub, "name": name, "role": role})
            self.assertEqual(body["channels"], claim)
            self.assertEqual(body["expiresAt"], events.format_timestamp(now + 600))
            self.assertEqual(sorted(body), ["channels", "expiresAt", "user"])

    @defer.inlineCallbacks
    def test_refused_tokens(self):
        """A refused token gets 401 with the handshake's reason."""
        now = int(reactor.seconds())
        for token, reason in ((None, "missing token"), ("junk", "invalid token"),
                              (self.server.token(ttl=-60), "token expired"),
                              (jwt.encode({"sub": "v", "exp": now + 600, "nbf": now + 300},
                                          self.server.secret, algorithm="HS256"),
                               "token not yet valid"),
                              (self.server.token(role="root"), "invalid claims")):
            response = yield self.error(401, "unauthorized", "GET", "/api/me", token=token)
            self.assertEqual(response.json()["error"]["message"], reason)

    @defer.inlineCallbacks
    def test_methods(self):
        """HEAD is a GET without a body; other methods get 405 with Allow."""
        response = yield self.call("HEAD", "/api/me", token=self.viewer)
        self.assertEqual((response.status, response.body), (200, b""))
        response = yield self.error(405, "method_not_allowed", "POST", "/api/me", {})
        self.assertEqual(response.headers["allow"], "GET, HEAD")

    @defer.inlineCallbacks
    def test_counts_as_a_read(self):
        """GET /api/me counts against the user's read rate like any other read."""
        server = start_server(self, ["--max-reads-per-second", "1"])
        token = server.token("alice")
        statuses = []
        for _ in range(3):
            response = yield raw_request(server.port, http_request("GET", "/api/me", token=token))
            statuses.append(response.status)
        self.assertEqual(statuses, [200, 200, 429])


class AuthenticationTests(ApiTestCase):
    """The API takes the same tokens as the WebSocket, in the Authorization header."""

    @defer.inlineCallbacks
    def test_missing_and_bad_tokens(self):
        """No token, a bad one, an expired one: 401 with WWW-Authenticate and the reason."""
        response = yield self.error(401, "unauthorized", "GET", "/api/agents", token=None)
        self.assertEqual(response.json()["error"]["message"], "missing token")
        self.assertIn("Bearer", response.headers["www-authenticate"])
        response = yield self.error(401, "unauthorized", "GET", "/api/agents", token="junk")
        self.assertEqual(response.json()["error"]["message"], "invalid token")
        response = yield self.error(401, "unauthorized", "GET", "/api/agents",
                                    token=self.server.token(ttl=-60))
        self.assertEqual(response.json()["error"]["message"], "token expired")

    @defer.inlineCallbacks
    def test_query_token_not_accepted(self):
        """The API does not read tokens from the query string (they end up in logs and caches)."""
        yield self.error(401, "unauthorized", "GET", f"/api/agents?token={self.admin}",
                         token=None)

    @defer.inlineCallbacks
    def test_basic_auth_refused(self):
        """An Authorization header with another scheme is refused."""
        yield self.error(401, "unauthorized", "GET", "/api/agents", token=None,
                         headers={"Authorization": "Basic YTpi"})


class BadInputTests(ApiTestCase):
    """Every client mistake is a 4xx with a JSON error; never a 500."""

    @defer.inlineCallbacks
    def test_bad_json(self):
        """Malformed JSON, invalid UTF-8 and an empty body: 400 malformed JSON."""
        for body in (b"{nope", b"\xff\xfe", b""):
            yield self.error(400, "bad_request", "POST", "/api/agents/a1/status", body)

    @defer.inlineCallbacks
    def test_wrong_types(self):
        """A body that is not an object, or fields of the wrong type: 400 naming the field."""
        cases = [([1, 2], "payload"), ({"status": 5}, "status"),
                 ({"status": "idle", "message": 5}, "message"),
                 ({"status": "idle", "metadata": "x"}, "metadata"),
                 ({"status": "idle", "timestamp": 17}, "timestamp")]
        for body, field in cases:
            response = yield self.error(400, "bad_request", "POST", "/api/agents/a1/status", body)
            self.assertIn(field, response.json()["error"]["message"])

    @defer.inlineCallbacks
    def test_unknown_status(self):
        """A status outside the five is refused with the list of allowed ones."""
        response = yield self.error(400, "bad_request", "POST", "/api/agents/a1/status",
                                    {"status": "sleeping"})
        self.assertIn("online, busy, idle, offline, error", response.json()["error"]["message"])

    @defer.inlineCallbacks
    def test_bad_ids(self):
        """Over-long or badly formed ids in the path: 400, and the id is not echoed."""
        for agent_id in ("a" * 129, "a%20b", "a%0Ab", "%C3%A9", "a%2Fb"):
            response = yield self.error(400, "bad_request", "POST",
                                        f"/api/agents/{agent_id}/status", {"status": "idle"})
            self.assertNotIn(b"aaaaaaaaaa", response.body)

    @defer.inlineCallbacks
    def test_too_large(self):
        """A body over 64 KiB is refused with 413 before it is read."""
        body = b'{"status":"idle","message":"' + b"x" * (70 * 1024) + b'"}'
        yield self.error(413, "payload_too_large", "POST", "/api/agents/a1/status", body)

    @defer.inlineCallbacks
    def test_too_large_chunked(self):
        """A chunked body that grows past 64 KiB is refused with 413 too."""
        chunk = b"x" * 8192
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
        request = (b"POST /api/agents/a1/status HTTP/1.1\r\nHost: x\r\n"
                   b"Authorization: Bearer " + self.admin.encode() + b"\r\n"
                   b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                   b"Connection: close\r\n\r\n" + chunks)
        response = yield raw_request(self.server.port, request)
        self.assertEqual(response.status, 413)
        self.assertEqual(self.server.hub.store.last_seq, 0)

    @defer.inlineCallbacks
    def test_wrong_content_type(self):
        """A body that is not declared as JSON: 415."""
        yield self.error(415, "unsupported_media_type", "POST", "/api/agents/a1/status",
                         {"status": "idle"}, content_type="text/plain")
        yield self.error(415, "unsupported_media_type", "POST", "/api/agents/a1/status",
                         {"status": "idle"}, content_type=None)

    @defer.inlineCallbacks
    def test_charset_allowed(self):
        """application/json with a charset parameter is accepted."""
        response = yield self.call("POST", "/api/agents/a1/status", {"status": "idle"},
                                   token=self.admin, content_type="application/json; charset=utf-8")
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_wrong_method(self):
        """A known path with the wrong method: 405 with Allow."""
        response = yield self.error(405, "method_not_allowed", "GET", "/api/agents/a1/status")
        self.assertEqual(response.headers["allow"], "POST")
        response = yield self.error(405, "method_not_allowed", "DELETE", "/api/agents")
        self.assertEqual(response.headers["allow"], "GET, HEAD")

    @defer.inlineCallbacks
    def test_unknown_paths(self):
        """Unknown paths under /api and elsewhere: 404 JSON."""
        for path in ("/api/nope", "/api/agents/a1", "/api/agents/a1/status/x", "/api", "/nope"):
            yield self.error(404, "not_found", "GET", path)

    @defer.inlineCallbacks
    def test_nothing_stored_after_errors(self):
        """None of the refused requests stored anything."""
        yield self.error(400, "bad_request", "POST", "/api/agents/a1/status", {"status": "x"})
        yield self.error(403, "forbidden", "POST", "/api/agents/a1/status", {"status": "idle"},
                         token="viewer")
        self.assertEqual(self.server.hub.store.last_seq, 0)


class LateAnswerTests(ApiTestCase):
    """
    Publishes through a broker that answers late (L{DeferredBroker}): each POST is answered
    only once its append is, with the status and body it gets when the store answers at once.
    """

    def setUp(self):
        super().setUp()
        self.broker = DeferredBroker.around(self, self.server.hub)

    @defer.inlineCallbacks
    def held(self):
        """Wait until the broker holds an append, and a little more: nothing is answered."""
        yield wait_until(lambda: self.broker.pending)
        yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_answered_when_the_append_fires(self):
        """
        A status POST gets no answer while the broker holds its append; once it is stored the
        answer is 200 with the event's envelope and a Content-Length, as when stored at once,
        and the event has reached a connected client.
        """
        client = yield connect(self, self.server, self.viewer)
        yield client.next_of("snapshot")
        answer = self.call("POST", "/api/agents/a1/status", {"status": "busy"},
                           token=self.operator)
        yield self.held()
        self.assertNoResult(answer)
        self.assertEqual(self.server.hub.store.last_seq, 0)
        self.broker.fire()
        response = yield answer
        self.assertEqual(response.status, 200, response.raw)
        stored = self.server.hub.store.events_after(0, 1)[0].envelope()
        self.assertEqual(response.body, events.encode_json({"event": stored}))
        self.assertEqual(response.headers["content-length"], str(len(response.body)))
        self.assertEqual(response.headers["content-type"], "application/json")
        frame = yield client.next_of("agent:status")
        self.assertEqual(frame, stored)

    @defer.inlineCallbacks
    def test_batch_answered_when_the_append_fires(self):
        """A batch POST is answered 200 with its envelopes once its one append is stored."""
        answer = self.call("POST", "/api/events", {"events": [
            {"type": "agent:status", "payload": {"agentId": f"a{i}", "status": "idle"}}
            for i in (1, 2)]}, token=self.admin)
        yield self.held()
        self.assertNoResult(answer)
        self.broker.fire()
        response = yield answer
        self.assertEqual((response.status, [e["seq"] for e in response.json()["events"]]),
                         (200, [1, 2]))

    @defer.inlineCallbacks
    def test_session_taken_by_another_node_is_403(self):
        """
        An agent's activity that the shared store refuses because another agent claimed the
        session meanwhile (SessionTaken) is answered 403 forbidden, as the check refuses one;
        the agent was named to the store as the claimant.
        """
        answer = self.call("POST", "/api/sessions/s9/activity", {"activity": "started"},
                           token=self.agent)
        yield self.held()
        self.assertEqual(self.broker.pending[0][1][-1], "a1")  # the claimant
        self.broker.fail(SessionTaken("agent-2"))
        response = yield answer
        self.assertEqual(response.status, 403, response.raw)
        self.assertEqual(response.json(), {"error": {
            "code": "forbidden", "message": "session belongs to another agent"}})

    @defer.inlineCallbacks
    def test_store_failure_later_is_503(self):
        """
        A store failure that comes later is answered 503 with the JSON error body (code
        unavailable), no traceback; it is logged once; nothing is stored.
        """
        answer = self.call("POST", "/api/sessions/s1/activity", {"activity": "started"},
                           token=self.agent)
        yield self.held()
        self.broker.fail(sqlite3.OperationalError("disk I/O error"))
        response = yield answer
        self.assertEqual(response.status, 503, response.raw)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.json(), {"error": {
            "code": "unavailable", "message": "the event could not be stored; retry later"}})
        for leak in (b"Traceback", b"disk I/O", b"sqlite"):
            self.assertNotIn(leak, response.raw)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(self.server.hub.store.last_seq, 0)

    @defer.inlineCallbacks
    def test_key_conflict_later_is_409(self):
        """An Idempotency-Key conflict that comes later is the same 409 as at once."""
        answer = self.call("POST", "/api/agents/a1/status", {"status": "busy"},
                           token=self.operator, headers={"Idempotency-Key": "k"})
        yield self.held()
        self.broker.fail(IdempotencyConflict("used"))
        response = yield answer
        self.assertEqual((response.status, response.json()["error"]["code"]),
                         (409, "idempotency_conflict"))

    @defer.inlineCallbacks
    def test_refusal_answered_without_the_broker(self):
        """A refused publish is answered 403 at once: nothing reaches the broker."""
        yield self.error(403, "forbidden", "POST", "/api/agents/a1/status", {"status": "busy"},
                         token="viewer")
        self.assertEqual(self.broker.pending, [])

    @defer.inlineCallbacks
    def test_client_gone_before_the_answer(self):
        """
        A client that goes away while its publish is in flight is written nothing and no error
        is logged for it; the event is still stored and the hub serves the next request.
        """
        log = LogCapture(self)
        exchange = RawExchange(http_request("POST", "/api/agents/a1/status", {"status": "busy"},
                                            token=self.operator))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port),
                              exchange)
        yield self.held()
        site = self.server.service.site
        exchange.transport.abortConnection()
        yield exchange.done
        yield wait_until(lambda: site.http_connections == 0)
        self.broker.fire()
        self.assertEqual((exchange.data, self.server.hub.store.last_seq), (b"", 1))
        self.assertEqual([e for e in log.events if e.get("log_failure") is not None], [])
        self.assertEqual(self.flushLoggedErrors(), [])
        response = yield self.call("GET", "/api/agents", token=self.viewer)
        self.assertEqual(response.json()["agents"][0]["agentId"], "a1")


class StoreFailureTests(ApiTestCase):
    """A store that fails at once, through the in-process broker."""

    @defer.inlineCallbacks
    def test_store_failure_is_503(self):
        """A publish the store fails at once is answered 503 unavailable, logged once."""
        def broken(*args):
            raise sqlite3.OperationalError("database is locked")

        self.patch(self.server.hub.store, "append", broken)
        yield self.error(503, "unavailable", "POST", "/api/agents/a1/status",
                         {"status": "busy"})
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)

    @defer.inlineCallbacks
    def test_event_the_store_refuses_is_500(self):
        """
        An event the store itself refuses (a ValueError: a fault of the hub's own checks,
        which a retry would not mend) is a JSON 500, logged, as any fault of the hub.
        """
        def refusing(*args):
            raise ValueError("not a stored event type")

        self.patch(self.server.hub.store, "append", refusing)
        yield self.error(500, "internal_error", "POST", "/api/agents/a1/status",
                         {"status": "busy"})
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class PublishRateTests(unittest.TestCase):
    """HTTP publishes are limited per user."""

    @defer.inlineCallbacks
    def test_429_past_the_rate(self):
        """Past --max-publishes-per-second (and its burst) a user gets 429 with Retry-After;
        another user is not affected, and nothing refused is stored."""
        server = start_server(self, ["--max-publishes-per-second", "1"])
        alice = server.token("alice", role="operator")
        statuses = []
        for _ in range(4):
            response = yield raw_request(server.port, http_request(
                "POST", "/api/agents/a1/status", {"status": "idle"}, token=alice))
            statuses.append(response.status)
        self.assertEqual(statuses, [200, 200, 429, 429])
        self.assertEqual(response.json()["error"]["code"], "rate_limited")
        self.assertEqual(response.headers["retry-after"], "1")
        bob = yield raw_request(server.port, http_request(
            "POST", "/api/agents/a1/status", {"status": "idle"},
            token=server.token("bob", role="operator")))
        self.assertEqual(bob.status, 200)
        self.assertEqual(server.hub.store.last_seq, 3)


class SessionOwnershipTests(unittest.TestCase):
    """A session belongs to its first agent for as long as its history lasts, restarts included."""

    @defer.inlineCallbacks
    def test_no_takeover_after_restart(self):
        """
        agent-a publishes into S and an admin adds a note naming no agent; after a restart
        agent-b is still refused S (403) and sees none of S in GET /api/events or /api/sessions,
        while agent-a still publishes into S and reads it.
        """
        data_dir = os.path.abspath(self.mktemp())
        first = start_server(self, ["--data-dir", data_dir])

        def post(server, token, body):
            return raw_request(server.port, http_request(
                "POST", "/api/sessions/S/activity", body, token=token))

        response = yield post(first, first.token("agent-a", role="agent"), {"activity": "started"})
        self.assertEqual(response.status, 200)
        response = yield post(first, first.token("root", role="admin"),
                              {"activity": "note", "summary": "looked at it"})
        self.assertEqual(response.status, 200)
        yield first.service.stopService()

        second = start_server(self, ["--data-dir", data_dir])
        thief, owner = second.token("agent-b", role="agent"), second.token("agent-a", role="agent")
        response = yield post(second, thief, {"activity": "message"})
        self.assertEqual((response.status, response.json()["error"]["code"]), (403, "forbidden"))
        for path in ("/api/events?since=0", "/api/sessions"):
            response = yield raw_request(second.port, http_request("GET", path, token=thief))
            listed = response.json()["events" if "events" in path else "sessions"]
            self.assertEqual(listed, [], path)
        response = yield post(second, owner, {"activity": "completed"})
        self.assertEqual(response.status, 200)
        response = yield raw_request(second.port, http_request(
            "GET", "/api/events?since=0", token=owner))
        self.assertEqual([e["payload"]["activity"] for e in response.json()["events"]],
                         ["started", "note", "completed"])


class LargeReadTests(unittest.TestCase):
    """Large reads are streamed as the client reads them, complete, and paged by size."""

    @defer.inlineCallbacks
    def test_large_listing_streamed_and_complete(self):
        """
        GET /api/sessions of several MB comes chunked and holds exactly the latest state; HEAD
        gives the headers and no body.
        """
        server = start_server(self)
        fill_sessions(server, 400)
        token = server.token("root", role="admin")
        response = yield raw_request(server.port, http_request("GET", "/api/sessions",
                                                               token=token))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get("transfer-encoding"), "chunked")
        body = response.json()
        self.assertEqual(body["sessions"], server.hub.store.sessions())
        self.assertEqual((body["lastSeq"], body["epoch"]),
                         (server.hub.store.last_seq, server.hub.store.epoch))
        head = yield raw_request(server.port, http_request("HEAD", "/api/sessions", token=token))
        self.assertEqual((head.status, head.body), (200, b""))

    @defer.inlineCallbacks
    def test_client_that_does_not_read_holds_little(self):
        """
        A client that asks for 10 MB of sessions and never reads costs the hub about one
        transport buffer, not the response: the body is written as the client takes it.
        """
        server = start_server(self)
        fill_sessions(server, 1200)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        self.addCleanup(sock.close)
        sock.sendall(http_request("GET", "/api/sessions",
                                  token=server.token("root", role="admin")))

        def channels():
            return [c for c in gc.get_objects() if isinstance(c, HubHTTPChannel)
                    and c.transport is not None and c.transport.connected]

        yield wait_until(lambda: any(_buffered(c.transport) for c in channels()))
        yield deferLater(reactor, 0.3, lambda: None)  # let it write whatever it would
        waiting = max(_buffered(c.transport) for c in channels())
        self.assertLess(waiting, 256 * 1024)
        # And the kernel's share is bounded too, for every accepted connection.
        for channel in channels():
            self.assertEqual(channel.transport.getHandle().getsockopt(
                socket.IPPROTO_TCP, site.TCP_NOTSENT_LOWAT), site.KERNEL_UNSENT_LIMIT)
        sock.close()
        yield wait_until(lambda: not channels())

    @defer.inlineCallbacks
    def test_events_paged_by_size(self):
        """
        GET /api/events stops a page once it passes about 1 MiB, says there is more, and
        following `next` gives every event once, in order.
        """
        server = start_server(self)
        fill_sessions(server, 300)
        token = server.token("root", role="admin")
        seqs, since, pages = [], 0, 0
        while True:
            response = yield raw_request(server.port, http_request(
                "GET", f"/api/events?since={since}&limit=1000", token=token))
            self.assertLess(len(response.body), api.MAX_PAGE_BYTES + 10_000)
            body = response.json()
            seqs.extend(e["seq"] for e in body["events"])
            since, pages = body["next"], pages + 1
            if not body["more"]:
                break
        self.assertGreater(pages, 2)
        self.assertEqual(seqs, list(range(1, 301)))


class EventsByChannelMixin:
    """
    GET /api/events?channel=...: the events of one channel, paged with the usual next and more,
    over a bounded stretch of history per request.  Run against each store (L{store}).
    """

    store = "memory"

    def setUp(self):
        self.server = start_server(self, ["--store", self.store])
        self.admin = self.server.token("root", role="admin")

    def publish(self, kind, subject, body):
        path = f"/api/{kind}/{subject}/{'status' if kind == 'agents' else 'activity'}"
        return raw_request(self.server.port, http_request("POST", path, body, token=self.admin))

    def get(self, query, token=None):
        return raw_request(self.server.port, http_request(
            "GET", f"/api/events?{query}", token=token or self.admin))

    @defer.inlineCallbacks
    def page_through(self, query, token=None):
        """Every page of C{query} from since=0, following next while more: the pages' bodies."""
        bodies, since = [], 0
        while True:
            response = yield self.get(f"{query}&since={since}", token)
            self.assertEqual(response.status, 200, response.raw)
            bodies.append(response.json())
            since = bodies[-1]["next"]
            if not bodies[-1]["more"]:
                return bodies

    @defer.inlineCallbacks
    def test_one_session(self):
        """
        channel=sessions:s1 gives that session's events only, oldest first, at most limit a
        page; next is where the page ended and more says whether events follow it; the last
        page ends at lastSeq.
        """
        for i in range(6):
            yield self.publish("sessions", "s1" if i % 2 == 0 else "s2",
                               {"activity": "message", "summary": f"m{i}"})
            yield self.publish("agents", "a1", {"status": "busy"})
        pages = yield self.page_through("channel=sessions:s1&limit=2")
        self.assertEqual([[e["payload"]["summary"] for e in p["events"]] for p in pages],
                         [["m0", "m2"], ["m4"]])
        self.assertEqual([(p["next"], p["more"]) for p in pages], [(5, True), (12, False)])
        self.assertEqual({p["lastSeq"] for p in pages}, {12})
        for page in pages:
            for event in page["events"]:
                self.assertEqual((event["type"], event["payload"]["sessionId"]),
                                 ("session:activity", "s1"))

    @defer.inlineCallbacks
    def test_families_and_agents(self):
        """channel=agents, agents:<id> and sessions select by type and id."""
        yield self.publish("agents", "a1", {"status": "busy"})
        yield self.publish("sessions", "s1", {"activity": "started", "agentId": "a1"})
        yield self.publish("agents", "a2", {"status": "idle"})
        for query, seqs in (("channel=agents", [1, 3]), ("channel=agents:a2", [3]),
                            ("channel=sessions", [2]), ("channel=agents%3Aa1", [1])):
            response = yield self.get(query)
            self.assertEqual([e["seq"] for e in response.json()["events"]], seqs, query)
            self.assertEqual((response.json()["next"], response.json()["more"]), (3, False))

    @defer.inlineCallbacks
    def test_bounded_scan(self):
        """
        A page looks at MAX_EVENTS_SCAN seqs at most: past that it answers with what it found
        (maybe nothing), next where it stopped and more true, and the rare match further on
        comes in a later page.
        """
        self.patch(api, "MAX_EVENTS_SCAN", 10)
        for i in range(25):
            yield self.publish("agents", f"a{i}", {"status": "idle"})
        yield self.publish("sessions", "s1", {"activity": "started"})
        pages = yield self.page_through("channel=sessions:s1")
        self.assertEqual([(len(p["events"]), p["next"], p["more"]) for p in pages],
                         [(0, 10, True), (0, 20, True), (1, 26, False)])

    @defer.inlineCallbacks
    def test_paged_by_size(self):
        """A channel's page also stops once it passes about 1 MiB; next then is its last event."""
        fill_sessions(self.server, 300)
        pages = yield self.page_through("channel=sessions&limit=1000")
        self.assertGreater(len(pages), 2)
        seqs = [e["seq"] for p in pages for e in p["events"]]
        self.assertEqual(seqs, list(range(1, 301)))
        self.assertEqual(pages[0]["next"], pages[0]["events"][-1]["seq"])

    @defer.inlineCallbacks
    def test_bad_channel(self):
        """A channel that is not one of stored events, or not a channel at all: 400 naming it."""
        for value in ("presence", "nope", "agents:", "sessions:a%20b", "", "%C3%A9", "agents:*",
                      "sessions:" + "x" * 129):
            response = yield self.get(f"channel={value}")
            self.assertEqual(response.status, 400, value)
            self.assertEqual(response.json()["error"]["code"], "bad_request")
            self.assertIn("channel must be", response.json()["error"]["message"])

    @defer.inlineCallbacks
    def test_forbidden_channel(self):
        """
        A channel the token may not receive is 403; an agent may read its own session's
        channel, and a narrowed viewer the channel its claim names.
        """
        yield self.publish("sessions", "mine", {"activity": "started", "agentId": "a1"})
        yield self.publish("sessions", "theirs", {"activity": "started", "agentId": "a2"})
        agent = self.server.token("a1", role="agent")
        narrowed = self.server.token("v", channels=["sessions:theirs"])
        for query, token, status in (("channel=sessions:theirs", agent, 403),
                                     ("channel=sessions", agent, 403),
                                     ("channel=agents:a2", agent, 403),
                                     ("channel=sessions", narrowed, 403),
                                     ("channel=sessions:mine", narrowed, 403),
                                     ("channel=sessions:mine", agent, 200),
                                     ("channel=sessions:theirs", narrowed, 200)):
            response = yield self.get(query, token)
            self.assertEqual(response.status, status, (query, response.raw))
            if status == 403:
                self.assertEqual(response.json()["error"],
                                 {"code": "forbidden",
                                  "message": "not allowed to receive this channel"})
            else:
                self.assertEqual(len(response.json()["events"]), 1)


class EventsByChannelMemoryTests(EventsByChannelMixin, unittest.TestCase):
    """GET /api/events?channel=... with --store memory."""

    store = "memory"


class EventsByChannelSQLiteTests(EventsByChannelMixin, unittest.TestCase):
    """GET /api/events?channel=... with --store sqlite."""

    store = "sqlite"


def _buffered(transport) -> int:
    """Bytes a server transport holds that the kernel has not taken."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class ReadRateTests(unittest.TestCase):
    """HTTP reads are limited per user."""

    @defer.inlineCallbacks
    def test_429_past_the_read_rate(self):
        """Past --max-reads-per-second (and its burst) a user's GETs get 429 with Retry-After;
        another user's do not."""
        server = start_server(self, ["--max-reads-per-second", "1"])
        alice = server.token("alice")
        statuses = []
        for _ in range(4):
            response = yield raw_request(server.port, http_request("GET", "/api/agents",
                                                                   token=alice))
            statuses.append(response.status)
        self.assertEqual(statuses, [200, 200, 429, 429])
        self.assertEqual((response.json()["error"]["code"], response.headers["retry-after"]),
                         ("rate_limited", "1"))
        self.assertEqual(response.reason, "Too Many Requests")
        bob = yield raw_request(server.port, http_request("GET", "/api/agents",
                                                          token=server.token("bob")))
        self.assertEqual(bob.status, 200)

# -*- test-case-name: tests.test_api_batch -*-
"""
Tests for C{POST /api/events}, the batch publish (L{mission_control.web.api},
L{mission_control.web.batch}), over real loopback HTTP against the whole service with its SQLite
store: all of a batch is stored in one commit or none of it is, each event is checked as its own
POST would be, the rate is charged per event, and an Idempotency-Key covers the whole batch.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from mission_control.events import ValidationError
from mission_control.web import batch
from tests.helpers import connect, http_request, raw_request, start_server


def status(agent, state="busy", **extra):
    return {"type": "agent:status", "payload": {"agentId": agent, "status": state, **extra}}


def activity(session, word="started", **extra):
    return {"type": "session:activity", "payload": {"sessionId": session, "activity": word,
                                                    **extra}}


class BatchBodyTests(SynchronousTestCase):
    """The body's own shape, and the fingerprint of a batch, as pure functions."""

    def test_events_of(self):
        """The body is an object with one field, events: a list of 1 to 1000 items."""
        items = [status("a1")]
        self.assertEqual(batch.events_of({"events": items}), items)
        self.assertEqual(batch.events_of({"events": items, "note": None}), items)
        for body, message in (([], "payload must be a JSON object"),
                              ({}, "events is required"),
                              ({"events": items, "seq": 1}, "unknown field: seq"),
                              ({"events": {"0": status("a1")}}, "events must be a list of 1 to "
                                                                "1000 events"),
                              ({"events": []}, "events must be a list of 1 to 1000 events"),
                              ({"events": items * 1001}, "events must be a list of 1 to 1000 "
                                                         "events")):
            error = self.assertRaises(ValidationError, batch.events_of, body)
            self.assertEqual(error.message, message)

    def test_fingerprint(self):
        """
        Two bodies are the same batch when they are the same JSON value; a batch of one event is
        never the same request as that event's own POST.
        """
        body = {"events": [status("a1", message="m")]}
        self.assertEqual(batch.fingerprint(body),
                         batch.fingerprint({"events": [{"payload": {"message": "m",
                                                                    "status": "busy",
                                                                    "agentId": "a1"},
                                                        "type": "agent:status"}]}))
        self.assertNotEqual(batch.fingerprint(body),
                            batch.fingerprint({"events": [status("a1", message="n")]}))
        self.assertNotEqual(batch.fingerprint(body),
                            batch.fingerprint({"events": body["events"] * 2}))


class BatchTestCase(unittest.TestCase):
    args: tuple[str, ...] = ()

    def setUp(self):
        self.server = start_server(self, self.args)
        self.admin = self.server.token("root", role="admin")
        self.operator = self.server.token("op", role="operator")
        self.viewer = self.server.token("v", role="viewer")
        self.agent = self.server.token("a1", role="agent")

    def post(self, items, token=None, body=None, **kwargs):
        body = {"events": items} if body is None else body
        return raw_request(self.server.port, http_request(
            "POST", "/api/events", body, token=token or self.operator, **kwargs))

    @defer.inlineCallbacks
    def refused(self, status, code, message, items, **kwargs):
        """Post C{items}: answered C{status} with C{code} and C{message}, and nothing stored."""
        before = self.server.hub.store.last_seq
        response = yield self.post(items, **kwargs)
        self.assertEqual(response.status, status, response.raw)
        self.assertEqual(response.json()["error"], {"code": code, "message": message})
        self.assertEqual(self.server.hub.store.last_seq, before)
        return response


class BatchPublishTests(BatchTestCase):
    """POST /api/events with the default store (SQLite) and limits."""

    @defer.inlineCallbacks
    def test_batch_stored_and_delivered_in_order(self):
        """
        A batch is answered 200 with the envelopes, consecutive seqs in the batch's order, once
        all are stored; a subscribed WebSocket client has received each of them, in that order,
        and they are the history GET /api/events reads.
        """
        client = yield connect(self, self.server, self.viewer)
        yield client.next_of("snapshot")
        items = [status("a1"), activity("s1", agentId="a1"), status("a2", "idle"),
                 activity("s1", "tool_call", summary="search")]
        response = yield self.post(items)
        self.assertEqual(response.status, 200, response.raw)
        envelopes = response.json()["events"]
        self.assertEqual([e["seq"] for e in envelopes], [1, 2, 3, 4])
        self.assertEqual([(e["type"], e["payload"]["activity" if "sessionId" in e["payload"]
                                                     else "status"]) for e in envelopes],
                         [("agent:status", "busy"), ("session:activity", "started"),
                          ("agent:status", "idle"), ("session:activity", "tool_call")])
        received = []
        for _ in envelopes:
            received.append((yield client.next_of("agent:status", "session:activity")))
        self.assertEqual(received, envelopes)
        history = yield raw_request(self.server.port, http_request(
            "GET", "/api/events?since=0", token=self.viewer))
        self.assertEqual(history.json()["events"], envelopes)

    @defer.inlineCallbacks
    def test_get_still_lists(self):
        """GET and HEAD on /api/events answer as before; other methods get 405 naming POST."""
        response = yield raw_request(self.server.port, http_request(
            "PUT", "/api/events", {}, token=self.admin))
        self.assertEqual((response.status, response.headers["allow"]), (405, "GET, HEAD, POST"))
        response = yield raw_request(self.server.port, http_request(
            "GET", "/api/events", token=self.viewer))
        self.assertEqual((response.status, response.json()["events"]), (200, []))

    @defer.inlineCallbacks
    def test_invalid_event_refuses_the_batch(self):
        """One invalid event anywhere refuses the whole batch: 400 naming its index."""
        yield self.refused(400, "bad_request",
                           "events[2]: status must be one of online, busy, idle, offline, error",
                           [status("a1"), status("a2"), status("a3", "sleeping")])
        yield self.refused(400, "bad_request", "events[0]: unknown field: colour",
                           [{"type": "agent:status", "payload": {"agentId": "a1",
                                                                 "status": "busy",
                                                                 "colour": "red"}}])
        yield self.refused(400, "unknown_type", "events[1]: unknown event type",
                           [status("a1"), {"type": "presence:join", "payload": {}}])
        yield self.refused(400, "bad_request", "events[0]: agentId is required",
                           [{"type": "agent:status", "payload": {"status": "busy"}}])
        yield self.refused(400, "bad_request", "events must be a list of 1 to 1000 events", [])

    @defer.inlineCallbacks
    def test_roles(self):
        """
        Admins and operators publish anything; an agent only its own events (403 naming the
        first other one, nothing stored); a viewer nothing.
        """
        response = yield self.post([status("a1"), activity("s1")], token=self.agent)
        self.assertEqual(response.status, 200, response.raw)
        self.assertEqual(response.json()["events"][1]["payload"]["agentId"], "a1")
        yield self.refused(403, "forbidden", "events[1]: not allowed to publish for this agent",
                           [status("a1"), status("a2")], token=self.agent)
        yield self.refused(403, "forbidden",
                           "events[0]: not allowed to publish session activity",
                           [activity("s1")], token=self.viewer)
        response = yield self.post([status("a7"), activity("s7", agentId="a7")], token=self.admin)
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_session_ownership_within_a_batch(self):
        """
        An agent's batch may open a session and go on in it; that session is then the agent's,
        and another agent's batch that touches it is refused whole, naming that event.
        """
        response = yield self.post([activity("s-new"), activity("s-new", "message")],
                                   token=self.agent)
        self.assertEqual(response.status, 200, response.raw)
        self.assertEqual(self.server.hub.store.session_owner("s-new"), "a1")
        yield self.refused(403, "forbidden", "events[1]: session belongs to another agent",
                           [activity("s-a2"), activity("s-new")],
                           token=self.server.token("a2", role="agent"))
        self.assertIsNone(self.server.hub.store.session_owner("s-a2"))

    @defer.inlineCallbacks
    def test_body_errors(self):
        """The body's own errors are those of every publish: 415, 413, 400 malformed or shaped."""
        yield self.refused(415, "unsupported_media_type", "Content-Type must be application/json",
                           [status("a1")], content_type="text/plain")
        yield self.refused(413, "payload_too_large", "request body over 65536 bytes", None,
                           body=b'{"events": [' + b" " * 70_000 + b"]}")
        yield self.refused(400, "bad_request", "malformed JSON", None, body=b'{"events": [')
        yield self.refused(400, "bad_request", "unknown field: event", None,
                           body={"event": [status("a1")]})

    @defer.inlineCallbacks
    def test_idempotency_key(self):
        """
        With an Idempotency-Key, a repeat of the batch (the same JSON value) is answered with the
        first answer's envelopes and stores and sends nothing; another body with the key is 409;
        the key of a single POST is not the key of a batch.
        """
        items = [status("a1"), activity("s1", agentId="a1")]
        key = {"Idempotency-Key": "batch-1"}
        first = yield self.post(items, headers=key)
        self.assertEqual(first.status, 200, first.raw)
        client = yield connect(self, self.server, self.viewer)
        yield client.next_of("snapshot")
        respaced = ('{ "events" : ' + json.dumps(items, indent=1, sort_keys=True) + "}").encode()
        again = yield self.post(None, body=respaced, headers=key)
        self.assertEqual(again.json(), first.json())
        yield self.refused(409, "idempotency_conflict",
                           "Idempotency-Key was already used for a different request",
                           [status("a1", "idle")], headers=key)
        single = yield raw_request(self.server.port, http_request(
            "POST", "/api/agents/a1/status", {"status": "busy"}, token=self.operator,
            headers=key))
        self.assertEqual(single.status, 409)
        self.assertEqual(self.server.hub.store.last_seq, 2)
        later = yield self.post([status("a9")])
        yield client.next_of("agent:status", "session:activity")
        self.assertEqual([f for f in client.received if f["type"] != "snapshot" and "seq" in f],
                         later.json()["events"])


class BatchRateTests(BatchTestCase):
    """The per-user publish rate, charged per event: 5 a second here, bursts of 10."""

    args = ("--max-publishes-per-second", "5")

    @defer.inlineCallbacks
    def test_charged_per_event(self):
        """
        A batch costs one publish per event: after a batch of 8, a batch of 10 is refused with
        429 (Retry-After: the seconds the bucket takes to refill that much) and stores nothing,
        while a single publish still passes; a batch over the whole burst can never pass and is
        413, saying how many events this hub takes at once.
        """
        response = yield self.post([status(f"a{i}") for i in range(8)])
        self.assertEqual(response.status, 200, response.raw)
        response = yield self.refused(429, "rate_limited", "too many publishes; slow down",
                                      [status("a1")] * 10)
        self.assertEqual(response.headers["retry-after"], "2")
        response = yield self.post([status("a1")])
        self.assertEqual(response.status, 200)
        yield self.refused(413, "payload_too_large",
                           "a batch may hold at most 10 events on this hub (its publish burst)",
                           [status("a1")] * 11, token=self.admin)
        self.assertEqual(self.server.hub.store.last_seq, 9)

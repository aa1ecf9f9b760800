"""
Tests for L{mission_control.events}: payload rules, timestamps, envelopes, client frames.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from mission_control import events
from mission_control.events import ValidationError

NOW = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z


class TimestampTests(SynchronousTestCase):
    """Timestamps are ISO 8601 with a zone, emitted as UTC with milliseconds."""

    def test_format(self):
        """format_timestamp gives UTC with exactly three decimals and a Z."""
        self.assertEqual(events.format_timestamp(NOW), "2027-01-15T08:00:00.250Z")
        self.assertEqual(events.format_timestamp(0), "1970-01-01T00:00:00.000Z")

    def test_parse_normalizes_to_utc(self):
        """Any zone is accepted and converted to UTC."""
        self.assertEqual(events.parse_timestamp("2027-01-15T09:00:00+01:00", "t"),
                         "2027-01-15T08:00:00.000Z")
        self.assertEqual(events.parse_timestamp("2027-01-15T08:00:00.5Z", "t"),
                         "2027-01-15T08:00:00.500Z")

    def test_parse_rejects(self):
        """No zone, no time, not a string, nonsense: each is refused, naming the field."""
        for bad in ("2027-01-15T08:00:00", "2027-01-15", "yesterday", 1700000000, None, "x" * 100):
            error = self.assertRaises(ValidationError, events.parse_timestamp, bad, "timestamp")
            self.assertIn("timestamp", error.message)


class AgentStatusTests(SynchronousTestCase):
    """The agent:status payload."""

    def test_required_fields(self):
        """agentId, status and timestamp are always in the payload; timestamp defaults to now."""
        payload = events.agent_status({"status": "online"}, NOW, "a1")
        self.assertEqual(payload, {"agentId": "a1", "status": "online",
                                   "timestamp": "2027-01-15T08:00:00.250Z"})

    def test_all_statuses(self):
        """online, busy, idle, offline and error are the statuses; anything else is refused."""
        for status in events.STATUSES:
            self.assertEqual(events.agent_status({"status": status}, NOW, "a1")["status"], status)
        for bad in ("ONLINE", "sleeping", "", None, 1):
            self.assertRaises(ValidationError, events.agent_status, {"status": bad}, NOW, "a1")

    def test_missing_status(self):
        """status is required."""
        error = self.assertRaises(ValidationError, events.agent_status, {}, NOW, "a1")
        self.assertEqual(error.message, "status is required")

    def test_optional_fields(self):
        """name, message, metadata and a given timestamp are kept."""
        body = {"status": "error", "name": "Atlas", "message": "boom", "metadata": {"k": [1]},
                "timestamp": "2027-01-15T08:00:01Z"}
        payload = events.agent_status(body, NOW, "a1")
        self.assertEqual(payload["metadata"], {"k": [1]})
        self.assertEqual(payload["timestamp"], "2027-01-15T08:00:01.000Z")
        self.assertEqual((payload["name"], payload["message"]), ("Atlas", "boom"))

    def test_agent_id_from_body(self):
        """Without an id from the path, agentId comes from the body and is required."""
        self.assertEqual(events.agent_status({"agentId": "b2", "status": "idle"}, NOW)["agentId"], "b2")
        self.assertRaises(ValidationError, events.agent_status, {"status": "idle"}, NOW)

    def test_conflicting_agent_id(self):
        """A body naming another agent than the path is refused."""
        self.assertRaises(ValidationError, events.agent_status,
                          {"agentId": "b2", "status": "idle"}, NOW, "a1")

    def test_id_rules(self):
        """Ids are 1-128 characters of A-Z a-z 0-9 . _ : -."""
        events.agent_status({"status": "idle"}, NOW, "A.b_c:d-9")
        events.agent_status({"status": "idle"}, NOW, "x" * 128)
        for bad in ("", "x" * 129, "a b", "a/b", "é", "a\n"):
            self.assertRaises(ValidationError, events.agent_status, {"status": "idle"}, NOW, bad)

    def test_limits(self):
        """message is at most 1024 characters, metadata at most 8 KiB of JSON and an object."""
        events.agent_status({"status": "idle", "message": "m" * 1024}, NOW, "a1")
        self.assertRaises(ValidationError, events.agent_status,
                          {"status": "idle", "message": "m" * 1025}, NOW, "a1")
        self.assertRaises(ValidationError, events.agent_status,
                          {"status": "idle", "metadata": {"k": "v" * 8200}}, NOW, "a1")
        for bad in ([1], "x", 3):
            self.assertRaises(ValidationError, events.agent_status,
                              {"status": "idle", "metadata": bad}, NOW, "a1")

    def test_wrong_types(self):
        """name and message must be strings; the payload must be an object."""
        self.assertRaises(ValidationError, events.agent_status, {"status": "idle", "name": 5}, NOW, "a1")
        self.assertRaises(ValidationError, events.agent_status, {"status": "idle", "message": []}, NOW, "a1")
        for bad in ([], "online", None, 5):
            self.assertRaises(ValidationError, events.agent_status, bad, NOW, "a1")

    def test_unknown_field(self):
        """Unknown fields are refused by name, so typos do not vanish silently."""
        error = self.assertRaises(ValidationError, events.agent_status,
                                  {"status": "idle", "mesage": "typo"}, NOW, "a1")
        self.assertEqual(error.message, "unknown field: mesage")


class SessionActivityTests(SynchronousTestCase):
    """The session:activity payload."""

    def test_required_fields(self):
        """sessionId, activity and timestamp are always there."""
        payload = events.session_activity({"activity": "started"}, NOW, "s1")
        self.assertEqual(payload, {"sessionId": "s1", "activity": "started",
                                   "timestamp": "2027-01-15T08:00:00.250Z"})

    def test_activity_is_a_short_word(self):
        """activity is a short word; sentences, empty and non-strings are refused."""
        for word in ("started", "tool_call", "completed", "failed", "message", "x"):
            events.session_activity({"activity": word}, NOW, "s1")
        for bad in ("", "two words", "_x", "a" * 65, None, 3):
            self.assertRaises(ValidationError, events.session_activity, {"activity": bad}, NOW, "s1")

    def test_optional_fields(self):
        """agentId, summary and detail are kept and checked."""
        payload = events.session_activity(
            {"activity": "tool_call", "agentId": "a1", "summary": "s", "detail": {"tool": "x"}},
            NOW, "s1")
        self.assertEqual((payload["agentId"], payload["summary"], payload["detail"]),
                         ("a1", "s", {"tool": "x"}))
        self.assertRaises(ValidationError, events.session_activity,
                          {"activity": "x", "agentId": "bad id"}, NOW, "s1")
        self.assertRaises(ValidationError, events.session_activity,
                          {"activity": "x", "summary": "s" * 1025}, NOW, "s1")
        self.assertRaises(ValidationError, events.session_activity,
                          {"activity": "x", "detail": "text"}, NOW, "s1")

    def test_missing_activity(self):
        """activity is required."""
        self.assertRaises(ValidationError, events.session_activity, {}, NOW, "s1")


class EnvelopeTests(SynchronousTestCase):
    """The server frame envelope."""

    def test_envelope(self):
        """An envelope has type, payload and ts; seq only for stored events; id only for replies."""
        self.assertEqual(events.envelope("heartbeat", {}, "T"),
                         {"type": "heartbeat", "payload": {}, "ts": "T"})
        self.assertEqual(events.envelope("agent:status", {"a": 1}, "T", seq=4)["seq"], 4)
        self.assertEqual(events.envelope("pong", {}, "T", reply_to="r1")["id"], "r1")

    def test_encode(self):
        """Frames are compact UTF-8 JSON, non-ASCII kept as is."""
        data = events.encode_json({"type": "x", "payload": {"name": "Zoë"}})
        self.assertEqual(data, '{"type":"x","payload":{"name":"Zoë"}}'.encode())


class ClientFrameTests(SynchronousTestCase):
    """Decoding client frames."""

    def parse(self, value, binary=False):
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        return events.parse_client_frame(data, binary)

    def test_good_frame(self):
        """A JSON object with a type (and optional id) decodes."""
        frame = self.parse({"type": "ack", "id": "r1", "seq": 3})
        self.assertEqual((frame.type, frame.id, frame.fields["seq"]), ("ack", "r1", 3))

    def test_bad_frames(self):
        """Binary, bad UTF-8, bad JSON, non-objects, missing or non-string types are refused."""
        cases = [(b'{"type":"ping"}', True), (b"\xff\xfe", False), (b"{nope", False),
                 (b"[1,2]", False), (b'"ping"', False), (b"{}", False), (b'{"type":5}', False),
                 (b"[" * 100000, False)]
        for data, binary in cases:
            error = self.assertRaises(ValidationError, events.parse_client_frame, data, binary)
            self.assertEqual(error.code, "bad_request", data[:20])

    def test_bad_id(self):
        """id must be a string of 1-128 characters."""
        for bad in (5, "", "x" * 129):
            self.assertRaises(ValidationError, self.parse, {"type": "ping", "id": bad})

    def test_error_keeps_frame_id(self):
        """A frame with a good id but no type is refused with that id, for the reply."""
        error = self.assertRaises(ValidationError, self.parse, {"id": "r9"})
        self.assertEqual(error.frame_id, "r9")


class HostilePayloadTests(SynchronousTestCase):
    """Payloads that would break every dashboard once stored."""

    def test_deep_nesting_refused(self):
        """metadata nested deeper than MAX_DEPTH is refused, however small."""
        deep: dict = {}
        node = deep
        for _ in range(events.MAX_DEPTH + 5):
            node["x"] = {}
            node = node["x"]
        error = self.assertRaises(ValidationError, events.agent_status,
                                  {"status": "idle", "metadata": deep}, NOW, "a1")
        self.assertIn("nest", error.message)
        shallow = {"a": {"b": [1, {"c": 2}]}}
        self.assertEqual(events.agent_status({"status": "idle", "metadata": shallow}, NOW,
                                             "a1")["metadata"], shallow)

    def test_nan_refused(self):
        """NaN and Infinity are refused in objects and when decoding client JSON."""
        for bad in (float("nan"), float("inf")):
            self.assertRaises(ValidationError, events.session_activity,
                              {"activity": "x", "detail": {"v": [bad]}}, NOW, "s1")
        self.assertRaises(ValueError, events.decode_json, b'{"v": NaN}')
        error = self.assertRaises(ValidationError, events.parse_client_frame,
                                  b'{"type":"ping","x":Infinity}', False)
        self.assertEqual(error.code, "bad_request")
        self.assertRaises(ValueError, events.encode_json, {"v": float("nan")})

    def test_timestamp_out_of_range(self):
        """A timestamp that leaves the calendar once moved to UTC is a validation error."""
        for value in ("9999-12-31T23:59:59.9999+00:00", "0001-01-01T00:00:00+14:00"):
            self.assertRaises(ValidationError, events.parse_timestamp, value, "timestamp")


class RequestFingerprintTests(SynchronousTestCase):
    """request_fingerprint: what makes two publishes the same request for an idempotency key."""

    def test_same_request(self):
        """Field order and top-level null fields (absent) do not change the fingerprint."""
        one = events.request_fingerprint("agent:status", "a1", {"status": "busy", "message": "m"})
        self.assertEqual(one, events.request_fingerprint(
            "agent:status", "a1", {"message": "m", "status": "busy", "name": None}))

    def test_other_requests(self):
        """Another type, subject, value, number form or nested null is another request."""
        base = events.request_fingerprint("agent:status", "a1", {"status": "busy"})
        others = [
            events.request_fingerprint("session:activity", "a1", {"status": "busy"}),
            events.request_fingerprint("agent:status", "a2", {"status": "busy"}),
            events.request_fingerprint("agent:status", None, {"status": "busy"}),
            events.request_fingerprint("agent:status", "a1", {"status": "idle"}),
        ]
        self.assertNotIn(base, others)
        self.assertNotEqual(
            events.request_fingerprint("agent:status", "a1", {"metadata": {"n": 1}}),
            events.request_fingerprint("agent:status", "a1", {"metadata": {"n": 1.0}}))
        self.assertNotEqual(
            events.request_fingerprint("agent:status", "a1", {"metadata": {"n": None}}),
            events.request_fingerprint("agent:status", "a1", {"metadata": {}}))


class JSONArrayChunksTests(SynchronousTestCase):
    """json_array_chunks: frames and bodies joined from ready encodings, in chunks."""

    def test_joined_and_chunked(self):
        """The chunks join to head, comma-separated items, tail; none is empty or far past size."""
        items = [events.encode_json({"n": i, "pad": "x" * 50}) for i in range(100)]
        chunks = list(events.json_array_chunks(b'{"a":[', items, b"]}", size=500))
        self.assertEqual(json.loads(b"".join(chunks))["a"], [json.loads(i) for i in items])
        self.assertGreater(len(chunks), 5)
        self.assertTrue(all(0 < len(chunk) < 500 + 70 for chunk in chunks))
        self.assertEqual(list(events.json_array_chunks(b"[", [], b"]")), [b"[]"])
        self.assertEqual(list(events.json_array_chunks(b"", [], b"")), [])

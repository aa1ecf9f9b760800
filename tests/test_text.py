# -*- test-case-name: tests.test_text -*-
"""
Tests for L{mission_control.text}: the strict JSON decoder and the display-text rule, as pure
functions, and then where text enters the hub over real sockets (HTTP bodies, WebSocket frames,
token claims at the handshake, ids in paths), with both stores.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from mission_control.text import NotText, decode_json, is_display_text
from tests.helpers import (
    connect,
    http_request,
    raw_handshake,
    raw_request,
    sign_raw,
    start_server,
    upgrade_request,
)

LONE = b'{"status": "idle", "message": "\\ud800"}'


class DecodeJSONTests(SynchronousTestCase):
    """decode_json: strict JSON for what clients send."""

    def test_plain_json(self):
        """Objects, arrays, numbers, non-ASCII text and surrogate pairs decode as usual."""
        self.assertEqual(decode_json(b'{"a": [1, 2.5, null, true], "b": "\\u00e9 \\ud83d\\ude00"}'),
                         {"a": [1, 2.5, None, True], "b": "é 😀"})
        self.assertEqual(decode_json('{"a": "ok"}'), {"a": "ok"})

    def test_lone_surrogates_refused(self):
        """A lone high or low surrogate, in a value or a key, nested or not, is NotText."""
        for data in (b'"\\ud800"', b'{"a": "x\\udfff"}', b'{"\\udc00": 1}',
                     b'[[{"deep": ["\\uDBFF"]}]]', b'"\\ude00\\ud83d"'):
            self.assertRaises(NotText, decode_json, data)

    def test_escaped_backslash_is_not_a_surrogate(self):
        """The text backslash-u-d-8-0-0 (an escaped backslash) is ordinary text."""
        self.assertEqual(decode_json(b'"\\\\ud800"'), "\\ud800")

    def test_duplicate_keys_refused(self):
        """An object with the same key twice is NotText, at any depth."""
        for data in (b'{"a": 1, "a": 2}', b'{"x": {"b": 1, "b": 1}}'):
            self.assertRaises(NotText, decode_json, data)

    def test_constants_refused(self):
        """NaN, Infinity and -Infinity are not JSON."""
        for data in (b"NaN", b'{"v": Infinity}', b"[-Infinity]"):
            self.assertRaises(NotText, decode_json, data)

    def test_utf8_only(self):
        """Bytes must be UTF-8: UTF-16 (which json.loads would guess) and bad bytes are refused."""
        self.assertRaises(ValueError, decode_json, '{"a": "\\ud800"}'.encode("utf-16"))
        self.assertRaises(ValueError, decode_json, b'{"a": "\xff"}')
        self.assertRaises(ValueError, decode_json, "\ud800")


class DisplayTextTests(SynchronousTestCase):
    """is_display_text: names that show as themselves."""

    def test_ordinary_names(self):
        """ASCII, accents, CJK, emoji and inner spaces are display text."""
        for text in ("alice", "Zoë Ødegård", "日本語", "robot 🤖", "a.b-c_d"):
            self.assertTrue(is_display_text(text), text)

    def test_hidden_characters(self):
        """Controls, separators, zero-width and bidi formatting, surrogates, private use: not."""
        for text in ("a\nb", "a\tb", "a\x7fb", "a\x85b", "a\u2028b", "a\u2029b", "a\u200bb",
                     "a\u200db", "\u202ealice", "a\u2066b", "a\ufeffb", "a\ud800b", "a\ue000b",
                     "a\U000e0041b"):
            self.assertFalse(is_display_text(text), repr(text))


class TextOverTheWireTests(unittest.TestCase):
    """Where text enters, lone surrogates are refused with a clear error and nothing breaks."""

    @defer.inlineCallbacks
    def check_http(self, store):
        server = start_server(self, ["--store", store])
        token = server.token("root", role="admin")
        response = yield raw_request(server.port, http_request(
            "POST", "/api/agents/a1/status", LONE, token=token))
        self.assertEqual((response.status, response.json()["error"]["code"]), (400, "bad_request"))
        self.assertIn("surrogate", response.json()["error"]["message"])
        self.assertEqual(server.hub.store.last_seq, 0)  # no seq used
        for path in ("/api/agents", "/api/events?since=0", "/api/sessions"):
            response = yield raw_request(server.port, http_request("GET", path, token=token))
            self.assertEqual(response.status, 200, path)
        client = yield connect(self, server, token)
        snapshot = yield client.next_of("snapshot")
        self.assertEqual(snapshot["payload"]["agents"], [])
        self.flushLoggedErrors()  # nothing else should be there; the assertion below says so
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_http_publish_memory_store(self):
        """With --store memory, a lone surrogate in a publish is 400, uses no seq, breaks no read."""
        return self.check_http("memory")

    def test_http_publish_sqlite_store(self):
        """With SQLite, a lone surrogate in a publish is 400 (not a 500 with a traceback)."""
        return self.check_http("sqlite")

    @defer.inlineCallbacks
    def test_websocket_frames(self):
        """
        A frame whose id or payload holds a lone surrogate gets an error frame; the connection
        stays open and answers the next frame.
        """
        server = start_server(self)
        client = yield connect(self, server, server.token("root", role="admin"))
        yield client.next_of("snapshot")
        client.sendMessage(b'{"type": "ping", "id": "\\ud800"}')
        error = yield client.next_of("error")
        self.assertEqual(error["payload"]["code"], "bad_request")
        self.assertNotIn("id", error)
        client.sendMessage(b'{"type": "publish", "event": {"type": "agent:status", '
                           b'"payload": {"agentId": "a1", "status": "idle", "name": "\\udfff"}}}')
        error = yield client.next_of("error")
        self.assertEqual(error["payload"]["code"], "bad_request")
        client.send_json({"type": "ping", "id": "after"})
        pong = yield client.next_of("pong")
        self.assertEqual(pong["id"], "after")
        self.assertEqual(server.hub.store.last_seq, 0)

    @defer.inlineCallbacks
    def test_token_claims_at_the_handshake(self):
        """
        A signed token whose sub holds a lone surrogate, a line separator or a right-to-left
        override, or whose exp is NaN or 1e400, is a 401 at the handshake and on the API.
        """
        server = start_server(self)
        exp = int(server.hub.clock.seconds() + 600)
        payloads = [b'{"sub":"\\ud800","exp":%d}' % exp,
                    json.dumps({"sub": "ali\u2028ce", "exp": exp}).encode(),
                    json.dumps({"sub": "\u202eecila", "exp": exp}).encode(),
                    b'{"sub":"alice","exp":NaN}', b'{"sub":"alice","exp":1e400}',
                    b'{"sub":"alice","exp":1' + b"0" * 400 + b"}"]
        for payload in payloads:
            token = sign_raw(payload, server.secret)
            response = yield raw_handshake(server.port, upgrade_request(
                headers={"Authorization": f"Bearer {token}"}))
            self.assertEqual(response.status, 401, payload)
            response = yield raw_request(server.port, http_request("GET", "/api/agents",
                                                                   token=token))
            self.assertEqual(response.status, 401, payload)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_dot_ids_refused(self):
        """The ids . and .. are refused (400) in a path and in a body: a path traversal trap."""
        server = start_server(self)
        token = server.token("root", role="admin")
        for path, body in [("/api/agents/%2E%2E/status", {"status": "idle"}),
                           ("/api/sessions/%2E/activity", {"activity": "started"}),
                           ("/api/sessions/s1/activity", {"activity": "started", "agentId": ".."})]:
            response = yield raw_request(server.port, http_request("POST", path, body,
                                                                   token=token))
            self.assertEqual(response.status, 400, path)
        self.assertEqual(server.hub.store.last_seq, 0)


class DuplicateAuthorizationTests(unittest.TestCase):
    """Two Authorization headers are refused, never "the last one wins"."""

    @defer.inlineCallbacks
    def test_two_authorization_headers_on_the_api(self):
        """GET /api/agents with two Authorization headers is a 400, whichever is valid."""
        server = start_server(self)
        good = server.token("root", role="admin")
        request = http_request("GET", "/api/agents", token="not-a-token").replace(
            b"\r\n\r\n", f"\r\nAuthorization: Bearer {good}\r\n\r\n".encode(), 1)
        response = yield raw_request(server.port, request)
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["error"]["code"], "bad_request")

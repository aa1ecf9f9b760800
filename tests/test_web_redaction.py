"""
Tests for L{mission_control.web.redaction}: tokens replaced in any text, and the access log's
lines (tests/test_hardening_http.py has the spellings a token may take).
"""

from __future__ import annotations

from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from mission_control.web.redaction import access_log_formatter, redact


class AccessLogTests(unittest.SynchronousTestCase):
    """The access log never shows a token from the query string."""

    def test_redact(self):
        """token= values are replaced wherever they are in the query; other values stay."""
        self.assertEqual(redact(b"/ws?token=abc.def&x=1"), b"/ws?token=[redacted]&x=1")
        self.assertEqual(redact(b"/ws?a=1&TOKEN=abc"), b"/ws?a=1&TOKEN=[redacted]")
        self.assertEqual(redact(b"/ws?mytoken=keep"), b"/ws?mytoken=keep")

    def test_formatter(self):
        """The combined-format line carries the redacted URI and Referer."""
        request = DummyRequest([b"ws"])
        request.uri = b"/ws?token=eyJsecret"
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.code = 401
        request.sentLength = 0
        request.requestHeaders.setRawHeaders(b"referer", [b"https://mc.example/?token=eyJref&a=1"])
        line = access_log_formatter("[27/Nov/2026:00:00:00 +0000]", request)
        self.assertIn("/ws?token=[redacted]", line)
        self.assertIn("https://mc.example/?token=[redacted]&a=1", line)
        self.assertNotIn("eyJsecret", line)
        self.assertNotIn("eyJref", line)

    def test_text_and_bytes(self):
        """C{str} comes back as C{str} and C{bytes} as C{bytes}; text without a token unchanged."""
        self.assertEqual(redact("Bearer eyJa.b.c"), "Bearer [redacted]")
        self.assertEqual(redact(b"Bearer eyJa.b.c"), b"Bearer [redacted]")
        plain = "/api/agents?limit=10"
        self.assertIs(redact(plain), plain)


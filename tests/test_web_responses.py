"""
Tests for L{mission_control.web.responses}: the reason phrases, the JSON error body and the raw
error responses written below twisted.web.
"""

from __future__ import annotations

import json

from twisted.trial import unittest

from mission_control.web.responses import error_body, raw_error_response, status_phrase
from tests.helpers import parse_response


class ResponseTests(unittest.SynchronousTestCase):
    """The answers every part of the site shares."""

    def test_status_phrase(self):
        """Standard statuses have their phrase (429 too, which twisted.web lacks); others Error."""
        self.assertEqual(status_phrase(429), "Too Many Requests")
        self.assertEqual(status_phrase(503), "Service Unavailable")
        self.assertEqual(status_phrase(599), "Error")

    def test_error_body(self):
        """Every error body is {"error": {"code", "message"}}."""
        self.assertEqual(json.loads(error_body("not_found", "no such resource")),
                         {"error": {"code": "not_found", "message": "no such resource"}})

    def test_raw_error_response(self):
        """
        A raw error response is a whole HTTP/1.1 answer: the status, the standard headers, a
        JSON body of the length it says, and Connection: close.
        """
        raw = raw_error_response(503, b"Service Unavailable", "too_many_connections", "later")
        response = parse_response(raw)
        self.assertEqual((response.status, response.reason), (503, "Service Unavailable"))
        self.assertEqual(response.headers["server"], "mission-control")
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.headers["connection"], "close")
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        self.assertEqual(response.json()["error"], {"code": "too_many_connections",
                                                    "message": "later"})

"""
Tests for L{mission_control.hub.connection}: reading a connection's request (C{since}, C{epoch},
C{client}, C{channels}) from the query of C{/ws}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.auth import Refusal
from mission_control.hub import ConnectRequest


class ConnectRequestTests(SynchronousTestCase):
    def test_connect_request_from_params(self):
        """since, epoch and client are read and checked; malformed ones are a 400."""
        request = ConnectRequest.from_params({"since": ["12"], "epoch": ["ab12"], "client": ["c1"]})
        self.assertEqual((request.since, request.epoch, request.client), (12, "ab12", "c1"))
        for params in ({"since": ["-1"]}, {"since": ["x"]}, {"since": ["1" * 30]},
                       {"epoch": ["a b"]}, {"client": ["bad name"]}):
            error = self.assertRaises(Refusal, ConnectRequest.from_params, params)
            self.assertEqual(error.status, 400)

    def test_nothing_asked(self):
        """No parameters: a fresh start on the default subscription."""
        request = ConnectRequest.from_params({}, peer="127.0.0.1:5000")
        self.assertEqual(request, ConnectRequest(peer="127.0.0.1:5000"))
        self.assertIsNone(request.channels)

    def test_channels(self):
        """channels=a,b is read as a tuple, empty names dropped; a bad name or too many is a 400."""
        request = ConnectRequest.from_params({"channels": ["agents:a1,,presence"]})
        self.assertEqual(request.channels, ("agents:a1", "presence"))
        for wanted in ("agents,bad channel", "nope", ",".join(f"agents:a{i}" for i in range(300))):
            error = self.assertRaises(Refusal, ConnectRequest.from_params, {"channels": [wanted]})
            self.assertEqual((error.status, error.reason), (400, "invalid channels"))

    def test_first_value_counts(self):
        """A parameter given twice is read from its first value."""
        request = ConnectRequest.from_params({"since": ["3", "x"]})
        self.assertEqual(request.since, 3)


# -*- test-case-name: tests.test_cli_errors -*-
"""
Tests for L{mission_control.cli.errors}: the one line C{publish} and C{watch} print for a failure,
whichever layer raised it.  No reactor and no socket: exceptions in, text out.
"""

from __future__ import annotations

from OpenSSL.SSL import Error as OpenSSLError
from service_identity import VerificationError
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from mission_control.cli import errors

UNTRUSTED = OpenSSLError([("SSL routines", "", "certificate verify failed")])


class DescribeErrorTests(SynchronousTestCase):
    """L{errors.describe_error} and the checks around it."""

    def test_plain_lines(self):
        """Refused, unresolvable, timed out, reset and closed early each have their plain line."""
        self.assertEqual(errors.describe_error(ConnectionRefusedError()),
                         "connection refused (is the hub running there?)")
        self.assertEqual(errors.describe_error(Failure(DNSLookupError("x"))),
                         "cannot resolve the host name")
        self.assertEqual(errors.describe_error(TimeoutError()), "timed out")
        self.assertEqual(errors.describe_error(ConnectionResetError()),
                         "the connection was reset")
        closed = ("the connection closed before the hub answered (is a mission-control hub "
                  "listening there, with TLS if the URL says https or wss?)")
        self.assertEqual(errors.describe_error(ResponseNeverReceived([Failure(ConnectionLost())])),
                         closed)
        self.assertEqual(errors.describe_error(ConnectionDone()), closed)

    def test_wrapped_by_the_http_client(self):
        """The reason under Twisted's HTTP client wrappers is the one described; of several, the
        one that says more than "connection lost" (a TLS failure ends the connection too)."""
        wrapped = ResponseNeverReceived([Failure(ConnectionLost()), Failure(UNTRUSTED)])
        self.assertIs(errors.root_cause(Failure(wrapped)), UNTRUSTED)
        self.assertEqual(
            errors.describe_error(wrapped, "hub.example", None),
            "the hub's certificate is not trusted (certificate verify failed); pass --cafile "
            "with the certificate of the CA that signed it")
        nested = ResponseFailed([Failure(RequestTransmissionFailed([Failure(
            ConnectionRefusedError())]))])
        self.assertIsInstance(errors.root_cause(nested), ConnectionRefusedError)
        lost = ResponseFailed([Failure(ConnectionDone())])
        self.assertIsInstance(errors.root_cause(lost), ConnectionDone)

    def test_certificate_problems(self):
        """An untrusted certificate names the --cafile given; one for other names names the
        host; any other error is no certificate problem."""
        self.assertIn("not trusted by --cafile ca.pem (certificate verify failed)",
                      errors.certificate_problem(UNTRUSTED, "h", "ca.pem"))
        self.assertEqual(
            errors.certificate_problem(Failure(VerificationError([])), "10.0.0.5", None),
            "the hub's certificate is not valid for 10.0.0.5; use a host name the certificate "
            "was issued for")
        self.assertIsNone(errors.certificate_problem(ConnectionRefusedError(), "h", None))

    def test_never_connected(self):
        """Connecting, resolving and TLS failures never reached the hub; a lost or reset
        connection may have delivered the request."""
        for error in [ConnectionRefusedError(), DNSLookupError(), TimeoutError(),
                      ConnectingCancelledError(None), ResponseNeverReceived([Failure(UNTRUSTED)])]:
            self.assertTrue(errors.never_connected(Failure(error)), error)
        for error in [ResponseFailed([Failure(ConnectionLost())]), ConnectionResetError()]:
            self.assertFalse(errors.never_connected(error), error)

    def test_untrusted_text_escaped(self):
        """Text from the network cannot drive the terminal, and is cut to one short line."""
        self.assertEqual(errors.describe_error(ValueError("a\x1b[31mb\nsecond line")),
                         "a\\x1b[31mb")
        self.assertEqual(len(errors.describe_error(ValueError("x" * 500))), 200)
        self.assertEqual(errors.printable("\u202e\U0001f600\x00"), "\\u202e\U0001f600\\x00")

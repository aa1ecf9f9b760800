"""
Tests for L{mission_control.web.later}: an answer that comes from a Deferred is rendered at once
when the Deferred has fired, else written when it fires, with its length; a client gone
meanwhile is written nothing and nothing is logged.  The API's publishes over real loopback are
in test_api.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from mission_control.web.later import render_when_fired
from tests.helpers import LogCapture


def respond(request):
    """What a resource answers with a result: 200 and the result's bytes."""
    def respond(result):
        request.setResponseCode(200)
        return b'{"result":"' + result + b'"}'
    return respond


def failed(request):
    """What a resource answers with a failure: 503 and the exception's text."""
    def failed(failure):
        request.setResponseCode(503)
        return b'{"error":"' + str(failure.value).encode() + b'"}'
    return failed


class RenderWhenFiredTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.request = DummyRequest([b"api"])
        self.request.method, self.request.path = b"POST", b"/api/agents/a1/status"

    def render(self, d):
        return render_when_fired(self.request, d, respond(self.request), failed(self.request))

    def test_fired_already_is_rendered_at_once(self):
        """A Deferred that has fired is rendered at once, as render returns a body."""
        self.assertEqual(self.render(defer.succeed(b"ok")), b'{"result":"ok"}')
        self.assertEqual((self.request.responseCode, self.request.written), (200, []))

    def test_failed_already_is_rendered_at_once(self):
        """A Deferred that has failed is rendered at once by the failure's answer."""
        self.assertEqual(self.render(defer.fail(OSError("gone"))), b'{"error":"gone"}')
        self.assertEqual(self.request.responseCode, 503)

    def test_later_answer_written_when_it_fires(self):
        """
        A Deferred not fired yet makes render return NOT_DONE_YET; nothing is written until it
        fires, then the body, with its Content-Length, and the request is finished.
        """
        d = defer.Deferred()
        self.assertIs(self.render(d), NOT_DONE_YET)
        self.assertEqual((self.request.written, self.request.finished), ([], 0))
        d.callback(b"late")
        self.assertEqual((self.request.responseCode, self.request.written, self.request.finished),
                         (200, [b'{"result":"late"}'], 1))
        self.assertEqual(self.request.responseHeaders.getRawHeaders(b"content-length"), [b"17"])

    def test_later_failure_written_when_it_fails(self):
        """A Deferred that fails later is answered by the failure's answer, then finished."""
        d = defer.Deferred()
        self.assertIs(self.render(d), NOT_DONE_YET)
        d.errback(OSError("store away"))
        self.assertEqual((self.request.responseCode, self.request.written, self.request.finished),
                         (503, [b'{"error":"store away"}'], 1))

    def test_client_gone_is_written_nothing(self):
        """
        A client that went away before the Deferred fired is written nothing, the request is
        not finished again, and nothing is logged, for a result or for a failure.
        """
        log = LogCapture(self)
        for outcome in (b"late", Failure(OSError("store away"))):
            self.request = DummyRequest([b"api"])
            d = defer.Deferred()
            self.assertIs(self.render(d), NOT_DONE_YET)
            self.request.processingFailed(Failure(ConnectionError("the client went away")))
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)
            self.assertEqual((self.request.written, self.request.finished), ([], 0))
        self.assertEqual([e for e in log.events if e.get("log_failure")], [])

    def test_failure_of_the_answer_is_logged(self):
        """An answer that cannot be written (a fault of ours) is logged, never left unhandled."""
        d = defer.Deferred()

        def broken(result):
            raise RuntimeError("bug")

        render_when_fired(self.request, d, broken, failed(self.request))
        d.callback(b"late")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

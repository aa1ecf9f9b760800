# -*- test-case-name: tests.test_web_later -*-
"""
Answers that come later: a resource whose answer is a C{Deferred} (a publish, which the broker
stores and answers when it can).

L{render_when_fired} is what such a resource's C{render} returns.  When the Deferred has fired
already (one process: the store answered at once), the answer is rendered at once, as any other,
and the client cannot tell the difference.  Otherwise C{render} returns C{NOT_DONE_YET} and the
answer is written, with its C{Content-Length}, when the Deferred fires; a client that went away
meanwhile is written nothing, and that is nobody's error, so nothing is logged for it.  Nothing
here bounds how long the answer may take: whoever made the Deferred does (a broker fails an
append its backbone does not answer in time).
"""

from __future__ import annotations

from typing import Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from mission_control.web.redaction import redact

_T = TypeVar("_T")

#: What C{render} returns: the body, or C{NOT_DONE_YET} when the rest is written later.
Rendered = bytes | int

log = Logger()


def render_when_fired(request: Request, answer: Deferred[_T],
                      respond: Callable[[_T], Rendered],
                      failed: Callable[[Failure], Rendered]) -> Rendered:
    """
    What C{render} returns for C{request} once C{answer} fires: C{respond(result)}, or
    C{failed(failure)} when it fails.  Each sets the status and headers on C{request} and returns
    the body (or C{NOT_DONE_YET}, having started writing it itself, as a streamed body does).

    @return: that body at once when C{answer} has fired already, else C{NOT_DONE_YET}; the body
        is then written, and the request finished, when it fires, unless the client is gone.
    """
    early: list[_T | Failure] = []
    waiting: list[bool] = []
    gone: list[bool] = []

    def fired(result: _T | Failure) -> None:
        if not waiting:
            early.append(result)
        else:
            _write_later(request, result, respond, failed, gone)

    answer.addBoth(fired)
    if early:
        result = early[0]
        return failed(result) if isinstance(result, Failure) else respond(result)
    waiting.append(True)
    request.notifyFinish().addErrback(lambda _: gone.append(True))
    return NOT_DONE_YET


def _write_later(request: Request, result: _T | Failure, respond: Callable[[_T], Rendered],
                 failed: Callable[[Failure], Rendered], gone: list[bool]) -> None:
    """Write the answer that came later, as C{render} would have returned it; not to a client
    that is gone."""
    if gone:
        return  # the client went away: nobody to answer, nothing wrong
    try:
        body = failed(result) if isinstance(result, Failure) else respond(result)
        if body is NOT_DONE_YET:
            return  # it writes itself (a streamed body)
        assert isinstance(body, bytes)
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
    except Exception:
        log.failure("writing an answer of {method} {path} failed",
                    method=redact(request.method), path=redact(request.path))

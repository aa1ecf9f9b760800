# -*- test-case-name: tests.test_cli_publish -*-
"""
One HTTP exchange with a hub, for C{publish}: L{post} sends a request with treq over the hub's
endpoint (L{HubEndpointFactory}: the same TLS as C{watch}, no proxy) and reads at most a bounded
number of bytes of the answer.

Redirects are not followed (one would hand the bearer token to another URL), the connection is
not kept for another request, and the whole exchange, connecting included, gives up after its
timeout.  When it fires, nothing is left behind on the reactor: no timer, no connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from mission_control.cli.errors import never_connected
from mission_control.cli.tls import HubEndpointFactory


@dataclass(frozen=True)
class Reply:
    """The hub's answer: status code and phrase, and the start of the body (C{limit} bytes)."""

    code: int
    phrase: str
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class ExchangeFailed(Exception):
    """
    No answer: C{reason} says why; C{connected} whether the hub was reached (the request may have
    been seen), C{timed_out} whether the exchange gave up waiting.
    """

    def __init__(self, reason: Failure, connected: bool, timed_out: bool) -> None:
        super().__init__(reason.getErrorMessage())
        self.reason = reason
        self.connected = connected
        self.timed_out = timed_out


def http_client(reactor: Any, trust_root: Certificate | None, timeout: float) -> HTTPClient:
    """A treq client whose requests go straight to the hub, on a connection of their own."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent.usingEndpointFactory(reactor, HubEndpointFactory(reactor, trust_root, timeout),
                                       pool=pool)
    return HTTPClient(agent)


def post(reactor: Any, url: str, body: bytes, headers: Mapping[str, str],
         trust_root: Certificate | None, timeout: float, limit: int) -> defer.Deferred[Reply]:
    """
    POST C{body} to C{url}; fires with the L{Reply}, or fails with L{ExchangeFailed}.

    The body of a refusal (not 2xx) only adds its message: when it cannot be read, the refusal
    stands with an empty body.
    """
    timed_out: list[bool] = []

    async def exchange() -> Reply:
        response = await http_client(reactor, trust_root, timeout).post(
            url, data=body, headers=Headers({k: [v] for k, v in headers.items()}),
            allow_redirects=False, unbuffered=True, reactor=reactor)
        phrase = response.phrase.decode("latin-1")
        reading = _LimitedBody(limit)
        response.deliverBody(reading)
        try:
            answer = await reading.done
        except Exception:
            if 200 <= response.code < 300 or timed_out:
                raise
            answer = b""
        return Reply(response.code, phrase, answer)

    def expired() -> None:
        timed_out.append(True)
        d.cancel()

    def settled(result: Reply | Failure) -> Reply:
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure):
            raise ExchangeFailed(result, not never_connected(result), bool(timed_out))
        return result

    d = defer.Deferred.fromCoroutine(exchange())
    timer = reactor.callLater(timeout, expired)
    return d.addBoth(settled)


class _LimitedBody(Protocol):
    """
    Collects a response body up to C{limit} bytes, then stops reading (the connection ends; it is
    not kept).  C{done} fires with what was read; cancelling it stops reading too.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        room = self.limit - self.size
        self.parts.append(data[:room])
        self.size += min(len(data), room)
        if len(data) >= room:
            self._stop_reading()
            self.done.callback(b"".join(self.parts))

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)

    def _cancel(self, d: defer.Deferred[bytes]) -> None:
        self._stop_reading()

    def _stop_reading(self) -> None:
        # The body's transport proxies the connection; losing it ends the exchange.
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

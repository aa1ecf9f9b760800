# -*- test-case-name: tests.test_store_redis_connection -*-
"""
One connection to Redis for commands, kept open by txredisapi and failing fast while it is not.

txredisapi 1.6 connects a factory with C{startConnecting(endpoint)}: a C{ClientService} per
connection, reconnecting with backoff.  What this module adds:

  - Commands never wait for a connection.  txredisapi's own handler queues a command until a
    connection comes back, however long that is; the hub must instead answer a publish with 503
    while Redis is unreachable, so L{RedisConnection.execute} fails at once with
    L{RedisUnavailable} when no connection is up, and a command in flight when the connection
    drops (or its reply is later than C{reply_timeout}) fails the same way.  Such a command may
    or may not have run on the server.
  - Replies are bytes, never guessed at: txredisapi by default turns every bulk reply that looks
    like a number into one, and decodes the rest as UTF-8.
  - A connection refused for good (a wrong password, a database that does not exist) is
    reported, once, to whoever waits in L{RedisConnection.when_connected}, and never retried.
  - Scripts run by EVALSHA, and by EVAL when the server does not know them yet (NOSCRIPT: after
    a restart, a failover or SCRIPT FLUSH).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union, cast

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTCP, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mission_control.store.interface import StoreUnavailable
from mission_control.store.redis_scripts import Script
from mission_control.store.redis_url import RedisURL

log = Logger()

#: A command's argument: txredisapi sends str as UTF-8 and an int as its digits.  Not a float:
#: txredisapi writes those with six decimals (1e-7 becomes 0.000000); send repr(x) instead.
Argument = Union[str, bytes, int]


class RedisUnavailable(StoreUnavailable):
    """Redis cannot be reached now (no connection, or it was lost before the reply came)."""


@implementer(IHandshakeListener)
class HandshakeAware:
    """
    Mixed into txredisapi's protocols: records that the TLS handshake completed, which with
    C{optionsForClientTLS} means that the server's certificate and name were verified.
    """

    handshake_done = False
    factory: ConnectingFactory

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.factory.handshake_completed(self)


class ConnectingFactory(txredisapi.RedisFactory):
    """
    A txredisapi factory of one connection that tells its owner when a connection becomes
    usable (after AUTH and SELECT, and over TLS once the server was verified), when it is lost,
    and when connecting has failed for good.

    txredisapi counts a connection as ready as soon as AUTH and SELECT were answered, or at
    once without them: over TLS that is before the handshake, so before the server was
    verified.  Nothing would leak (what is written waits for the handshake, and a failed one
    discards it), but "connected" would be claimed of a server that may turn out an impostor;
    so over TLS a connection becomes usable when its handshake completes.
    """

    def __init__(self, url: RedisURL, protocol: Optional[type] = None,
                 reply_timeout: Optional[float] = None, initial_delay: float = 1.0,
                 max_delay: float = 10.0) -> None:
        super().__init__(
            f"{url.host}:{url.port}", url.db or None, 1, isLazy=True, charset=None,
            password=url.password, replyTimeout=reply_timeout, convertNumbers=False,
            username=url.username,
        )
        base: type = protocol if protocol is not None else txredisapi.RedisProtocol
        self.protocol = type(base.__name__, (HandshakeAware, base), {})
        self.tls = url.tls
        self.initialDelay = initial_delay
        self.maxDelay = max_delay
        self.on_ready: Callable[[Any], None] = lambda conn: None
        self.on_lost: Callable[[Any], None] = lambda conn: None
        self.on_refused: Callable[[str], None] = lambda why: None
        # Fired by txredisapi once the pool is full; a refusal is reported by on_refused instead.
        self.deferred.addErrback(lambda failure: None)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool and (conn.handshake_done or not self.tls):
            self.on_ready(conn)

    def handshake_completed(self, conn: Any) -> None:
        """The TLS handshake of C{conn} completed (the protocol tells)."""
        if conn in self.pool:
            self.on_ready(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.on_lost(conn)

    def connectionError(self, why: str) -> None:
        super().connectionError(why)
        self.on_refused(why)


class RedisConnection:
    """
    A command connection to the Redis of C{url}; it connects at once and reconnects with
    backoff until L{close}.

    @ivar refused: why connecting failed for good, or C{None}.
    """

    def __init__(self, url: RedisURL, reactor: IReactorTCP, reply_timeout: float = 10.0,
                 connect_timeout: float = 10.0, initial_delay: float = 1.0,
                 max_delay: float = 10.0, protocol: Optional[type] = None) -> None:
        self.url = url
        self.refused: Optional[str] = None
        self._live: Optional[Any] = None
        self._waiting: list[Deferred[None]] = []
        self._factory = ConnectingFactory(url, protocol, reply_timeout, initial_delay, max_delay)
        self._factory.on_ready = self._ready
        self._factory.on_lost = self._lost
        self._factory.on_refused = self._refused
        self._factory.startConnecting(url.endpoint(reactor, connect_timeout))
        self._closing = Closing(self._factory, cast(IReactorTime, reactor))

    def __repr__(self) -> str:
        state = "connected" if self._live is not None else "not connected"
        return f"<RedisConnection {self.url.redacted()} {state}>"

    @property
    def connected(self) -> bool:
        """Whether a command sent now goes to Redis at once."""
        return self._live is not None

    def when_connected(self) -> Deferred[None]:
        """
        Fires when a connection is usable (now, if one is); fails with L{RedisUnavailable}
        when connecting was refused for good.
        """
        if self._live is not None:
            return defer.succeed(None)
        if self.refused is not None:
            return defer.fail(RedisUnavailable(self.refused))
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def execute(self, *args: Argument) -> Deferred[Any]:
        """
        Send one command; fires with its reply (bytes, int, None, or a list of them), fails
        with txredisapi's C{ResponseError} when Redis answers an error, and with
        L{RedisUnavailable} at once when no connection is up or when it is lost first.
        """
        conn = self._live
        if conn is None:
            return defer.fail(RedisUnavailable(self.refused or "not connected to Redis"))
        try:
            sent = conn.execute_command(*args)
        except txredisapi.ConnectionError as e:
            return defer.fail(RedisUnavailable(str(e)))
        except Exception:
            return defer.fail()

        def unavailable(failure: Failure) -> Failure:
            if not failure.check(txredisapi.ConnectionError):
                return failure
            # Lost, or a reply timed out and txredisapi is dropping the connection: what is
            # sent until it is gone would fail the same way, so nothing more is.
            if self._live is conn:
                self._live = None
            return Failure(RedisUnavailable(failure.getErrorMessage()))

        return sent.addErrback(unavailable)

    def evaluate(self, script: Script, keys: Sequence[str],
                 args: Sequence[Argument]) -> Deferred[Any]:
        """
        Run C{script} with EVALSHA, and with EVAL when the server does not know it.
        """
        call = ("EVALSHA", script.sha, len(keys), *keys, *args)
        sent = self.execute(*call)

        def unknown(failure: Failure) -> Any:
            failure.trap(txredisapi.ResponseError)
            if not str(failure.value).startswith("NOSCRIPT"):
                return failure
            return self.execute("EVAL", script.source, len(keys), *keys, *args)

        return sent.addErrback(unknown)

    def close(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires once it is closed.  Idempotent."""
        for waiting in self._take_waiting():
            waiting.errback(RedisUnavailable("the connection was closed"))
        return self._closing.close()

    def _take_waiting(self) -> list[Deferred[None]]:
        waiting, self._waiting = self._waiting, []
        return waiting

    def _ready(self, conn: Any) -> None:
        self._live = conn
        for waiting in self._take_waiting():
            waiting.callback(None)

    def _lost(self, conn: Any) -> None:
        if self._live is conn:
            self._live = None

    def _refused(self, why: str) -> None:
        self.refused = why
        log.error("Redis refused the connection for good: {why}", why=why)
        for waiting in self._take_waiting():
            waiting.errback(RedisUnavailable(why))



class Closing:
    """
    The closing of a txredisapi factory, once, however often it is asked for: each caller gets
    a Deferred that fires when every connection is closed, a reactor turn later, so that what
    the caller does next does not run inside the ClientService that is stopping (it refuses to
    be stopped again from there).
    """

    def __init__(self, factory: txredisapi.RedisFactory, clock: IReactorTime) -> None:
        self._factory = factory
        self._clock = clock
        self._waiting: Optional[list[Deferred[None]]] = None
        self._closed = False

    def close(self) -> Deferred[None]:
        if self._closed:
            return defer.succeed(None)
        done: Deferred[None] = Deferred()
        if self._waiting is None:
            self._waiting = []
            closed = self._factory.disconnect()
            closed.addBoth(lambda _: deferLater(self._clock, 0, self._done))
        self._waiting.append(done)
        return done

    def _done(self) -> None:
        self._closed = True
        waiting, self._waiting = self._waiting or [], []
        for done in waiting:
            done.callback(None)

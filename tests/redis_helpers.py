"""
Tests against a real Redis: the one on 127.0.0.1:6379 (CI machines run it, keeping nothing on
disk).  Each test gets a key prefix of its own and deletes every key under it when it ends, so
tests may run side by side (trial -j) and leave the server as they found it; each closes its
connections so that trial finds a clean reactor.  With no Redis answering, the tests skip and
say so.  L{RedisProxy} stands between a client and Redis where a test needs TLS or a link that
dies without a word.
"""

from __future__ import annotations

import functools
import secrets
import socket
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from mission_control.store.interface import Retention
from mission_control.store.redis_connection import RedisConnection, RedisUnavailable
from mission_control.store.redis_log import RedisLog
from mission_control.store.redis_pubsub import Appended, RedisSubscription
from mission_control.store.redis_scripts import RedisKeys
from mission_control.store.redis_url import RedisURL, parse_redis_url

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379


@functools.cache
def redis_missing() -> Optional[str]:
    """Why the tests cannot use the Redis on 127.0.0.1:6379, or None when they can."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except OSError as e:
        return f"no Redis answers on {REDIS_HOST}:{REDIS_PORT} ({e.strerror or e})"
    if not answer.startswith(b"+PONG"):
        return f"the server on {REDIS_HOST}:{REDIS_PORT} does not answer PING as Redis does"
    return None


def sleep(seconds: float) -> Deferred[None]:
    """Fires after C{seconds} of the real reactor."""
    return deferLater(reactor, seconds, lambda: None)


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0,
                     interval: float = 0.01) -> None:
    """Wait until C{predicate()} is true; fail after C{timeout} seconds."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"still not true after {timeout} s: {predicate}")
        await sleep(interval)
        waited += interval


async def never(predicate: Callable[[], Any], duration: float, interval: float = 0.002) -> None:
    """Fail as soon as C{predicate()} is true within the next C{duration} seconds."""
    waited = 0.0
    while waited < duration:
        if predicate():
            raise AssertionError(f"true after {waited:.3f} s: {predicate}")
        await sleep(interval)
        waited += interval


async def reconnected(connection: RedisConnection, old_id: int) -> None:
    """Wait until C{connection} works again over a connection other than client C{old_id}."""
    async def changed() -> bool:
        try:
            return bool(await connection.execute("CLIENT", "ID") != old_id)
        except RedisUnavailable:
            return False

    for _ in range(500):
        if await changed():
            return
        await sleep(0.01)
    raise AssertionError("the connection was not made again")


async def delete_keys(connection: RedisConnection, pattern: str) -> int:
    """Delete every key matching C{pattern} (SCAN, then DEL): how many there were."""
    cursor, deleted = b"0", 0
    while True:
        cursor, keys = await connection.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        if keys:
            deleted += await connection.execute("DEL", *keys)
        if cursor in (b"0", "0", 0):
            return deleted


async def count_keys(connection: RedisConnection, pattern: str) -> int:
    """How many keys match C{pattern}."""
    cursor, found = b"0", 0
    while True:
        cursor, keys = await connection.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        found += len(keys)
        if cursor in (b"0", "0", 0):
            return found


class RedisTestMixin:
    """
    For a trial L{TestCase}: a unique prefix (C{self.prefix}, C{self.url}, C{self.keys}), an
    admin connection (C{self.admin}), and connections, logs and subscriptions that are closed,
    and keys that are deleted, when the test ends.
    """

    prefix: str
    url: RedisURL
    keys: RedisKeys
    admin: RedisConnection
    addCleanup: Callable[..., None]
    fail: Callable[..., Any]

    async def redis_setup(self) -> None:
        """Skip without Redis; else the prefix and the admin connection of this test."""
        missing = redis_missing()
        if missing is not None:
            raise SkipTest(missing)
        self.prefix = "mc-test-" + secrets.token_hex(6)
        self.url = self.redis_url()
        self.keys = RedisKeys(self.prefix)
        self.admin = await self.connect()
        self.addCleanup(lambda: Deferred.fromCoroutine(delete_keys(self.admin, self.keys.pattern)))

    def redis_url(self, query: str = "", db: int = 0) -> RedisURL:
        """This test's URL (its prefix), with C{query} added."""
        extra = f"&{query}" if query else ""
        return parse_redis_url(f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}?prefix={self.prefix}"
                               f"{extra}")

    async def connect(self, url: Optional[RedisURL] = None, wait: bool = True,
                      **options: Any) -> RedisConnection:
        """A command connection (closed at the end), connected unless C{wait} is false."""
        options.setdefault("initial_delay", 0.05)
        options.setdefault("max_delay", 0.2)
        connection = RedisConnection(url or self.url, reactor, **options)
        self.addCleanup(connection.close)
        if wait:
            await connection.when_connected()
        return connection

    async def open_log(self, retention: Retention = Retention(), **options: Any) -> RedisLog:
        """A loaded log of this test's prefix, over a connection of its own."""
        log = RedisLog(await self.connect(), self.prefix, retention, **options)
        await log.load()
        return log

    async def failing(self, deferred: Deferred) -> Exception:
        """The exception C{deferred} fails with (the test fails if it succeeds)."""
        try:
            result = await deferred
        except Exception as e:
            return e
        self.fail(f"expected a failure, got {result!r}")

    async def kill_subscription(self, subscription: RedisSubscription) -> None:
        """
        Have Redis close C{subscription}'s connection (that one only: other tests running at
        the same time keep theirs).
        """
        host = subscription._factory.pool[0].transport.getHost()
        await self.admin.execute("CLIENT", "KILL", "ADDR", f"{host.host}:{host.port}")

    def subscribe(self, on_message: Callable[[Appended], None],
                  on_connected: Callable[[], None], **options: Any) -> RedisSubscription:
        """A subscription to this test's channel (stopped at the end)."""
        options.setdefault("initial_delay", 0.05)
        options.setdefault("max_delay", 0.2)
        subscription = RedisSubscription(self.url, reactor, on_message, on_connected, **options)
        self.addCleanup(subscription.stop)
        return subscription

class _ProxyServerSide(Protocol):
    """A client's connection to the proxy: forwards to its own connection to Redis."""

    def __init__(self, proxy: RedisProxy) -> None:
        self.proxy = proxy
        self.upstream: Optional[_ProxyRedisSide] = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        self.proxy.open.add(self)
        self.proxy.accepted += 1
        endpoint = TCP4ClientEndpoint(reactor, REDIS_HOST, REDIS_PORT)
        connectProtocol(endpoint, _ProxyRedisSide(self)).addErrback(
            lambda _: self.transport.loseConnection())

    def dataReceived(self, data: bytes) -> None:
        if self.proxy.frozen:
            return
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.proxy.open.discard(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class _ProxyRedisSide(Protocol):
    """The proxy's connection to Redis for one client."""

    def __init__(self, client: _ProxyServerSide) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.proxy.open.add(self)
        self.client.upstream = self
        for data in self.client.pending:
            self.transport.write(data)
        self.client.pending = []
        if not self.client.transport.connected:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.proxy.open.discard(self)
        self.client.transport.loseConnection()


class RedisProxy(Factory):
    """
    A proxy in front of the test Redis, listening on C{listen} (an endpoint string: TLS with
    C{ssl:}), that can be frozen: while C{frozen}, what clients send is dropped, as on a link
    that died without a word.
    """

    def __init__(self) -> None:
        self.frozen = False
        self.accepted = 0
        self.open: set[Protocol] = set()
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> Protocol:
        return _ProxyServerSide(self)

    async def start(self, listen: str) -> int:
        """Listen; the port."""
        self.port = await serverFromString(reactor, listen).listen(self)
        return int(self.port.getHost().port)

    async def stop(self) -> None:
        """Stop listening, close every connection and wait until they are closed."""
        await self.port.stopListening()
        for proto in list(self.open):
            proto.transport.abortConnection()
        await eventually(lambda: not self.open)

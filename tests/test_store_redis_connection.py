"""
Tests for L{mission_control.store.redis_connection}: a command connection to the real Redis on
127.0.0.1:6379 that fails fast while it is down, reconnects by itself, gives up for good only
when Redis refuses it (password, database), never shows its password, and speaks TLS with the
server's certificate verified (through a TLS proxy in front of the test Redis).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from mission_control.store.redis_connection import RedisUnavailable
from mission_control.store.redis_url import parse_redis_url
from tests import certs
from tests.helpers import free_port
from tests.redis_helpers import (
    REDIS_PORT,
    RedisProxy,
    RedisTestMixin,
    never,
    sleep,
)

PASSWORD = "wrong-secret-8f3a"


class ConnectionTestCase(RedisTestMixin, TestCase):
    timeout = 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.redis_setup())


class CommandTests(ConnectionTestCase):
    async def test_replies_are_bytes(self) -> None:
        """
        Bulk replies come back as bytes, never turned into numbers or text: a value that looks
        like a number stays the bytes it was.
        """
        connection = await self.connect()
        key = self.keys.base + "x"
        await connection.execute("SET", key, "0012.50")
        self.assertEqual(await connection.execute("GET", key), b"0012.50")
        self.assertEqual(await connection.execute("STRLEN", key), 7)

    async def test_fails_fast_while_down(self) -> None:
        """
        With nothing listening, a command fails at once with RedisUnavailable rather than
        waiting for a connection; when_connected waits, and fails when the connection is closed.
        """
        url = parse_redis_url(f"redis://127.0.0.1:{free_port()}/0?prefix={self.prefix}")
        connection = await self.connect(url, wait=False)
        waiting = connection.when_connected()
        failure = await self.failing(connection.execute("PING"))
        self.assertIsInstance(failure, RedisUnavailable)
        self.assertFalse(connection.connected)
        await connection.close()
        self.assertIsInstance(await self.failing(waiting), RedisUnavailable)

    async def test_reconnects_after_the_server_drops_it(self) -> None:
        """
        A command in flight when the server closes the connection fails with
        RedisUnavailable; the connection is made again by itself and commands work.
        """
        connection = await self.connect()
        client_id = await connection.execute("CLIENT", "ID")
        blocked = connection.execute("BLPOP", self.keys.base + "never", 5)
        self.assertEqual(await self.admin.execute("CLIENT", "KILL", "ID", client_id), 1)
        self.assertIsInstance(await self.failing(blocked), RedisUnavailable)
        self.assertFalse(connection.connected)
        await connection.when_connected()
        self.assertNotEqual(await connection.execute("CLIENT", "ID"), client_id)

    async def test_reply_timeout(self) -> None:
        """
        A reply later than reply_timeout fails its command with RedisUnavailable and drops the
        connection (it may be dead), which is then made again.
        """
        connection = await self.connect(reply_timeout=0.2)
        client_id = await connection.execute("CLIENT", "ID")
        slow = connection.execute("BLPOP", self.keys.base + "never", 2)
        self.assertIsInstance(await self.failing(slow), RedisUnavailable)
        self.assertFalse(connection.connected)
        await connection.when_connected()
        self.assertNotEqual(await connection.execute("CLIENT", "ID"), client_id)

    async def test_close_stops_reconnecting(self) -> None:
        """
        After close, nothing reconnects and commands fail with RedisUnavailable; closing again
        is harmless.
        """
        connection = await self.connect()
        await connection.close()
        await connection.close()
        await sleep(0.2)
        self.assertFalse(connection.connected)
        self.assertIsInstance(await self.failing(connection.execute("PING")), RedisUnavailable)


class RefusalTests(ConnectionTestCase):
    async def test_wrong_password_refused_for_good(self) -> None:
        """
        A password Redis refuses fails when_connected with RedisUnavailable and is not tried
        again; neither the error, the repr nor the log shows the password.
        """
        url = parse_redis_url(f"redis://:{PASSWORD}@127.0.0.1:{REDIS_PORT}/0")
        connection = await self.connect(url, wait=False)
        failure = await self.failing(connection.when_connected())
        self.assertIsInstance(failure, RedisUnavailable)
        self.assertIn("auth", str(failure))
        for text in (str(failure), repr(connection), repr(url), str(url), connection.refused):
            self.assertNotIn(PASSWORD, text)
        self.assertIsInstance(await self.failing(connection.when_connected()), RedisUnavailable)
        self.assertIsInstance(await self.failing(connection.execute("PING")), RedisUnavailable)

    async def test_missing_database_refused_for_good(self) -> None:
        """A database number the server does not have is refused for good, saying so."""
        connection = await self.connect(self.redis_url(db=99999), wait=False)
        failure = await self.failing(connection.when_connected())
        self.assertIsInstance(failure, RedisUnavailable)
        self.assertIn("dbid=99999", str(failure))

    async def test_other_database_selected(self) -> None:
        """The URL's database number is the one the connection works in."""
        connection = await self.connect(self.redis_url(db=3))
        key = self.keys.base + "db3"
        self.addCleanup(lambda: connection.execute("DEL", key))
        await connection.execute("SET", key, "here")
        self.assertIsNone(await self.admin.execute("GET", key))
        self.assertEqual(await connection.execute("GET", key), b"here")


class TLSTests(ConnectionTestCase):
    async def start_proxy(self, interface: str = "127.0.0.1"
                          ) -> tuple[RedisProxy, int, certs.CertificateFiles]:
        """
        A TLS proxy in front of the test Redis on C{interface}, with the test CA's certificate
        for C{localhost} and C{127.0.0.1}.
        """
        files = certs.write_certificates(self)
        proxy = RedisProxy()
        port = await proxy.start(f"ssl:0:interface={interface}"
                                 f":privateKey={certs.endpoint_quote(files.key)}"
                                 f":certKey={certs.endpoint_quote(files.cert)}")
        self.addCleanup(lambda: Deferred.fromCoroutine(proxy.stop()))
        return proxy, port, files

    async def test_verified_tls(self) -> None:
        """rediss:// with ca= the CA that signed the server's certificate connects over TLS."""
        _, port, files = await self.start_proxy()
        for host in ("localhost", "127.0.0.1"):
            url = parse_redis_url(f"rediss://{host}:{port}/0?prefix={self.prefix}&ca={files.ca}")
            connection = await self.connect(url)
            self.assertEqual(await connection.execute("ECHO", "over tls"), b"over tls")
            await connection.close()

    async def test_untrusted_certificate_refused(self) -> None:
        """
        By default rediss:// trusts the system's CAs only: a server with a certificate of a
        private CA is never talked to (it keeps trying, and fails fast meanwhile).
        """
        proxy, port, _ = await self.start_proxy()
        connection = await self.connect(
            parse_redis_url(f"rediss://localhost:{port}/0?prefix={self.prefix}"), wait=False)
        await never(lambda: connection.connected, 0.5)
        self.assertGreaterEqual(proxy.accepted, 2)
        self.assertIsInstance(await self.failing(connection.execute("PING")), RedisUnavailable)

    async def test_wrong_host_name_refused(self) -> None:
        """
        A certificate that does not name the host connected to is refused: the connection is
        never counted as connected.
        """
        proxy, port, files = await self.start_proxy("127.0.0.2")
        url = parse_redis_url(f"rediss://127.0.0.2:{port}/0?ca={files.ca}")
        connection = await self.connect(url, wait=False, connect_timeout=2)
        await never(lambda: connection.connected, 0.5)
        self.assertGreaterEqual(proxy.accepted, 2)

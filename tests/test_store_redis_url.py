"""
Tests for L{mission_control.store.redis_url}: reading C{--store redis://...} (no Redis needed),
refusing every mistake in one line that never repeats the password, and the endpoint each URL
gives: TCP, or TLS that verifies the server.
"""

from __future__ import annotations

import os

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.ssl import platformTrust
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mission_control.store.redis_url import DEFAULT_PREFIX, RedisURL, parse_redis_url
from tests import certs

SECRET = "s3cr#t pässword"


class ParseTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """A bare host is port 6379, database 0, no credentials, no TLS, the default prefix."""
        self.assertEqual(parse_redis_url("redis://redis.internal"),
                         RedisURL(host="redis.internal", port=6379, db=0, username=None,
                                  password=None, tls=False, prefix=DEFAULT_PREFIX, ca=None))
        self.assertEqual(DEFAULT_PREFIX, "mission-control")

    def test_everything(self) -> None:
        """Port, database, password, prefix and a CA file are all read."""
        url = parse_redis_url("rediss://:pw@cache.example.com:6380/3?prefix=mc1&ca=/etc/ca.pem")
        self.assertEqual(url, RedisURL(host="cache.example.com", port=6380, db=3,
                                       password="pw", tls=True, prefix="mc1", ca="/etc/ca.pem"))

    def test_user_and_percent_encoding(self) -> None:
        """A user name (Redis ACLs) and a percent-encoded password are decoded."""
        url = parse_redis_url("redis://hub%40eu:s3cr%23t%20p%C3%A4ssword@h:1/0")
        self.assertEqual((url.username, url.password), ("hub@eu", SECRET))

    def test_ipv6(self) -> None:
        """An IPv6 address in brackets, with or without a port."""
        self.assertEqual((parse_redis_url("redis://[::1]:7000").host,
                          parse_redis_url("redis://[::1]:7000").port), ("::1", 7000))
        self.assertEqual(parse_redis_url("redis://[fe80::1]/2").db, 2)

    def test_empty_path_and_slash(self) -> None:
        """No path and a lone slash both mean database 0."""
        self.assertEqual([parse_redis_url(u).db for u in ("redis://h", "redis://h/")], [0, 0])

    def test_mistakes_refused_in_one_line(self) -> None:
        """
        Each mistake is a ValueError of one line that starts with "bad Redis URL" and says
        what is wrong.
        """
        cases = {
            "http://h:6379": "redis:// or rediss://",
            "h:6379": "redis:// or rediss://",
            "": "redis:// or rediss://",
            "redis://": "no host",
            "redis://:6379/0": "no host",
            "redis://h:0": "port",
            "redis://h:65536": "port",
            "redis://h:port": "port",
            "redis://h:-1": "port",
            "redis://[::1": "",
            "redis://h/x": "database number",
            "redis://h/1/2": "database number",
            "redis://h/-1": "database number",
            "redis://h?prefx=mc": "unknown parameter prefx",
            "redis://h?prefix=a&prefix=b": "more than once",
            "redis://h?prefix=": "prefix must be",
            "redis://h?prefix={mc}": "prefix must be",
            "redis://h?prefix=mc*": "prefix must be",
            "redis://h?prefix=" + "p" * 65: "prefix must be",
            "redis://h?ca=/ca.pem": "rediss://",
            "rediss://h?ca=": "ca must name",
            "redis://h?junk": "name=value",
            "redis://h#frag": "fragment",
            "redis://h /0": "spaces or control",
            "redis://h\n/0": "spaces or control",
            "redis://user@h": "needs a password",
        }
        for text, words in cases.items():
            error = self.assertRaises(ValueError, parse_redis_url, text)
            message = str(error)
            self.assertTrue(message.startswith("bad Redis URL: "), (text, message))
            self.assertNotIn("\n", message)
            self.assertIn(words, message, text)

    def test_password_never_shown(self) -> None:
        """The password is in no repr, str or redacted form, nor in any error about the URL."""
        url = parse_redis_url("redis://:s3cr%23t%20p%C3%A4ssword@h:1/0?prefix=mc1")
        for text in (repr(url), str(url), url.redacted()):
            self.assertNotIn("s3cr", text)
        self.assertEqual(url.redacted(), "redis://:***@h:1/0?prefix=mc1")
        for bad in ("redis://:s3cr3t@h:99999", "redis://:s3cr3t@h?x=1", "redis://:s3cr3t@h/x",
                    "redis://:s3cr3t@h?prefix=%7B"):
            self.assertNotIn("s3cr3t", str(self.assertRaises(ValueError, parse_redis_url, bad)))

    def test_redacted_round_trips(self) -> None:
        """The redacted form of a URL without a password reads back as the same URL."""
        for text in ("redis://h", "rediss://u:p@[::1]:7/2?prefix=x&ca=/c.pem",
                     "redis://10.0.0.5:6390/15?prefix=a.b:c-d_e"):
            url = parse_redis_url(text)
            if url.password is None:
                self.assertEqual(parse_redis_url(url.redacted()), url)
            else:
                self.assertEqual(url.redacted(), "rediss://u:***@[::1]:7/2?prefix=x&ca=/c.pem")


class EndpointTests(SynchronousTestCase):
    def test_plain_is_tcp(self) -> None:
        """redis:// connects over TCP to the host and port, with the timeout given."""
        reactor = MemoryReactorClock()
        endpoint = parse_redis_url("redis://127.0.0.1:7001").endpoint(reactor, timeout=3)
        self.assertIsInstance(endpoint, HostnameEndpoint)
        endpoint.connect(_NoProtocol())
        [(host, port, _, timeout, _)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 7001, 3))

    def test_tls_trusts_the_system_by_default(self) -> None:
        """
        rediss:// wraps the TCP endpoint in TLS, trusting the system's CAs unless ca= names a
        file (that it verifies the server at all is shown against a server in
        test_store_redis_connection: there is no way to turn verification off).
        """
        url = parse_redis_url("rediss://redis.example.com")
        self.assertNotIsInstance(url.endpoint(MemoryReactorClock()), HostnameEndpoint)
        self.assertIsInstance(url.trust_root(), type(platformTrust()))

    def test_ca_file_used(self) -> None:
        """A ca= file is read: its certificate is the one trusted."""
        files = certs.write_certificates(self)
        url = parse_redis_url(f"rediss://localhost?ca={files.ca}")
        root = url.trust_root()
        self.assertEqual(root.dumpPEM(), certs.certificate_authority().pem)

    def test_unusable_ca_file_refused(self) -> None:
        """A missing CA file, or one without a certificate, is a one-line ValueError naming it."""
        directory = self.mktemp()
        os.makedirs(directory)
        garbage = os.path.join(directory, "garbage.pem")
        with open(garbage, "wb") as f:
            f.write(b"not a certificate\n")
        for path, words in ((os.path.join(directory, "missing.pem"), "cannot read"),
                            (garbage, "no PEM certificate")):
            url = parse_redis_url(f"rediss://localhost?ca={path}")
            error = self.assertRaises(ValueError, url.endpoint, MemoryReactorClock())
            self.assertIn(path, str(error))
            self.assertIn(words, str(error))
            self.assertNotIn("\n", str(error))


class _NoProtocol:
    """A factory the memory reactor never builds a protocol from."""

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

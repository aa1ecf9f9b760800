"""
Tests for L{mission_control.tap}: the options of C{twistd mission-control}, the service tree that
C{makeService} builds, and the real C{twistd} command in a child process.

Option tests call C{Options(environ={...}).parseOptions([...])} exactly as twistd does, with an
explicit environment so that the caller's own C{MISSION_CONTROL_*} variables play no part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shlex
import signal
import socket
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer, error, protocol, reactor, threads, utils
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mission_control import auth, tap
from mission_control.demo import DemoFleet
from mission_control.tap import DEFAULT_LISTEN, MissionControlService, Options, makeService, urls_of
from tests import certs
from tests.helpers import (
    PROJECT_ROOT,
    ChildProcess,
    TwistdProcess,
    connect,
    free_port,
    spawn_twistd,
    http_request,
    parse_response,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)



def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def write_file(testcase, name: str, content: bytes, mode: int = 0o600) -> str:
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, mode)
    return path


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


_keys: dict = {}


def rsa_key():
    """An RSA private key, made once per process."""
    if "rsa" not in _keys:
        _keys["rsa"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _keys["rsa"]


def ec_key():
    """An EC P-256 private key, made once per process."""
    if "ec" not in _keys:
        _keys["ec"] = ec.generate_private_key(ec.SECP256R1())
    return _keys["ec"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hand_made_hs256(secret: bytes, claims: dict) -> str:
    """
    An HS256 JWT built by hand, for keys PyJWT refuses to use as HMAC secrets (a PEM public key:
    the classic algorithm-confusion attack).
    """
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    return f"{header}.{body}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


class OptionsMixin:
    """Parse options as twistd would, with an empty environment and a data dir of the test's own."""

    def data_dir(self) -> str:
        return os.path.abspath(self.mktemp())

    def parse(self, *args: str, environ: dict | None = None, data_dir: bool = True) -> Options:
        options = Options(environ=environ or {})
        argv = list(args)
        if data_dir and "--data-dir" not in argv and "MISSION_CONTROL_DATA_DIR" not in (
            environ or {}
        ):
            argv = ["--data-dir", self.data_dir()] + argv
        options.parseOptions(argv)
        return options

    def assertUsageError(self, args, *fragments, environ=None) -> str:
        """Parsing C{args} raises L{usage.UsageError}, one line that contains every fragment."""
        exc = self.assertRaises(usage.UsageError, self.parse, *args, environ=environ)
        message = str(exc)
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertNotIn("Traceback", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


class DefaultsTests(OptionsMixin, SynchronousTestCase):
    """What an empty command line means."""

    def test_defaults(self):
        """
        Without options: one listener on tcp:8080 on 127.0.0.1, HS256 only, leeway 5 s, heartbeat
        30 s, ping 20 s / timeout 10 s, 64 KiB messages, no issuer, audience or Origin list, no demo.
        """
        options = self.parse()
        self.assertEqual(options["listen"], ["tcp:8080:interface=127.0.0.1"])
        self.assertEqual(DEFAULT_LISTEN, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(options["jwt-algorithm"], ["HS256"])
        self.assertEqual(options["jwt-leeway"], 5)
        self.assertEqual(options["heartbeat-interval"], 30)
        self.assertEqual(options["ping-interval"], 20)
        self.assertEqual(options["ping-timeout"], 10)
        self.assertEqual(options["max-message-size"], 65536)
        self.assertEqual(options["max-connections-per-user"], 20)
        self.assertEqual(options["max-connections"], 10000)
        self.assertEqual(options["max-http-connections"], 1000)
        self.assertEqual((options["max-reads-per-second"], options["max-handshakes-per-second"]),
                         (20, 5))
        self.assertFalse(options["demo"])
        verifier = options["verifier"]
        self.assertEqual(verifier.algorithms, ["HS256"])
        self.assertEqual(verifier.leeway, 5)
        self.assertIsNone(verifier.issuer)
        self.assertIsNone(verifier.audience)
        self.assertTrue(options["origins"].allows("https://anywhere.example"))

    def test_default_data_dir(self):
        """Without --data-dir the state goes to ./mission-control-data, relative to the cwd."""
        here = os.getcwd()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        os.chdir(work)
        self.addCleanup(os.chdir, here)
        options = self.parse(data_dir=False)
        self.assertEqual(options["data-dir"], "./mission-control-data")
        self.assertTrue(os.path.isfile(os.path.join(work, "mission-control-data", "jwt-secret")))

    def test_generated_secret(self):
        """
        Without a secret file or public key a development secret is generated in the data dir:
        mode 0600, at least 32 bytes, and it is the key tokens are verified with.
        """
        data_dir = self.data_dir()
        options = self.parse("--data-dir", data_dir)
        path = os.path.join(data_dir, "jwt-secret")
        self.assertEqual(options["secret-path"], path)
        self.assertTrue(options["generated-secret"])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path, "rb") as f:
            secret = f.read().strip()
        self.assertGreaterEqual(len(secret), 32)
        self.assertEqual(options["verifier"].key, secret)
        token = auth.mint_token(secret, "alice", 1000.0)
        self.assertEqual(options["verifier"].verify(token, 1000.0).sub, "alice")

    def test_generated_secret_is_kept(self):
        """The second start with the same data dir reuses the secret: tokens stay valid."""
        data_dir = self.data_dir()
        first = self.parse("--data-dir", data_dir)
        second = self.parse("--data-dir", data_dir)
        self.assertFalse(second["generated-secret"])
        self.assertEqual(first["verifier"].key, second["verifier"].key)

    def test_secret_file(self):
        """--jwt-secret-file is the HMAC key, surrounding white space removed; nothing is generated."""
        secret = b"s" * 40
        path = write_file(self, "secret", b"  " + secret + b"\n")
        data_dir = self.data_dir()
        options = self.parse("--jwt-secret-file", path, "--data-dir", data_dir)
        self.assertEqual(options["verifier"].key, secret)
        self.assertIsNone(options["generated-secret"])
        self.assertFalse(os.path.exists(os.path.join(data_dir, "jwt-secret")))


class EnvironmentTests(OptionsMixin, SynchronousTestCase):
    """C{MISSION_CONTROL_<NAME>} variables, and the command line winning over them."""

    def test_environment_fills_options(self):
        """Every option can come from its MISSION_CONTROL_ variable."""
        secret_file = write_file(self, "secret", b"e" * 32)
        data_dir = self.data_dir()
        options = self.parse(environ={
            "MISSION_CONTROL_DATA_DIR": data_dir,
            "MISSION_CONTROL_JWT_SECRET_FILE": secret_file,
            "MISSION_CONTROL_JWT_ISSUER": "https://id.example",
            "MISSION_CONTROL_JWT_AUDIENCE": "mission-control",
            "MISSION_CONTROL_JWT_LEEWAY": "7",
            "MISSION_CONTROL_HEARTBEAT_INTERVAL": "0",
            "MISSION_CONTROL_PING_INTERVAL": "3",
            "MISSION_CONTROL_PING_TIMEOUT": "4",
            "MISSION_CONTROL_MAX_MESSAGE_SIZE": "1024",
            "MISSION_CONTROL_MAX_CONNECTIONS_PER_USER": "2",
            "MISSION_CONTROL_MAX_CONNECTIONS": "50",
            "MISSION_CONTROL_DEMO": "true",
        })
        self.assertEqual(options["data-dir"], data_dir)
        self.assertEqual(options["verifier"].key, b"e" * 32)
        self.assertEqual(options["verifier"].issuer, "https://id.example")
        self.assertEqual(options["verifier"].audience, "mission-control")
        self.assertEqual(options["verifier"].leeway, 7)
        self.assertEqual(options["heartbeat-interval"], 0)
        self.assertEqual(options["ping-interval"], 3)
        self.assertEqual(options["ping-timeout"], 4)
        self.assertEqual(options["max-message-size"], 1024)
        self.assertEqual(options["max-connections-per-user"], 2)
        self.assertEqual(options["max-connections"], 50)
        self.assertTrue(options["demo"])

    def test_command_line_wins(self):
        """A value on the command line beats the environment's."""
        options = self.parse(
            "--jwt-leeway", "9", "--max-connections", "77",
            environ={"MISSION_CONTROL_JWT_LEEWAY": "7", "MISSION_CONTROL_MAX_CONNECTIONS": "50"},
        )
        self.assertEqual(options["jwt-leeway"], 9)
        self.assertEqual(options["max-connections"], 77)

    def test_empty_variable_is_unset(self):
        """An empty variable counts as not set: the default applies."""
        options = self.parse(environ={"MISSION_CONTROL_JWT_LEEWAY": "", "MISSION_CONTROL_LISTEN": ""})
        self.assertEqual(options["jwt-leeway"], 5)
        self.assertEqual(options["listen"], [DEFAULT_LISTEN])

    def test_demo_flag_values(self):
        """
        MISSION_CONTROL_DEMO turns the demo on with 1/true/yes/on and off with 0/false/no/off,
        in any case and with surrounding spaces; empty is unset (off).
        """
        for value, expected in [("1", True), ("yes", True), ("ON", True), (" true ", True),
                                ("0", False), ("false", False), ("No", False), ("off", False),
                                ("", False)]:
            options = self.parse(environ={"MISSION_CONTROL_DEMO": value})
            self.assertEqual(bool(options["demo"]), expected, value)

    def test_demo_flag_other_values_are_usage_errors(self):
        """
        Any other value of MISSION_CONTROL_DEMO is a usage error that names the variable and the
        values it accepts, rather than a demo silently left off.
        """
        for value in ("banana", "2", "enabled"):
            self.assertUsageError([], "MISSION_CONTROL_DEMO", repr(value),
                                  "1, true, yes, on", "0, false, no, off",
                                  environ={"MISSION_CONTROL_DEMO": value})

    def test_environment_errors_are_usage_errors(self):
        """A bad value from the environment is a usage error naming the option."""
        self.assertUsageError([], "--jwt-leeway", "abc",
                              environ={"MISSION_CONTROL_JWT_LEEWAY": "abc"})


class RepeatableOptionTests(OptionsMixin, SynchronousTestCase):
    """--listen, --jwt-algorithm and --allowed-origin may be given more than once."""

    def test_listen_twice(self):
        """Each --listen adds a listener, in order."""
        options = self.parse("--listen", "tcp:0:interface=127.0.0.1", "--listen", "tcp:0")
        self.assertEqual(options["listen"], ["tcp:0:interface=127.0.0.1", "tcp:0"])

    def test_listen_from_environment(self):
        """MISSION_CONTROL_LISTEN takes several endpoints, comma- or space-separated."""
        options = self.parse(environ={"MISSION_CONTROL_LISTEN": "tcp:0:interface=127.0.0.1, tcp:0"})
        self.assertEqual(options["listen"], ["tcp:0:interface=127.0.0.1", "tcp:0"])
        options = self.parse(environ={"MISSION_CONTROL_LISTEN": "tcp:0 tcp:1"})
        self.assertEqual(options["listen"], ["tcp:0", "tcp:1"])

    def test_listen_command_line_replaces_environment(self):
        """--listen on the command line replaces the environment's list; they are not merged."""
        options = self.parse("--listen", "tcp:0", environ={"MISSION_CONTROL_LISTEN": "tcp:1,tcp:2"})
        self.assertEqual(options["listen"], ["tcp:0"])

    def test_algorithms(self):
        """Every --jwt-algorithm is accepted, and only those."""
        options = self.parse("--jwt-algorithm", "HS256", "--jwt-algorithm", "HS512")
        self.assertEqual(options["verifier"].algorithms, ["HS256", "HS512"])
        key = options["verifier"].key
        token = auth.mint_token(key, "alice", 1000.0, algorithm="HS512")
        self.assertEqual(options["verifier"].verify(token, 1000.0).sub, "alice")
        options = self.parse("--jwt-algorithm", "HS512")
        token = auth.mint_token(options["verifier"].key, "alice", 1000.0, algorithm="HS256")
        self.assertRaises(auth.Refusal, options["verifier"].verify, token, 1000.0)

    def test_algorithms_from_environment(self):
        """MISSION_CONTROL_JWT_ALGORITHM takes a list too."""
        options = self.parse(environ={"MISSION_CONTROL_JWT_ALGORITHM": "HS384,HS512"})
        self.assertEqual(options["verifier"].algorithms, ["HS384", "HS512"])

    def test_allowed_origins(self):
        """Every --allowed-origin is allowed, written as browsers send it; any other is not."""
        options = self.parse(
            "--allowed-origin", "https://mc.example.com", "--allowed-origin", "http://localhost:3000"
        )
        origins = options["origins"]
        self.assertTrue(origins.allows("https://mc.example.com"))
        self.assertTrue(origins.allows("https://mc.example.com:443"))
        self.assertTrue(origins.allows("http://localhost:3000"))
        self.assertFalse(origins.allows("http://localhost:3001"))
        self.assertFalse(origins.allows("https://evil.example"))

    def test_allowed_origins_from_environment(self):
        """MISSION_CONTROL_ALLOWED_ORIGIN takes a list of origins."""
        options = self.parse(environ={
            "MISSION_CONTROL_ALLOWED_ORIGIN": "https://a.example https://b.example:8443"
        })
        self.assertTrue(options["origins"].allows("https://a.example"))
        self.assertTrue(options["origins"].allows("https://b.example:8443"))
        self.assertFalse(options["origins"].allows("https://c.example"))


class UsageErrorTests(OptionsMixin, SynchronousTestCase):
    """What cannot work is refused before anything starts, as one clear usage line."""

    def test_unknown_endpoint_type(self):
        """An endpoint string of an unknown type is refused, quoting it."""
        self.assertUsageError(["--listen", "nonsense:1"], "--listen", "nonsense:1", "nonsense")

    def test_bad_port(self):
        """A TCP endpoint whose port is not a number is refused."""
        self.assertUsageError(["--listen", "tcp:notaport"], "--listen", "tcp:notaport", "notaport")

    def test_bad_endpoint_among_good_ones(self):
        """One bad --listen among good ones is enough to refuse."""
        self.assertUsageError(["--listen", "tcp:0", "--listen", "tcp:x"], "tcp:x")

    def test_ssl_missing_key_file(self):
        """An ssl: endpoint whose key file does not exist is refused, naming the file."""
        files = certs.write_certificates(self)
        missing = os.path.join(files.directory, "missing-key.pem")
        listen = f"ssl:0:privateKey={missing}:certKey={files.cert}"
        self.assertUsageError(["--listen", listen], "--listen", "missing-key.pem")

    def test_ssl_key_does_not_match(self):
        """An ssl: endpoint whose key does not belong to the certificate is refused."""
        files = certs.write_certificates(self)
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key = write_file(self, "other-key.pem", other)
        self.assertUsageError(["--listen", f"ssl:0:privateKey={key}:certKey={files.cert}"],
                              "--listen", "do not match")

    def test_ssl_endpoint_accepted(self):
        """A working key and certificate pass."""
        files = certs.write_certificates(self)
        listen = certs.ssl_listen(files)
        self.assertEqual(self.parse("--listen", listen)["listen"], [listen])

    def test_short_secret(self):
        """A secret file of fewer than 32 bytes is refused."""
        path = write_file(self, "short", b"x" * 31)
        self.assertUsageError(["--jwt-secret-file", path], path, "31 bytes", "32")

    def test_missing_secret_file(self):
        """A secret file that does not exist is refused, naming it."""
        path = os.path.join(self.data_dir(), "nope")
        self.assertUsageError(["--jwt-secret-file", path], "cannot read", path)

    def test_missing_public_key(self):
        """A public key file that does not exist is refused, naming it."""
        path = os.path.join(self.data_dir(), "nope.pem")
        self.assertUsageError(["--jwt-public-key", path], "cannot read", path)

    def test_public_key_not_pem(self):
        """A public key file that is not a PEM public key is refused."""
        path = write_file(self, "key.pem", b"this is not a key\n")
        self.assertUsageError(["--jwt-public-key", path], path, "not a PEM public key")

    def test_private_key_as_public_key(self):
        """A PEM private key given as --jwt-public-key is refused (it is not a public key)."""
        pem = ec_key().private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        path = write_file(self, "private.pem", pem)
        self.assertUsageError(["--jwt-public-key", path, "--jwt-algorithm", "ES256"],
                              "not a PEM public key")

    def test_public_key_algorithm_with_secret(self):
        """RS256 with an HMAC secret is refused: it needs a public key."""
        path = write_file(self, "secret", b"k" * 32)
        self.assertUsageError(["--jwt-secret-file", path, "--jwt-algorithm", "RS256"],
                              "RS256", "--jwt-public-key")
        self.assertUsageError(["--jwt-algorithm", "RS256"], "RS256", "--jwt-public-key")

    def test_hmac_algorithm_with_public_key(self):
        """HS256 with a public key is refused: that is the algorithm-confusion hole."""
        path = write_file(self, "public.pem", public_pem(rsa_key()))
        self.assertUsageError(["--jwt-public-key", path, "--jwt-algorithm", "HS256"],
                              "HS256", "public-key")

    def test_algorithm_does_not_fit_key(self):
        """An algorithm of another key type than the key's is refused."""
        path = write_file(self, "public.pem", public_pem(ec_key()))
        self.assertUsageError(["--jwt-public-key", path, "--jwt-algorithm", "RS256"],
                              "RS256", "EC")

    def test_unknown_algorithm(self):
        """An algorithm name that does not exist (or C{none}) is refused."""
        self.assertUsageError(["--jwt-algorithm", "none"], "none")
        path = write_file(self, "public.pem", public_pem(rsa_key()))
        self.assertUsageError(["--jwt-public-key", path, "--jwt-algorithm", "none"], "none")

    def test_secret_and_public_key(self):
        """A secret file and a public key together are refused."""
        secret = write_file(self, "secret", b"k" * 32)
        key = write_file(self, "public.pem", public_pem(rsa_key()))
        self.assertUsageError(["--jwt-secret-file", secret, "--jwt-public-key", key],
                              "--jwt-secret-file", "--jwt-public-key", "not both")

    def test_negative_numbers(self):
        """Negative seconds and sizes are refused, naming the option."""
        for option in ("--jwt-leeway", "--heartbeat-interval", "--ping-interval",
                       "--ping-timeout", "--max-message-size", "--max-connections-per-user",
                       "--max-connections"):
            self.assertUsageError([option, "-1"], option, "-1")

    def test_non_numeric_numbers(self):
        """Values that are not numbers are refused, naming the option and the value."""
        for option in ("--jwt-leeway", "--heartbeat-interval", "--ping-interval",
                       "--ping-timeout", "--max-message-size", "--max-connections-per-user",
                       "--max-connections"):
            self.assertUsageError([option, "abc"], option, "abc")
        self.assertUsageError(["--jwt-leeway", "nan"], "--jwt-leeway")
        self.assertUsageError(["--heartbeat-interval", "inf"], "--heartbeat-interval")
        self.assertUsageError(["--max-message-size", "1.5"], "--max-message-size")

    def test_zero_where_it_cannot_work(self):
        """Ping interval and timeout, message size and connection caps cannot be 0."""
        for option in ("--ping-interval", "--ping-timeout", "--max-message-size",
                       "--max-connections-per-user", "--max-connections"):
            self.assertUsageError([option, "0"], option)

    def test_invalid_allowed_origin(self):
        """An --allowed-origin that is not scheme://host[:port] is refused, quoting it."""
        for origin in ("mc.example.com", "https://mc.example.com/app", "ftp://mc.example.com"):
            self.assertUsageError(["--allowed-origin", origin], "--allowed-origin", origin)

    def test_help_names_the_default_algorithms(self):
        """
        The --help text of --jwt-algorithm gives the defaults as they are: HS256 with a secret,
        and with a public key the key's own algorithm (not RS256 for every key).
        """
        text = " ".join(str(Options(environ={})).split())
        self.assertIn("[HS256 with a secret; with a public key, the key's own: RS256 for RSA, "
                      "ES256/ES384/ES512 for EC by curve, EdDSA for Ed25519/Ed448]", text)
        self.assertNotIn("RS256 with a public key", text)

    def test_unknown_option(self):
        """An option that does not exist is a usage error."""
        self.assertUsageError(["--no-such-option"], "--no-such-option")

    def test_under_twistd_one_line_on_stderr(self):
        """
        Under twistd a usage error ends the process with one line (SystemExit with a message,
        which Python prints to stderr), not twistd's usage page on stdout.
        """
        config = ServerOptions()
        exc = self.assertRaises(
            SystemExit, config.parseOptions,
            ["-n", "mission-control", "--data-dir", self.data_dir(), "--jwt-leeway", "abc"],
        )
        self.assertIsInstance(exc.code, str)
        self.assertEqual(len(exc.code.splitlines()), 1)
        self.assertIn("mission-control", exc.code)
        self.assertIn("--jwt-leeway must be a number >= 0, not 'abc'", exc.code)


class SecurityDocTests(SynchronousTestCase):
    """docs/security.md, the one table of limits, names every limit option."""

    def test_every_limit_option_is_in_the_table(self):
        """Each --max-*, --history-*, --ping-* option appears in docs/security.md."""
        with open(os.path.join(PROJECT_ROOT, "docs", "security.md"), encoding="utf-8") as f:
            text = f.read()
        names = [name for name, *_ in Options.optParameters
                 if name.startswith(("max-", "history-", "ping-"))]
        self.assertGreater(len(names), 10)
        missing = [name for name in names if f"`--{name}`" not in text]
        self.assertEqual(missing, [])


class UrlsTests(SynchronousTestCase):
    """L{urls_of}: what the start-up log announces for a listening port."""

    class Port:
        def __init__(self, address):
            self.address = address

        def getHost(self):
            return self.address

    def test_tcp(self):
        """A TCP port serves http:// and ws://.../ws on its address and real port."""
        port = self.Port(IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertEqual(urls_of("tcp:8080:interface=127.0.0.1", port),
                         ["http://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws"])

    def test_ssl(self):
        """An ssl: port serves https:// and wss://."""
        port = self.Port(IPv4Address("TCP", "127.0.0.1", 8443))
        self.assertEqual(urls_of("ssl:8443:privateKey=k.pem:certKey=c.pem", port),
                         ["https://127.0.0.1:8443/", "wss://127.0.0.1:8443/ws"])

    def test_all_interfaces(self):
        """A port on every interface is announced as localhost."""
        self.assertEqual(urls_of("tcp:80", self.Port(IPv4Address("TCP", "0.0.0.0", 80))),
                         ["http://localhost:80/", "ws://localhost:80/ws"])
        self.assertEqual(urls_of("tcp6:80", self.Port(IPv6Address("TCP", "::", 80))),
                         ["http://localhost:80/", "ws://localhost:80/ws"])

    def test_ipv6(self):
        """An IPv6 address is bracketed."""
        port = self.Port(IPv6Address("TCP", "::1", 9000))
        self.assertEqual(urls_of("tcp6:9000:interface=\\:\\:1", port),
                         ["http://[::1]:9000/", "ws://[::1]:9000/ws"])

    def test_unix(self):
        """A UNIX socket is named by its path."""
        [line] = urls_of("unix:/run/mc.sock", self.Port(UNIXAddress("/run/mc.sock")))
        self.assertIn("/run/mc.sock", line)
        self.assertIn("/ws", line)


class ServiceTreeTests(OptionsMixin, SynchronousTestCase):
    """L{makeService} on a fake reactor: what it builds, starts and stops."""

    def build(self, *args):
        self.reactor = MemoryReactorClock()
        if "--listen" not in args:
            args = ("--listen", "tcp:0:interface=127.0.0.1", *args)
        options = self.parse(*args)
        service = makeService(options, reactor=self.reactor)
        self.logged: list = []
        service.log = Logger(observer=self.logged.append)
        return options, service

    def messages(self) -> list[str]:
        return [formatEvent(event) for event in self.logged]

    def test_wiring(self):
        """The options reach the hub: heartbeat interval and connection caps."""
        _, service = self.build("--heartbeat-interval", "7", "--max-connections", "3",
                                "--max-connections-per-user", "2")
        self.assertIsInstance(service, MissionControlService)
        self.assertEqual(service.hub.heartbeat_interval, 7)
        self.assertEqual(service.hub.max_connections, 3)
        self.assertEqual(service.hub.max_connections_per_user, 2)

    def test_wiring_of_the_limits(self):
        """The HTTP connection cap, the read rate and the handshake rate reach their objects."""
        _, service = self.build("--max-http-connections", "7", "--max-reads-per-second", "3",
                                "--max-handshakes-per-second", "2", "--max-connections-per-user",
                                "4")
        self.assertEqual(service.site.max_http_connections, 7)
        api = service.site.resource.children[b"api"]
        self.assertEqual((api._reads.rate, api._reads.burst), (3, 6))
        self.assertEqual((service.hub.handshakes.rate, service.hub.handshakes.burst), (2, 4))

    def test_file_limit_too_low_is_said_at_start(self):
        """
        When the file limit cannot be raised to what the connection limits may use, the start-up
        log says so with both numbers; when it can, nothing is said.
        """
        self.patch(tap, "raise_file_limit", lambda needed: 256)
        _, service = self.build("--max-connections", "500", "--max-http-connections", "100")
        service.startService()
        self.addCleanup(service.stopService)
        warned = [m for m in self.messages() if "file limit" in m]
        self.assertEqual(len(warned), 1)
        self.assertIn("(256)", warned[0])
        self.assertIn(f"({500 + 100 + tap.FILE_RESERVE})", warned[0])
        self.patch(tap, "raise_file_limit", lambda needed: needed)
        _, service = self.build()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([m for m in self.messages() if "file limit" in m], [])

    def test_listens_on_every_endpoint(self):
        """Starting listens once per --listen, with the site, and logs each URL."""
        _, service = self.build("--listen", "tcp:0:interface=127.0.0.1",
                                "--listen", "tcp:9999:interface=127.0.0.1")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([(port, interface) for port, _, _, interface in self.reactor.tcpServers],
                         [(0, "127.0.0.1"), (9999, "127.0.0.1")])
        self.assertIs(self.reactor.tcpServers[0][1], service.site)
        self.assertEqual(len(service.ports), 2)
        urls = [m for m in self.messages() if "listening" in m]
        self.assertEqual(len(urls), 4)

    def test_no_demo_by_default(self):
        """Without --demo nothing publishes: no DemoFleet, and seq stays 0 as time passes."""
        _, service = self.build()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([s for s in service if isinstance(s, DemoFleet)], [])
        self.reactor.advance(60)
        self.assertEqual(service.hub.store.last_seq, 0)

    def test_demo_fleet_publishes(self):
        """
        With --demo the service runs a DemoFleet on the hub and the service's clock: every agent
        comes online at start, then one event per interval, until the service stops.
        """
        _, service = self.build("--demo")
        [fleet] = [s for s in service if isinstance(s, DemoFleet)]
        self.assertIs(fleet.hub, service.hub)
        self.assertIs(fleet.clock, self.reactor)
        service.startService()
        self.assertTrue(fleet.running)
        started = service.hub.store.last_seq
        self.assertEqual(started, len(fleet.agents))
        self.assertEqual(len(service.hub.store.agents()), len(fleet.agents))
        for _ in range(10):
            self.reactor.advance(fleet.interval)
        self.assertGreaterEqual(service.hub.store.last_seq, started + 10)
        service.stopService()
        self.assertFalse(fleet.running)
        stopped = service.hub.store.last_seq
        self.reactor.advance(60)
        self.assertEqual(service.hub.store.last_seq, stopped)

    def test_start_log_names_command_without_secret(self):
        """
        With a generated secret the start-up log gives the command that mints a token: the
        console script installed next to the running Python, named by its path, with the data
        dir quoted for a shell; never the secret itself.
        """
        data_dir = os.path.join(self.data_dir(), "my data")
        options, service = self.build("--data-dir", data_dir)
        service.startService()
        self.addCleanup(service.stopService)
        [hint] = [m for m in self.messages() if "mission-control token" in m]
        words = shlex.split(hint.split("mint a token with: ", 1)[1])
        self.assertEqual(
            words[1:], ["token", "--data-dir", data_dir, "--sub", "alice", "--role", "admin"])
        # The console script next to the running Python (a venv's), which a shell may not find.
        self.assertTrue(os.path.samefile(
            words[0], os.path.join(os.path.dirname(sys.executable), "mission-control")), words[0])
        secret = options["verifier"].key.decode()
        for message in self.messages():
            self.assertNotIn(secret, message)

    def dashboard_links(self) -> list[str]:
        return [m for m in self.messages() if m.startswith("dashboard: ")]

    def test_start_log_links_the_dashboard(self):
        """
        With the development secret the start-up log has one link per HTTP listener that opens
        the dashboard signed in: the page's URL and, in the fragment, a token the hub accepts,
        for sub admin, name Administrator, role admin, valid 12 hours.  A unix socket gets none;
        the token is in no other line, and the secret in none.
        """
        socket_path = os.path.join(self.data_dir(), "hub.sock")
        options, service = self.build("--listen", "tcp:0:interface=127.0.0.1",
                                      "--listen", "tcp:9999:interface=127.0.0.1",
                                      "--listen", f"unix:{socket_path}")
        self.reactor.advance(1_800_000_000)
        service.startService()
        self.addCleanup(service.stopService)
        links = self.dashboard_links()
        # The memory reactor's ports say they listen on every interface: "localhost".
        self.assertEqual([link.split("#", 1)[0] for link in links],
                         ["dashboard: http://localhost:0/", "dashboard: http://localhost:9999/"])
        [token] = {link.split("#token=", 1)[1] for link in links}
        now = self.reactor.seconds()
        principal = options["verifier"].verify(token, now)
        self.assertEqual((principal.sub, principal.name, principal.role),
                         ("admin", "Administrator", "admin"))
        self.assertEqual(principal.expires_at, int(now) + 12 * 3600)
        self.assertEqual([m for m in self.messages() if token in m], links)
        secret = options["verifier"].key.decode()
        self.assertFalse([m for m in self.messages() if secret in m])

    def test_dashboard_link_with_a_read_secret(self):
        """A development secret read from an earlier start (not generated now) links too."""
        data_dir = self.data_dir()
        auth.load_or_create_secret(data_dir)
        options, service = self.build("--data-dir", data_dir)
        self.assertFalse(options["generated-secret"])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.dashboard_links()), 1)

    def test_dashboard_token_fits_the_verifier(self):
        """
        The link's token carries the configured iss and aud and is signed with the first
        configured algorithm, so the hub accepts it whatever those options say.
        """
        options, service = self.build("--jwt-algorithm", "HS512", "--jwt-issuer", "mc",
                                      "--jwt-audience", "dash")
        service.startService()
        self.addCleanup(service.stopService)
        [link] = self.dashboard_links()
        token = link.split("#token=", 1)[1]
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS512")
        self.assertEqual(options["verifier"].verify(token, self.reactor.seconds()).role, "admin")

    def test_dashboard_urls(self):
        """Only http:// and https:// listener URLs are dashboard pages."""
        self.assertEqual(tap.dashboard_urls(["http://a:1/", "ws://a:1/ws", "https://b:2/",
                                             "wss://b:2/ws", "unix socket /x (HTTP, ...)"]),
                         ["http://a:1/", "https://b:2/"])

    def test_no_dashboard_link_without_the_development_secret(self):
        """With --jwt-secret-file or --jwt-public-key no token is logged at all."""
        path = write_file(self, "secret", b"q" * 32)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = write_file(self, "key.pem", key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        for args in (("--jwt-secret-file", path), ("--jwt-public-key", pem)):
            _, service = self.build(*args)
            service.startService()
            self.addCleanup(service.stopService)
            self.assertEqual(self.dashboard_links(), [], args)
            self.assertFalse([m for m in self.messages() if "token=" in m or "eyJ" in m], args)

    def test_no_token_hint_with_secret_file(self):
        """With --jwt-secret-file there is no data-dir secret, so no hint to use it."""
        path = write_file(self, "secret", b"q" * 32)
        _, service = self.build("--jwt-secret-file", path)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([m for m in self.messages() if "mission-control token" in m], [])
        self.assertNotIn("q" * 32, "".join(self.messages()))


class FileLimitTests(SynchronousTestCase):
    """raise_file_limit: room for every connection, as far as the hard limit allows."""

    def fake(self, soft, hard):
        import resource

        state = {"limits": (soft, hard)}

        def setrlimit(which, limits):
            self.assertEqual(which, resource.RLIMIT_NOFILE)
            if limits[0] > state["limits"][1] != resource.RLIM_INFINITY:
                raise ValueError("not allowed")
            state["limits"] = limits

        return state, (lambda which: state["limits"]), setrlimit

    def test_raised_to_what_is_needed(self):
        """A soft limit below the need is raised to the need when the hard limit allows it."""
        state, get, set_ = self.fake(1024, 65536)
        self.assertEqual(tap.raise_file_limit(11064, get, set_), 11064)
        self.assertEqual(state["limits"], (11064, 65536))

    def test_raised_as_far_as_the_hard_limit(self):
        """Past the hard limit, the soft one goes up to the hard one, and that is returned."""
        state, get, set_ = self.fake(256, 4096)
        self.assertEqual(tap.raise_file_limit(11064, get, set_), 4096)
        self.assertEqual(state["limits"], (4096, 4096))

    def test_enough_already(self):
        """A soft limit that covers the need is left alone."""
        state, get, set_ = self.fake(65536, 65536)
        self.assertEqual(tap.raise_file_limit(11064, get, set_), 65536)
        self.assertEqual(state["limits"], (65536, 65536))


class ListeningTests(OptionsMixin, TestCase):
    """The service on real ports."""

    @defer.inlineCallbacks
    def test_every_listener_serves(self):
        """With two --listen endpoints both answer /healthz."""
        server = start_server(self, args=["--listen", "tcp:0:interface=127.0.0.1",
                                          "--listen", "tcp:0:interface=127.0.0.1"])
        ports = [port.getHost().port for _, port in server.service.ports]
        self.assertEqual(len(set(ports)), 2)
        for port in ports:
            response = yield raw_request(port, http_request("GET", "/healthz"))
            self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_stop_closes_ports(self):
        """Once stopService's Deferred fires, the ports no longer accept connections."""
        options = self.parse("--listen", "tcp:0:interface=127.0.0.1")
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        port = service.ports[0][1].getHost().port
        yield service.stopService()
        with socket.socket() as s:
            self.assertRaises(ConnectionRefusedError, s.connect, ("127.0.0.1", port))

    @defer.inlineCallbacks
    def test_stopping_answers_connections_already_queued(self):
        """
        A connection the kernel completed but the reactor had not accepted yet when stopping
        began is accepted and answered (its WebSocket handshake gets 503 shutting down), not
        reset when the listening socket closes; one made after that is refused.
        """
        server = start_server(self)
        queued = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(queued.close)
        queued.sendall(upgrade_request(headers=bearer(server.token("late"))))
        # The reactor has not run since: the connection waits in the listening socket's queue.
        stopped = server.service.stopService()
        with socket.socket() as late:
            self.assertRaises(ConnectionRefusedError, late.connect, ("127.0.0.1", server.port))

        def read_all():
            queued.settimeout(10)
            data = b""
            while chunk := queued.recv(65536):
                data += chunk
            return data

        answer = parse_response((yield threads.deferToThread(read_all)))
        self.assertEqual((answer.status, answer.reason), (503, "shutting down"), answer.raw)
        yield stopped

    @defer.inlineCallbacks
    def test_port_in_use(self):
        """
        A port that is taken stops the start with one "cannot listen" line, and the listeners
        opened before it are closed again.
        """
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        taken_port = taken.getHost().port
        first = free_port()
        options = self.parse("--listen", f"tcp:{first}:interface=127.0.0.1",
                             "--listen", f"tcp:{taken_port}:interface=127.0.0.1")
        service = makeService(options, reactor=reactor)
        exc = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(len(exc.code.splitlines()), 1, exc.code)
        self.assertIn(f"mission-control: cannot listen on tcp:{taken_port}", exc.code)
        self.assertEqual(service.ports, [])

        def first_is_free():
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", first))
                except OSError:
                    return False
                return True

        yield wait_until(first_is_free)


class PublicKeyTests(TestCase):
    """--jwt-public-key: tokens signed by the private key are the only ones accepted."""

    def start(self, private_key, *args):
        path = write_file(self, "public.pem", public_pem(private_key))
        with open(path, "rb") as f:
            self.pem = f.read()
        return start_server(self, args=["--jwt-public-key", path, *args])

    def claims(self, sub="alice"):
        now = int(reactor.seconds())
        return {"sub": sub, "role": "admin", "iat": now, "exp": now + 600}

    @defer.inlineCallbacks
    def check(self, private_key, algorithm, *args):
        server = self.start(private_key, *args)
        self.assertEqual(server.options["verifier"].algorithms, [algorithm])

        good = jwt.encode(self.claims(), private_key, algorithm=algorithm)
        client = yield connect(self, server, token=good)
        welcome = yield client.next_of("welcome")
        self.assertEqual(welcome["payload"]["user"]["id"], "alice")

        # The attack token is well formed: signed like this with a real secret, PyJWT accepts it.
        probe = hand_made_hs256(b"p" * 32, self.claims("mallory"))
        self.assertEqual(jwt.decode(probe, b"p" * 32, algorithms=["HS256"])["sub"], "mallory")
        attack = hand_made_hs256(self.pem, self.claims("mallory"))
        response = yield raw_request(server.port, upgrade_request(headers=bearer(attack)))
        self.assertEqual(response.status, 401, response.raw)
        response = yield raw_request(server.port,
                                     http_request("GET", "/api/agents", token=attack))
        self.assertEqual(response.status, 401, response.raw)
        self.assertEqual(server.hub.connection_count, 1)

    def test_rsa(self):
        """
        With an RSA public key (RS256 by default) an RS256 token signed by the private key opens a
        WebSocket; an HS256 token whose HMAC key is the PEM public key is refused with 401.
        """
        return self.check(rsa_key(), "RS256")

    def test_ec(self):
        """
        With an EC P-256 key and --jwt-algorithm ES256 an ES256 token opens a WebSocket; an HS256
        token whose HMAC key is the PEM public key is refused with 401.
        """
        return self.check(ec_key(), "ES256", "--jwt-algorithm", "ES256")

    @defer.inlineCallbacks
    def test_other_private_key_refused(self):
        """A token signed by another key of the same type is refused with 401."""
        server = self.start(ec_key(), "--jwt-algorithm", "ES256")
        other = ec.generate_private_key(ec.SECP256R1())
        token = jwt.encode(self.claims(), other, algorithm="ES256")
        response = yield raw_request(server.port, upgrade_request(headers=bearer(token)))
        self.assertEqual(response.status, 401, response.raw)


class IssuerAudienceTests(TestCase):
    """--jwt-issuer and --jwt-audience: when set, iss and aud must match."""

    ISSUER = "https://id.example"
    AUDIENCE = "mission-control"

    def setUp(self):
        self.server = start_server(
            self, args=["--jwt-issuer", self.ISSUER, "--jwt-audience", self.AUDIENCE]
        )

    @defer.inlineCallbacks
    def refused(self, token):
        response = yield raw_request(self.server.port, upgrade_request(headers=bearer(token)))
        self.assertEqual(response.status, 401, response.raw)
        response = yield raw_request(self.server.port,
                                     http_request("GET", "/api/agents", token=token))
        self.assertEqual(response.status, 401, response.raw)

    @defer.inlineCallbacks
    def test_right_issuer_and_audience(self):
        """A token with the configured iss and aud opens a WebSocket and is served by the API."""
        token = self.server.token("alice", issuer=self.ISSUER, audience=self.AUDIENCE)
        client = yield connect(self, self.server, token=token)
        welcome = yield client.next_of("welcome")
        self.assertEqual(welcome["payload"]["user"]["id"], "alice")
        response = yield raw_request(self.server.port,
                                     http_request("GET", "/api/agents", token=token))
        self.assertEqual(response.status, 200, response.raw)

    def test_wrong_issuer(self):
        """A token from another issuer gets 401."""
        return self.refused(self.server.token(issuer="https://evil.example",
                                              audience=self.AUDIENCE))

    def test_wrong_audience(self):
        """A token for another audience gets 401."""
        return self.refused(self.server.token(issuer=self.ISSUER, audience="something-else"))

    @defer.inlineCallbacks
    def test_missing_issuer_and_audience(self):
        """A token without iss, or without aud, gets 401 when they are configured."""
        yield self.refused(self.server.token(audience=self.AUDIENCE))
        yield self.refused(self.server.token(issuer=self.ISSUER))


class TwistdCommandTests(TestCase):
    """C{twistd -n mission-control ...} as a real child process."""

    def spawn(self, *args) -> TwistdProcess:
        return spawn_twistd(self, *args)

    def ended(self, proto, timeout=15):
        return proto.ended.addTimeout(timeout, reactor)

    @defer.inlineCallbacks
    def test_starts_serves_and_stops(self):
        """
        twistd -n mission-control starts, logs its URLs and the command that mints a token (never
        the secret), answers /healthz, and exits on SIGTERM.
        """
        port = free_port()
        data_dir = os.path.abspath(self.mktemp())
        proto = self.spawn("--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir)
        # The mint command is the last line of the start: the output may arrive in pieces.
        yield wait_until(lambda: "mint a token with: " in proto.output
                         or proto.ended.called, timeout=15)
        yield wait_until(lambda: proto.output.endswith("\n") or proto.ended.called, timeout=5)
        self.assertFalse(proto.ended.called, proto.output)
        self.assertIn(f"http://127.0.0.1:{port}/", proto.output)
        self.assertIn(f"ws://127.0.0.1:{port}/ws", proto.output)
        self.assertIn(
            f"mission-control token --data-dir {shlex.quote(data_dir)} --sub alice --role admin",
            proto.output,
        )
        # The dashboard's link opens it signed in: its token is the hub's admin.
        [link] = [line.split("dashboard: ", 1)[1] for line in proto.output.splitlines()
                  if "dashboard: " in line]
        page, _, fragment = link.partition("#token=")
        self.assertEqual(page, f"http://127.0.0.1:{port}/")
        response = yield raw_request(port, http_request("GET", "/api/me", token=fragment))
        self.assertEqual((response.status, response.json()["user"]),
                         (200, {"id": "admin", "name": "Administrator", "role": "admin"}))
        response = yield raw_request(port, http_request("GET", "/"))
        self.assertEqual(response.status, 200)

        response = yield raw_request(port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), {"status": "ok"})

        # The command works as printed, in a shell whose PATH does not hold the hub's venv.
        [command] = [line.split("mint a token with: ", 1)[1]
                     for line in proto.output.splitlines() if "mint a token with: " in line]
        minted = yield utils.getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env={"PATH": "/usr/bin:/bin"})
        self.assertEqual(minted[2], 0, minted)
        token = minted[0].decode().strip()
        response = yield raw_request(port, http_request("GET", "/api/agents", token=token))
        self.assertEqual(response.status, 200, response.raw)

        proto.process.signalProcess("TERM")
        reason = yield self.ended(proto)
        self.assertIn((reason.exitCode, reason.signal), [(0, None), (None, signal.SIGTERM)])
        self.assertIn("Server Shut Down", proto.output)
        with open(os.path.join(data_dir, "jwt-secret")) as f:
            secret = f.read().strip()
        self.assertGreaterEqual(len(secret), 32)
        self.assertNotIn(secret, proto.output)
        self.assertNotIn("Traceback", proto.output)

    @defer.inlineCallbacks
    def test_usage_error(self):
        """A bad option exits non-zero with one clear line on stderr, no usage page, no traceback."""
        proto = self.spawn("--data-dir", os.path.abspath(self.mktemp()), "--jwt-leeway", "abc")
        reason = yield self.ended(proto)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertNotEqual(reason.exitCode, 0)
        lines = proto.err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, proto.output)
        self.assertIn("--jwt-leeway must be a number >= 0, not 'abc'", lines[0])
        self.assertEqual(proto.out, b"")
        self.assertNotIn("Traceback", proto.output)

    @defer.inlineCallbacks
    def test_port_in_use(self):
        """A port already in use exits non-zero with a "cannot listen" line and no traceback."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proto = self.spawn("--listen", f"tcp:{port}:interface=127.0.0.1",
                           "--data-dir", os.path.abspath(self.mktemp()))
        reason = yield self.ended(proto)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertNotEqual(reason.exitCode, 0)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", proto.output)
        self.assertNotIn("Traceback", proto.output)


class _Collector(protocol.Protocol):
    """Collects what the server sends; C{lost} fires with it once the connection ends."""

    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(self.data)

    def close_frame_code(self) -> int | None:
        """The code of the first close frame after the handshake's head, if one arrived."""
        _, _, frames = self.data.partition(b"\r\n\r\n")
        while len(frames) >= 2:
            opcode, length = frames[0] & 0x0F, frames[1] & 0x7F
            start = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(frames[2:start], "big")
            if len(frames) < start + length:
                return None
            if opcode == 0x8:
                return int.from_bytes(frames[start:start + 2], "big")
            frames = frames[start + length:]
        return None


class TwistdShutdownTests(TestCase):
    """What clients see while a real C{twistd mission-control} process stops on SIGTERM."""

    timeout = 60

    @defer.inlineCallbacks
    def test_clients_connecting_during_sigterm_get_a_clear_answer(self):
        """
        On SIGTERM the hub stops listening before anything else: a client connecting from then on
        is refused at once, never accepted and left without an answer.  A connection accepted
        before the signal still has its answer: its WebSocket handshake, sent after the hub has
        closed every WebSocket, gets 503 shutting down instead of being dropped when the
        process exits.  Then the process exits cleanly.
        """
        port = free_port()
        data_dir = os.path.abspath(self.mktemp())
        proto = spawn_twistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                             "--data-dir", data_dir)
        yield wait_until(lambda: f"ws://127.0.0.1:{port}/ws" in proto.output
                         or proto.ended.called, timeout=15)
        self.assertFalse(proto.ended.called, proto.output)
        secret = auth.read_secret(os.path.join(data_dir, "jwt-secret"))
        token = auth.mint_token(secret, "alice", reactor.seconds(), ttl=600)

        def endpoint():
            return TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        # The hub accepts in arrival order: once the later WebSocket is answered, it holds this one.
        in_flight = yield connectProtocol(endpoint(), _Collector())
        watcher = yield connectProtocol(endpoint(), _Collector())
        watcher.transport.write(upgrade_request(headers=bearer(token)))
        yield wait_until(lambda: b'"welcome"' in watcher.data, timeout=10)

        proto.process.signalProcess("TERM")
        # The watcher hears 1001 and does not answer: the hub keeps waiting for it.
        yield wait_until(lambda: watcher.close_frame_code() is not None, timeout=10)
        self.assertEqual(watcher.close_frame_code(), 1001)
        yield self.assertFailure(connectProtocol(endpoint(), _Collector()),
                                 error.ConnectionRefusedError)

        watcher.transport.abortConnection()
        yield wait_until(lambda: "of alice closed" in proto.output, timeout=10)
        in_flight.transport.write(upgrade_request(headers=bearer(token)))
        answer = parse_response((yield in_flight.lost))
        self.assertEqual((answer.status, answer.reason), (503, "shutting down"), answer.raw)

        reason = yield proto.ended.addTimeout(15, reactor)
        self.assertIn((reason.exitCode, reason.signal), [(0, None), (None, signal.SIGTERM)])
        self.assertIn("Server Shut Down", proto.output)
        self.assertNotIn("Traceback", proto.output)



class TwistdFilesTests(TestCase):
    """The files twistd writes for the hub: its log file and pidfile, as deployment.md runs it."""

    timeout = 60

    def twistd(self, *args, cwd):
        """Run C{twistd ARGS} (twistd's options and the plugin's) in C{cwd}; fires at its exit."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise SkipTest(f"no twistd next to {sys.executable}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        proto = ChildProcess()
        reactor.spawnProcess(proto, twistd, [twistd, *args], env=env, path=cwd)
        return proto

    def workdir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    @defer.inlineCallbacks
    def test_missing_log_and_pid_directories(self):
        """
        A --logfile or --pidfile in a directory that does not exist stops the start with one line
        on stderr that names the option and the directory, exit status 1, no traceback, and
        nothing created.
        """
        cwd = self.workdir()
        for option, path in [("--logfile", "logs/hub.log"), ("--pidfile", "run/hub.pid")]:
            args = ["--pidfile", os.path.join(cwd, "hub.pid"), "--logfile",
                    os.path.join(cwd, "hub.log")]
            args[args.index(option) + 1] = os.path.join(cwd, path)
            proto = self.twistd(*args, "mission-control", "--data-dir",
                                os.path.join(cwd, "data"), "--listen", "tcp:0", cwd=cwd)
            code = yield proto.ended
            lines = proto.err.decode().strip().splitlines()
            self.assertEqual((code, len(lines)), (1, 1), proto.err)
            directory = os.path.dirname(os.path.join(cwd, path))
            self.assertIn(f"twistd mission-control: {option} {os.path.join(cwd, path)}: "
                          f"the directory {directory} does not exist", lines[0])
            self.assertNotIn(b"Traceback", proto.out + proto.err)
            self.assertEqual(os.listdir(cwd), [])

    @defer.inlineCallbacks
    def test_daemon_log_file_is_private_from_the_start(self):
        """
        Daemonized with deployment.md's command, the first log file is created with the umask
        twistd documents for daemons, 0077: mode 0600, like every file rotated after it; and the
        daemon stops on SIGTERM to the pid in its pidfile, which it removes.
        """
        cwd = self.workdir()
        os.makedirs(os.path.join(cwd, "log"))
        os.makedirs(os.path.join(cwd, "run"))
        pidfile, logfile = os.path.join(cwd, "run", "hub.pid"), os.path.join(cwd, "log", "hub.log")
        port = free_port()
        proto = self.twistd("--pidfile", pidfile, "--logfile", logfile, "mission-control",
                            "--data-dir", os.path.join(cwd, "data"),
                            "--listen", f"tcp:{port}:interface=127.0.0.1", cwd=cwd)
        code = yield proto.ended
        self.assertEqual(code, 0, proto.err)
        with open(pidfile) as f:
            pid = int(f.read())

        def stop():
            if os.path.exists(pidfile):
                os.kill(pid, signal.SIGTERM)
                return wait_until(lambda: not os.path.exists(pidfile), timeout=15)

        self.addCleanup(stop)
        yield wait_until(lambda: f"ws://127.0.0.1:{port}/ws" in open(logfile).read(), timeout=15)
        self.assertEqual(oct(os.stat(logfile).st_mode & 0o777), oct(0o600))
        # An answer means the daemon's reactor runs, so its SIGTERM handler is in place: the
        # start-up log is written before that, and a SIGTERM sooner would kill it outright.
        response = yield raw_request(port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 200)
        yield stop()
        self.assertIn("Server Shut Down", open(logfile).read())

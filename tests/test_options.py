"""
Tests for L{mission_control.options}: the options of C{twistd mission-control}, from the command
line and the environment, the usage errors that stop a start before anything runs, and the key
options (C{--jwt-public-key}, C{--jwt-issuer}, C{--jwt-audience}) end to end.

Option tests call C{Options(environ={...}).parseOptions([...])} exactly as twistd does, with an
explicit environment so that the caller's own C{MISSION_CONTROL_*} variables play no part.
"""

from __future__ import annotations

import os

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, reactor
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mission_control import auth, tokens
from mission_control.options import DEFAULT_LISTEN, Options
from tests import certs
from tests.helpers import (
    PROJECT_ROOT,
    OptionsMixin,
    bearer,
    connect,
    ec_key,
    forge_hs256,
    http_request,
    public_pem,
    raw_request,
    rsa_key,
    start_server,
    upgrade_request,
    write_file,
)


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
        token = tokens.mint_token(secret, "alice", 1000.0)
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
        token = tokens.mint_token(key, "alice", 1000.0, algorithm="HS512")
        self.assertEqual(options["verifier"].verify(token, 1000.0).sub, "alice")
        options = self.parse("--jwt-algorithm", "HS512")
        token = tokens.mint_token(options["verifier"].key, "alice", 1000.0, algorithm="HS256")
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


class MetricsListenTests(OptionsMixin, SynchronousTestCase):
    """--metrics-listen: none by default, from the environment too, checked like --listen."""

    def test_none_by_default(self):
        """Without the option there is no metrics endpoint."""
        self.assertIsNone(self.parse()["metrics-listen"])

    def test_given(self):
        """A usable endpoint string is kept as given."""
        options = self.parse("--metrics-listen", "tcp:9100:interface=127.0.0.1")
        self.assertEqual(options["metrics-listen"], "tcp:9100:interface=127.0.0.1")

    def test_from_environment(self):
        """MISSION_CONTROL_METRICS_LISTEN sets it; the command line wins over it."""
        environ = {"MISSION_CONTROL_METRICS_LISTEN": "tcp:9100"}
        self.assertEqual(self.parse(environ=environ)["metrics-listen"], "tcp:9100")
        self.assertEqual(self.parse("--metrics-listen", "tcp:9200", environ=environ)
                         ["metrics-listen"], "tcp:9200")

    def test_bad_endpoint(self):
        """An endpoint string that cannot listen is one usage line naming the option."""
        self.assertUsageError(["--metrics-listen", "nonsense:1"], "--metrics-listen",
                              "nonsense:1", "is not a usable endpoint")
        self.assertUsageError(["--metrics-listen", "tcp:notaport"], "--metrics-listen",
                              "notaport")

    def test_bad_endpoint_from_environment(self):
        """A bad endpoint from the environment is refused the same way."""
        self.assertUsageError([], "--metrics-listen", "tcp:x",
                              environ={"MISSION_CONTROL_METRICS_LISTEN": "tcp:x"})


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
        probe = forge_hs256(self.claims("mallory"), b"p" * 32)
        self.assertEqual(jwt.decode(probe, b"p" * 32, algorithms=["HS256"])["sub"], "mallory")
        attack = forge_hs256(self.claims("mallory"), self.pem)
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

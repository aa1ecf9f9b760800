# -*- test-case-name: tests.test_cli -*-
"""
Tests for L{mission_control.cli}, the C{mission-control} console script.

Tokens are checked with the hub's own L{auth.TokenVerifier}; C{publish} and C{watch} talk to a real
server on a loopback port (L{tests.helpers.start_server}).  C{publish} blocks in urllib, so it runs
in a thread while the reactor serves.  The reconnect loop's timing is checked with a L{task.Clock}
and a fake endpoint; its reconnecting for real, against a server restarted on the same port.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import ipaddress
import json
import os
import re
import socket
import sys
import time
from datetime import timezone

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, reactor, task, threads
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource
from twisted.web import server as web_server
from twisted.web.util import Redirect

from mission_control import auth, cli, events
from tests import certs
from tests.helpers import ChildProcess, start_server, tmp_path, wait_until

FAST_RETRY = backoffPolicy(initialDelay=0.05, maxDelay=0.2, factor=2.0, jitter=lambda: 0.0)


def printed_seqs(lines):
    """The seq of every event line in C{lines}, in order."""
    return [int(match.group(1)) for match in map(re.compile(r"  seq=(\d+)$").search, lines)
            if match]


# Helpers


def run(argv, environ=None):
    """Run the CLI in-process: C{(exit code, stdout, stderr)}."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(argv), out, err, environ or {})
    return code, out.getvalue(), err.getvalue()


def run_in_thread(argv, environ=None):
    """L{run} in a thread, for commands that block on the network while the reactor serves."""
    return threads.deferToThread(run, argv, environ)


def secret_dir(testcase):
    """A data dir holding a generated secret, as the server leaves it: C{(path, secret)}."""
    path = tmp_path(testcase)
    secret, _, _ = auth.load_or_create_secret(path)
    return path, secret


def secret_file(testcase, content=None):
    """A secret file of its own: C{(path, secret)}."""
    path = tmp_path(testcase, "secret")
    secret = content if content is not None else os.urandom(24).hex().encode()
    with open(path, "wb") as f:
        f.write(secret + b"\n")
    return path, secret


def verify(token, secret, now=None, **settings):
    """The hub's verdict on C{token}: its L{mission_control.policy.Principal}, or L{auth.Refusal} raised."""
    verifier = auth.TokenVerifier(secret, ["HS256"], **settings)
    return verifier.verify(token, time.time() if now is None else now)


def claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def free_port():
    """A loopback port nothing listens on (bound once by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(directory):
    """A CA and a server certificate for 127.0.0.1 signed by it: C{(ca.pem, key.pem, cert.pem)}."""
    now = datetime.datetime.now(timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1),
                 not_valid_after=now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mission-control test CA")])
    ca = (
        x509.CertificateBuilder(**valid)
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder(**valid)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = [os.path.join(directory, name) for name in ("ca.pem", "key.pem", "cert.pem")]
    contents = [
        ca.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    ]
    for path, content in zip(paths, contents):
        with open(path, "wb") as f:
            f.write(content)
    return tuple(paths)


def agent_status(agent_id, status, **fields):
    """A validated C{agent:status} payload, as the hub stores it."""
    return events.agent_status(dict(fields, status=status), reactor.seconds(), agent_id)


class UsageAssertions:
    """Checks shared by the tests of usage errors."""

    def assertUsageError(self, argv, *fragments, environ=None):
        """C{argv} is refused with exit code 2 and one line on stderr holding C{fragments}."""
        code, out, err = run(argv, environ)
        self.assertEqual((code, out), (2, ""), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.endswith("\n"))
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, err)
        return err


# token


class TokenTests(UsageAssertions, SynchronousTestCase):
    """C{mission-control token}."""

    def test_mints_a_token_the_hub_accepts(self):
        """The token printed is verified by the hub's verifier with the data dir's secret, carries
        sub, role and name, and is the only thing written."""
        data_dir, secret = secret_dir(self)
        code, out, err = run(["token", "--sub", "alice", "--role", "operator", "--name", "Alice",
                              "--data-dir", data_dir])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.count("\n"), 1)
        principal = verify(out.strip(), secret)
        self.assertEqual((principal.sub, principal.role, principal.name),
                         ("alice", "operator", "Alice"))

    def test_channel_claim(self):
        """--channel (repeatable) puts a channels claim in the token; a bad one is a usage error."""
        data_dir, secret = secret_dir(self)
        code, out, _ = run(["token", "--sub", "v", "--channel", "agents:*", "--channel",
                            "presence", "--data-dir", data_dir])
        self.assertEqual(code, 0)
        self.assertEqual(verify(out.strip(), secret).channels, ("agents:*", "presence"))
        code, out, err = run(["token", "--sub", "v", "--channel", "bogus", "--data-dir", data_dir])
        self.assertEqual((code, out), (2, ""))
        self.assertIn("--channel", err)

    def test_defaults(self):
        """Without --role and --ttl the token is a viewer's, valid for one hour."""
        data_dir, secret = secret_dir(self)
        code, out, _ = run(["token", "--sub", "bob", "--data-dir", data_dir])
        self.assertEqual(code, 0)
        token = out.strip()
        self.assertEqual(verify(token, secret).role, "viewer")
        self.assertEqual(claims(token)["exp"] - claims(token)["iat"], 3600)
        self.assertLessEqual(abs(claims(token)["iat"] - time.time()), 5)

    def test_ttl_sets_the_expiry(self):
        """--ttl accepts bare seconds and the units s, m, h, d; exp is iat plus that."""
        data_dir, secret = secret_dir(self)
        for ttl, seconds in [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600),
                             ("7d", 604800)]:
            code, out, _ = run(["token", "--sub", "alice", "--ttl", ttl, "--data-dir", data_dir])
            self.assertEqual(code, 0, ttl)
            token = out.strip()
            self.assertEqual(claims(token)["exp"] - claims(token)["iat"], seconds, ttl)
            self.assertLessEqual(abs(verify(token, secret).expires_at - time.time() - seconds), 5)

    def test_jwt_secret_file_option(self):
        """--jwt-secret-file is used instead of the data dir's secret."""
        path, secret = secret_file(self)
        other_dir, other_secret = secret_dir(self)
        code, out, _ = run(["token", "--sub", "alice", "--jwt-secret-file", path],
                           {"MISSION_CONTROL_DATA_DIR": other_dir})
        self.assertEqual(code, 0)
        self.assertEqual(verify(out.strip(), secret).sub, "alice")
        self.assertRaises(auth.Refusal, verify, out.strip(), other_secret)

    def test_secret_from_environment(self):
        """MISSION_CONTROL_JWT_SECRET_FILE and MISSION_CONTROL_DATA_DIR locate the secret, the
        file first; --data-dir on the command line wins over both."""
        path, file_secret = secret_file(self)
        env_dir, env_dir_secret = secret_dir(self)
        cli_dir, cli_dir_secret = secret_dir(self)
        both = {"MISSION_CONTROL_JWT_SECRET_FILE": path, "MISSION_CONTROL_DATA_DIR": env_dir}
        cases = [
            ({"MISSION_CONTROL_DATA_DIR": env_dir}, [], env_dir_secret),
            (both, [], file_secret),
            (both, ["--data-dir", cli_dir], cli_dir_secret),
        ]
        for environ, extra, secret in cases:
            code, out, err = run(["token", "--sub", "alice", *extra], environ)
            self.assertEqual(code, 0, err)
            self.assertEqual(verify(out.strip(), secret).sub, "alice")

    def test_issuer_and_audience(self):
        """--issuer and --audience (or the server's environment names) go into iss and aud, so a
        hub that checks them accepts the token."""
        data_dir, secret = secret_dir(self)
        code, out, _ = run(["token", "--sub", "alice", "--data-dir", data_dir,
                            "--issuer", "https://id.example", "--audience", "mission-control"])
        self.assertEqual(code, 0)
        verify(out.strip(), secret, issuer="https://id.example", audience="mission-control")
        code, out, _ = run(["token", "--sub", "alice", "--data-dir", data_dir],
                           {"MISSION_CONTROL_JWT_ISSUER": "iss-env",
                            "MISSION_CONTROL_JWT_AUDIENCE": "aud-env"})
        self.assertEqual(code, 0)
        self.assertEqual((claims(out.strip())["iss"], claims(out.strip())["aud"]),
                         ("iss-env", "aud-env"))

    def test_agent_role_needs_an_agent_id(self):
        """For role agent the sub follows the id rules: an id is accepted, other text refused."""
        data_dir, secret = secret_dir(self)
        code, out, _ = run(["token", "--sub", "agent-7", "--role", "agent", "--data-dir", data_dir])
        self.assertEqual(code, 0)
        self.assertEqual(verify(out.strip(), secret).role, "agent")
        self.assertUsageError(["token", "--sub", "not an id", "--role", "agent",
                               "--data-dir", data_dir], "agent id")

    def test_missing_secret_tells_how_to_get_one(self):
        """Without a secret file the message names the path and both remedies, and the CLI does
        not create a secret of its own (the server would not know it)."""
        data_dir = tmp_path(self)
        err = self.assertUsageError(["token", "--sub", "alice", "--data-dir", data_dir],
                                    os.path.join(data_dir, "jwt-secret"), "start the server",
                                    "--jwt-secret-file")
        self.assertNotIn("Traceback", err)
        self.assertEqual(os.listdir(data_dir), [])

    def test_short_secret_refused(self):
        """A secret file under 32 bytes is refused, as the server refuses it."""
        path, _ = secret_file(self, content=b"short")
        self.assertUsageError(["token", "--sub", "alice", "--jwt-secret-file", path],
                              "at least 32")

    def test_usage_errors(self):
        """Unknown role, bad ttl, missing sub, bad name, stray arguments and contradicting secret
        options are each one line and exit code 2."""
        data_dir, _ = secret_dir(self)
        path, _ = secret_file(self)
        base = ["token", "--data-dir", data_dir]
        cases = [
            (base + ["--sub", "alice", "--role", "boss"], ["unknown role 'boss'", "admin"]),
            (base + ["--sub", "alice", "--ttl", "1x"], ["--ttl", "'1x'"]),
            (base + ["--sub", "alice", "--ttl", "0"], ["--ttl must be more than 0"]),
            (base + ["--sub", "alice", "--ttl", "-5m"], ["--ttl"]),
            (base + ["--sub", "alice", "--ttl", "1.5h"], ["--ttl"]),
            (base + ["--sub", "alice", "--ttl", "400d"], ["at most 366d"]),
            (base, ["--sub is required"]),
            (base + ["--sub", ""], ["--sub must be"]),
            (base + ["--sub", "alice", "--name", "A\x1b[2J"], ["--name"]),
            (base + ["--sub", "alice", "extra"], ["unexpected argument 'extra'"]),
            (base + ["--sub", "alice", "--jwt-secret-file", path], ["not both"]),
            (base + ["--sub", "alice", "--frobnicate"], ["unknown option --frobnicate"]),
        ]
        for argv, fragments in cases:
            err = self.assertUsageError(argv, "mission-control token:", *fragments)
            self.assertIn("--help", err)


# The command line as a whole


class CommandLineTests(UsageAssertions, SynchronousTestCase):
    """Help, commands, and what every command shares."""

    def test_help_lists_the_commands(self):
        """--help exits 0 and lists token, publish and watch."""
        code, out, err = run(["--help"])
        self.assertEqual((code, err), (0, ""))
        for command in ("token", "publish", "watch"):
            self.assertRegex(out, rf"\n\s+{command}\s")

    def test_no_command_prints_usage(self):
        """Without a command the usage goes to stderr and the exit code is 2."""
        code, out, err = run([])
        self.assertEqual((code, out), (2, ""))
        self.assertIn("Usage: mission-control <command>", err)
        self.assertIn("Commands:", err)
        self.assertIn("no command given", err)

    def test_unknown_command(self):
        """An unknown command is one line naming the known ones, exit code 2."""
        self.assertUsageError(["frobnicate"], "unknown command 'frobnicate'",
                              "token, publish, watch")

    def test_subcommand_help(self):
        """Each command's --help exits 0 with its own options on stdout."""
        for argv, option in [(["token", "--help"], "--ttl"),
                             (["publish", "status", "--help"], "--metadata"),
                             (["publish", "activity", "-h"], "--detail"),
                             (["watch", "--help"], "--json")]:
            code, out, err = run(argv)
            self.assertEqual((code, err), (0, ""), argv)
            self.assertIn(f"Usage: mission-control {' '.join(argv[:-1])}", out)
            self.assertIn(option, out)

    def test_fallback_token_is_documented(self):
        """The help of publish and watch says that without --token they mint one locally."""
        for argv, role in [(["publish", "status", "--help"], "admin"),
                           (["watch", "--help"], "viewer")]:
            _, out, _ = run(argv)
            self.assertIn(f"5-minute {role} token is minted", " ".join(out.split()))

    def test_version(self):
        """--version prints the package version."""
        code, out, _ = run(["--version"])
        self.assertEqual((code, out), (0, "mission-control 0.1.0\n"))

    def test_parse_duration(self):
        """Durations are whole numbers with an optional unit; anything else is a usage error."""
        for text, seconds in [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600),
                              ("7d", 604800), (" 2H ", 7200)]:
            self.assertEqual(cli.parse_duration(text), seconds)
        for text in ["", "h", "1x", "-1", "1.5h", "0", "0s", "1 h", "1hh", "367d"]:
            self.assertRaises(cli.usage.UsageError, cli.parse_duration, text)

    def test_url_forms(self):
        """One URL serves both commands: publish takes the HTTP form, watch the WebSocket one."""
        self.assertEqual(cli.http_base_url("http://h:8080"), "http://h:8080")
        self.assertEqual(cli.http_base_url("ws://h:8080/ws"), "http://h:8080")
        self.assertEqual(cli.http_base_url("wss://h/prefix/ws/"), "https://h/prefix")
        self.assertEqual(cli.websocket_url("http://h:8080"), "ws://h:8080/ws")
        self.assertEqual(cli.websocket_url("https://h/"), "wss://h/ws")
        self.assertEqual(cli.websocket_url("ws://h:1/custom?x=1"), "ws://h:1/custom?x=1")
        self.assertEqual(cli.display_url("ws://h:1/ws?token=abc"), "ws://h:1/ws")
        for bad in ["ftp://h", "h:8080", "http://", "http://u:p@h", "http://h:99999",
                    "http://h/#x"]:
            self.assertRaises(cli.usage.UsageError, cli.websocket_url, bad)

    def test_resume_url_keeps_other_parameters(self):
        """since, epoch and client are added to the query; other parameters stay as they were
        written, in order, and a since, epoch or client already there is replaced."""
        self.assertEqual(cli.resume_url("ws://h:1/ws"), "ws://h:1/ws")
        self.assertEqual(cli.resume_url("ws://h:1/ws", 42, "e-1"), "ws://h:1/ws?since=42&epoch=e-1")
        self.assertEqual(cli.resume_url("ws://h:1/ws?token=a.b.c&x=%20y+z", 0, "e", "wall-1"),
                         "ws://h:1/ws?token=a.b.c&x=%20y+z&since=0&epoch=e&client=wall-1")
        self.assertEqual(cli.resume_url("wss://h/p/ws?since=1&a=1&epoch=old&client=x&b", 9, "new"),
                         "wss://h/p/ws?a=1&client=x&b&since=9&epoch=new")
        self.assertEqual(cli.resume_url("ws://h/ws?since=1&epoch=old", client="wall:2"),
                         "ws://h/ws?since=1&epoch=old&client=wall%3A2")
        self.assertEqual(cli.resume_url("ws://h/ws", since=5), "ws://h/ws")  # no epoch, no since

    def test_client_option(self):
        """--client takes an id (the hub's rules) and anything else is a usage error; its help
        says it gives at-least-once delivery across restarts of watch."""
        options = cli.parse_command_line(["watch", "--token", "x.y.z", "--client", "wall-1"], {})
        self.assertEqual(options.subOptions["client"], "wall-1")
        options = cli.parse_command_line(["watch", "--token", "x.y.z"], {})
        self.assertIsNone(options.subOptions["client"])
        for bad in ["", "has space", "x" * 129, "caf\u00e9", "a/b"]:
            self.assertUsageError(["watch", "--token", "x.y.z", "--client", bad],
                                  "--client must be")
        _, out, _ = run(["watch", "--help"])
        self.assertIn("at-least-once delivery across restarts of watch", " ".join(out.split()))

    def test_sub_option(self):
        """
        --sub sets the user of the tokens watch mints, checked like the hub checks a sub; with a
        given token it is a usage error, since that token names its own user.
        """
        data_dir, secret = secret_dir(self)
        options = cli.parse_command_line(["watch", "--data-dir", data_dir, "--sub", "carol"],
                                         {}).subOptions
        principal = verify(options["credentials"].token(time.time()), secret)
        self.assertEqual((principal.sub, principal.role, principal.name),
                         ("carol", "viewer", None))
        self.assertUsageError(["watch", "--data-dir", data_dir, "--sub", ""], "--sub must be")
        token = auth.mint_token(secret, "dave", time.time(), ttl=60)
        self.assertUsageError(["watch", "--token", token, "--sub", "carol"],
                              "--sub is for the token watch mints")

    def test_malformed_token_not_echoed(self):
        """A --token that cannot be a JWT (spaces, a line break) is refused without echoing it."""
        for token in ["abc def-secret", "abc\r\nX-Injected: 1"]:
            err = self.assertUsageError(["watch", "--token", token], "does not look like a JWT")
            self.assertNotIn("secret", err)
            self.assertNotIn("Injected", err)

    def test_cafile_errors(self):
        """An unreadable or non-PEM --cafile, or one with a plain http/ws URL, is a usage error."""
        garbage = tmp_path(self, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        missing = os.path.join(tmp_path(self), "missing.pem")
        for command, url in [(["watch"], "wss://127.0.0.1:1/ws"),
                             (["publish", "status", "a1", "busy"], "https://127.0.0.1:1")]:
            prefix = command + ["--token", "x.y.z", "--url", url]
            self.assertUsageError(prefix + ["--cafile", missing], "cannot read --cafile")
            self.assertUsageError(prefix + ["--cafile", garbage], "holds no PEM certificate")
        self.assertUsageError(["watch", "--token", "x.y.z", "--url", "ws://127.0.0.1:1/ws",
                               "--cafile", garbage], "only used with https:// or wss://")


# publish: everything that is refused before any request


class PublishUsageTests(UsageAssertions, SynchronousTestCase):
    """C{mission-control publish} arguments, checked locally."""

    def test_options_after_the_arguments(self):
        """Options may follow AGENT_ID and STATUS, and connection options may come before the
        subcommand; both end up in the request."""
        options = cli.parse_command_line(
            ["publish", "--url", "http://127.0.0.1:9", "status", "agent-1", "busy",
             "--message", "hi", "--metadata", '{"k": [1, 2]}', "--token", "x.y.z"], {})
        leaf = options.subOptions.subOptions
        self.assertEqual(leaf["body"], {"status": "busy", "message": "hi",
                                        "metadata": {"k": [1, 2]}})
        self.assertEqual(leaf["url"] + leaf["path"],
                         "http://127.0.0.1:9/api/agents/agent-1/status")
        self.assertEqual(leaf["credentials"].token(0), "x.y.z")

    def test_bad_arguments(self):
        """Bad JSON, a non-object, an unknown status, a bad id, missing or extra arguments and a
        missing subcommand: exit code 2 before any request (no token or server is needed)."""
        cases = [
            (["status", "a1", "busy", "--metadata", "{x"], ["--metadata is not valid JSON"]),
            (["status", "a1", "busy", "--metadata", "[1]"], ["--metadata must be a JSON object"]),
            (["activity", "s1", "started", "--detail", "nope"], ["--detail is not valid JSON"]),
            (["status", "a1", "sleeping"], ["status must be one of online, busy"]),
            (["status", "not an id", "busy"], ["AGENT_ID must be"]),
            (["activity", "s1", "not a word"], ["activity must be a short word"]),
            (["status"], ["missing AGENT_ID and STATUS"]),
            (["activity", "s1"], ["missing ACTIVITY"]),
            (["status", "a1", "busy", "extra"], ["unexpected argument 'extra'"]),
            (["status", "a1", "busy", "--message", "x" * 1025], ["message must be at most"]),
        ]
        for argv, fragments in cases:
            self.assertUsageError(["publish", *argv], *fragments)

    def test_publish_without_subcommand(self):
        """C{publish} alone prints its usage, which names both subcommands, and exits 2."""
        code, out, err = run(["publish"])
        self.assertEqual((code, out), (2, ""))
        self.assertIn("status", err)
        self.assertIn("activity", err)
        self.assertIn("mission-control publish: no command given", err)


# publish against a real server


class PublishTests(TestCase):
    """C{mission-control publish} over HTTP to a running hub."""

    timeout = 30

    def setUp(self):
        self.data_dir, _ = secret_dir(self)
        self.server = start_server(self, ["--data-dir", self.data_dir])
        self.url = f"http://127.0.0.1:{self.server.port}"

    @defer.inlineCallbacks
    def test_status_is_stored_and_broadcast(self):
        """publish status posts the payload; the hub stores it and the line printed has the seq
        the hub assigned."""
        token = self.server.token("ops", role="operator")
        code, out, err = yield run_in_thread(
            ["publish", "status", "agent-atlas", "busy", "--message", "working on a task",
             "--name", "Atlas", "--metadata", '{"task": 7}', "--url", self.url,
             "--token", token])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"published agent:status seq={self.server.hub.store.last_seq}\n")
        [stored] = self.server.hub.store.agents()
        self.assertEqual(
            {k: stored[k] for k in ("agentId", "status", "message", "name", "metadata")},
            {"agentId": "agent-atlas", "status": "busy", "message": "working on a task",
             "name": "Atlas", "metadata": {"task": 7}})

    @defer.inlineCallbacks
    def test_activity(self):
        """publish activity posts a session:activity with its agent, summary and detail."""
        code, out, err = yield run_in_thread(
            ["publish", "activity", "sess-00001", "tool_call", "--agent", "agent-atlas",
             "--summary", "called web.search", "--detail", '{"tool": "web.search"}',
             "--url", self.url, "--token", self.server.token("root", role="admin")])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, "published session:activity seq=1\n")
        [stored] = self.server.hub.store.sessions()
        self.assertEqual(
            {k: stored[k] for k in ("sessionId", "activity", "agentId", "summary", "detail")},
            {"sessionId": "sess-00001", "activity": "tool_call", "agentId": "agent-atlas",
             "summary": "called web.search", "detail": {"tool": "web.search"}})

    @defer.inlineCallbacks
    def test_mints_an_admin_token_without_one(self):
        """With no token, publish mints one from the data dir's secret, found through
        MISSION_CONTROL_DATA_DIR, and the URL comes from MISSION_CONTROL_URL."""
        environ = {"MISSION_CONTROL_DATA_DIR": self.data_dir, "MISSION_CONTROL_URL": self.url}
        code, out, err = yield run_in_thread(["publish", "status", "agent-b", "idle"], environ)
        self.assertEqual((code, out, err), (0, "published agent:status seq=1\n", ""))

    @defer.inlineCallbacks
    def test_http_error_shows_status_and_message(self):
        """A refusal prints the status and the hub's JSON error message, exit code 1, nothing on
        stdout, and never the token."""
        token = self.server.token("someone", role="viewer")
        code, out, err = yield run_in_thread(
            ["publish", "status", "agent-atlas", "busy", "--url", self.url, "--token", token])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err, "mission-control publish status: 403 Forbidden: "
                 "not allowed to publish for this agent\n")
        self.assertNotIn(token, err)
        self.assertEqual(self.server.hub.store.last_seq, 0)

    @defer.inlineCallbacks
    def test_foreign_secret_hint(self):
        """A token minted from a secret the hub does not use gets 401, with a hint that names the
        secret file it was minted from."""
        other_dir, _ = secret_dir(self)
        code, out, err = yield run_in_thread(
            ["publish", "status", "agent-atlas", "busy", "--url", self.url,
             "--data-dir", other_dir])
        self.assertEqual((code, out), (1, ""))
        self.assertIn("401 Unauthorized: invalid token", err)
        self.assertIn(os.path.join(other_dir, "jwt-secret"), err)
        self.assertEqual(err.count("\n"), 1)

    @defer.inlineCallbacks
    def test_connection_refused(self):
        """Nothing listening: one line saying so, exit code 1."""
        code, out, err = yield run_in_thread(
            ["publish", "status", "agent-atlas", "busy", "--url",
             f"http://127.0.0.1:{free_port()}", "--token", "x.y.z"])
        self.assertEqual((code, out), (1, ""))
        self.assertIn("connection refused", err)
        self.assertEqual(err.count("\n"), 1)
        self.assertNotIn("Traceback", err)


class _Recorder(resource.Resource):
    """Answers anything with C{{}}, remembering the Authorization header of each request."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.authorizations = []

    def render(self, request):
        self.authorizations.append(request.getHeader(b"authorization"))
        return b"{}"


class PublishRedirectTests(TestCase):
    """C{publish} and redirects."""

    timeout = 30

    @defer.inlineCallbacks
    def test_redirect_not_followed(self):
        """A redirect is reported as an error and not followed, so the bearer token never goes to
        the URL it points at."""
        recorder = _Recorder()
        root = resource.Resource()
        root.putChild(b"api", Redirect(b"/elsewhere"))
        root.putChild(b"elsewhere", recorder)
        port = reactor.listenTCP(0, web_server.Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        code, out, err = yield run_in_thread(
            ["publish", "status", "agent-atlas", "busy", "--token", "x.y.z",
             "--url", f"http://127.0.0.1:{port.getHost().port}"])
        self.assertEqual((code, out), (1, ""))
        self.assertIn("302 Found", err)
        self.assertEqual(recorder.authorizations, [])


# watch: output


WELCOME = {"type": "welcome", "ts": "2026-11-27T16:04:05.123Z",
           "payload": {"connectionId": "c1", "user": {"id": "alice", "name": None,
                                                      "role": "viewer"},
                       "heartbeatInterval": 30, "lastSeq": 40, "epoch": "e"}}
SNAPSHOT = {"type": "snapshot", "ts": "2026-11-27T16:04:05.123Z",
            "payload": {"agents": [{}, {}], "sessions": [{}], "lastSeq": 40}}
STATUS = {"type": "agent:status", "ts": "2026-11-27T16:04:05.123Z", "seq": 12,
          "payload": {"agentId": "agent-atlas", "status": "busy", "message": "working on a task",
                      "timestamp": "2026-11-27T16:04:05.000Z"}}
ACTIVITY = {"type": "session:activity", "ts": "2026-11-27T16:04:06.000Z", "seq": 13,
            "payload": {"sessionId": "sess-00001", "activity": "tool_call",
                        "agentId": "agent-atlas", "summary": "called web.search",
                        "timestamp": "2026-11-27T16:04:06.000Z"}}
HEARTBEAT = {"type": "heartbeat", "ts": "2026-11-27T16:04:07.000Z",
             "payload": {"timestamp": "2026-11-27T16:04:07.000Z", "lastSeq": 13}}


AUTH_OK = {"type": "auth:ok", "ts": "2026-11-27T16:04:08.000Z",
           "payload": {"user": {"id": "alice", "name": None, "role": "viewer"},
                       "expiresAt": "2026-11-27T16:09:08.000Z"}}
EXPIRING = {"type": "auth:expiring", "ts": "2026-11-27T16:04:05.000Z",
            "payload": {"expiresAt": "2026-11-27T16:05:05.000Z", "secondsLeft": 60}}


def encode(frame):
    return json.dumps(frame).encode()


def event(seq, agent="agent-atlas"):
    """An agent:status frame with C{seq}."""
    return dict(STATUS, seq=seq, payload=dict(STATUS["payload"], agentId=agent))


def welcome(epoch="e", last_seq=40):
    """A welcome frame from a hub whose history is C{epoch}, at C{last_seq}."""
    return dict(WELCOME, payload=dict(WELCOME["payload"], epoch=epoch, lastSeq=last_seq))


def snapshot(last_seq=40):
    return dict(SNAPSHOT, payload=dict(SNAPSHOT["payload"], lastSeq=last_seq))


def heartbeat(last_seq):
    return dict(HEARTBEAT, payload=dict(HEARTBEAT["payload"], lastSeq=last_seq))


def resumed(first, last, epoch="e"):
    """The resumed frame after a replay of C{first} to C{last}."""
    return {"type": "resumed", "ts": "2026-11-27T16:04:08.000Z",
            "payload": {"recovered": True, "from": first, "to": last, "epoch": epoch}}


def history_lost(reason, last_seq, epoch="f"):
    """The resumed frame of a hub that cannot replay; a snapshot follows it."""
    return {"type": "resumed", "ts": "2026-11-27T16:04:08.000Z",
            "payload": {"recovered": False, "reason": reason, "lastSeq": last_seq,
                        "epoch": epoch}}


class FramePrinterTests(SynchronousTestCase):
    """The lines C{watch} prints."""

    def printed(self, frames, **settings):
        out, err = io.StringIO(), io.StringIO()
        printer = cli.FramePrinter(out, err, tz=timezone.utc, **settings)
        for frame in frames:
            printer.frame_received(frame if isinstance(frame, bytes) else encode(frame), False)
        return out.getvalue().splitlines(), err.getvalue()

    def test_event_lines(self):
        """agent:status and session:activity are one line each: time, type, subject, what, seq."""
        lines, _ = self.printed([STATUS, ACTIVITY])
        self.assertEqual(lines, [
            '16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=12',
            '16:04:06 session:activity  sess-00001  tool_call  agent=agent-atlas  '
            '"called web.search"  seq=13',
        ])

    def test_welcome_and_snapshot_make_one_line(self):
        """welcome and the snapshot after it become one line: who, how many agents and sessions,
        lastSeq."""
        lines, _ = self.printed([WELCOME, SNAPSHOT, STATUS])
        self.assertEqual(lines[0],
                         "16:04:05 connected as alice (viewer), 2 agents, 1 sessions, lastSeq=40")
        self.assertEqual(len(lines), 2)

    def test_welcome_without_snapshot(self):
        """A welcome not followed by a snapshot is still shown, before the next event."""
        lines, _ = self.printed([WELCOME, STATUS])
        self.assertEqual(lines[0], "16:04:05 connected as alice (viewer), lastSeq=40")
        self.assertIn("agent:status", lines[1])

    def test_heartbeats_only_when_verbose(self):
        """Heartbeats are left out, unless verbose."""
        self.assertEqual(self.printed([HEARTBEAT])[0], [])
        self.assertEqual(self.printed([HEARTBEAT], verbose=True)[0],
                         ["16:04:07 heartbeat  lastSeq=13"])

    def test_control_characters_escaped(self):
        """Text from the hub cannot drive the terminal: escapes and line breaks are escaped."""
        frame = json.loads(json.dumps(STATUS))
        frame["payload"]["message"] = 'red\x1b[31m "quoted"\nnext\x9b'
        frame["payload"]["agentId"] = "a\x07b"
        [line], _ = self.printed([frame])
        self.assertEqual(
            line, '16:04:05 agent:status  a\\x07b  busy  "red\\x1b[31m \\"quoted\\"\\x0anext\\x9b"'
                  '  seq=12')

    def test_json_mode_prints_frames_as_received(self):
        """--json writes each frame's text unchanged, one per line, heartbeats still left out."""
        raw = [b'{"type": "welcome",  "payload": {}}', encode(STATUS), encode(HEARTBEAT)]
        out, err = io.StringIO(), io.StringIO()
        printer = cli.FramePrinter(out, err, json_mode=True)
        for data in raw:
            printer.frame_received(data, False)
        self.assertEqual(out.getvalue(), raw[0].decode() + "\n" + raw[1].decode() + "\n")

    def test_not_json(self):
        """A frame that is not a JSON object is skipped with a note on stderr."""
        lines, err = self.printed([b"\xff\xfe", b"[1, 2]"])
        self.assertEqual(lines, [])
        self.assertEqual(err.count("skipped a frame that is not a JSON object"), 2)

    def test_resume_prints_replayed_events_at_once(self):
        """A resume (welcome, the replayed events, resumed) prints the connected line without
        counts first, every replayed event as it comes, then the range that was replayed."""
        out, err = io.StringIO(), io.StringIO()
        printer = cli.FramePrinter(out, err, tz=timezone.utc)
        printer.frame_received(encode(welcome(last_seq=42)), False)
        printer.frame_received(encode(event(41)), False)
        self.assertEqual(len(out.getvalue().splitlines()), 2)  # the event is not held back
        printer.frame_received(encode(event(42)), False)
        printer.frame_received(encode(resumed(41, 42)), False)
        self.assertEqual(out.getvalue().splitlines(), [
            "16:04:05 connected as alice (viewer), lastSeq=42",
            '16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=41',
            '16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=42',
            "16:04:08 resumed: replayed seq 41-42",
        ])

    def test_resume_with_nothing_missed(self):
        """A resume with nothing to replay (from after to) says so, after the connected line;
        one event replayed is named alone."""
        lines, _ = self.printed([welcome(), resumed(41, 40)])
        self.assertEqual(lines, ["16:04:05 connected as alice (viewer), lastSeq=40",
                                 "16:04:08 resumed: nothing missed"])
        lines, _ = self.printed([welcome(), event(41), resumed(41, 41)])
        self.assertEqual(lines[-1], "16:04:08 resumed: replayed seq 41")

    def test_history_lost(self):
        """recovered false prints why history was lost, then the usual connected line with the
        fresh snapshot's counts, for each reason the hub gives."""
        for reason in ("epoch", "too_old", "ahead"):
            lines, _ = self.printed([welcome("f", 3), history_lost(reason, 3), snapshot(3),
                                     event(4)])
            self.assertEqual(lines[:2], [
                f"16:04:08 history lost ({reason}): showing a fresh snapshot",
                "16:04:05 connected as alice (viewer), 2 agents, 1 sessions, lastSeq=3",
            ], reason)
            self.assertIn("seq=4", lines[2])

    def test_history_lost_during_a_replay(self):
        """When the hub gives up in the middle of a replay, the snapshot after the history-lost
        line is summed up on its own line."""
        lines, _ = self.printed([welcome(), event(41), history_lost("too_old", 90, "e"),
                                 snapshot(90)])
        self.assertEqual(lines[2:], ["16:04:08 history lost (too_old): showing a fresh snapshot",
                                     "16:04:05 snapshot: 2 agents, 1 sessions, lastSeq=90"])

    def test_replies_to_the_watchers_own_frames_only_when_verbose(self):
        """ack, auth:ok, auth:expiring and pong are the watcher's business: left out of the
        output, shown with verbose."""
        ack = {"type": "ack", "ts": "2026-11-27T16:04:08.000Z", "payload": {"seq": 41}}
        pong = {"type": "pong", "id": "p", "ts": "2026-11-27T16:04:08.000Z", "payload": {}}
        frames = [welcome(), SNAPSHOT, ack, AUTH_OK, EXPIRING, pong, STATUS]
        lines, _ = self.printed(frames)
        self.assertEqual(len(lines), 2)
        self.assertIn("agent:status", lines[1])
        lines, _ = self.printed(frames, verbose=True)
        self.assertEqual(len(lines), 6)
        self.assertEqual(lines[1], '16:04:08 ack  {"seq":41}')

    def test_json_mode_prints_resume_frames_raw(self):
        """--json writes the resume frames as they are, the acks' replies too: every frame."""
        frames = [welcome(), event(41), resumed(41, 41),
                  {"type": "ack", "payload": {"seq": 41}}, AUTH_OK]
        lines, _ = self.printed(frames, json_mode=True)
        self.assertEqual([json.loads(line) for line in lines], frames)


# watch: the reconnect loop, with a clock


class FakeConnection:
    """What the watcher needs of a WebSocket client protocol; C{sent} holds the frames sent."""

    STATE_OPEN = 3
    STATE_CLOSING = 4
    state = STATE_OPEN
    refusal = None
    opened = True
    wasNotCleanReason = None

    def __init__(self):
        self.closed_with = None
        self.sent = []

    def sendClose(self, code):
        self.closed_with = code
        self.state = self.STATE_CLOSING

    def sendMessage(self, payload, isBinary=False):
        assert not isBinary
        self.sent.append(json.loads(payload))


class FakeEndpoint:
    """
    Hands out scripted outcomes, one per C{connect}, recording when and with what header
    (C{attempts}) and to which URL (C{urls}).
    """

    def __init__(self, clock, outcomes):
        self.clock = clock
        self.outcomes = list(outcomes)
        self.attempts = []
        self.urls = []

    def connect(self, factory):
        self.attempts.append((self.clock.seconds(), factory.headers["Authorization"]))
        self.urls.append(factory.url)
        outcome = self.outcomes.pop(0) if self.outcomes else ConnectionRefusedError()
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)


class WatcherLoopTests(SynchronousTestCase):
    """L{cli.Watcher}'s reconnect loop, on a L{task.Clock}."""

    def watcher(self, outcomes=(), secret=b"s" * 32, token=None, url="ws://127.0.0.1:9/ws",
                **settings):
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.endpoint = FakeEndpoint(self.clock, outcomes)
        self.out, self.err = io.StringIO(), io.StringIO()
        if token is None:
            credentials = cli.Credentials(key=cli.SigningKey(secret, "secret-path"), role="viewer")
        else:
            credentials = cli.Credentials(given=token)
        printer = cli.FramePrinter(self.out, self.err, tz=timezone.utc)
        policy = backoffPolicy(initialDelay=1.0, maxDelay=8.0, factor=2.0, jitter=lambda: 0.0)
        return cli.Watcher(self.clock, url, credentials, printer, self.err,
                           retry_policy=policy, endpoint=self.endpoint, **settings)

    def receive(self, watcher, connection, *frames):
        """C{connection} of C{watcher} receives C{frames}."""
        for frame in frames:
            watcher.frame_received(connection, encode(frame), False)

    def attempt_times(self):
        start = 1_000_000
        return [when - start for when, _ in self.endpoint.attempts]

    def test_backoff_grows_to_its_ceiling(self):
        """Failed attempts are retried after 1, 2, 4, 8, 8 s, with one stderr line each."""
        watcher = self.watcher()
        watcher.run()
        for delay in (1, 2, 4, 8, 8):
            self.clock.advance(delay)
        self.assertEqual(self.attempt_times(), [0, 1, 3, 7, 15, 23])
        lines = self.err.getvalue().splitlines()
        self.assertEqual(len(lines), 6)
        self.assertIn("connection refused", lines[0])
        self.assertTrue(lines[0].endswith("reconnecting in 1.0 s (attempt 1)"), lines[0])
        self.assertTrue(lines[4].endswith("reconnecting in 8.0 s (attempt 5)"), lines[4])

    def test_open_connection_resets_backoff(self):
        """After a successful handshake, the next retry starts again at the first delay."""
        connection = FakeConnection()
        watcher = self.watcher([ConnectionRefusedError(), ConnectionRefusedError(), connection])
        watcher.run()
        self.clock.advance(1)
        self.clock.advance(2)
        self.assertEqual(self.attempt_times(), [0, 1, 3])
        watcher.connection_opened(connection)
        watcher.connection_closed(connection, 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.attempt_times(), [0, 1, 3, 4])
        self.assertIn("closed (1006 gone); reconnecting in 1.0 s", self.err.getvalue())

    def test_fresh_token_per_attempt(self):
        """Each attempt carries a token minted at that moment from the local secret."""
        watcher = self.watcher()
        watcher.run()
        self.clock.advance(1)
        [(first_at, first), (second_at, second)] = self.endpoint.attempts
        self.assertNotEqual(first, second)
        for at, header in self.endpoint.attempts:
            token = header[len("Bearer "):]
            self.assertEqual(claims(token)["iat"], int(at))
            principal = verify(token, b"s" * 32, now=at)
            self.assertEqual((principal.sub, principal.role), (cli.LOCAL_TOKEN_SUBJECT, "viewer"))
            self.assertEqual(principal.expires_at, at + cli.LOCAL_TOKEN_TTL)

    def test_stop_while_waiting(self):
        """stop() while waiting to reconnect cancels the wait and ends with 0."""
        watcher = self.watcher()
        result = []
        watcher.run().addCallback(result.append)
        watcher.stop()
        self.assertEqual(result, [0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_closes_an_open_connection(self):
        """stop() closes an open connection with 1000 and ends with 0 once it is closed."""
        connection = FakeConnection()
        watcher = self.watcher([connection])
        result = []
        watcher.run().addCallback(result.append)
        watcher.connection_opened(connection)
        stopped = watcher.stop()
        self.assertEqual((connection.closed_with, result), (1000, []))
        watcher.connection_closed(connection, 1000, "")
        self.assertEqual(result, [0])
        self.assertEqual(self.successResultOf(stopped), 0)
        self.assertEqual(self.endpoint.attempts[1:], [])

    def test_final_refusals_and_4003_end_the_watch(self):
        """401/403/404 refusals, a URL that is no WebSocket (200), a 4003 close and a 4009 close
        (an administrator's) end with 1; 429 and 503 are retried."""
        for refusal, code, expected in [((401, "invalid token"), None, 1),
                                        ((403, "origin not allowed"), None, 1),
                                        ((404, "Not Found"), None, 1),
                                        ((200, "OK"), None, 1),
                                        (None, 4003, 1),
                                        (None, 4009, 1),
                                        ((429, "too many connections for this user"), None, None),
                                        ((503, "shutting down"), None, None)]:
            connection = FakeConnection()
            connection.opened = refusal is None
            connection.refusal = refusal
            watcher = self.watcher([connection])
            result = []
            watcher.run().addCallback(result.append)
            watcher.connection_closed(connection, code or 1006, "")
            self.assertEqual(result, [expected] if expected else [], refusal or code)
            if expected is None:
                self.assertIn("reconnecting in", self.err.getvalue())
                watcher.stop()

    def test_reconnect_resumes_where_it_left_off(self):
        """Each reconnect asks for what came after the last seq seen, in its epoch, keeping the
        URL's own query parameters."""
        first, second = FakeConnection(), FakeConnection()
        watcher = self.watcher([first, second], url="ws://127.0.0.1:9/ws?x=1")
        watcher.run()
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome("e"), snapshot(40), event(41), event(42))
        watcher.connection_closed(first, 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.endpoint.urls, ["ws://127.0.0.1:9/ws?x=1",
                                              "ws://127.0.0.1:9/ws?x=1&since=42&epoch=e"])

    def test_position_moves_only_with_proof(self):
        """A connection that ends right after its welcome leaves since and epoch as they were;
        after history is lost, the next connection resumes in the new epoch."""
        connections = [FakeConnection() for _ in range(4)]
        watcher = self.watcher(connections)
        watcher.run()
        watcher.connection_opened(connections[0])
        self.receive(watcher, connections[0], welcome("e"), snapshot(40), event(41))
        for index, frames in [(1, [welcome("f", 90)]),
                              (2, [welcome("f", 3), history_lost("epoch", 3), snapshot(3)])]:
            watcher.connection_closed(connections[index - 1], 1006, "gone")
            self.clock.advance(1)
            watcher.connection_opened(connections[index])
            self.receive(watcher, connections[index], *frames)
        watcher.connection_closed(connections[2], 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.endpoint.urls[1:], ["ws://127.0.0.1:9/ws?since=41&epoch=e",
                                                  "ws://127.0.0.1:9/ws?since=41&epoch=e",
                                                  "ws://127.0.0.1:9/ws?since=3&epoch=f"])

    def test_named_watcher_sends_its_name_every_time(self):
        """With a client name, the first connection carries it alone (the hub resumes from the
        position it kept) and later ones carry it with since and epoch."""
        first = FakeConnection()
        watcher = self.watcher([first], client="wall-1")
        watcher.run()
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome("e"), snapshot(40))
        watcher.connection_closed(first, 1006, "gone")
        self.clock.advance(1)
        self.assertEqual(self.endpoint.urls, [
            "ws://127.0.0.1:9/ws?client=wall-1",
            "ws://127.0.0.1:9/ws?since=40&epoch=e&client=wall-1"])
        watcher.stop()

    def test_acks_at_most_once_a_second_and_on_stop(self):
        """A named watcher acks its last seq once a second when it grew, never in between, and
        once more when stopped cleanly, before the close."""
        connection = FakeConnection()
        watcher = self.watcher([connection], client="wall-1")
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(40), event(41), event(42))
        self.assertEqual(connection.sent, [])
        self.clock.advance(1)
        self.assertEqual(connection.sent, [{"type": "ack", "seq": 42}])
        self.receive(watcher, connection, heartbeat(42))
        self.clock.advance(1)
        self.assertEqual(len(connection.sent), 1)
        self.receive(watcher, connection, event(43), event(44))
        self.clock.advance(0.5)
        self.assertEqual(len(connection.sent), 1)
        self.clock.advance(0.5)
        self.assertEqual(connection.sent[-1], {"type": "ack", "seq": 44})
        self.receive(watcher, connection, event(45))
        watcher.stop()
        self.assertEqual((connection.sent[-1], connection.closed_with),
                         ({"type": "ack", "seq": 45}, 1000))
        watcher.connection_closed(connection, 1000, "")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_sends_no_ack_when_nothing_new(self):
        """Stopping right after an ack does not repeat it."""
        connection = FakeConnection()
        watcher = self.watcher([connection], client="wall-1")
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(40))
        self.clock.advance(1)
        watcher.stop()
        self.assertEqual(connection.sent, [{"type": "ack", "seq": 40}])

    def test_no_acks_without_a_name(self):
        """Without --client nothing is acked: the hub would keep no position for it."""
        connection = FakeConnection()
        watcher = self.watcher([connection])
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(40), event(41))
        self.clock.advance(5)
        watcher.stop()
        self.assertEqual((connection.sent, connection.closed_with), ([], 1000))

    def test_ack_names_a_seq_of_the_hub_at_the_other_end(self):
        """After a reconnect nothing is acked until the new connection has placed the watcher in
        its hub's history (a seq not acked before the drop is not sent to a hub that may be in
        another epoch); after history was lost, the new, lower seq is acked."""
        first, second = FakeConnection(), FakeConnection()
        watcher = self.watcher([first, second], client="wall-1")
        watcher.run()
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome("e"), snapshot(40))
        self.clock.advance(1)
        self.receive(watcher, first, event(41))
        watcher.connection_closed(first, 1006, "gone")
        self.clock.advance(1)
        watcher.connection_opened(second)
        self.receive(watcher, second, welcome("f", 3))
        self.clock.advance(1)
        self.assertEqual(second.sent, [])
        self.receive(watcher, second, history_lost("epoch", 3), snapshot(3))
        self.clock.advance(1)
        self.assertEqual(second.sent, [{"type": "ack", "seq": 3}])
        watcher.stop()

    def test_minted_token_renewed_before_it_expires(self):
        """On auth:expiring a watcher that mints its tokens sends a fresh one over the connection
        and prints nothing, nor the auth:ok that answers it."""
        connection = FakeConnection()
        watcher = self.watcher([connection])
        watcher.run()
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot())
        self.clock.advance(240)
        self.receive(watcher, connection, EXPIRING, AUTH_OK)
        [frame] = connection.sent
        self.assertEqual(set(frame), {"type", "token"})
        self.assertEqual(frame["type"], "auth")
        principal = verify(frame["token"], b"s" * 32, now=self.clock.seconds())
        self.assertEqual(principal.expires_at, int(self.clock.seconds()) + cli.LOCAL_TOKEN_TTL)
        self.assertEqual((len(self.out.getvalue().splitlines()), self.err.getvalue()), (1, ""))
        watcher.stop()

    def test_fixed_token_expiring(self):
        """With a fixed --token, auth:expiring is one warning line on stderr and nothing is sent;
        the 4001 close that follows ends the watch with 1, since the same token cannot help."""
        connection = FakeConnection()
        watcher = self.watcher([connection], token="x.y.z")
        result = []
        watcher.run().addCallback(result.append)
        watcher.connection_opened(connection)
        self.receive(watcher, connection, welcome(), snapshot(), EXPIRING)
        self.assertEqual(connection.sent, [])
        self.assertEqual(self.err.getvalue().splitlines(), [
            "mission-control watch: the token given expires in 60 s (at 16:05:05); the hub will "
            "close the connection then and watch will end: pass a token that lives longer"])
        watcher.connection_closed(connection, 4001, "token expired")
        self.assertEqual(result, [1])
        self.assertEqual(self.err.getvalue().splitlines()[1],
                         "mission-control watch: the token given has expired and the hub closed "
                         "the connection (4001); not reconnecting with it: pass a fresh --token")
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_expired_minted_token_reconnects(self):
        """A 4001 close of a watcher that mints its tokens is retried with a fresh token,
        resuming."""
        first, second = FakeConnection(), FakeConnection()
        watcher = self.watcher([first, second])
        result = []
        watcher.run().addCallback(result.append)
        watcher.connection_opened(first)
        self.receive(watcher, first, welcome(), snapshot(40))
        self.clock.advance(300)
        watcher.connection_closed(first, 4001, "token expired")
        self.clock.advance(1)
        self.assertEqual(result, [])
        (_, old), (_, fresh) = self.endpoint.attempts
        self.assertNotEqual(old, fresh)
        verify(fresh[len("Bearer "):], b"s" * 32, now=self.clock.seconds())
        self.assertEqual(self.endpoint.urls[1], "ws://127.0.0.1:9/ws?since=40&epoch=e")
        watcher.stop()

    def test_closes_for_own_behaviour_keep_backing_off(self):
        """4008 (too slow) and 4029 (too many messages) are retried, but the backoff keeps
        growing across them (1, 2, 4 s); any other close, 1001 here, starts again at 1 s."""
        connections = [FakeConnection() for _ in range(5)]
        watcher = self.watcher(connections)
        watcher.run()
        for connection, code, delay in zip(connections, [4008, 4029, 4008, 1001],
                                           [1, 2, 4, 1]):
            watcher.connection_opened(connection)
            watcher.connection_closed(connection, code, "")
            self.clock.advance(delay)
        self.assertEqual(self.attempt_times(), [0, 1, 3, 7, 8])
        self.assertIn("closed (4029); reconnecting in 2.0 s", self.err.getvalue())
        watcher.stop()


class StreamPositionTests(SynchronousTestCase):
    """L{cli.StreamPosition}: where the next connection resumes from."""

    def observed(self, *frames):
        position = cli.StreamPosition()
        position.connection_started()
        for frame in frames:
            position.observe(frame)
        return position

    def assertPosition(self, position, seq, epoch):
        self.assertEqual((position.seq, position.epoch), (seq, epoch))

    def test_frames_that_move_it(self):
        """Events, the snapshot, heartbeats and resumed frames move it, in the welcome's epoch."""
        self.assertPosition(self.observed(welcome("e"), snapshot(40)), 40, "e")
        self.assertPosition(self.observed(welcome("e"), snapshot(40), event(41)), 41, "e")
        self.assertPosition(self.observed(welcome("e"), snapshot(40), heartbeat(40)), 40, "e")
        self.assertPosition(self.observed(welcome("e"), event(41), resumed(41, 41)), 41, "e")
        self.assertPosition(self.observed(welcome("e"), resumed(41, 40)), 40, "e")
        self.assertPosition(self.observed(welcome("f"), history_lost("epoch", 3)), 3, "f")

    def test_welcome_alone_moves_nothing(self):
        """A welcome moves neither seq nor epoch: its lastSeq is the hub's, not yet replayed, and
        its epoch may be one the next frame declares lost."""
        position = self.observed(welcome("e"), snapshot(40))
        position.connection_started()
        position.observe(welcome("f", 90))
        self.assertPosition(position, 40, "e")
        self.assertFalse(position.current)

    def test_needs_an_epoch(self):
        """Without a usable epoch (an older hub, or one the hub would refuse) nothing moves, so
        the watcher never asks to resume with a seq that means nothing."""
        self.assertPosition(self.observed(WELCOME | {"payload": {}}, SNAPSHOT, event(41)),
                            None, None)
        self.assertPosition(self.observed(welcome("bad epoch"), snapshot(3)), None, None)
        self.assertPosition(self.observed(welcome("e"), event(True), event(-1), event("7")),
                            None, None)


# watch against a real server


class WatchTests(TestCase):
    """C{mission-control watch} against a running hub."""

    timeout = 30

    def watch(self, url, *args, ttl=None, **settings):
        """
        Parse a watch command line and start its watcher on the reactor; stopped at clean-up.
        C{ttl} is the lifetime of the tokens it mints.
        """
        options = cli.parse_command_line(["watch", "--url", url, *args], {}).subOptions
        if ttl is not None:
            options["credentials"] = dataclasses.replace(options["credentials"], ttl=ttl)
        self.out, self.err = io.StringIO(), io.StringIO()
        settings.setdefault("retry_policy", FAST_RETRY)
        watcher = cli.build_watcher(reactor, options, self.out, self.err, **settings)
        self.result = watcher.run()
        self.addCleanup(watcher.stop)
        return watcher

    def lines(self):
        return self.out.getvalue().splitlines()

    @defer.inlineCallbacks
    def test_prints_welcome_and_events(self):
        """With no token it mints a viewer token from the data dir, prints the connected line,
        then each event published, and stop() closes the connection cleanly with exit code 0."""
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        server.hub.publish(events.AGENT_STATUS, agent_status("agent-old", "idle"))
        watcher = self.watch(server.url(), "--data-dir", data_dir)
        yield wait_until(lambda: self.lines())
        self.assertRegex(self.lines()[0], r"^\d\d:\d\d:\d\d connected as mission-control-cli "
                                          r"\(viewer\), 1 agents, 0 sessions, lastSeq=1$")
        server.hub.publish(events.AGENT_STATUS,
                           agent_status("agent-atlas", "busy", message="working on a task"))
        yield wait_until(lambda: len(self.lines()) == 2)
        self.assertRegex(self.lines()[1], r'^\d\d:\d\d:\d\d agent:status  agent-atlas  busy  '
                                          r'"working on a task"  seq=2$')
        code = yield watcher.stop()
        self.assertEqual(code, 0)
        self.assertEqual((yield self.result), 0)
        yield wait_until(lambda: server.hub.connection_count == 0)
        self.assertEqual(self.err.getvalue(), "")

    @defer.inlineCallbacks
    def test_json_mode(self):
        """--json prints the frames themselves, one JSON object per line, from welcome on."""
        server = start_server(self)
        watcher = self.watch(server.url(), "--json", "--token", server.token("alice"))
        yield wait_until(lambda: len(self.lines()) == 2)
        server.hub.publish(events.SESSION_ACTIVITY, events.session_activity(
            {"activity": "started"}, reactor.seconds(), "sess-1"))
        yield wait_until(lambda: len(self.lines()) == 3)
        frames = [json.loads(line) for line in self.lines()]
        self.assertEqual([f["type"] for f in frames], ["welcome", "snapshot", "session:activity"])
        self.assertEqual(frames[0]["payload"]["user"]["id"], "alice")
        self.assertEqual(frames[2]["seq"], 1)
        yield watcher.stop()

    def publish(self, server, *agents):
        """Publish an agent:status for each of C{agents} through C{server}'s hub."""
        for agent in agents:
            server.hub.publish(events.AGENT_STATUS, agent_status(agent, "online"))

    @defer.inlineCallbacks
    def restart(self, server, *args):
        """Stop C{server} (clients hear 1001) and start another on its port with C{args}."""
        ports = [port for _, port in server.service.ports]
        yield server.service.stopService()
        yield wait_until(lambda: server.hub.connection_count == 0
                         and not any(port.connected for port in ports))
        yield wait_until(lambda: "connection refused" in self.err.getvalue())
        return start_server(self, [*args, "--listen", f"tcp:{server.port}:interface=127.0.0.1"])

    @defer.inlineCallbacks
    def test_resumes_after_the_server_restarts(self):
        """
        When the hub goes away it says so on stderr and retries while nothing listens.  Back on
        the same port and data dir, the hub replays what was published while the watcher was
        away: each event is printed once, then the range replayed, then live events.
        """
        data_dir, _ = secret_dir(self)
        first = start_server(self, ["--data-dir", data_dir])
        self.watch(first.url(), "--data-dir", data_dir)
        yield wait_until(lambda: len(self.lines()) == 1)
        self.publish(first, "agent-1", "agent-2", "agent-3")
        yield wait_until(lambda: len(self.lines()) == 4)

        second = yield self.restart(first, "--data-dir", data_dir)
        self.assertIn("closed (1001 server going away); reconnecting in",
                      self.err.getvalue().splitlines()[0])
        # The reactor has not run since the start: the watcher cannot be back yet.
        self.publish(second, "agent-4", "agent-5", "agent-6")
        yield wait_until(lambda: any("resumed" in line for line in self.lines()))
        self.publish(second, "agent-live")
        yield wait_until(lambda: "seq=7" in self.lines()[-1])

        lines = self.lines()
        self.assertEqual(printed_seqs(lines), [1, 2, 3, 4, 5, 6, 7])
        self.assertRegex(lines[4], r"^\d\d:\d\d:\d\d connected as mission-control-cli "
                                   r"\(viewer\), lastSeq=6$")
        self.assertIn("agent:status  agent-4  online  seq=4", lines[5])
        self.assertRegex(lines[8], r"^\d\d:\d\d:\d\d resumed: replayed seq 4-6$")
        self.assertIn("agent:status  agent-live  online  seq=7", lines[9])
        self.assertEqual(len(lines), 10)
        self.assertEqual(second.hub.connection_count, 1)

    @defer.inlineCallbacks
    def test_lost_history_is_announced(self):
        """
        A hub back with another data dir (a new epoch, sharing only the secret) cannot replay:
        the watcher says the history was lost, shows the fresh snapshot as the usual connected
        line, and follows the new history from there.
        """
        secret_path, _ = secret_file(self)
        first = start_server(self, ["--data-dir", tmp_path(self), "--jwt-secret-file", secret_path])
        watcher = self.watch(first.url(), "--jwt-secret-file", secret_path)
        yield wait_until(lambda: len(self.lines()) == 1)
        self.publish(first, "agent-1", "agent-2")
        yield wait_until(lambda: len(self.lines()) == 3)

        second = yield self.restart(first, "--data-dir", tmp_path(self),
                                    "--jwt-secret-file", secret_path)
        self.assertNotEqual(second.hub.store.epoch, first.hub.store.epoch)
        self.publish(second, "agent-new")
        yield wait_until(lambda: len(self.lines()) == 5)
        lines = self.lines()
        self.assertRegex(lines[3], r"^\d\d:\d\d:\d\d history lost \(epoch\): "
                                   r"showing a fresh snapshot$")
        self.assertRegex(lines[4], r"^\d\d:\d\d:\d\d connected as mission-control-cli "
                                   r"\(viewer\), 1 agents, 0 sessions, lastSeq=1$")
        self.assertEqual((watcher.position.seq, watcher.position.epoch),
                         (1, second.hub.store.epoch))
        self.publish(second, "agent-live")
        yield wait_until(lambda: len(self.lines()) == 6)
        self.assertIn("agent-live  online  seq=2", self.lines()[5])

    @defer.inlineCallbacks
    def test_named_watcher_resumes_across_restarts_of_watch(self):
        """
        With --client the hub's stored position follows what was printed (acked on a timer);
        a watch started again with the same name prints what was published while none ran, each
        once, and its ack on a clean stop records the last seq it printed.
        """
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        store, user = server.hub.store, cli.LOCAL_TOKEN_SUBJECT
        argv = ["--data-dir", data_dir, "--client", "wall-1"]
        watcher = self.watch(server.url(), *argv, ack_interval=0.05)
        yield wait_until(lambda: len(self.lines()) == 1)
        self.publish(server, "agent-1", "agent-2", "agent-3")
        yield wait_until(lambda: store.position(user, "wall-1") == 3)
        self.assertEqual(printed_seqs(self.lines()), [1, 2, 3])
        self.assertEqual((yield watcher.stop()), 0)

        self.publish(server, "agent-4", "agent-5")
        watcher = self.watch(server.url(), *argv, ack_interval=60)
        yield wait_until(lambda: any("resumed" in line for line in self.lines()))
        lines = self.lines()
        self.assertEqual(printed_seqs(lines), [4, 5])
        self.assertRegex(lines[-1], r"^\d\d:\d\d:\d\d resumed: replayed seq 4-5$")
        self.assertEqual(store.position(user, "wall-1"), 3)
        self.assertEqual((yield watcher.stop()), 0)
        self.assertEqual(store.position(user, "wall-1"), 5)
        self.assertEqual(self.err.getvalue(), "")

    @defer.inlineCallbacks
    def test_sub_makes_another_user_whose_comings_and_goings_show(self):
        """
        --sub mints the watcher's tokens for that user: a watch subscribed to presence as carol
        prints a presence:join line, with who, name, role and count, when the default watch
        (another user) connects, and a presence:leave line when it stops.
        """
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        self.watch(server.url(query="channels=presence"), "--data-dir", data_dir,
                   "--sub", "carol")
        yield wait_until(lambda: server.hub.connections_of("carol"))
        carol_out = self.out
        other = cli.build_watcher(
            reactor, cli.parse_command_line(
                ["watch", "--url", server.url(), "--data-dir", data_dir], {}).subOptions,
            io.StringIO(), io.StringIO(), retry_policy=FAST_RETRY)
        other.run()
        self.addCleanup(other.stop)
        yield wait_until(lambda: "presence:join" in carol_out.getvalue())
        yield other.stop()
        yield wait_until(lambda: "presence:leave" in carol_out.getvalue())
        lines = carol_out.getvalue().splitlines()
        self.assertRegex(lines[0], r"^\d\d:\d\d:\d\d connected as carol \(viewer\), 0 agents")
        self.assertRegex(lines[1], r'^\d\d:\d\d:\d\d presence:join  mission-control-cli  '
                                   r'"mission-control CLI"  \(viewer\)  connections=1$')
        self.assertRegex(lines[2], r'^\d\d:\d\d:\d\d presence:leave  mission-control-cli  '
                                   r'"mission-control CLI"  \(viewer\)  connections=0$')

    @defer.inlineCallbacks
    def test_minted_token_renewed_over_the_connection(self):
        """
        A watcher minting short-lived tokens answers auth:expiring with a fresh one, and the same
        connection stays open past the first token's expiry (the hub allows no leeway here),
        printing nothing about it.
        """
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir, "--jwt-leeway", "0"])
        server.hub.expiry_warning = 1.0
        self.watch(server.url(), "--data-dir", data_dir, ttl=2)
        yield wait_until(lambda: self.lines() and server.hub.connection_count == 1)
        [connection] = server.hub.connections_of(cli.LOCAL_TOKEN_SUBJECT)
        first_expiry = connection.principal.expires_at
        yield wait_until(lambda: connection.principal.expires_at > first_expiry, timeout=3)
        yield wait_until(lambda: reactor.seconds() > first_expiry + 0.3, timeout=3)
        self.assertEqual(server.hub.connections_of(cli.LOCAL_TOKEN_SUBJECT),
                         frozenset([connection]))
        self.assertEqual(connection.state, connection.STATE_OPEN)
        self.assertEqual((len(self.lines()), self.err.getvalue()), (1, ""))

    @defer.inlineCallbacks
    def test_refused_token_ends_with_exit_1(self):
        """A 401 ends the watch with exit code 1 and one line with the status and reason, without
        retrying and without showing the token."""
        server = start_server(self)
        expired = server.token("alice", ttl=-60)
        self.watch(server.url(), "--token", expired)
        code = yield self.result
        self.assertEqual(code, 1)
        self.assertEqual(self.err.getvalue(),
                         "mission-control watch: the hub refused the connection: "
                         "401 token expired\n")
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(server.hub.connection_count, 0)

    @defer.inlineCallbacks
    def test_foreign_secret_hint(self):
        """A minted token the hub does not accept ends with 1 and names the secret it came from."""
        server = start_server(self)
        other_dir, _ = secret_dir(self)
        self.watch(server.url(), "--data-dir", other_dir)
        self.assertEqual((yield self.result), 1)
        self.assertIn("401 invalid token (the token was minted from "
                      + os.path.join(other_dir, "jwt-secret"), self.err.getvalue())

    @defer.inlineCallbacks
    def test_tls_with_cafile(self):
        """Over wss:// and https:// the hub's certificate is checked against --cafile; without it
        the private CA is not trusted."""
        directory = tmp_path(self)
        ca, key, cert = make_certificates(directory)
        server = start_server(self, ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}"
                                                 f":certKey={cert}"])
        token = server.token("alice", role="admin")
        self.watch(server.url(), "--token", token, "--cafile", ca)
        yield wait_until(lambda: self.lines())
        self.assertIn("connected as alice (admin)", self.lines()[0])

        base = ["publish", "status", "agent-tls", "online", "--token", token,
                "--url", f"https://127.0.0.1:{server.port}"]
        code, out, err = yield run_in_thread(base + ["--cafile", ca])
        self.assertEqual((code, out, err), (0, "published agent:status seq=1\n", ""))
        yield wait_until(lambda: len(self.lines()) == 2)
        self.assertIn("agent-tls  online", self.lines()[1])
        code, out, err = yield run_in_thread(base)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("certificate is not trusted", err)


class WatchCertificateTests(TestCase):
    """
    C{mission-control watch} against a TLS hub whose certificate it cannot verify: retrying cannot
    change the certificate, so it says what to do, once, and ends with exit code 1.
    """

    timeout = 30

    @defer.inlineCallbacks
    def watch_tls(self, interface="127.0.0.1", *args):
        """Start a TLS hub on C{interface}, watch it with C{args}; fires with the exit code."""
        self.files = certs.write_certificates(self)
        listen = certs.ssl_listen(self.files).replace("127.0.0.1", interface)
        server = start_server(self, ["--listen", listen])
        self.url = f"wss://{interface}:{server.port}/ws"
        options = cli.parse_command_line(
            ["watch", "--url", self.url, "--token", server.token("alice"), *args], {}).subOptions
        self.out, self.err = io.StringIO(), io.StringIO()
        watcher = cli.build_watcher(reactor, options, self.out, self.err, retry_policy=FAST_RETRY)
        result = watcher.run()
        self.addCleanup(watcher.stop)
        yield wait_until(lambda: self.err.getvalue() or result.called)
        self.assertTrue(result.called, self.err.getvalue())
        self.assertEqual(server.hub.connection_count, 0)
        self.assertEqual(self.out.getvalue(), "")
        return (yield result)

    def assertOneLine(self, *fragments):
        """stderr holds one line, with each of C{fragments}, and no retry."""
        lines = self.err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertNotIn("reconnecting", lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])

    @defer.inlineCallbacks
    def test_certificate_of_an_unknown_ca(self):
        """
        Without --cafile a hub whose certificate comes from a private CA is not trusted: one line
        that says so and names --cafile, exit code 1, no second attempt.
        """
        code = yield self.watch_tls()
        self.assertEqual(code, 1)
        self.assertOneLine("mission-control watch: cannot connect to " + self.url,
                           "certificate is not trusted", "certificate verify failed",
                           "--cafile")

    @defer.inlineCallbacks
    def test_cafile_of_another_ca(self):
        """With --cafile of another CA the certificate is not trusted either, and the line names
        the CA file that did not vouch for it."""
        other = tmp_path(self, "other-ca.pem")
        with open(other, "wb") as f:
            f.write(certs.other_certificate_authority().pem)
        code = yield self.watch_tls("127.0.0.1", "--cafile", other)
        self.assertEqual(code, 1)
        self.assertOneLine("certificate is not trusted", f"--cafile {other}")

    @defer.inlineCallbacks
    def test_certificate_for_another_host(self):
        """A certificate from the trusted CA but for other names (localhost, 127.0.0.1 here, the
        hub reached as 127.0.0.2) ends the watch too, saying whose names are wrong."""
        code = yield self.watch_tls("127.0.0.2", "--cafile", certs.write_certificates(self).ca)
        self.assertEqual(code, 1)
        self.assertOneLine("certificate is not valid for 127.0.0.2")


class WatchProcessTests(TestCase):
    """The console script's C{watch} as a process: signals end it cleanly."""

    timeout = 60

    @defer.inlineCallbacks
    def assertSignalEndsCleanly(self, signal_name):
        data_dir, _ = secret_dir(self)
        server = start_server(self, ["--data-dir", data_dir])
        process = ChildProcess()
        reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-m", "mission_control.cli", "watch", "--url", server.url(),
             "--data-dir", data_dir],
            env=dict(os.environ),
        )
        try:
            yield wait_until(lambda: b"connected as" in process.out, timeout=20)
            yield wait_until(lambda: server.hub.connection_count == 1)
        finally:
            process.transport.signalProcess(signal_name)
        exit_code = yield process.ended
        self.assertEqual(exit_code, 0, process.err.decode(errors="replace"))
        self.assertEqual(process.err, b"")
        yield wait_until(lambda: server.hub.connection_count == 0)

    def test_sigterm(self):
        """SIGTERM closes the connection and exits with 0, printing nothing on stderr."""
        return self.assertSignalEndsCleanly("TERM")

    def test_ctrl_c(self):
        """Ctrl-C (SIGINT) closes the connection and exits with 0, without a traceback."""
        return self.assertSignalEndsCleanly("INT")




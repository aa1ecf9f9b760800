# -*- test-case-name: tests.test_cli -*-
"""
Tests for L{mission_control.cli}, the C{mission-control} console script: C{token}, and the command
line as a whole (help, usage errors, URLs, the options shared by C{publish} and C{watch}).

Tokens are checked with the hub's own L{auth.TokenVerifier}.  C{publish} is tested in
L{tests.test_cli_publish}, C{watch} in L{tests.test_cli_watch}, and what it prints and where it
resumes from, without a reactor, in L{tests.test_cli_render} and L{tests.test_cli_position}.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from mission_control import auth, cli, tokens
from tests.cli_helpers import UsageAssertions, claims, run, secret_dir, secret_file, verify
from tests.helpers import tmp_path


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
        token = tokens.mint_token(secret, "dave", time.time(), ttl=60)
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

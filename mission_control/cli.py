# -*- test-case-name: tests.test_cli -*-
"""
The C{mission-control} console script: mint tokens, publish events, watch the stream.

    mission-control token --sub ID [--role ROLE] [--name NAME] [--ttl 1h]
                          [--data-dir DIR | --jwt-secret-file FILE] [--issuer I] [--audience A]
    mission-control publish status AGENT_ID STATUS [--message M] [--name N] [--metadata JSON]
    mission-control publish activity SESSION_ID ACTIVITY [--agent A] [--summary S] [--detail JSON]
    mission-control watch [--url ws://127.0.0.1:8080/ws] [--client NAME] [--json] [--verbose]

C{publish} and C{watch} also take C{--url}, C{--token} and C{--cafile}.  Without a token they mint a
five-minute one from the local development secret (the C{jwt-secret} that the server generates in
its data dir), so that both work with no arguments next to a locally started server.

C{watch} loses nothing across reconnects: it remembers the last C{seq} and the C{epoch} of the
hub's history and reconnects with C{since} and C{epoch}, so the hub replays what it missed, or says
the history is lost and sends a fresh snapshot.  With C{--client NAME} it also acknowledges what it
printed, and the next C{watch} of that name starts there.  A token it minted itself is renewed over
the connection before it expires.

Exit codes: 0 success, 1 a runtime failure (the server refused or could not be reached),
2 a usage error.  Everything a user can get wrong on the command line, including an unusable
secret or CA file, is found while parsing, before any network traffic, and reported as one line on
stderr.  A token is never written anywhere but to the stdout of C{token}.

Environment (the command line wins; the first four are the server's own names):
C{MISSION_CONTROL_DATA_DIR}, C{MISSION_CONTROL_JWT_SECRET_FILE}, C{MISSION_CONTROL_JWT_ISSUER},
C{MISSION_CONTROL_JWT_AUDIENCE}, C{MISSION_CONTROL_URL} (an C{http://} or C{ws://} URL serves both
C{publish} and C{watch}), C{MISSION_CONTROL_TOKEN}.

No proxy settings are used: the hub is reached directly, by C{publish} and C{watch} alike.

Layout: parsing (the L{usage.Options} tree) first, then one section per command.  C{token} and
C{publish} are plain blocking functions; C{watch} is a L{Watcher} driven by an injected reactor,
which L{main} runs with the real one.
"""

from __future__ import annotations

import getopt
import http.client
import json
import os
import random
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Callable, Mapping, NoReturn, Sequence, TextIO
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from OpenSSL.crypto import Error as OpenSSLError
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError as TwistedConnectionRefused
from twisted.internet.error import DNSLookupError, TimeoutError as TwistedTimeoutError
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python import usage
from twisted.python.failure import Failure

from mission_control import __version__, auth, channels, events

PROGRAM = "mission-control"
ENV_PREFIX = "MISSION_CONTROL_"

DEFAULT_DATA_DIR = "./mission-control-data"
DEFAULT_HTTP_URL = "http://127.0.0.1:8080"
DEFAULT_WS_URL = "ws://127.0.0.1:8080/ws"

#: Tokens that C{publish} and C{watch} mint for themselves live this long (seconds).
LOCAL_TOKEN_TTL = 300
#: The C{sub} of those tokens: what the hub's logs show for the CLI.
LOCAL_TOKEN_SUBJECT = "mission-control-cli"

#: The longest C{--ttl} accepted: a token is a credential, and a year is already a lot.
MAX_TTL = 366 * 86400

HTTP_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024
USER_AGENT = f"mission-control-cli/{__version__}"

#: What a JWT can be made of.  Anything else (white space, a line break that would end a header
#: early) is refused before it goes near a request.
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]+\Z")
_DURATION_RE = re.compile(r"(\d{1,12})([smhd]?)\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

_SECRET_HINT = (
    "start the server once (twistd -n mission-control) and it generates one there, "
    "or pass --data-dir DIR or --jwt-secret-file FILE"
)


# Parsing


class CommandUsageError(usage.UsageError):
    """A usage error, tagged with the command it belongs to (C{mission-control publish status})."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.message = message
        self.command = command


class CommandMissing(usage.UsageError):
    """No subcommand was given where one is needed; C{usage_text} is that command's help."""

    def __init__(self, command: str, usage_text: str) -> None:
        super().__init__(f"{command}: no command given")
        self.command = command
        self.usage_text = usage_text


class HelpRequested(Exception):
    """C{--help} or C{--version}: C{text} goes to stdout, and the exit code is 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Options(usage.Options):
    """
    What every command's options share: help and version that are returned rather than printed
    and exited on, the command's full name in its synopsis, usage errors tagged with the command,
    and the environment, which the root holds.
    """

    synopsis = "[options]"
    longdesc = ""

    def opt_help(self) -> NoReturn:
        """Display this help and exit."""
        raise HelpRequested(str(self).rstrip())

    opt_h = opt_help

    def opt_version(self) -> NoReturn:
        """Display the version and exit."""
        raise HelpRequested(f"{PROGRAM} {__version__}")

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        try:
            if not getattr(self, "subCommands", None):
                argv = self._options_first(argv)
            super().parseOptions(argv)
        except getopt.GetoptError as e:
            raise CommandUsageError(self._clarify(str(e)), self.command_name()) from None
        except (CommandMissing, CommandUsageError):
            raise
        except usage.UsageError as e:
            raise CommandUsageError(self._clarify(str(e)), self.command_name()) from None

    def _options_first(self, argv: list[str]) -> list[str]:
        """
        Move options given after positional arguments in front of them, as GNU tools allow
        (C{publish status a1 busy --message hi}): Twisted's parser stops at the first positional
        argument.  Only for commands without subcommands, whose arguments are all their own.
        """
        found, arguments = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        front: list[str] = []
        for option, value in found:
            if option.startswith("--"):
                takes_value = option[2:] + "=" in self.longOpt
            else:
                takes_value = option[1:] + ":" in self.shortOpt
            front += [option, value] if takes_value else [option]
        return front + ["--"] + arguments

    def _clarify(self, message: str) -> str:
        """Twisted's and getopt's wording, made plainer where it is unclear."""
        if message.startswith("Unknown command: "):
            name = message[len("Unknown command: "):]
            choices = ", ".join(c[0] for c in getattr(self, "subCommands", ()))
            return f"unknown command {name!r}; choose one of: {choices}"
        unknown = re.match(r"option (\S+) not recognized\Z", message)
        if unknown:
            return f"unknown option {unknown.group(1)}"
        return message

    def command_name(self) -> str:
        """C{mission-control}, C{mission-control publish}, C{mission-control publish status}."""
        if self.parent is None:
            return PROGRAM
        return f"{self.parent.command_name()} {self.parent.subCommand}"

    def getSynopsis(self) -> str:
        return f"Usage: {self.command_name()} {self.synopsis}".rstrip()

    def environ(self) -> Mapping[str, str]:
        return self.parent.environ() if self.parent is not None else {}

    def env(self, name: str) -> str | None:
        """C{MISSION_CONTROL_<name>} from the environment; an empty value counts as unset."""
        value = self.environ().get(ENV_PREFIX + name)
        return value if value else None

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")

    def require_subcommand(self) -> None:
        if self.subCommand is None:
            raise CommandMissing(self.command_name(), str(self).rstrip())


@dataclass(frozen=True)
class SigningKey:
    """
    The HMAC secret the hub verifies tokens with, and the C{iss}/C{aud} it checks, for minting.

    @ivar path: where the secret was read from (safe to show; the secret is not).
    """

    secret: bytes = field(repr=False)
    path: str
    issuer: str | None = None
    audience: str | None = None

    def mint(self, sub: str, now: float, ttl: float, role: str | None = None,
             name: str | None = None, channels: list[str] | None = None) -> str:
        return auth.mint_token(self.secret, sub, now, ttl=ttl, role=role, name=name,
                               issuer=self.issuer, audience=self.audience, channels=channels)


@dataclass(frozen=True)
class Credentials:
    """
    The bearer token a client command sends: the one given, or a fresh one minted for each
    request or connection from the local secret (C{key}), with C{role}, valid for C{ttl} seconds.
    """

    given: str | None = field(default=None, repr=False)
    key: SigningKey | None = None
    role: str = auth.DEFAULT_ROLE
    ttl: float = LOCAL_TOKEN_TTL

    @property
    def mints(self) -> bool:
        """Whether fresh tokens can be had (from the local secret), rather than one fixed token."""
        return self.given is None

    def token(self, now: float) -> str:
        if self.given is not None:
            return self.given
        assert self.key is not None
        return self.key.mint(LOCAL_TOKEN_SUBJECT, now, self.ttl, role=self.role,
                             name=f"{PROGRAM} CLI")

    def refusal_hint(self) -> str:
        """What to suggest when the hub answers 401 to these credentials."""
        if self.key is not None:
            return (f" (the token was minted from {self.key.path}: does the server use that "
                    f"secret? Otherwise pass --token)")
        return ""


class _KeyOptions(_Options):
    """Options that find the local secret: the same names and environment as the server's."""

    optParameters = [
        ["data-dir", None, None,
         f"The server's data dir, which holds its generated jwt-secret. "
         f"[env {ENV_PREFIX}DATA_DIR, default {DEFAULT_DATA_DIR}]"],
        ["jwt-secret-file", None, None,
         f"The HMAC secret file, instead of the data dir's. [env {ENV_PREFIX}JWT_SECRET_FILE]"],
        ["issuer", None, None,
         f"iss claim, when the server checks one. [env {ENV_PREFIX}JWT_ISSUER]"],
        ["audience", None, None,
         f"aud claim, when the server checks one. [env {ENV_PREFIX}JWT_AUDIENCE]"],
    ]

    def secret_path(self) -> str:
        """
        The secret file: C{--jwt-secret-file} or C{--data-dir}, else the same two from the
        environment, else the default data dir.
        """
        secret_file, data_dir = self["jwt-secret-file"], self["data-dir"]
        if secret_file and data_dir:
            raise usage.UsageError("give --data-dir or --jwt-secret-file, not both")
        if secret_file:
            return secret_file
        if data_dir:
            return os.path.join(data_dir, auth.SECRET_FILE_NAME)
        from_env = self.env("JWT_SECRET_FILE")
        if from_env:
            return from_env
        return os.path.join(self.env("DATA_DIR") or DEFAULT_DATA_DIR, auth.SECRET_FILE_NAME)

    def signing_key(self, missing: str) -> SigningKey:
        """
        Read the secret; never create it (a secret the server does not use mints useless tokens).

        @param missing: the start of the message when there is no secret file.
        """
        path = self.secret_path()
        if not os.path.exists(path):
            raise usage.UsageError(f"{missing}: no JWT secret at {path}; {_SECRET_HINT}")
        try:
            secret = auth.read_secret(path)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        return SigningKey(
            secret,
            path,
            issuer=self["issuer"] or self.env("JWT_ISSUER"),
            audience=self["audience"] or self.env("JWT_AUDIENCE"),
        )


def parse_duration(text: str, option: str = "--ttl") -> int:
    """
    Seconds from C{90}, C{30s}, C{15m}, C{1h} or C{7d}: a whole positive number, at most L{MAX_TTL}.

    @raise usage.UsageError: for anything else.
    """
    match = _DURATION_RE.match(text.strip().lower())
    if match is None:
        raise usage.UsageError(
            f"{option} must be a whole number of seconds or have a unit, "
            f"like 90, 30s, 15m, 1h, 7d (not {text!r})"
        )
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise usage.UsageError(f"{option} must be more than 0")
    if seconds > MAX_TTL:
        raise usage.UsageError(f"{option} must be at most {MAX_TTL // 86400}d")
    return seconds


def check_subject(sub: str, role: str) -> None:
    """The hub's rules for C{sub} (CONTRACT section 2): a minted token is not refused for it."""
    if not sub or len(sub) > auth.MAX_SUB_LENGTH or auth.has_control_characters(sub):
        raise usage.UsageError(
            f"--sub must be 1-{auth.MAX_SUB_LENGTH} characters without control characters"
        )
    if role == "agent" and not auth.is_valid_id(sub):
        raise usage.UsageError(
            "with --role agent, --sub is the agent id: 1-128 characters of A-Z a-z 0-9 . _ : -"
        )


def check_role(role: str) -> str:
    if role not in auth.ROLES:
        raise usage.UsageError(f"unknown role {role!r}; choose one of: {', '.join(auth.ROLES)}")
    return role


def check_name(name: str | None, option: str = "--name") -> None:
    if name is not None and (
        len(name) > auth.MAX_NAME_LENGTH or auth.has_control_characters(name)
    ):
        raise usage.UsageError(
            f"{option} must be at most {auth.MAX_NAME_LENGTH} characters without control characters"
        )


def parse_json_object(text: str, option: str) -> dict:
    """A JSON object from the command line, or a usage error that says what is wrong with it."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise usage.UsageError(f"{option} is not valid JSON ({e})") from None
    except RecursionError:
        raise usage.UsageError(f"{option} is nested too deeply") from None
    if not isinstance(value, dict):
        raise usage.UsageError(f"{option} must be a JSON object, like '{{\"key\": \"value\"}}'")
    return value


# URLs: both forms are accepted everywhere, so one MISSION_CONTROL_URL serves publish and watch.

_HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def _split_url(value: str, option: str):
    """Split a URL from the command line; it is never echoed, as it may carry a token."""
    try:
        parts = urlsplit(value.strip())
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise usage.UsageError(f"{option} is not a valid URL") from None
    if parts.scheme.lower() not in _HTTP_SCHEMES:
        raise usage.UsageError(f"{option} must start with http://, https://, ws:// or wss://")
    if not parts.hostname:
        raise usage.UsageError(f"{option} has no host")
    if parts.username is not None or parts.password is not None:
        raise usage.UsageError(f"{option} must not hold a user name or password; use --token")
    if parts.fragment:
        raise usage.UsageError(f"{option} must not have a #fragment")
    return parts


def http_base_url(value: str, option: str = "--url") -> str:
    """
    The hub's HTTP base URL, C{http(s)://host[:port][/prefix]}.  A C{ws(s)://} URL is turned into
    the matching C{http(s)://} one, its trailing C{/ws} dropped.
    """
    parts = _split_url(value, option)
    scheme = parts.scheme.lower()
    if parts.query:
        raise usage.UsageError(f"{option} must not have a query for publish")
    path = parts.path.rstrip("/")
    if scheme in ("ws", "wss") and path.endswith("/ws"):
        path = path[: -len("/ws")]
    return urlunsplit((_HTTP_SCHEMES[scheme], parts.netloc, path, "", ""))


def websocket_url(value: str, option: str = "--url") -> str:
    """
    The hub's WebSocket URL.  An C{http(s)://} URL becomes C{ws(s)://}; an empty path (or C{/})
    becomes C{/ws}, where the hub serves it.
    """
    parts = _split_url(value, option)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((_WS_SCHEMES[parts.scheme.lower()], parts.netloc, path, parts.query, ""))


def display_url(url: str) -> str:
    """C{url} for messages: scheme, host, port and path; never the query, which may hold a token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def with_query_params(url: str, params: Sequence[tuple[str, str]]) -> str:
    """
    C{url} with C{params} set in its query: each replaces any parameter of the same name and is
    appended after the others, which are kept as they were written (order and encoding), so a
    C{?token=...} or anything else the hub is reached with survives.
    """
    if not params:
        return url
    parts = urlsplit(url)
    names = {name for name, _ in params}
    kept = [piece for piece in parts.query.split("&")
            if piece and unquote_plus(piece.partition("=")[0]) not in names]
    added = [f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params]
    return urlunsplit(parts._replace(query="&".join(kept + added)))


def resume_url(url: str, since: int | None = None, epoch: str | None = None,
               client: str | None = None) -> str:
    """
    The WebSocket URL of one connection: C{url} plus C{client=NAME} when the watcher is named,
    and C{since=SEQ&epoch=E} once it knows where it is in the hub's history (both or neither: a
    seq means nothing without the epoch it belongs to).
    """
    params: list[tuple[str, str]] = []
    if since is not None and epoch is not None:
        params += [("since", str(since)), ("epoch", epoch)]
    if client is not None:
        params.append(("client", client))
    return with_query_params(url, params)


class _ServerOptions(_KeyOptions):
    """
    Options of the commands that talk to a hub: where, with which token, trusting which CA.
    Parsed into C{self["url"]}, C{self["credentials"]} (L{Credentials}) and C{self["tls"]}.
    Each command adds C{--url} and C{--token} with its own default and role in their help.
    """

    optParameters = [
        ["cafile", None, None,
         "PEM certificate of the CA that signed the hub's certificate (https:// and wss:// only)."],
    ]

    #: Every option a subcommand takes from its parent when not given after the subcommand.
    CONNECTION_OPTIONS = ("url", "token", "cafile", "data-dir", "jwt-secret-file", "issuer",
                          "audience")

    #: The role of the token minted without C{--token}.
    local_role = auth.DEFAULT_ROLE
    default_url = DEFAULT_HTTP_URL

    def normalize_url(self, value: str) -> str:
        raise NotImplementedError

    def load_tls(self, path: str, url: str) -> object:
        raise NotImplementedError

    def inherit(self) -> None:
        """Take connection options given before the subcommand: C{publish --url U status ...}."""
        if isinstance(self.parent, _ServerOptions):
            for name in self.CONNECTION_OPTIONS:
                if self[name] is None:
                    self[name] = self.parent[name]

    def resolve_connection(self) -> None:
        """Fill in C{url}, C{credentials} and C{tls} from options, environment and defaults."""
        self.inherit()
        self["url"] = self.normalize_url(self["url"] or self.env("URL") or self.default_url)
        self["tls"] = None
        if self["cafile"]:
            if urlsplit(self["url"]).scheme not in ("https", "wss"):
                raise usage.UsageError("--cafile is only used with https:// or wss:// URLs")
            self["tls"] = self.load_tls(self["cafile"], self["url"])
        token = self["token"] or self.env("TOKEN")
        if token is not None:
            token = token.strip()
            if not _TOKEN_RE.match(token):
                raise usage.UsageError("the token given does not look like a JWT")
            self["credentials"] = Credentials(given=token)
        else:
            key = self.signing_key("no --token given and none to mint one with")
            self["credentials"] = Credentials(key=key, role=self.local_role)


def _token_help(role: str) -> str:
    return (f"Bearer token (JWT). [env {ENV_PREFIX}TOKEN] Without one, a "
            f"{LOCAL_TOKEN_TTL // 60}-minute {role} token is minted from the local development "
            f"secret (see --data-dir).")


def _read_cafile(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise usage.UsageError(f"cannot read --cafile {path}: {e.strerror}") from None


# mission-control token


class TokenOptions(_KeyOptions):
    synopsis = (
        "--sub ID [--role ROLE] [--name NAME] [--ttl 1h] [--channel C ...] "
        "[--data-dir DIR | --jwt-secret-file FILE] [--issuer I] [--audience A]"
    )
    longdesc = (
        "Mint an HS256 token with the hub's secret and print it, alone, on stdout. The secret is "
        "the one the server generated in its data dir, or the file given with --jwt-secret-file. "
        "Example: mission-control token --sub alice --role admin --ttl 8h"
    )
    optParameters = [
        ["sub", None, None,
         "The user id; for role agent the agent id (1-128 of A-Z a-z 0-9 . _ : -). Required."],
        ["role", None, auth.DEFAULT_ROLE, "One of: " + ", ".join(auth.ROLES) + "."],
        ["name", None, None, "Display name (name claim)."],
        ["ttl", None, "1h", "Lifetime: 90 (seconds), 30s, 15m, 1h, 7d."],
    ]

    def opt_channel(self, channel: str) -> None:
        """
        Narrow the token to this channel or pattern (repeatable): agents, agents:<id>,
        agents:*, sessions, sessions:<id>, sessions:*, presence.  Never widens the role.
        """
        if not channels.is_valid_pattern(channel):
            raise usage.UsageError(
                f"--channel {printable(channel)!r} is not a channel name or prefix:* pattern"
            )
        self.setdefault("channels", []).append(channel)

    def postOptions(self) -> None:
        if self["sub"] is None:
            raise usage.UsageError("--sub is required: the user id the token is for")
        check_role(self["role"])
        check_subject(self["sub"], self["role"])
        check_name(self["name"])
        self["ttl"] = parse_duration(self["ttl"])
        self["key"] = self.signing_key("cannot mint a token")


def mint_command(options: TokenOptions, stdout: TextIO, now: float) -> int:
    """Print the token, and nothing else: C{$(mission-control token ...)} must work."""
    token = options["key"].mint(options["sub"], now, options["ttl"], role=options["role"],
                                name=options["name"], channels=options.get("channels"))
    stdout.write(token + "\n")
    return 0


# mission-control publish


class _PublishConnectionOptions(_ServerOptions):
    """Where and how C{publish} posts: the hub's HTTP URL, an admin token by default."""

    local_role = "admin"
    default_url = DEFAULT_HTTP_URL
    optParameters = [
        ["url", None, None,
         f"The hub's HTTP URL. [env {ENV_PREFIX}URL, default {DEFAULT_HTTP_URL}]"],
        ["token", None, None, _token_help("admin")],
    ]

    def normalize_url(self, value: str) -> str:
        return http_base_url(value)

    def load_tls(self, path: str, url: str) -> ssl.SSLContext:
        data = _read_cafile(path)
        try:
            return ssl.create_default_context(cadata=data.decode("ascii"))
        except (ssl.SSLError, ValueError):
            raise usage.UsageError(f"--cafile {path} holds no PEM certificate") from None


class _PublishEventOptions(_PublishConnectionOptions):
    """A C{publish} subcommand: an event payload from positional arguments and options."""

    #: the names of the two positional arguments, for messages
    arguments: tuple[str, str] = ("ID", "VALUE")
    validator: Callable[..., dict]
    path_template: str

    def parseArgs(self, *args: str) -> None:
        if len(args) < 2:
            missing = " and ".join(self.arguments[len(args):])
            raise usage.UsageError(f"missing {missing}")
        if len(args) > 2:
            raise usage.UsageError(f"unexpected argument {args[2]!r} (quote text with spaces)")
        self["subject"], self["value"] = args

    def postOptions(self) -> None:
        if not auth.is_valid_id(self["subject"]):
            raise usage.UsageError(
                f"{self.arguments[0]} must be 1-128 characters of A-Z a-z 0-9 . _ : -"
            )
        body = self.body()
        try:
            self.validator(body, time.time(), self["subject"])
        except events.ValidationError as e:
            raise usage.UsageError(e.message) from None
        self["body"] = body
        self["path"] = self.path_template.format(quote(self["subject"], safe=""))
        self.resolve_connection()

    def body(self) -> dict:
        raise NotImplementedError


class PublishStatusOptions(_PublishEventOptions):
    synopsis = "AGENT_ID STATUS [--message TEXT] [--name NAME] [--metadata JSON] [options]"
    longdesc = (
        "POST /api/agents/AGENT_ID/status. STATUS is one of: " + ", ".join(events.STATUSES) + "."
    )
    optParameters = [
        ["message", "m", None, "What the agent is doing (at most 1024 characters)."],
        ["name", None, None, "The agent's display name."],
        ["metadata", None, None, "A JSON object (at most 8 KiB)."],
    ]
    arguments = ("AGENT_ID", "STATUS")
    validator = staticmethod(events.agent_status)
    path_template = "/api/agents/{}/status"

    def body(self) -> dict:
        body: dict[str, Any] = {"status": self["value"]}
        for name in ("message", "name"):
            if self[name] is not None:
                body[name] = self[name]
        if self["metadata"] is not None:
            body["metadata"] = parse_json_object(self["metadata"], "--metadata")
        return body


class PublishActivityOptions(_PublishEventOptions):
    synopsis = "SESSION_ID ACTIVITY [--agent AGENT_ID] [--summary TEXT] [--detail JSON] [options]"
    longdesc = (
        "POST /api/sessions/SESSION_ID/activity. ACTIVITY is a short word: started, message, "
        "tool_call, completed, failed, ..."
    )
    optParameters = [
        ["agent", None, None, "The agent the activity belongs to."],
        ["summary", "s", None, "One line about it (at most 1024 characters)."],
        ["detail", None, None, "A JSON object (at most 8 KiB)."],
    ]
    arguments = ("SESSION_ID", "ACTIVITY")
    validator = staticmethod(events.session_activity)
    path_template = "/api/sessions/{}/activity"

    def body(self) -> dict:
        body: dict[str, Any] = {"activity": self["value"]}
        if self["agent"] is not None:
            body["agentId"] = self["agent"]
        if self["summary"] is not None:
            body["summary"] = self["summary"]
        if self["detail"] is not None:
            body["detail"] = parse_json_object(self["detail"], "--detail")
        return body


class PublishOptions(_PublishConnectionOptions):
    synopsis = "status|activity ... [--url URL] [--token JWT] [--cafile PEM]"
    longdesc = (
        "Publish an event through the hub's HTTP API and print its seq. Without --token, a "
        f"{LOCAL_TOKEN_TTL // 60}-minute admin token is minted from the local development secret "
        "(--data-dir, --jwt-secret-file). Connection options go before or after the subcommand."
    )
    subCommands = [
        ["status", None, PublishStatusOptions, "Publish an agent:status event."],
        ["activity", None, PublishActivityOptions, "Publish a session:activity event."],
    ]

    def postOptions(self) -> None:
        self.require_subcommand()


def publish_command(options: _PublishEventOptions, stdout: TextIO, stderr: TextIO,
                    now: float) -> int:
    """POST the event; print C{published <type> seq=<n>}, or the hub's error, or why it failed."""
    prefix = options.command_name()
    url = options["url"] + options["path"]
    credentials: Credentials = options["credentials"]
    request = urllib.request.Request(
        url,
        data=events.encode_json(options["body"]),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {credentials.token(now)}",
            "User-Agent": USER_AGENT,
        },
    )
    try:
        with _opener(options["tls"]).open(request, timeout=HTTP_TIMEOUT) as response:
            answer = response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as e:
        with e:
            message = _error_message(e.read(MAX_RESPONSE_BYTES))
        hint = credentials.refusal_hint() if e.code == 401 else ""
        stderr.write(f"{prefix}: {e.code} {printable(str(e.reason))}{message}{hint}\n")
        return 1
    except urllib.error.URLError as e:
        stderr.write(f"{prefix}: cannot reach {display_url(url)}: {describe_error(e.reason)}\n")
        return 1
    except (OSError, http.client.HTTPException) as e:
        stderr.write(f"{prefix}: request to {display_url(url)} failed: {describe_error(e)}\n")
        return 1
    try:
        event = json.loads(answer)["event"]
        line = f"published {printable(str(event['type']))} seq={printable(str(event['seq']))}"
    except (ValueError, KeyError, TypeError):
        stderr.write(f"{prefix}: {display_url(url)} did not answer like a mission-control hub\n")
        return 1
    stdout.write(line + "\n")
    return 0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The hub never redirects; following one would hand the bearer token to another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _NoRedirects(),
        urllib.request.HTTPSHandler(context=context or ssl.create_default_context()),
    )


def _error_message(body: bytes) -> str:
    """C{": <message>"} from the hub's C{{"error": {"code", "message"}}} body, or nothing."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {printable(str(message))}" if message else ""


def describe_error(error: object) -> str:
    """One short, plain line for a network error, whichever library raised it."""
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, (ConnectionRefusedError, TwistedConnectionRefused)):
        return "connection refused (is the hub running there?)"
    if isinstance(error, (socket.gaierror, DNSLookupError)):
        return "cannot resolve the host name"
    if isinstance(error, (TimeoutError, socket.timeout, TwistedTimeoutError)):
        return "timed out"
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"the server's certificate is not trusted ({error.verify_message}); "
                f"pass --cafile with the CA certificate")
    if isinstance(error, ConnectionResetError):
        return "the connection was reset"
    text = str(error).strip() or type(error).__name__
    return printable(text.splitlines()[0][:200])


# mission-control watch


class WatchOptions(_ServerOptions):
    synopsis = ("[--url ws://127.0.0.1:8080/ws] [--token JWT] [--cafile PEM] [--client NAME] "
                "[--json] [--verbose]")
    longdesc = (
        "Follow the hub's event stream: one line per event, or the raw JSON frames with --json. "
        "Reconnects with exponential backoff when the hub goes away, and resumes where it left "
        "off: the events published meanwhile are printed, then a 'resumed' line; when the hub no "
        "longer has them, a 'history lost' line and a fresh snapshot. Stops with exit code 1 when "
        "the hub refuses the token (401) or the origin (403), with 0 on Ctrl-C. Without --token, "
        f"a {LOCAL_TOKEN_TTL // 60}-minute viewer token is minted from the local development "
        "secret for each connection, and renewed over the connection before it expires "
        "(--data-dir, --jwt-secret-file). With --client NAME the hub keeps how far this watcher "
        "has printed, and the next watch of the same user and NAME starts there: at-least-once "
        "delivery across restarts of watch itself (a clean stop acknowledges everything printed; "
        "after a crash, up to a second's worth of events may be printed again)."
    )
    optFlags = [
        ["json", None, "Print every frame as received, one JSON object per line."],
        ["verbose", "v", "Also print heartbeats and the hub's replies to acks and token renewals."],
    ]
    optParameters = [
        ["url", None, None,
         f"The hub's WebSocket URL; http:// URLs are turned into ws:// ones. "
         f"[env {ENV_PREFIX}URL, default {DEFAULT_WS_URL}]"],
        ["token", None, None, _token_help("viewer")],
        ["client", None, None,
         "Name this watcher (1-128 of A-Z a-z 0-9 . _ : -): it acknowledges what it printed, "
         "and a later watch with the same user and name resumes after it (at-least-once "
         "delivery across restarts of watch)."],
    ]
    local_role = "viewer"
    default_url = DEFAULT_WS_URL

    def normalize_url(self, value: str) -> str:
        return websocket_url(value)

    def load_tls(self, path: str, url: str) -> object:
        data = _read_cafile(path)
        try:
            authority = Certificate.loadPEM(data)
        except (OpenSSLError, ValueError):
            raise usage.UsageError(f"--cafile {path} holds no PEM certificate") from None
        return optionsForClientTLS(urlsplit(url).hostname, trustRoot=authority)

    def postOptions(self) -> None:
        if self["client"] is not None and not auth.is_valid_id(self["client"]):
            raise usage.UsageError("--client must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        self.resolve_connection()


def printable(text: str) -> str:
    """C{text} with anything a terminal would act on (escapes, line breaks) shown as an escape."""
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _quoted(text: object) -> str:
    value = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{printable(value)}"'


def _field(value: object) -> str:
    return printable(str(value))


def clock_time(ts: object, tz: tzinfo | None = None) -> str:
    """C{HH:MM:SS} of a frame's C{ts} in C{tz} (local time by default)."""
    try:
        moment = datetime.fromisoformat(str(ts))
        if moment.tzinfo is None:
            raise ValueError("no time zone")
        return moment.astimezone(tz).strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def _payload(frame: Mapping) -> Mapping:
    """A frame's payload, or an empty one when the hub sent something else there."""
    payload = frame.get("payload")
    return payload if isinstance(payload, Mapping) else {}


def _is_seq(value: object) -> bool:
    """Whether C{value} can be a seq: a whole number, not negative (and not C{True})."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 18


def describe_frame(frame: Mapping, tz: tzinfo | None = None) -> str:
    """
    One readable line for a server frame (L{FramePrinter} joins C{welcome} and C{snapshot}):

        16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=12
        16:04:06 session:activity  sess-1  tool_call  agent=agent-atlas  "web.search"  seq=13
        16:04:07 resumed: replayed seq 41-57
        16:04:07 history lost (epoch): showing a fresh snapshot

    Every value from the frame is shown with control characters escaped: a frame cannot move the
    cursor or recolour the terminal.
    """
    kind = frame.get("type")
    payload = _payload(frame)
    when = clock_time(frame.get("ts"), tz)
    if kind == "resumed":
        return f"{when} {describe_resume(payload)}"
    if kind == "snapshot":
        return f"{when} snapshot: {_state_summary(payload)}"
    fields: list[str] = [_field(kind)]
    if kind == events.AGENT_STATUS:
        fields += [_field(payload.get("agentId")), _field(payload.get("status"))]
        if payload.get("message"):
            fields.append(_quoted(payload["message"]))
    elif kind == events.SESSION_ACTIVITY:
        fields += [_field(payload.get("sessionId")), _field(payload.get("activity"))]
        if payload.get("agentId"):
            fields.append(f"agent={_field(payload['agentId'])}")
        if payload.get("summary"):
            fields.append(_quoted(payload["summary"]))
    elif kind == "heartbeat":
        fields.append(f"lastSeq={_field(payload.get('lastSeq'))}")
    elif kind == "error":
        fields += [_field(payload.get("code")), _quoted(payload.get("message", ""))]
    elif payload:
        text = events.encode_json(payload).decode("utf-8")
        fields.append(printable(text if len(text) <= 200 else text[:197] + "..."))
    if "seq" in frame:
        fields.append(f"seq={_field(frame['seq'])}")
    return f"{when} " + "  ".join(fields)


def describe_resume(payload: Mapping) -> str:
    """
    What a C{resumed} frame means for the reader: C{resumed: replayed seq 41-57} (the events
    printed just before it), C{resumed: nothing missed}, or C{history lost (REASON): showing a
    fresh snapshot} when the hub could not replay (another epoch, events already dropped, a
    position it has never reached) and the snapshot after it starts the picture afresh.
    """
    if payload.get("recovered") is not True:
        return f"history lost ({_field(payload.get('reason'))}): showing a fresh snapshot"
    first, last = payload.get("from"), payload.get("to")
    if _is_seq(first) and _is_seq(last) and first > last:
        return "resumed: nothing missed"
    if first == last:
        return f"resumed: replayed seq {_field(first)}"
    return f"resumed: replayed seq {_field(first)}-{_field(last)}"


def _state_summary(state: Mapping) -> str:
    """C{12 agents, 3 sessions, lastSeq=40} from a C{snapshot} payload."""
    agents, sessions = state.get("agents"), state.get("sessions")
    return (f"{len(agents) if isinstance(agents, list) else 0} agents, "
            f"{len(sessions) if isinstance(sessions, list) else 0} sessions, "
            f"lastSeq={_field(state.get('lastSeq'))}")


def describe_connected(welcome: Mapping, snapshot: Mapping | None,
                       tz: tzinfo | None = None) -> str:
    """
    C{16:04:05 connected as alice (viewer), 12 agents, 3 sessions, lastSeq=40}; without a
    snapshot (a connection that resumes) C{16:04:05 connected as alice (viewer), lastSeq=57},
    the hub's last seq at that moment.
    """
    hello = _payload(welcome)
    user = hello.get("user") if isinstance(hello.get("user"), Mapping) else {}
    who = f"connected as {_field(user.get('id'))} ({_field(user.get('role'))})"
    if snapshot is not None:
        state = dict(_payload(snapshot))
        state.setdefault("lastSeq", hello.get("lastSeq"))
        summary = _state_summary(state)
    else:
        summary = f"lastSeq={_field(hello.get('lastSeq'))}"
    return f"{clock_time(welcome.get('ts'), tz)} {who}, {summary}"


class FramePrinter:
    """
    Writes server frames to C{out}, one line each, flushed at once (C{watch | grep} must not wait
    for a buffer to fill).

    The C{welcome} frame is held until the next frame: with the C{snapshot} of a fresh start it
    becomes one C{connected as ...} line; before anything else (the replayed events of a resume)
    it is written alone, first, and the frame after it at once.  A C{resumed} frame that says the
    history is lost keeps the welcome for the snapshot that follows it.

    Heartbeats and the hub's answers to the watcher's own frames (C{ack}, C{auth:ok}, C{pong})
    and its token warnings (C{auth:expiring}, which the L{Watcher} acts on) are left out unless
    C{verbose}.  With C{json_mode} each frame is written as received, heartbeats only if
    C{verbose}.
    """

    #: Frame types written only when verbose.
    quiet_types = frozenset({"heartbeat", "ack", "auth:ok", "auth:expiring", "pong"})

    def __init__(self, out: TextIO, err: TextIO, json_mode: bool = False, verbose: bool = False,
                 tz: tzinfo | None = None) -> None:
        self.out = out
        self.err = err
        self.json_mode = json_mode
        self.verbose = verbose
        self.tz = tz
        self._welcome: Mapping | None = None

    def frame_received(self, data: bytes, is_binary: bool) -> Mapping | None:
        """Write what C{data} calls for; return the decoded frame (C{None} if it was not one)."""
        frame = self._decode(data, is_binary)
        if frame is None:
            return None
        if self.json_mode:
            if frame.get("type") != "heartbeat" or self.verbose:
                self._write_raw(data, frame)
        elif frame.get("type") not in self.quiet_types or self.verbose:
            self._write_line(frame)
        return frame

    def connection_lost(self) -> None:
        """A welcome still held is shown: it was the whole of that connection."""
        self._flush_welcome()

    def _write_raw(self, data: bytes, frame: Mapping) -> None:
        text = data.decode("utf-8")
        if "\n" in text or "\r" in text:
            text = events.encode_json(frame).decode("utf-8")
        self._line(text)

    def _write_line(self, frame: Mapping) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            self._flush_welcome()
            self._welcome = frame
            return
        if kind == "snapshot" and self._welcome is not None:
            welcome, self._welcome = self._welcome, None
            self._line(describe_connected(welcome, frame, self.tz))
            return
        if kind == "resumed" and self._welcome is not None \
                and _payload(frame).get("recovered") is not True:
            self._line(describe_frame(frame, self.tz))  # the snapshot comes next
            return
        self._flush_welcome()
        self._line(describe_frame(frame, self.tz))

    def _flush_welcome(self) -> None:
        if self._welcome is not None:
            welcome, self._welcome = self._welcome, None
            self._line(describe_connected(welcome, None, self.tz))

    def _decode(self, data: bytes, is_binary: bool) -> Mapping | None:
        try:
            if is_binary:
                raise ValueError("binary")
            frame = json.loads(data.decode("utf-8"))
            if not isinstance(frame, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError):
            self.err.write(f"{PROGRAM} watch: skipped a frame that is not a JSON object "
                           f"({len(data)} bytes)\n")
            self.err.flush()
            return None
        return frame

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _handshake_status(status_line: str | None) -> tuple[int, str] | None:
    """C{(401, "invalid token")} from the status line of a refused handshake."""
    if not status_line:
        return None
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    status = int(parts[1])
    if status == 101:
        return None
    reason = parts[2].strip() if len(parts) > 2 else ""
    return status, printable(reason[:100])


class WatchProtocol(WebSocketClientProtocol):
    """
    One connection of a L{Watcher}: hands frames and the connection's end to it, and remembers
    the HTTP status when the hub refuses the handshake (Autobahn only says "upgrade failed").
    """

    refusal: tuple[int, str] | None = None
    opened = False

    def failHandshake(self, reason: str) -> None:
        self.refusal = _handshake_status(getattr(self, "http_status_line", None))
        super().failHandshake(reason)

    def onOpen(self) -> None:
        self.opened = True
        self.factory.watcher.connection_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.watcher.frame_received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.watcher.connection_closed(self, code, reason)


def refusal_is_final(status: int) -> bool:
    """
    Whether a handshake refusal will not change by asking again: the token (401), the Origin (403),
    the path (404), a URL that is no WebSocket at all (200, 3xx) ...  408, 429 and every 5xx are
    worth retrying.
    """
    return status < 500 and status not in (408, 429)


def default_retry_policy() -> Callable[[int], float]:
    """1 s, 2 s, 4 s, ... up to 30 s between attempts, each plus up to 1 s of random jitter."""
    return backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0, jitter=random.random)


#: Close codes that the hub gives a client for its own behaviour (4008 too slow to read, 4029 too
#: many messages): reconnecting is right, but not at once, so the backoff keeps growing across
#: the connections that end this way instead of starting again at each handshake.
BACKOFF_CLOSE_CODES = frozenset({4008, 4029})

#: What an epoch may look like: what the hub accepts in the C{epoch} query parameter.  Anything
#: else from a hub is not used, rather than sent back and refused with a (final) 400.
_EPOCH_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")


def _is_epoch(value: object) -> bool:
    return isinstance(value, str) and _EPOCH_RE.match(value) is not None


class StreamPosition:
    """
    How far a watcher has followed the hub's history: C{seq}, the last event it has been given,
    and C{epoch}, the history that seq belongs to.  They are the C{since} and C{epoch} of its next
    connection, and what a named watcher acknowledges.

    The two move together, and only on frames that show the watcher has everything up to the
    seq: an event, a C{snapshot}, a C{heartbeat} (the hub sends those only to connections that
    are caught up), a C{resumed}.  The C{welcome} moves nothing: its C{lastSeq} is the hub's, which
    a resuming connection has yet to be sent, and its epoch may be a new one that the C{resumed}
    frame after it is about to call lost.  Taking either from it would skip events, or miss the
    news that history was lost, whenever the connection dropped right after it.

    @ivar current: whether it moved on the current connection, so that C{seq} is one the hub at
        the other end knows (and an ack of it is meaningful there).
    """

    def __init__(self) -> None:
        self.seq: int | None = None
        self.epoch: str | None = None
        self.current = False
        self._connection_epoch: str | None = None

    def connection_started(self) -> None:
        """A new connection: nothing it says is known yet."""
        self._connection_epoch = None
        self.current = False

    def observe(self, frame: Mapping) -> bool:
        """Move to where C{frame} shows the watcher is, if it shows that; return whether it did."""
        kind, payload = frame.get("type"), _payload(frame)
        if kind == "welcome":
            announced = payload.get("epoch")
            self._connection_epoch = announced if _is_epoch(announced) else None
            return False
        epoch: object = self._connection_epoch
        if kind == "resumed":
            epoch = payload.get("epoch", epoch)
            recovered = payload.get("recovered") is True
            seq = payload.get("to") if recovered else payload.get("lastSeq")
        elif kind in ("snapshot", "heartbeat"):
            seq = payload.get("lastSeq")
        else:
            seq = frame.get("seq")
        if not (_is_seq(seq) and _is_epoch(epoch)):
            return False
        self.seq, self.epoch, self.current = seq, epoch, True
        return True


class Watcher:
    """
    Follows a hub's event stream until told to stop or refused for good, without losing events
    across reconnects.

    A small reconnect loop on the injected reactor: connect; print frames; when the connection
    fails or ends, wait C{retry_policy(n)} seconds (n counting failures since the last successful
    handshake, from 0; closes for the client's own behaviour, L{BACKOFF_CLOSE_CODES}, do not reset
    it) and connect again, with a freshly minted token when it mints its own.  Autobahn's own
    client does the WebSocket; the token goes in C{Authorization: Bearer}.

    Resume: the watcher keeps its L{StreamPosition} and reconnects with C{since} and C{epoch}, so
    the hub replays what was published meanwhile (or says the history is lost and sends a fresh
    snapshot).  A named watcher (C{client}) also connects with C{client=NAME}, so its first
    connection resumes from the position the hub kept for it, and acknowledges its position every
    C{ack_interval} seconds when it moved, and once more before a clean stop.

    Tokens: on C{auth:expiring} a watcher that mints its tokens sends a fresh one over the
    connection; with a fixed token it warns on stderr.  A close with 4001 (token expired) is
    retried with a fresh token, or ends the watch with a fixed one.

    L{run} fires with the exit code: 1 when the hub refuses the handshake with a final status
    (L{refusal_is_final}: 401, 403, 404, ...), closes with 4003 (token no longer accepted), or
    with 4001 when the token is a fixed one; 0 after L{stop}.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        credentials: Credentials,
        printer: FramePrinter,
        err: TextIO,
        tls: object | None = None,
        retry_policy: Callable[[int], float] | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        endpoint: Any = None,
        client: str | None = None,
        ack_interval: float = 1.0,
    ) -> None:
        self.reactor = reactor
        self.url = url
        self.credentials = credentials
        self.printer = printer
        self.err = err
        self.tls = tls
        self.retry_policy = retry_policy or default_retry_policy()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.handshake_timeout = handshake_timeout
        self.client = client
        self.ack_interval = ack_interval
        self.position = StreamPosition()
        self._endpoint = endpoint
        self.failures = 0
        self._failures_at_open = 0
        self._stopping = False
        self._result: int | None = None
        self._waiting: list[defer.Deferred] = []
        self._connecting: defer.Deferred | None = None
        self._retry_call: Any = None
        self._protocol: WatchProtocol | None = None
        self._ack_loop: task.LoopingCall | None = None
        self._acked: tuple[str | None, int] = (None, 0)

    # Control

    def run(self) -> defer.Deferred:
        """Start following; fires with the exit code."""
        self._connect()
        return self.finished()

    def finished(self) -> defer.Deferred:
        """A Deferred that fires with the exit code once the watcher has ended."""
        if self._result is not None:
            return defer.succeed(self._result)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def stop(self) -> defer.Deferred:
        """
        Acknowledge what was printed (a named watcher), close the connection (1000), or stop
        waiting to reconnect; fires with 0 when done.
        """
        if self._result is None and not self._stopping:
            self._stopping = True
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
                self._finish(0)
            elif self._connecting is not None:
                self._connecting.cancel()
            elif self._protocol is not None:
                self._close(self._protocol)
            else:
                self._finish(0)
        return self.finished()

    # The loop

    def connection_url(self) -> str:
        """The URL of the next connection: the one given, plus where to resume and who we are."""
        return resume_url(self.url, self.position.seq, self.position.epoch, self.client)

    def _connect(self) -> None:
        self._retry_call = None
        factory = WebSocketClientFactory(
            self.connection_url(),
            headers={"Authorization": f"Bearer {self.credentials.token(self.reactor.seconds())}"},
            useragent=USER_AGENT,
            reactor=self.reactor,
        )
        factory.protocol = WatchProtocol
        factory.watcher = self
        factory.setProtocolOptions(
            openHandshakeTimeout=self.handshake_timeout,
            closeHandshakeTimeout=2,
            autoPingInterval=self.ping_interval,
            autoPingTimeout=self.ping_timeout,
            # A hub's frames are small; this bounds what a misbehaving server can make us buffer.
            maxFramePayloadSize=16 * 1024 * 1024,
            maxMessagePayloadSize=16 * 1024 * 1024,
        )
        d = self._make_endpoint().connect(factory)
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed)

    def _make_endpoint(self) -> Any:
        if self._endpoint is not None:
            return self._endpoint
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        endpoint = HostnameEndpoint(self.reactor, parts.hostname, port,
                                    timeout=self.handshake_timeout)
        if parts.scheme == "wss":
            tls = self.tls or optionsForClientTLS(parts.hostname)
            endpoint = wrapClientTLS(tls, endpoint)
        return endpoint

    def _connected(self, protocol: WatchProtocol) -> None:
        self._connecting = None
        self._protocol = protocol

    def _connect_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self._stopping:
            self._finish(0)
            return
        self._retry(f"cannot connect to {display_url(self.url)}: {describe_error(reason)}")

    def connection_opened(self, protocol: WatchProtocol) -> None:
        self._failures_at_open, self.failures = self.failures, 0
        self.position.connection_started()
        if self.client is not None:
            self._ack_loop = task.LoopingCall(self._ack, protocol)
            self._ack_loop.clock = self.reactor
            self._ack_loop.start(self.ack_interval, now=False)

    def frame_received(self, protocol: WatchProtocol, data: bytes, is_binary: bool) -> None:
        """Print the frame first, then move the position: nothing is acked before it is shown."""
        frame = self.printer.frame_received(data, is_binary)
        if frame is None:
            return
        self.position.observe(frame)
        if frame.get("type") == "auth:expiring":
            self._token_expiring(protocol, _payload(frame))

    def connection_closed(self, protocol: WatchProtocol, code: int | None,
                          reason: str | None) -> None:
        if protocol is self._protocol:
            self._protocol = None
        self._stop_acking()
        self.printer.connection_lost()
        if self._stopping:
            self._finish(0)
            return
        prefix = f"{PROGRAM} watch"
        if protocol.refusal is not None:
            status, phrase = protocol.refusal
            if refusal_is_final(status):
                hint = self.credentials.refusal_hint() if status == 401 else ""
                self._say(f"{prefix}: the hub refused the connection: {status} {phrase}{hint}")
                self._finish(1)
                return
            self._retry(f"the hub refused the connection: {status} {phrase}")
            return
        if code == 4003:
            self._say(f"{prefix}: the hub no longer accepts this token (4003); not reconnecting")
            self._finish(1)
            return
        if code == 4001 and not self.credentials.mints:
            self._say(f"{prefix}: the token given has expired and the hub closed the connection "
                      f"(4001); not reconnecting with it: pass a fresh --token")
            self._finish(1)
            return
        if protocol.opened:
            if code in BACKOFF_CLOSE_CODES:
                self.failures = self._failures_at_open
            detail = f"{code} {printable((reason or '')[:120])}".strip()
            self._retry(f"connection to {display_url(self.url)} closed ({detail})")
        else:
            detail = printable((protocol.wasNotCleanReason or "closed")[:160])
            self._retry(f"WebSocket handshake with {display_url(self.url)} failed: {detail}")

    def _retry(self, why: str) -> None:
        delay = max(0.0, float(self.retry_policy(self.failures)))
        self.failures += 1
        self._say(f"{PROGRAM} watch: {why}; reconnecting in {delay:.1f} s "
                  f"(attempt {self.failures})")
        self._retry_call = self.reactor.callLater(delay, self._connect)

    def _close(self, protocol: WatchProtocol) -> None:
        # Autobahn's close handshake timeout drops a hub that does not answer the close.
        if protocol.state == protocol.STATE_OPEN:
            self._ack(protocol)
            protocol.sendClose(1000)
        else:
            protocol.dropConnection(abort=True)

    def _finish(self, code: int) -> None:
        if self._result is not None:
            return
        self._stop_acking()
        self._result = code
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(code)

    # Frames to the hub

    def _ack(self, protocol: WatchProtocol) -> None:
        """
        Acknowledge the position, when it moved on this connection since the last ack: the hub
        keeps it for this user and client name, and the next watch of that name starts after it.
        """
        position = self.position
        if self.client is None or not position.current or position.seq is None:
            return
        acked_epoch, acked_seq = self._acked
        if position.epoch == acked_epoch and position.seq <= acked_seq:
            return
        if position.seq == 0:
            return  # nothing to acknowledge yet
        if self._send(protocol, {"type": "ack", "seq": position.seq}):
            self._acked = (position.epoch, position.seq)

    def _stop_acking(self) -> None:
        loop, self._ack_loop = self._ack_loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _token_expiring(self, protocol: WatchProtocol, warning: Mapping) -> None:
        """Renew a minted token over the connection; with a fixed one, say when it will end."""
        if self.credentials.mints:
            self._send(protocol, {"type": "auth",
                                  "token": self.credentials.token(self.reactor.seconds())})
            return
        left = warning.get("secondsLeft")
        when = clock_time(warning.get("expiresAt"), self.printer.tz)
        self._say(f"{PROGRAM} watch: the token given expires in {_field(left)} s (at {when}); "
                  f"the hub will close the connection then and watch will end: pass a token "
                  f"that lives longer")

    def _send(self, protocol: WatchProtocol, frame: Mapping) -> bool:
        """Send one frame if the connection is open; return whether it was sent."""
        if protocol.state != protocol.STATE_OPEN:
            return False
        protocol.sendMessage(events.encode_json(frame), isBinary=False)
        return True

    def _say(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()


def build_watcher(reactor: Any, options: WatchOptions, stdout: TextIO, stderr: TextIO,
                  **settings: Any) -> Watcher:
    """A L{Watcher} for parsed C{watch} options; C{settings} go to its constructor (tests)."""
    tz = settings.pop("tz", None)
    printer = FramePrinter(stdout, stderr, json_mode=bool(options["json"]),
                           verbose=bool(options["verbose"]), tz=tz)
    return Watcher(reactor, options["url"], options["credentials"], printer, stderr,
                   tls=options["tls"], client=options["client"], **settings)


def watch_main(reactor: Any, options: WatchOptions, stdout: TextIO,
               stderr: TextIO) -> defer.Deferred:
    """For L{task.react}: watch until refused or until the reactor is told to stop (Ctrl-C)."""
    watcher = build_watcher(reactor, options, stdout, stderr)
    # Ctrl-C and SIGTERM stop the reactor; shutdown waits for the clean close.
    reactor.addSystemEventTrigger("before", "shutdown", watcher.stop)
    return watcher.run().addCallback(_exit_with)


def _exit_with(code: int) -> None:
    if code:
        raise SystemExit(code)


# The command line


class MissionControlOptions(_Options):
    synopsis = "<command> [options]"
    longdesc = (
        "Talk to a mission-control hub: mint tokens, publish agent statuses and session "
        "activity, watch the live event stream. 'mission-control <command> --help' tells more. "
        "Exit codes: 0 done, 1 failed (refused, unreachable), 2 usage error."
    )
    subCommands = [
        ["token", None, TokenOptions, "Mint a token with the hub's secret and print it."],
        ["publish", None, PublishOptions, "Publish an agent:status or session:activity event."],
        ["watch", None, WatchOptions, "Print the hub's live event stream."],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def environ(self) -> Mapping[str, str]:
        return self._environ

    def postOptions(self) -> None:
        self.require_subcommand()


def parse_command_line(argv: Sequence[str],
                       environ: Mapping[str, str]) -> MissionControlOptions:
    """
    Parse a whole command line.

    @raise HelpRequested: for C{--help} and C{--version}.
    @raise CommandMissing: when no command was given.
    @raise CommandUsageError: for everything else that is wrong with it.
    """
    options = MissionControlOptions(environ)
    options.parseOptions(list(argv))
    return options


def _leaf(options: usage.Options) -> usage.Options:
    while getattr(options, "subOptions", None) is not None:
        options = options.subOptions
    return options


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO,
        environ: Mapping[str, str]) -> int:
    """
    Run one command line; return its exit code.  C{token} and C{publish} run here and block;
    C{watch} runs the global reactor until it ends (tests drive L{Watcher} with their own).
    """
    try:
        options = parse_command_line(argv, environ)
    except HelpRequested as e:
        stdout.write(e.text + "\n")
        return 0
    except CommandMissing as e:
        stderr.write(f"{e.usage_text}\n\n{e.command}: no command given\n")
        return 2
    except CommandUsageError as e:
        stderr.write(f"{e.command}: {e.message} (see '{e.command} --help')\n")
        return 2
    leaf = _leaf(options)
    if isinstance(leaf, TokenOptions):
        return mint_command(leaf, stdout, time.time())
    if isinstance(leaf, _PublishEventOptions):
        return publish_command(leaf, stdout, stderr, time.time())
    return _react(watch_main, leaf, stdout, stderr)


def _react(main: Callable[..., defer.Deferred], *args: Any) -> int:
    try:
        task.react(main, args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # pragma: no cover - react always exits


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The C{mission-control} console script."""
    try:
        code = run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr, os.environ)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()

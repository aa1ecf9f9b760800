# -*- test-case-name: tests.test_cli -*-
"""
What the C{mission-control} commands share: the constants; the base of every command's options
(help and version returned rather than printed, usage errors tagged with the command, the
environment) and the usage-error classes; the local signing key and the L{Credentials} a client
command sends; the checks of option values; the hub's URL in its HTTP and WebSocket forms and the
query of a resuming connection; the options of the commands that talk to a hub; and how untrusted
text and network errors are shown on a terminal (L{printable}, L{describe_error}).
"""

from __future__ import annotations

import getopt
import json
import os
import re
import socket
import ssl
import sys
from dataclasses import dataclass, field
from typing import Mapping, NoReturn, Sequence
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from OpenSSL.SSL import Error as OpenSSLError
from service_identity import VerificationError as ServiceIdentityError
from twisted.internet.error import ConnectionRefusedError as TwistedConnectionRefused
from twisted.internet.error import DNSLookupError, TimeoutError as TwistedTimeoutError
from twisted.python import usage
from twisted.python.failure import Failure

from mission_control import __version__, auth, policy
from mission_control.ids import ID_RULE
from mission_control.text import is_display_text

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
    request or connection from the local secret (C{key}), for the user C{sub}, with C{role},
    valid for C{ttl} seconds.
    """

    given: str | None = field(default=None, repr=False)
    key: SigningKey | None = None
    role: str = policy.DEFAULT_ROLE
    ttl: float = LOCAL_TOKEN_TTL
    sub: str = LOCAL_TOKEN_SUBJECT

    @property
    def mints(self) -> bool:
        """Whether fresh tokens can be had (from the local secret), rather than one fixed token."""
        return self.given is None

    def token(self, now: float) -> str:
        if self.given is not None:
            return self.given
        assert self.key is not None
        name = f"{PROGRAM} CLI" if self.sub == LOCAL_TOKEN_SUBJECT else None
        return self.key.mint(self.sub, now, self.ttl, role=self.role, name=name)

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
    """The hub's rules for C{sub} (docs/websocket-api.md, token claims): a minted token is not refused for it."""
    if not sub or len(sub) > auth.MAX_SUB_LENGTH or not is_display_text(sub):
        raise usage.UsageError(
            f"--sub must be 1-{auth.MAX_SUB_LENGTH} characters without control or invisible "
            "characters"
        )
    if role == "agent" and not auth.is_valid_id(sub):
        raise usage.UsageError(f"with --role agent, --sub is the agent id: {ID_RULE}")


def check_role(role: str) -> str:
    if role not in policy.ROLES:
        raise usage.UsageError(f"unknown role {role!r}; choose one of: {', '.join(policy.ROLES)}")
    return role


def check_name(name: str | None, option: str = "--name") -> None:
    if name is not None and (len(name) > auth.MAX_NAME_LENGTH or not is_display_text(name)):
        raise usage.UsageError(
            f"{option} must be at most {auth.MAX_NAME_LENGTH} characters without control or "
            "invisible characters"
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
    local_role = policy.DEFAULT_ROLE
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


# Text for the terminal


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


def certificate_problem(error: object, host: str | None, cafile: str | None) -> str | None:
    """
    What is wrong with the server's certificate, when C{error} (a failed TLS connection) says
    it could not be verified; C{None} for any other error.

    Such a failure is not worth retrying: the certificate will be the same next time.  The text
    says what to do about it, naming C{--cafile}.
    """
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return _wrong_host(host)
        return _untrusted(printable(str(error.verify_message or "certificate verify failed")),
                          cafile)
    if isinstance(error, OpenSSLError) and "certificate verify failed" in str(error):
        return _untrusted("certificate verify failed", cafile)
    if isinstance(error, ServiceIdentityError):
        return _wrong_host(host)
    return None


def _untrusted(detail: str, cafile: str | None) -> str:
    if cafile:
        return (f"the hub's certificate is not trusted by --cafile {printable(cafile)} ({detail}); "
                f"is that the certificate of the CA that signed the hub's?")
    return (f"the hub's certificate is not trusted ({detail}); pass --cafile with the "
            f"certificate of the CA that signed it")


def _wrong_host(host: str | None) -> str:
    where = f"for {printable(host)}" if host else "for this host name"
    return (f"the hub's certificate is not valid {where}; use a host name the certificate was "
            f"issued for")


def describe_error(error: object, host: str | None = None, cafile: str | None = None) -> str:
    """
    One short, plain line for a network error, whichever library raised it; C{host} and
    C{cafile} (the C{--cafile} given, if any) make a certificate failure's line precise.
    """
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, (ConnectionRefusedError, TwistedConnectionRefused)):
        return "connection refused (is the hub running there?)"
    if isinstance(error, (socket.gaierror, DNSLookupError)):
        return "cannot resolve the host name"
    if isinstance(error, (TimeoutError, socket.timeout, TwistedTimeoutError)):
        return "timed out"
    if isinstance(error, ssl.SSLCertVerificationError):
        return certificate_problem(error, host, cafile) or "certificate verify failed"
    if isinstance(error, ConnectionResetError):
        return "the connection was reset"
    text = str(error).strip() or type(error).__name__
    return printable(text.splitlines()[0][:200])

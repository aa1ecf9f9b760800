# -*- test-case-name: tests.test_options -*-
"""
The options of C{twistd mission-control}: the command line, the environment and the key files.

Every option can also come from a C{MISSION_CONTROL_<NAME>} environment variable (C{--jwt-leeway}
reads C{MISSION_CONTROL_JWT_LEEWAY}); the command line wins.  Repeatable options take a
comma- or space-separated list from the environment.  Everything that can be wrong with the
configuration (an endpoint string, a short secret, a missing key file) is found in
L{Options.postOptions} and reported as one usage line, before anything starts: this module holds
all of that, apart from the service tree that L{mission_control.tap} builds from its result.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from mission_control import keys, workers
from mission_control.auth import OriginPolicy, TokenVerifier
from mission_control.listener import describe_error, with_backlog
from mission_control.store.redis_url import parse_redis_url

ENV_PREFIX = "MISSION_CONTROL_"
#: The schemes of C{--store} that name a shared Redis store.
REDIS_SCHEMES = ("redis://", "rediss://")
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
MAX_MESSAGE_SIZE_CEILING = 16 * 1024 * 1024
#: What a flag in the environment (C{MISSION_CONTROL_DEMO}) may say, in any case.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _positive_float(name: str) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        number = float(value)
        if number < 0 or number != number or number == float("inf"):
            raise ValueError(f"{name} must be a number >= 0")
        return number

    return convert


class Options(usage.Options):
    """The options of C{twistd mission-control}, with their environment variables and checks."""

    synopsis = "[options]"
    longdesc = (
        "Run the mission-control hub: JWT-authenticated WebSocket broadcasting of agent "
        "statuses and session activity, with a JSON HTTP API on the same listener."
    )

    optFlags = [
        ["demo", None, "Run a simulated fleet of agents that publishes events, for trying it out."],
    ]

    # Defaults are applied in postOptions, after the environment, so that we can tell "not given".
    optParameters = [
        ["data-dir", None, None, "State directory (the generated dev secret). [./mission-control-data]"],
        ["jwt-secret-file", None, None, "File with the HMAC secret (at least 32 bytes)."],
        ["jwt-public-key", None, None, "PEM public key for RS*/PS*/ES*/EdDSA tokens."],
        ["jwt-issuer", None, None, "Required iss claim."],
        ["jwt-audience", None, None, "Required aud claim."],
        ["jwt-leeway", None, None, "Clock skew allowed on exp/nbf/iat, seconds. [5]"],
        ["heartbeat-interval", None, None, "Seconds between heartbeat frames; 0 turns them off. [30]"],
        ["ping-interval", None, None, "Seconds between WebSocket pings. [20]"],
        ["ping-timeout", None, None, "Seconds to wait for a pong before dropping the peer. [10]"],
        ["max-message-size", None, None, "Largest client message in bytes; larger ones close with 1009. [65536]"],
        ["max-connections-per-user", None, None, "Connections one user may hold; the next gets 429. [20]"],
        ["max-connections", None, None, "Connections in total; the next gets 503. [10000]"],
        ["max-http-connections", None, None, "HTTP connections open at once (WebSockets not counted); the next gets 503. [1000]"],
        ["max-outbound-bytes", None, None, "Bytes queued for one slow client before it is closed with 4008. [1048576]"],
        ["max-messages-per-second", None, None, "Messages one connection may send per second (twice that in a burst); past it error frames, then close 4029. [20]"],
        ["max-publishes-per-second", None, None, "HTTP publishes one user may make per second (twice that in a burst); past it 429. [200]"],
        ["max-reads-per-second", None, None, "HTTP reads (GET) one user may make per second (twice that in a burst); past it 429. [20]"],
        ["max-handshakes-per-second", None, None, "WebSocket handshakes one user may make per second (bursts of --max-connections-per-user or twice the rate, the larger); past it 429. [5]"],
        ["store", None, None, "Where events and latest state live: sqlite (in the data dir), memory, or "
         "redis://[:password@]host:port/db[?prefix=P] (rediss:// for TLS), shared by every hub "
         "process on it. [sqlite]"],
        ["workers", None, None, "Hub processes sharing the listeners; above 1 needs a shared store (--store redis://...). [1]"],
        ["history-size", None, None, "Events kept for resume. [100000]"],
        ["history-age", None, None, "Seconds an event is kept for resume. [86400]"],
        ["metrics-listen", None, None, "Twisted endpoint string of a listener serving only GET /metrics, without a token. [none]"],
    ]

    _repeatable = ("listen", "jwt-algorithm", "allowed-origin")

    DEFAULTS = {
        "data-dir": "./mission-control-data",
        "jwt-leeway": "5",
        "heartbeat-interval": "30",
        "ping-interval": "20",
        "ping-timeout": "10",
        "max-message-size": "65536",
        "max-connections-per-user": "20",
        "max-connections": "10000",
        "max-http-connections": "1000",
        "max-outbound-bytes": "1048576",
        "max-messages-per-second": "20",
        "max-publishes-per-second": "200",
        "max-reads-per-second": "20",
        "max-handshakes-per-second": "5",
        "store": "sqlite",
        "workers": "1",
        "history-size": "100000",
        "history-age": "86400",
    }

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        for name in self._repeatable:
            self[name] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        # As given, for the workers of --workers, which are started with the same options.
        self["arguments"] = list(options) if options is not None else sys.argv[1:]
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            # Under twistd, which would print its whole usage text and then the error, both on
            # stdout: one line on stderr and a non-zero exit instead.
            raise SystemExit(f"twistd mission-control: {e}") from None

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on (repeatable). [tcp:8080:interface=127.0.0.1]"""
        self["listen"].append(endpoint)

    def opt_jwt_algorithm(self, algorithm: str) -> None:
        """
        Accepted JWT algorithm (repeatable). [HS256 with a secret; with a public key, the key's
        own: RS256 for RSA, ES256/ES384/ES512 for EC by curve, EdDSA for Ed25519/Ed448]
        """
        self["jwt-algorithm"].append(algorithm)

    def opt_allowed_origin(self, origin: str) -> None:
        """Browser Origin allowed to connect, as browsers send it (repeatable). [any]"""
        self["allowed-origin"].append(origin)

    def _from_environment(self) -> None:
        names = [str(p[0]) for p in self.optParameters] + list(self._repeatable)
        for name in names:
            key = ENV_PREFIX + name.upper().replace("-", "_")
            value = self.environ.get(key)
            if value is None or value == "":
                continue
            if name in self._repeatable:
                if not self[name]:
                    self[name] = value.replace(",", " ").split()
            elif self[name] is None:
                self[name] = value
        if not self["demo"]:
            value = self.environ.get(ENV_PREFIX + "DEMO", "")
            flag = value.strip().lower()
            if flag in TRUE_WORDS:
                self["demo"] = 1
            elif flag in FALSE_WORDS or flag == "":
                self["demo"] = 0
            else:
                raise usage.UsageError(
                    f"{ENV_PREFIX}DEMO must be one of {', '.join(TRUE_WORDS)} (on) or "
                    f"{', '.join(FALSE_WORDS)} (off), not {value!r}"
                )

    def _store(self) -> None:
        """
        C{--store}: sqlite, memory, or a Redis URL, parsed into C{self["redis"]} (a
        L{RedisURL}, C{None} for the others).  A bad URL is one usage line that does not repeat
        its password.
        """
        store = self["store"]
        self["redis"] = None
        if store.startswith(REDIS_SCHEMES):
            try:
                self["redis"] = parse_redis_url(store)
            except ValueError as e:
                raise usage.UsageError(f"--store: {e}") from None
            self["store"] = "redis"
        elif store not in ("sqlite", "memory"):
            raise usage.UsageError("--store must be sqlite, memory or a redis:// or rediss:// "
                                   "URL")

    def postOptions(self) -> None:
        self._twistd_files()
        self._from_environment()
        for name, value in self.DEFAULTS.items():
            if self[name] is None:
                self[name] = value
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]

        self._numbers()
        self._keys()
        self._workers()  # before _store(), which parses a Redis URL into self["redis"]
        self._store()
        try:
            self["origins"] = OriginPolicy(self["allowed-origin"])
        except ValueError as e:
            raise usage.UsageError(f"--allowed-origin: {e}") from None
        from twisted.internet import reactor

        for description in self["listen"]:
            _check_endpoint("--listen", description, reactor)
        if self["metrics-listen"] is not None:
            _check_endpoint("--metrics-listen", self["metrics-listen"], reactor)

    def _twistd_files(self) -> None:
        """
        Under twistd, check the files it is about to write for us, and make the log file private.

        twistd opens its log file before it daemonizes and writes the pidfile after: a directory
        that is missing or not writable ends either in a traceback.  And the umask it applies
        to daemons (0077, or C{--umask}) takes effect only after the log file exists, so the first
        log file would be readable by everyone.  Both are settled here, before anything starts:
        a usage error naming the option, and the log file created with that umask.
        """
        parent = self.parent
        if parent is None:
            return
        daemon = not parent.get("nodaemon")
        files = [("--logfile", _twistd_log_file(parent, daemon)),
                 ("--pidfile", parent.get("pidfile"))]
        for option, path in files:
            if not path:
                continue
            path = os.path.abspath(path)
            directory = os.path.dirname(path)
            if not os.path.isdir(directory):
                raise usage.UsageError(f"{option} {path}: the directory {directory} does not exist "
                                       f"(create it first, writable by the hub's user)")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise usage.UsageError(f"{option} {path}: cannot write in {directory}")
            if os.path.exists(path) and not os.access(path, os.W_OK):
                raise usage.UsageError(f"{option} {path}: the file is not writable")
        umask = parent.get("umask")
        if umask is None and daemon:
            umask = 0o077  # what twistd applies to daemons, after opening the log file
        log_file = files[0][1]
        if log_file and umask is not None and not os.path.exists(log_file):
            try:
                fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                             0o666 & ~umask)
            except FileExistsError:
                return
            except OSError as e:
                raise usage.UsageError(
                    f"--logfile {os.path.abspath(log_file)}: {e.strerror}") from None
            try:
                os.fchmod(fd, 0o666 & ~umask)
            finally:
                os.close(fd)

    def _numbers(self) -> None:
        floats = {
            "jwt-leeway": _positive_float("--jwt-leeway"),
            "heartbeat-interval": _positive_float("--heartbeat-interval"),
            "ping-interval": _positive_float("--ping-interval"),
            "ping-timeout": _positive_float("--ping-timeout"),
            "history-age": _positive_float("--history-age"),
            "max-messages-per-second": _positive_float("--max-messages-per-second"),
            "max-publishes-per-second": _positive_float("--max-publishes-per-second"),
            "max-reads-per-second": _positive_float("--max-reads-per-second"),
            "max-handshakes-per-second": _positive_float("--max-handshakes-per-second"),
        }
        for name, convert in floats.items():
            try:
                self[name] = convert(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a number >= 0, not {self[name]!r}") from None
        for name in ("ping-interval", "ping-timeout", "history-age", "max-messages-per-second",
                     "max-publishes-per-second", "max-reads-per-second",
                     "max-handshakes-per-second"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be greater than 0")
        limits = {
            "max-message-size": (128, MAX_MESSAGE_SIZE_CEILING),
            "max-connections-per-user": (1, 1_000_000),
            "max-connections": (1, 10_000_000),
            "max-http-connections": (1, 1_000_000),
            "max-outbound-bytes": (1024, 1 << 34),
            "history-size": (1, 1_000_000_000),
            "workers": (1, workers.MAX_WORKERS),
        }
        for name, (low, high) in limits.items():
            try:
                value = int(self[name])
            except (TypeError, ValueError):
                value = None
            if value is None or not low <= value <= high:
                raise usage.UsageError(
                    f"--{name} must be a whole number from {low} to {high}, not {self[name]!r}"
                )
            self[name] = value

    def _workers(self) -> None:
        """
        C{--workers} above 1 only with a shared store and shareable listeners; and, in a worker
        that the supervisor of C{--workers} started, which inherited sockets are its listeners.
        """
        refused = workers.refusal(self["workers"], self["store"], self["listen"])
        if refused is not None:
            raise usage.UsageError(refused)
        if self["workers"] > 1 and self["metrics-listen"] is not None:
            raise usage.UsageError("--metrics-listen cannot be shared by --workers above 1 "
                                   "(each worker counts for itself): leave it out")
        try:
            self["worker"] = workers.assignment_from(self.environ, len(self["listen"]))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def _keys(self) -> None:
        secret_file, public_key = self["jwt-secret-file"], self["jwt-public-key"]
        algorithms = self["jwt-algorithm"]
        self["generated-secret"] = None
        key: keys.VerifyingKey
        if secret_file and public_key:
            raise usage.UsageError("give --jwt-secret-file or --jwt-public-key, not both")
        try:
            if public_key:
                for algorithm in algorithms:
                    if algorithm not in keys.PUBLIC_KEY_ALGORITHMS:
                        raise ValueError(
                            f"--jwt-algorithm {algorithm} is not a public-key algorithm "
                            f"({', '.join(keys.PUBLIC_KEY_ALGORITHMS)})"
                        )
                # Without --jwt-algorithm, the key's own default (RS256, ES256, EdDSA...).
                key, algorithms = keys.load_public_key(public_key, algorithms)
            else:
                algorithms = algorithms or ["HS256"]
                for algorithm in algorithms:
                    if algorithm not in keys.HMAC_ALGORITHMS:
                        raise ValueError(
                            f"--jwt-algorithm {algorithm} needs --jwt-public-key; with a secret "
                            f"use {', '.join(keys.HMAC_ALGORITHMS)}"
                        )
                if secret_file:
                    key = keys.read_secret(secret_file)
                else:
                    key, path, created = keys.load_or_create_secret(self["data-dir"])
                    self["secret-path"] = path
                    self["generated-secret"] = created
        except (ValueError, OSError) as e:
            raise usage.UsageError(str(e)) from None
        self["jwt-algorithm"] = algorithms
        self["verifier"] = TokenVerifier(
            key=key,
            algorithms=algorithms,
            issuer=self["jwt-issuer"],
            audience=self["jwt-audience"],
            leeway=self["jwt-leeway"],
        )


def _check_endpoint(option: str, description: str, reactor: Any) -> None:
    """An endpoint string that the reactor cannot listen on is a usage error naming C{option}."""
    try:
        serverFromString(reactor, with_backlog(description))
    except Exception as e:
        raise usage.UsageError(
            f"{option} {description!r} is not a usable endpoint: {describe_error(e)}"
        ) from None


def _twistd_log_file(parent: Mapping[str, Any], daemon: bool) -> str | None:
    """The file twistd will log to, as its options say (C{None}: stdout, syslog, a logger)."""
    if parent.get("logger") or parent.get("syslog"):
        return None
    name = parent.get("logfile")
    if name == "-":
        return None
    if not name:
        return "twistd.log" if daemon else None
    return name

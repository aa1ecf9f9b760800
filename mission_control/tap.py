# -*- test-case-name: tests.test_tap -*-
"""
C{twistd mission-control}: the options and the service tree.

Every option can also come from a C{MISSION_CONTROL_<NAME>} environment variable (C{--jwt-leeway}
reads C{MISSION_CONTROL_JWT_LEEWAY}); the command line wins.  Repeatable options take a
comma- or space-separated list from the environment.  Everything that can be wrong with the
configuration (an endpoint string, a short secret, a missing key file) is found in
L{Options.postOptions} and reported as one usage line, before anything starts.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys

from twisted.application import service
from twisted.internet import defer, tcp
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from mission_control import auth
from mission_control.auth import OriginPolicy, TokenVerifier
from mission_control.demo import DemoFleet
from mission_control.hub import Hub
from mission_control.protocol import HubServerFactory
from mission_control.store import MemoryStore, Retention, SQLiteStore
from mission_control.web.api import Api
from mission_control.web.dashboard import Dashboard
from mission_control.web.site import build_site

ENV_PREFIX = "MISSION_CONTROL_"
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
STORE_FILE_NAME = "mission-control.sqlite3"
MAX_MESSAGE_SIZE_CEILING = 16 * 1024 * 1024
#: What a flag in the environment (C{MISSION_CONTROL_DEMO}) may say, in any case.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _positive_float(name):
    def convert(value):
        number = float(value)
        if number < 0 or number != number or number == float("inf"):
            raise ValueError(f"{name} must be a number >= 0")
        return number

    return convert


class Options(usage.Options):
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
        ["store", None, None, "Where events and latest state live: sqlite (in the data dir) or memory. [sqlite]"],
        ["history-size", None, None, "Events kept for resume. [100000]"],
        ["history-age", None, None, "Seconds an event is kept for resume. [86400]"],
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
        "history-size": "100000",
        "history-age": "86400",
    }

    def __init__(self, environ=None):
        super().__init__()
        self.environ = os.environ if environ is None else environ
        for name in self._repeatable:
            self[name] = []

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            # Under twistd, which would print its whole usage text and then the error, both on
            # stdout: one line on stderr and a non-zero exit instead.
            raise SystemExit(f"twistd mission-control: {e}") from None

    def opt_listen(self, endpoint):
        """Twisted endpoint string to listen on (repeatable). [tcp:8080:interface=127.0.0.1]"""
        self["listen"].append(endpoint)

    def opt_jwt_algorithm(self, algorithm):
        """
        Accepted JWT algorithm (repeatable). [HS256 with a secret; with a public key, the key's
        own: RS256 for RSA, ES256/ES384/ES512 for EC by curve, EdDSA for Ed25519/Ed448]
        """
        self["jwt-algorithm"].append(algorithm)

    def opt_allowed_origin(self, origin):
        """Browser Origin allowed to connect, as browsers send it (repeatable). [any]"""
        self["allowed-origin"].append(origin)

    def _from_environment(self):
        for name in [p[0] for p in self.optParameters] + list(self._repeatable):
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

    def postOptions(self):
        self._twistd_files()
        self._from_environment()
        for name, value in self.DEFAULTS.items():
            if self[name] is None:
                self[name] = value
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]

        self._numbers()
        self._keys()
        if self["store"] not in ("sqlite", "memory"):
            raise usage.UsageError(f"--store must be sqlite or memory, not {self['store']!r}")
        try:
            self["origins"] = OriginPolicy(self["allowed-origin"])
        except ValueError as e:
            raise usage.UsageError(f"--allowed-origin: {e}") from None
        from twisted.internet import reactor

        for description in self["listen"]:
            try:
                serverFromString(reactor, description)
            except Exception as e:
                raise usage.UsageError(
                    f"--listen {description!r} is not a usable endpoint: {_describe(e)}"
                ) from None

    def _twistd_files(self):
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

    def _numbers(self):
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

    def _keys(self):
        secret_file, public_key = self["jwt-secret-file"], self["jwt-public-key"]
        algorithms = self["jwt-algorithm"]
        self["generated-secret"] = None
        if secret_file and public_key:
            raise usage.UsageError("give --jwt-secret-file or --jwt-public-key, not both")
        try:
            if public_key:
                for algorithm in algorithms:
                    if algorithm not in auth.PUBLIC_KEY_ALGORITHMS:
                        raise ValueError(
                            f"--jwt-algorithm {algorithm} is not a public-key algorithm "
                            f"({', '.join(auth.PUBLIC_KEY_ALGORITHMS)})"
                        )
                # Without --jwt-algorithm, the key's own default (RS256, ES256, EdDSA...).
                key, algorithms = auth.load_public_key(public_key, algorithms)
            else:
                algorithms = algorithms or ["HS256"]
                for algorithm in algorithms:
                    if algorithm not in auth.HMAC_ALGORITHMS:
                        raise ValueError(
                            f"--jwt-algorithm {algorithm} needs --jwt-public-key; with a secret "
                            f"use {', '.join(auth.HMAC_ALGORITHMS)}"
                        )
                if secret_file:
                    key = auth.read_secret(secret_file)
                else:
                    key, path, created = auth.load_or_create_secret(self["data-dir"])
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


def _twistd_log_file(parent, daemon: bool) -> str | None:
    """The file twistd will log to, as its options say (C{None}: stdout, syslog, a logger)."""
    if parent.get("logger") or parent.get("syslog"):
        return None
    name = parent.get("logfile")
    if name == "-":
        return None
    if not name:
        return "twistd.log" if daemon else None
    return name


#: File descriptors kept for what is not a connection: listeners, the database, logs.
FILE_RESERVE = 64


def raise_file_limit(needed: int, getrlimit=None, setrlimit=None) -> int | None:
    """
    Raise the soft limit on open files towards C{needed}, as far as the hard limit allows.

    @return: the soft limit now, or C{None} where there is no such limit (not Unix).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover (not Unix)
        return None
    getrlimit = getrlimit or resource.getrlimit
    setrlimit = setrlimit or resource.setrlimit
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None if soft == resource.RLIM_INFINITY else soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def stop_listening(port, site) -> defer.Deferred:
    """
    Stop listening at once, after accepting every connection the kernel has already queued, so
    that each of those gets an answer and every later one is refused.

    C{stopListening} alone stops accepting now and closes the socket later (on the next turn of
    the reactor, after logging): a client whose connection completes in between is queued, then
    reset when the socket closes, having been told nothing.  Here the last accepts and the end of
    listening (C{shutdown} of the listening socket, which Linux turns into "not listening") come
    in one go.  Ports other than Twisted's TCP and Unix ones just get C{stopListening}.
    """
    if isinstance(port, tcp.Port) and port.connected and not port.disconnecting:
        port.stopReading()
        for _ in range(100):  # bounded: a flood of new connections must not hold the stop
            before = site.accepted_count
            port.doRead()
            if site.accepted_count == before:
                break
        try:
            port.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not every system lets a listening socket be shut down; closing it follows
    return defer.maybeDeferred(port.stopListening)


class MissionControlService(service.MultiService):
    """
    The hub, its listeners and (with C{--demo}) the simulated fleet.  Listening happens in
    C{privilegedStartService}, so a port that is taken stops twistd with one clear line.

    @ivar ports: C{(endpoint description, listening port)} pairs, once started.
    """

    log = Logger()

    def __init__(self, hub: Hub, site, listen: list[str], reactor, options=None) -> None:
        super().__init__()
        self.hub = hub
        self.site = site
        self.listen = listen
        self.reactor = reactor
        self.options = options or {}
        self.ports: list = []

    def privilegedStartService(self):
        for description in self.listen:
            endpoint = serverFromString(self.reactor, description)
            result = []
            endpoint.listen(self.site).addBoth(result.append)
            if not result or not hasattr(result[0], "getHost"):
                # Do not leave the listeners opened so far behind.
                for _, port in self.ports:
                    port.stopListening()
                self.ports = []
            if not result:
                raise SystemExit(f"mission-control: listening on {description} did not complete")
            if not hasattr(result[0], "getHost"):
                raise SystemExit(
                    f"mission-control: cannot listen on {description}: "
                    f"{_describe(result[0].value)}"
                )
            self.ports.append((description, result[0]))
        super().privilegedStartService()

    def startService(self):
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        self.hub.start()
        self._check_file_limit()
        renewed = getattr(self.hub.store, "epoch_renewed", None)
        if renewed:
            self.log.warn("store history has a new epoch ({why}): resuming clients will redraw",
                          why=renewed)
        urls = [url for description, port in self.ports for url in urls_of(description, port)]
        for url in urls:
            self.log.info("mission-control listening: {url}", url=url)
        if self.options.get("generated-secret") is not None:
            # The one log line that holds a token, and only with the development secret: whoever
            # reads this log can read the secret file too (it is in the data dir beside it).
            token = dashboard_token(self.options["verifier"], self.reactor.seconds())
            for url in dashboard_urls(urls):
                self.log.info("dashboard: {url}#token={token}", url=url, token=token)
            data_dir = self.options["data-dir"]
            self.log.info(
                "development secret {how} {path}; mint a token with: "
                "{command} token --data-dir {data_dir} --sub alice --role admin",
                how="generated in" if self.options["generated-secret"] else "read from",
                path=self.options["secret-path"],
                command=shlex.quote(console_script()),
                data_dir=shlex.quote(data_dir),
            )

    def _check_file_limit(self) -> None:
        """
        Make room for every connection the limits allow, one file descriptor each, or say at
        start that there is none: past the file limit the hub cannot even accept a connection to
        refuse it, and its health check fails with everything else.
        """
        needed = self.hub.max_connections + self.site.max_http_connections + FILE_RESERVE
        limit = raise_file_limit(needed)
        if limit is not None and limit < needed:
            self.log.warn(
                "the file limit ({limit}) is below what --max-connections and "
                "--max-http-connections may use ({needed}): raise it (ulimit -n, systemd's "
                "LimitNOFILE=) or lower them, else connections past it fail without an answer",
                limit=limit, needed=needed)

    #: Seconds that stopping waits for clients to finish their close handshakes.
    close_timeout = 5.0

    @defer.inlineCallbacks
    def stopService(self):
        """
        Stop listening, so that a client connecting from now on is refused at once; answer the
        connections already accepted (a WebSocket handshake gets 503 shutting down) and close
        every WebSocket with 1001; wait (at most C{close_timeout} seconds) until all of them are
        closed; then stop the children and close the store.

        Listening stops first because the other order leaves a window in which a client is
        accepted, then dropped with no answer when the process exits; a refused connection is a
        plain signal to back off and retry.
        """
        self.hub.stop()
        ports, self.ports = self.ports, []
        unlistened = [stop_listening(port, self.site) for _, port in ports]
        self.site.drain()
        self.hub.close_all()
        everyone = self._everyone_gone()
        timer = self.reactor.callLater(self.close_timeout, everyone.cancel)
        try:
            yield everyone
        except defer.CancelledError:
            self.log.warn("{count} clients did not close in time",
                          count=max(self.hub.connection_count, self.site.open_count()))
        else:
            timer.cancel()
        yield super().stopService()
        # Return only once the ports are closed, so a new listener can take them at once.
        yield defer.gatherResults(unlistened, consumeErrors=True)
        # Every write went through the store synchronously; closing checkpoints and releases it.
        self.hub.store.close()

    @defer.inlineCallbacks
    def _everyone_gone(self):
        """Fires once the hub has no WebSocket and the network no accepted connection."""
        yield self.hub.when_empty()
        yield self.site.closed(self.reactor)


def console_script() -> str:
    """
    How to run the C{mission-control} command from where the hub was started: the one installed
    next to the running Python (a virtual environment's, not on C{PATH} unless activated), by a
    path relative to the working directory when it is below it; else the bare name.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "mission-control")
    if not os.path.exists(beside):
        return "mission-control"
    relative = os.path.relpath(beside)
    return relative if not relative.startswith(os.pardir) else os.path.abspath(beside)


def urls_of(description: str, port) -> list[str]:
    """The URLs a listening port serves, for the start-up log."""
    host = port.getHost()
    secure = description.split(":", 1)[0].strip().lower() == "ssl"
    if hasattr(host, "port"):
        name = host.host if ":" not in host.host else f"[{host.host}]"
        if name in ("0.0.0.0", "[::]"):
            name = "localhost"
        base = f"{name}:{host.port}"
        return [f"{'https' if secure else 'http'}://{base}/", f"{'wss' if secure else 'ws'}://{base}/ws"]
    name = getattr(host, "name", host)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return [f"unix socket {name} (HTTP, and WebSocket at /ws)"]


#: The user of the signed-in dashboard link of the start-up log, and how long its token lasts.
DASHBOARD_SUB = "admin"
DASHBOARD_NAME = "Administrator"
DASHBOARD_TTL = 12 * 3600.0


def dashboard_token(verifier: TokenVerifier, now: float) -> str:
    """
    An admin token for the start-up log's dashboard link, minted as C{mission-control token}
    mints (L{auth.mint_token}) with the hub's own key, issuer, audience and first algorithm, so
    that the hub accepts it whatever those are.
    """
    return auth.mint_token(verifier.key, DASHBOARD_SUB, now, ttl=DASHBOARD_TTL, role="admin",
                           name=DASHBOARD_NAME, issuer=verifier.issuer,
                           audience=verifier.audience, algorithm=verifier.algorithms[0])


def dashboard_urls(urls: list[str]) -> list[str]:
    """
    The dashboard's address on each HTTP(S) listener among C{urls} (as L{urls_of} gives them):
    the token goes after it in the fragment (C{#token=}), which a browser never sends, so it
    reaches no access log, the hub's or a proxy's.
    """
    return [url for url in urls if url.startswith(("http://", "https://"))]


def open_store(options):
    """The store the options ask for: SQLite in the data dir (the default), or memory."""
    retention = Retention(max_events=options["history-size"], max_age=options["history-age"])
    if options["store"] == "memory":
        return MemoryStore(retention)
    path = os.path.join(options["data-dir"], STORE_FILE_NAME)
    try:
        return SQLiteStore(path, retention)
    except ValueError as e:
        raise SystemExit(f"mission-control: {e}") from None


def makeService(options, reactor=None) -> MissionControlService:
    """Build the service tree from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor
    verifier = options["verifier"]
    store = open_store(options)
    rate = options["max-messages-per-second"]
    hub = Hub(
        reactor,
        store,
        heartbeat_interval=options["heartbeat-interval"],
        max_connections=options["max-connections"],
        max_connections_per_user=options["max-connections-per-user"],
        verifier=verifier,
        message_rate=rate,
        message_burst=max(1, int(rate * 2)),
        handshake_rate=options["max-handshakes-per-second"],
    )
    factory = HubServerFactory(
        hub,
        verifier,
        origins=options["origins"],
        reactor=reactor,
        max_message_size=options["max-message-size"],
        max_outbound_bytes=options["max-outbound-bytes"],
        ping_interval=options["ping-interval"],
        ping_timeout=options["ping-timeout"],
    )
    api = Api(hub, verifier, publish_rate=options["max-publishes-per-second"],
              read_rate=options["max-reads-per-second"])
    site = build_site(factory, api, reactor=reactor,
                      max_http_connections=options["max-http-connections"],
                      dashboard=Dashboard())
    root = MissionControlService(hub, site, options["listen"], reactor, options)
    if options["demo"]:
        DemoFleet(hub, reactor).setServiceParent(root)
    return root


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: twistd -n mission-control")

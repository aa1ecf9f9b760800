# -*- test-case-name: tests.test_tap -*-
"""
C{twistd mission-control}: the service tree, built from the parsed options.

L{makeService} opens the store and builds the hub, the WebSocket factory, the API and the site,
under one L{MissionControlService}: its children are one L{Listener} per C{--listen} endpoint,
the L{MetricsListener} of C{--metrics-listen} if one is given, and, with C{--demo}, the simulated
fleet.  With C{--workers} above 1 it builds the supervisor of that many such hubs instead
(L{mission_control.workers}), each a node on the shared store.  The options themselves (the
command line, the environment, the key files) are parsed and checked in
L{mission_control.options}; twistd's plugin still finds L{Options} and L{makeService} here, in
the module it names.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from mission_control import tokens
from mission_control.auth import TokenVerifier
from mission_control.cluster.shared import SharedHistory
from mission_control.demo import DemoFleet
from mission_control.factory import HubServerFactory
from mission_control.hub import Hub
from mission_control.listener import Listener, ListenError, urls_of
from mission_control.metrics import Metrics
from mission_control.options import Options
from mission_control.store import IEventStore, MemoryStore, Retention, SQLiteStore
from mission_control.web.api import Api
from mission_control.web.dashboard import Dashboard
from mission_control.web.metrics import MetricsListener, admin_page
from mission_control.web.site import HubSite, build_site
from mission_control.workers.supervisor import supervisor_for
from mission_control.workers.worker import SupervisorWatch, worker_listeners

__all__ = ["MissionControlService", "Options", "makeService", "urls_of"]

STORE_FILE_NAME = "mission-control.sqlite3"

#: File descriptors kept for what is not a connection: listeners, the database, logs.
FILE_RESERVE = 64


def raise_file_limit(needed: int, getrlimit: Callable[[int], tuple[int, int]] | None = None,
                     setrlimit: Callable[[int, tuple[int, int]], None] | None = None
                     ) -> int | None:
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


class MissionControlService(service.MultiService):
    """
    The hub, its listeners and (with C{--demo}) the simulated fleet.

    Each C{--listen} endpoint is a child L{Listener}, as C{twisted.web.tap} adds a C{strports}
    service per C{--port}: listening starts in C{privilegedStartService}, before twistd sheds
    privileges.  A listen that fails there (a port that is taken, a socket path that cannot be
    made) stops the start with one line (see L{privilegedStartService}).

    @ivar listeners: the L{Listener} of each C{--listen} endpoint, in the order given.
    """

    log = Logger()

    def __init__(self, hub: Hub, site: HubSite, listen: list[str], reactor: Any,
                 options: Mapping[str, Any] | None = None,
                 shared: SharedHistory | None = None) -> None:
        super().__init__()
        self.hub = hub
        #: The Redis side of a hub on a shared history (C{--store redis://}), or C{None}.
        self.shared = shared
        self.site = site
        self.listen = listen
        self.reactor = reactor
        self.options: Mapping[str, Any] = options or {}
        worker = self.options.get("worker")
        self.listeners = (worker_listeners(worker, listen, site, reactor) if worker is not None
                          else [Listener(description, site, reactor) for description in listen])
        for listener in self.listeners:
            listener.setServiceParent(self)
        self._privileged = False

    @property
    def ports(self) -> list[tuple[str, Any]]:
        """C{(endpoint description, listening port)} of every listener that listens."""
        return [(listener.description, listener.port) for listener in self.listeners
                if listener.port is not None]

    def privilegedStartService(self) -> None:
        """
        Start listening on every endpoint.  One that fails stops the start: the listeners opened
        so far are closed, and C{SystemExit} carries one line that names the endpoint and the
        reason.

        Twisted's service raises the endpoint's own error (C{CannotListenError}) from here, and
        twistd would print it with its traceback; C{SystemExit} is how twistd reports an error
        in one line (as it does for its own usage errors) with a non-zero exit status.
        """
        try:
            super().privilegedStartService()
        except ListenError as e:
            for listener in self.listeners:
                listener.stop_listening()
            raise SystemExit(f"mission-control: {e}") from None
        self._privileged = True

    def startService(self) -> None:
        if not self._privileged:
            self.privilegedStartService()
        super().startService()
        self.hub.start()
        if self.shared is not None:
            self.hub.starting = True
            self.shared.start(self._shared_ready)
        self._check_file_limit()
        renewed = self.hub.store.epoch_renewed
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

    def _shared_ready(self) -> None:
        """The shared history is loaded: serve."""
        self.hub.starting = False

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
    def stopService(self) -> Any:
        """
        Stop listening, so that a client connecting from now on is refused at once; answer the
        connections already accepted (a WebSocket handshake gets 503 shutting down) and close
        every WebSocket with 1001; wait (at most C{close_timeout} seconds) until all of them are
        closed; then stop the children, wait until every publish handed to the broker is
        answered (L{Hub.when_stored}), and close the store.

        Listening stops first because the other order leaves a window in which a client is
        accepted, then dropped with no answer when the process exits; a refused connection is a
        plain signal to back off and retry.
        """
        self.hub.stop()
        self._privileged = False
        unlistened = [listener.stop_listening() for listener in self.listeners]
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
        yield super().stopService()  # the listeners have stopped already: only the others
        # Return only once the ports are closed, so a new listener can take them at once.
        yield defer.gatherResults(unlistened, consumeErrors=True)
        # Every publish the hub accepted is answered (stored or failed) before the store closes;
        # with the in-process broker that has happened already.  Closing checkpoints and
        # releases the store.
        yield self.hub.when_stored()
        if self.shared is not None:
            yield self.shared.stop()
        self.hub.store.close()

    @defer.inlineCallbacks
    def _everyone_gone(self) -> Any:
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


#: The user of the signed-in dashboard link of the start-up log, and how long its token lasts.
DASHBOARD_SUB = "admin"
DASHBOARD_NAME = "Administrator"
DASHBOARD_TTL = 12 * 3600.0


def dashboard_token(verifier: TokenVerifier, now: float) -> str:
    """
    An admin token for the start-up log's dashboard link, minted as C{mission-control token}
    mints (L{tokens.mint_token}) with the hub's own key, issuer, audience and first algorithm, so
    that the hub accepts it whatever those are.
    """
    key = verifier.key
    if not isinstance(key, bytes):
        raise ValueError("a dashboard token is minted only with the hub's own secret")
    return tokens.mint_token(key, DASHBOARD_SUB, now, ttl=DASHBOARD_TTL, role="admin",
                           name=DASHBOARD_NAME, issuer=verifier.issuer,
                           audience=verifier.audience, algorithm=verifier.algorithms[0])


def dashboard_urls(urls: list[str]) -> list[str]:
    """
    The dashboard's address on each HTTP(S) listener among C{urls} (as L{urls_of} gives them):
    the token goes after it in the fragment (C{#token=}), which a browser never sends, so it
    reaches no access log, the hub's or a proxy's.
    """
    return [url for url in urls if url.startswith(("http://", "https://"))]


def retention_of(options: Mapping[str, Any]) -> Retention:
    """The retention limits the options ask for."""
    return Retention(max_events=options["history-size"], max_age=options["history-age"])


def open_store(options: Mapping[str, Any]) -> MemoryStore | SQLiteStore:
    """The store of one process the options ask for: SQLite in the data dir (the default), or
    memory."""
    retention = retention_of(options)
    if options["store"] == "memory":
        return MemoryStore(retention)
    path = os.path.join(options["data-dir"], STORE_FILE_NAME)
    try:
        return SQLiteStore(path, retention)
    except ValueError as e:
        raise SystemExit(f"mission-control: {e}") from None


def makeService(options: Mapping[str, Any],
                reactor: Any = None) -> MissionControlService | service.Service:
    """
    Build the service tree from parsed L{Options}: the hub; or, with C{--workers} above 1, the
    supervisor of its workers (L{mission_control.workers.supervisor}), each of them a hub.
    """
    if reactor is None:
        from twisted.internet import reactor
    worker = options.get("worker")
    if options.get("workers", 1) > 1 and worker is None:
        return supervisor_for(options, reactor)
    verifier = options["verifier"]
    shared: SharedHistory | None = None
    store: IEventStore
    metrics = Metrics()
    if options["store"] == "redis":
        shared = SharedHistory(reactor, options["redis"], retention_of(options), metrics=metrics)
        store, broker = shared.replica, shared.broker
    else:
        store, broker = open_store(options), None
    rate = options["max-messages-per-second"]
    hub = Hub(
        reactor,
        store,
        broker=broker,
        heartbeat_interval=options["heartbeat-interval"],
        max_connections=options["max-connections"],
        max_connections_per_user=options["max-connections-per-user"],
        verifier=verifier,
        message_rate=rate,
        message_burst=max(1, int(rate * 2)),
        handshake_rate=options["max-handshakes-per-second"],
        fanout_window=Hub.FANOUT_WINDOW,
        metrics=metrics,
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
                      dashboard=Dashboard(), metrics=admin_page(api))
    if shared is not None:
        # Who is connected is known per node: a restarted node must not mark offline the agents
        # connected to the others.
        hub.sweep_after_restart = False
        hub.store_health = shared.health
        hub.use_presence(shared.presence)
        shared.presence.on_node_gone = hub.agents_gone
    root = MissionControlService(hub, site, options["listen"], reactor, options, shared)
    if options["metrics-listen"] is not None:
        MetricsListener(options["metrics-listen"], metrics, reactor).setServiceParent(root)
    if options["demo"] and (worker is None or worker.number == 1):  # one fleet for all workers
        DemoFleet(hub, reactor).setServiceParent(root)
    if worker is not None:
        SupervisorWatch(reactor).setServiceParent(root)
    return root


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: twistd -n mission-control")

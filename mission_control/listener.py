# -*- test-case-name: tests.test_listener -*-
"""
The hub's listeners: one L{Listener} service per C{--listen} endpoint, a child of the hub's
service as C{twisted.web.tap} adds its C{strports} services, and what the start-up log says
about each (L{urls_of}).

A L{Listener} is Twisted's C{StreamServerEndpointService}, built as C{strports.service} builds
it (a listen that fails at once raises from C{privilegedStartService}), with two changes: that
failure is raised as a L{ListenError} naming the C{--listen} description, so the hub's service
can turn it into one line; and stopping first accepts the connections the kernel has already
queued (L{stop_listening}), so that each of them gets an answer.  A worker of C{--workers} listens
on a socket it shares with the others (C{shared}), and stopping only closes its own descriptor.

Every endpoint that has a listen backlog (C{tcp:}, C{tcp6:}, C{ssl:}, C{unix:}) and does not
set its own (C{backlog=}) listens with L{LISTEN_BACKLOG} (L{with_backlog}): Twisted's default
of 50 overflows when a fleet of clients reconnects at once, and every connection the kernel
drops then waits for its client's SYN retry, a second or more.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, tcp
from twisted.internet.endpoints import _parse as parse_endpoint
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IReactorCore, IStreamServerEndpoint

#: The listen backlog of an endpoint that does not set one: connections the kernel completes and
#: queues until the hub accepts them.  Linux caps it at C{net.core.somaxconn} (4096 by default
#: since 5.4).
LISTEN_BACKLOG = 4096
#: The endpoint types whose string takes a C{backlog=}.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


class ListeningPort(Protocol):
    """What is used of a listening port (an C{IListeningPort}): its address, and stopping."""

    def getHost(self) -> IAddress: ...

    def stopListening(self) -> defer.Deferred[None] | None: ...


class AcceptCounter(Protocol):
    """What L{stop_listening} needs of the factory: how many connections it accepted, ever."""

    accepted_count: int


def describe_error(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none), for a usage line."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """
    The endpoint C{description} with C{backlog=BACKLOG} added when its type takes one and it sets
    none; any other description (one with its own backlog, another type, or one that does not
    parse, whose error is reported as given) is returned as is.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES:
        return description
    try:
        args, kwargs = parse_endpoint(description)
    except Exception:
        return description
    if "backlog" in kwargs or len(args) < 2 or description.endswith(":"):
        return description
    return f"{description}:backlog={backlog}"


class ListenError(Exception):
    """
    Listening on a C{--listen} endpoint failed as the service started.

    @ivar description: the endpoint description, as given to C{--listen}.
    @ivar reason: the exception the endpoint raised.
    """

    def __init__(self, description: str, reason: BaseException) -> None:
        super().__init__(description, reason)
        self.description = description
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot listen on {self.description}: {describe_error(self.reason)}"


def stop_listening(port: ListeningPort, site: AcceptCounter) -> defer.Deferred[None]:
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
    try:
        stopped = port.stopListening()
    except Exception:
        return defer.fail()
    return stopped if stopped is not None else defer.succeed(None)


class Listener(StreamServerEndpointService):
    """
    Listen on one C{--listen} endpoint with the hub's site.

    @ivar description: the endpoint description, as given to C{--listen}.
    @ivar port: the listening port once listening began, else L{None}.
    @ivar shared: whether other processes accept on the same listening socket (the workers of
        C{--workers}): then stopping closes this process's descriptor and nothing more.
    """

    # As strports.service sets it: a listen that fails at once fails privilegedStartService.
    _raiseSynchronously = True

    def __init__(self, description: str, site: Any, reactor: IReactorCore,
                 endpoint: IStreamServerEndpoint | None = None, shared: bool = False) -> None:
        """
        @param endpoint: where to listen, when not the endpoint C{description} names (a socket
            inherited for it).
        """
        if endpoint is None:
            endpoint = serverFromString(reactor, with_backlog(description))
        super().__init__(endpoint, site)
        self.description = description
        self.shared = shared
        self.port: ListeningPort | None = None

    def privilegedStartService(self) -> None:
        """Start listening; a listen that fails at once raises L{ListenError}."""
        try:
            super().privilegedStartService()
        except Exception as e:
            self._waitingForPort = None
            raise ListenError(self.description, e) from e
        assert self._waitingForPort is not None
        # At once for the endpoints Twisted has (TCP, TLS, Unix); later for one that completes
        # later, whose failure Twisted's service logs.
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: ListeningPort | None) -> ListeningPort | None:
        self.port = port
        return port

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening (see L{stop_listening}); fires once the port is closed."""
        service.Service.stopService(self)
        return self.stop_listening()

    def stop_listening(self) -> defer.Deferred[None]:
        """
        Stop listening now, draining the accept queue (L{stop_listening}), or give up a listen
        still under way.  Stopping what is not listening does nothing.
        """
        waiting, self._waitingForPort = self._waitingForPort, None
        if waiting is None:
            return defer.succeed(None)
        waiting.cancel()
        return waiting.addCallback(self._close)

    def _close(self, port: ListeningPort | None) -> defer.Deferred[None] | None:
        self.port = None
        if port is None:
            return None
        if self.shared:
            # Neither the last accepts nor the shutdown of stop_listening: what waits in the
            # queue is the other workers' to accept, and a shutdown would stop them listening.
            return port.stopListening()
        return stop_listening(port, self.factory)


def urls_of(description: str, port: ListeningPort) -> list[str]:
    """The URLs a listening port serves, for the start-up log."""
    host: Any = port.getHost()
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

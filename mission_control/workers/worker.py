# -*- test-case-name: tests.test_workers_worker -*-
"""
The worker's side of C{--workers}: a C{twistd -n mission-control} started by the supervisor
(L{mission_control.workers.supervisor}), which is the hub as always but for three things.

  - It listens on the sockets it inherited instead of opening its own (L{worker_listeners}):
    L{InheritedEndpoint} adopts a listening socket with C{reactor.adoptStreamPort}, and for an
    C{ssl:} endpoint wraps the site in TLS with the certificate and key the endpoint names, as
    C{reactor.listenSSL} does.  Stopping closes only the worker's own descriptor: the socket is
    shared, and shutting it down would stop every worker listening.
  - It stops, as SIGTERM stops it, when the supervisor is gone (L{SupervisorWatch}): its stdin is
    a pipe from the supervisor, which reads end of file once the supervisor has exited, however
    it ended, SIGKILL included.  This is portable, where C{PR_SET_PDEATHSIG} is Linux only.
  - It logs one JSON event per line to its stdout (L{log_observer}), which the supervisor reads
    and logs as its own, with the level, the text and any traceback intact.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, fdesc
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IReadDescriptor, IStreamServerEndpoint
from twisted.logger import FileLogObserver, Logger, jsonFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from mission_control.listener import Listener, with_backlog
from mission_control.workers import WorkerAssignment

#: The address families of the sockets a worker can adopt.
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def log_observer() -> FileLogObserver:
    """
    The log observer of a worker, named to twistd with C{--logger}: each event as one line of
    JSON on stdout, which the supervisor reads back (L{supervisor.WorkerOutput}).

    twistd calls this before it sends C{sys.stdout} itself into the log, so the observer holds
    the real stdout, the pipe to the supervisor.
    """
    return jsonFileLogObserver(sys.stdout)


def socket_family(fd: int) -> int:
    """The address family of the socket at descriptor C{fd}."""
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return int(probe.family)
    finally:
        probe.close()


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """
    An endpoint that listens on a socket this process inherited at descriptor C{fd}, already
    bound and listening: the socket the supervisor opened for the endpoint C{description}.

    For an C{ssl:} description, the endpoint is parsed here as the supervisor parsed it, for its
    TLS context (the certificate, the key, the chain), and the factory is wrapped in TLS the way
    C{reactor.listenSSL} wraps it; the listening part of the description (port, interface,
    backlog) was the supervisor's business.
    """

    def __init__(self, reactor: Any, fd: int, description: str) -> None:
        self.reactor = reactor
        self.fd = fd
        self.description = description

    def tls_context(self) -> Any:
        """The TLS context factory of an C{ssl:} description, else L{None}."""
        if self.description.split(":", 1)[0].strip().lower() != "ssl":
            return None
        endpoint = serverFromString(self.reactor, with_backlog(self.description))
        if not isinstance(endpoint, SSL4ServerEndpoint):  # pragma: no cover (what ssl: parses to)
            raise ValueError(f"{self.description} is not a TLS endpoint")
        # Twisted keeps the context factory it built from the string on the endpoint, and
        # offers no other way to reach it than building it again from the same fields.
        return endpoint._sslContextFactory

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        """Adopt the inherited socket with C{factory}: fires with the listening port."""
        return defer.execute(self._adopt, factory)

    def _adopt(self, factory: Any) -> IListeningPort:
        family = socket_family(self.fd)
        if family not in _FAMILIES:
            raise ValueError(f"the socket inherited for {self.description} is not a TCP socket")
        context = self.tls_context()
        if context is not None:
            factory = TLSMemoryBIOFactory(context, False, factory)
        # The port works on its own copy of the descriptor; this one stays, out of the reach of
        # any process the worker may start, so that the listener can be started again.
        os.set_inheritable(self.fd, False)
        fdesc.setNonBlocking(self.fd)
        port: IListeningPort = self.reactor.adoptStreamPort(self.fd, family, factory)
        return port


def worker_listeners(assignment: WorkerAssignment, listen: Sequence[str], site: Any,
                     reactor: Any) -> list[Listener]:
    """
    The hub's listeners in a worker: one per C{--listen} description, each on the socket
    inherited for it, shared with the other workers.
    """
    return [Listener(description, site, reactor,
                     endpoint=InheritedEndpoint(reactor, fd, description), shared=True)
            for description, fd in zip(listen, assignment.fds, strict=True)]


@implementer(IReadDescriptor)
class _PipeReader:
    """
    Reads a pipe until its end; then calls C{ended}, once.

    The end comes as an empty read, or (epoll reports a pipe whose writer closed it as hung up,
    not readable) as the reactor's C{connectionLost}.
    """

    def __init__(self, reactor: Any, fd: int, ended: Callable[[], None]) -> None:
        self.reactor = reactor
        self.fd = fd
        self._ended: Callable[[], None] | None = ended

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "supervisor"

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # the supervisor writes nothing; anything it did would mean nothing
        self.reactor.removeReader(self)
        self.end()

    def connectionLost(self, reason: Failure) -> None:
        self.end()

    def end(self) -> None:
        ended, self._ended = self._ended, None
        if ended is not None:
            ended()


class SupervisorWatch(service.Service):
    """
    Calls C{gone} (by default, stops the reactor, as SIGTERM does) when the supervisor is gone:
    when the pipe at C{fd}, the worker's stdin, which the supervisor holds open, reaches its end.
    """

    log = Logger()

    def __init__(self, reactor: Any, fd: int = 0,
                 gone: Callable[[], None] | None = None) -> None:
        self.reactor = reactor
        self.fd = fd
        self.gone = gone if gone is not None else self._stop_reactor
        self._reader: _PipeReader | None = None

    def startService(self) -> None:
        super().startService()
        fdesc.setNonBlocking(self.fd)
        self._reader = _PipeReader(self.reactor, self.fd, self._ended)
        self.reactor.addReader(self._reader)

    def stopService(self) -> None:
        super().stopService()
        reader, self._reader = self._reader, None
        if reader is not None:
            self.reactor.removeReader(reader)

    def _ended(self) -> None:
        if self._reader is None:
            return  # stopped already: the reactor letting go of it as it shuts down
        self._reader = None
        self.log.warn("the supervisor is gone: stopping")
        self.gone()

    def _stop_reactor(self) -> None:
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass  # stopping already

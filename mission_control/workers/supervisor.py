# -*- test-case-name: tests.test_workers_supervisor -*-
"""
The supervisor of C{--workers N}: the process twistd starts, which listens, starts N workers
that accept on its sockets, starts again a worker that dies, and stops them all on SIGTERM.

Listening: in C{privilegedStartService}, before twistd sheds privileges (a port below 1024
works as for one hub), every C{--listen} endpoint is opened by its own endpoint string, as one
hub opens it (the backlog, the interface, TLS's files checked at once), and then left alone: the
supervisor stops reading from it and never accepts.  Each worker inherits the listening sockets
(C{childFDs}), at descriptors 3, 4, ... in the order of C{--listen}, and accepts on them; the
kernel gives each new connection to one worker.  One socket and one accept queue for all: a
worker that dies takes only its own connections with it, and nothing waits in a queue of its.

Why not C{twisted.runner.procmon.ProcessMonitor}, which restarts processes with a backoff too: it
cannot hand a child descriptors other than stdin, stdout and stderr, its C{stopService} does not
wait for the processes to end (twistd would exit while the workers still drain), and it logs
neither the exit status nor why a process is started again.  L{Supervisor} is the same idea with
those three, in the shape of that class: a C{Service}, C{killTime} as L{Supervisor.kill_time}.

Workers: each is C{twistd -n --pidfile= mission-control} with the supervisor's own hub options
(L{worker_command}) and environment, plus L{WORKER_VARIABLE} saying which worker it is.  Its
stdout carries its log as JSON lines, logged here again as the supervisor's (L{WorkerOutput}),
with the worker's number, namespace and level in the system field:

    2026-11-27T16:42:44+0000 [worker 2: mission_control.protocol.HubServerProtocol#warn] security: ...

A worker that exits when it was not asked to is started again after L{RestartBackoff}'s delay:
1 s, doubling up to 30 s while it keeps dying, back to 1 s once it ran 30 s.  On SIGTERM or
SIGINT (twistd stops the service) the supervisor starts nothing more, sends SIGTERM to every
worker (each stops as one hub does: stops accepting, closes its WebSockets with 1001, waits for
them, closes its store), and SIGKILL to one still running after L{Supervisor.kill_time}.  It
closes its own copy of each listening socket at once, so the socket closes as soon as every
worker has stopped accepting; connections the kernel had queued by then are reset, where one hub
accepts them to answer 503 (no worker can accept for the others without taking their share).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent
from twisted.python.failure import Failure

from mission_control.listener import ListenError, describe_error, urls_of, with_backlog
from mission_control.workers import WORKER_VARIABLE, assignment_for
from mission_control.workers.worker import socket_family

#: What a worker runs: twistd's own entry point, in a process group of its own (Ctrl-C in a
#: terminal reaches the supervisor only, which then stops the workers in order).
BOOTSTRAP = ("import os, sys; os.setpgrp(); sys.argv[0] = 'twistd'; "
             "from twisted.scripts.twistd import run; run()")
#: The log observer a worker logs with (twistd's C{--logger}): JSON lines on its stdout.
WORKER_LOGGER = "mission_control.workers.worker.log_observer"
#: The record separator that starts each JSON line of a worker's log.
RECORD_SEPARATOR = "\x1e"
#: The longest line of a worker's output kept whole; a longer one is logged in pieces.
MAX_LINE = 1 << 20


def worker_command(python: str, arguments: Sequence[str]) -> list[str]:
    """
    The command line of a worker: this Python running twistd in the foreground, without a
    pidfile (the supervisor's is the one), logging JSON to stdout, with the hub options
    C{arguments} exactly as the supervisor got them (C{--workers} included: the worker knows
    it is one from L{WORKER_VARIABLE}).

    C{-P}: the working directory is not put on the module path, as it is not for the twistd
    command (a C{twisted} folder there would otherwise be imported in place of Twisted).
    """
    return [python, "-P", "-c", BOOTSTRAP, "--nodaemon", "--pidfile=",
            f"--logger={WORKER_LOGGER}", "mission-control", *arguments]


def worker_environment(environ: Mapping[str, str], number: int,
                       listeners: int) -> dict[str, str]:
    """The environment of worker C{number}: the supervisor's, and its assignment."""
    env = dict(environ)
    env[WORKER_VARIABLE] = assignment_for(number, listeners).encode()
    return env


@dataclass
class RestartBackoff:
    """
    How long to wait before starting a worker again: C{first} seconds, doubling each time it
    dies again, up to C{longest}; back to C{first} once a run lasted C{steady} seconds.
    """

    first: float = 1.0
    longest: float = 30.0
    steady: float = 30.0
    _next: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def delay(self, ran_for: float) -> float:
        """The wait before the next start of a worker that ended after C{ran_for} seconds."""
        if ran_for >= self.steady:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.longest)
        return delay


def describe_exit(reason: Failure) -> str:
    """How a worker ended, for the log: C{exited with status 1}, C{was ended by SIGKILL}."""
    value = reason.value
    signum = getattr(value, "signal", None)
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was ended by {name}"
    code = getattr(value, "exitCode", None)
    if code is not None:
        return f"exited with status {code}"
    return f"ended: {describe_error(value) if value is not None else 'for no known reason'}"


class _NeverAccept(protocol.Factory):
    """The factory of the supervisor's listening ports, which never accept: workers do."""

    noisy = False

    def logPrefix(self) -> str:
        return "shared listener"


class WorkerOutput(protocol.ProcessProtocol):
    """
    One running worker: its output, logged line by line as the supervisor's, and its end.

    A stdout line that starts with the record separator is one of the worker's log events as
    JSON (L{mission_control.workers.worker.log_observer}), logged again at its own level; any
    other line (Python's own complaints before logging began, a usage error) is logged as text,
    at warn when it came on stderr.

    @ivar pid: the worker's pid, once it was started.
    @ivar ended: fires (with L{None}) when the process has ended.
    @ivar reason: why the process ended (a C{ProcessDone} or C{ProcessTerminated}), once it has.
    """

    def __init__(self, number: int, log: Logger) -> None:
        self.number = number
        self.log = log
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self._pending = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._pending:
            return
        pending = self._pending[childFD] + data
        *lines, pending = pending.split(b"\n")
        while len(pending) > MAX_LINE:
            lines.append(pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
        self._pending[childFD] = pending
        for line in lines:
            self.line(childFD, line)

    def line(self, childFD: int, raw: bytes) -> None:
        """Log one line the worker wrote on C{childFD} (1: stdout, 2: stderr)."""
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if childFD == 1 and text.startswith(RECORD_SEPARATOR):
            if self._event(text[len(RECORD_SEPARATOR):]):
                return
        if not text.strip():
            return
        stream = "stdout" if childFD == 1 else "stderr"
        self.log.emit(LogLevel.info if childFD == 1 else LogLevel.warn, "{text}", text=text,
                      log_system=f"worker {self.number}: {stream}", worker=self.number)

    def _event(self, payload: str) -> bool:
        try:
            event = eventFromJSON(payload)
        except ValueError:
            return False
        if not isinstance(event, dict):
            return False
        given = event.get("log_level")
        level = given if isinstance(given, type(LogLevel.info)) else LogLevel.info
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                text = f"{text}\n{failure.getTraceback()}".rstrip("\n")
            except Exception:
                text = f"{text} ({failure!r})"
        namespace = event.get("log_namespace") or "-"
        system = event.get("log_system")
        if not isinstance(system, str) or system in ("", "-"):
            system = f"{namespace}#{level.name}"
        self.log.emit(level, "{text}", text=text, log_system=f"worker {self.number}: {system}",
                      worker=self.number, worker_namespace=namespace)
        return True

    def processEnded(self, reason: Failure) -> None:
        for fd, pending in self._pending.items():
            if pending:
                self.line(fd, pending)
        self._pending = {1: b"", 2: b""}
        self.end(reason)

    def end(self, reason: Failure) -> None:
        """The process has ended (or could not start) for C{reason}."""
        self.reason = reason
        self.ended.callback(None)


@dataclass
class _Worker:
    """What the supervisor keeps of worker C{number}."""

    number: int
    backoff: RestartBackoff
    process: WorkerOutput | None = None
    started: float = 0.0
    restart: IDelayedCall | None = None
    kill: IDelayedCall | None = None


class Supervisor(service.Service):
    """
    Listen on every C{listen} endpoint, and keep C{count} workers (C{command} with C{environ})
    accepting on those sockets; stop them all when stopped.

    @ivar ports: the listening ports, in the order of C{listen}, once listening.
    @ivar kill_time: seconds a worker is given to stop after SIGTERM before SIGKILL.  One hub
        stops within about 5 s (its clients' close handshakes), then closes its store.
    """

    log = Logger()
    kill_time = 10.0

    def __init__(self, listen: Sequence[str], count: int, command: Sequence[str],
                 environ: Mapping[str, str], reactor: Any,
                 backoff: RestartBackoff | None = None) -> None:
        if count < 1:
            raise ValueError("a supervisor needs at least one worker")
        self.listen = list(listen)
        self.count = count
        self.command = list(command)
        self.environ = dict(environ)
        self.reactor = reactor
        template = backoff if backoff is not None else RestartBackoff()
        self.workers = {number: _Worker(number, RestartBackoff(template.first, template.longest,
                                                               template.steady))
                        for number in range(1, count + 1)}
        self.ports: list[Any] = []
        self._stopping: defer.Deferred[None] | None = None

    @property
    def pids(self) -> dict[int, int]:
        """The pid of each running worker, by number."""
        return {number: worker.process.pid for number, worker in self.workers.items()
                if worker.process is not None and worker.process.pid is not None}

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint, and stop accepting on each at once.  One that fails stops the
        start with one line naming it, as one hub's start does (C{SystemExit}).
        """
        super().privilegedStartService()
        if self.ports:
            return
        try:
            for description in self.listen:
                self.ports.append(self._open(description))
        except ListenError as e:
            self._close_ports()
            raise SystemExit(f"mission-control: {e}") from None

    def _open(self, description: str) -> Any:
        results: list[Any] = []
        try:
            endpoint = serverFromString(self.reactor, with_backlog(description))
            endpoint.listen(_NeverAccept()).addBoth(results.append)
        except Exception as e:
            raise ListenError(description, e) from e
        if not results:  # pragma: no cover (TCP and TLS listen at once)
            raise ListenError(description, RuntimeError("the endpoint did not listen at once"))
        if isinstance(results[0], Failure):
            raise ListenError(description, results[0].value or RuntimeError("listen failed"))
        port = results[0]
        port.stopReading()  # the workers accept; the supervisor only holds the socket
        # Closing the supervisor's descriptor must leave the socket to the workers that still
        # accept on it: no shutdown, which would stop it listening for all of them.  Twisted
        # does the same for a socket it adopted (and this flag is how it does it).
        port._shouldShutdown = False
        if socket_family(port.fileno()) not in (socket.AF_INET, socket.AF_INET6):
            port.stopListening()
            raise ListenError(description, ValueError("workers share TCP sockets only"))
        return port

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        self._stopping = None
        for description, port in zip(self.listen, self.ports):
            for url in urls_of(description, port):
                self.log.info("mission-control listening: {url} ({count} workers)",
                              url=url, count=self.count)
        for number in self.workers:
            self._start(number)

    def _start(self, number: int) -> None:
        worker = self.workers[number]
        worker.restart = None
        if not self.running:
            return
        output = WorkerOutput(number, self.log)
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        assignment = assignment_for(number, len(self.ports))
        for fd, port in zip(assignment.fds, self.ports):
            child_fds[fd] = port.fileno()
        worker.started = self.reactor.seconds()
        worker.process = output
        output.ended.addCallback(self._ended, worker, output)
        try:
            self.reactor.spawnProcess(
                output, self.command[0], self.command,
                env=worker_environment(self.environ, number, len(self.ports)),
                childFDs=child_fds)
        except OSError as e:
            self.log.error("cannot start worker {number}: {why}", number=number,
                           why=describe_error(e))
            output.end(Failure(e))
            return
        self.log.info("worker {number} started (pid {pid})", number=number, pid=output.pid)

    def _ended(self, _: None, worker: _Worker, output: WorkerOutput) -> None:
        if worker.process is output:
            worker.process = None
        if worker.kill is not None:
            if worker.kill.active():
                worker.kill.cancel()
            worker.kill = None
        assert output.reason is not None
        how = describe_exit(output.reason)
        if not self.running:
            self.log.info("worker {number} (pid {pid}) stopped: it {how}", number=worker.number,
                          pid=output.pid, how=how)
            return
        delay = worker.backoff.delay(self.reactor.seconds() - worker.started)
        self.log.warn("worker {number} (pid {pid}) {how}; starting it again in {delay:g} s",
                      number=worker.number, pid=output.pid, how=how, delay=delay)
        worker.restart = self.reactor.callLater(delay, self._start, worker.number)

    def stopService(self) -> defer.Deferred[None]:
        """
        Start no worker again; send SIGTERM to every worker, SIGKILL to one still running after
        C{kill_time}; fire once all of them have ended and the listeners are closed.
        """
        if self._stopping is not None:
            return self._stopping
        super().stopService()
        waiting = []
        for worker in self.workers.values():
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            output = worker.process
            if output is None:
                continue
            waiting.append(output.ended)
            if self._signal(output, "TERM"):
                worker.kill = self.reactor.callLater(self.kill_time, self._kill, worker, output)
        if waiting:
            self.log.info("stopping {count} workers", count=len(waiting))
        # Close the supervisor's own descriptors now: the socket closes once the last worker
        # has closed its copy, which each does first as it stops, and a client that connects
        # from then on is refused at once, as by one hub that stops.
        closed = self._close_ports()
        done = defer.gatherResults([*waiting, closed], consumeErrors=True)
        stopped = done.addBoth(lambda _: None)
        self._stopping = stopped
        return stopped

    def _kill(self, worker: _Worker, output: WorkerOutput) -> None:
        worker.kill = None
        self.log.warn("worker {number} (pid {pid}) did not stop in {seconds:g} s: killing it",
                      number=worker.number, pid=output.pid, seconds=self.kill_time)
        self._signal(output, "KILL")

    @staticmethod
    def _signal(output: WorkerOutput, name: str) -> bool:
        transport = output.transport
        if transport is None:
            return False
        try:
            transport.signalProcess(name)
        except error.ProcessExitedAlready:
            return False
        return True

    def _close_ports(self) -> defer.Deferred[None]:
        ports, self.ports = self.ports, []
        closing = [defer.maybeDeferred(port.stopListening) for port in ports]
        return defer.gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)


def supervisor_for(options: Mapping[str, Any], reactor: Any) -> Supervisor:
    """
    The supervisor of C{twistd mission-control --workers N}, from its parsed options: the hub
    options it was given (C{arguments}) run again in each worker, with its environment.
    """
    environ = getattr(options, "environ", os.environ)
    return Supervisor(options["listen"], options["workers"],
                      worker_command(sys.executable, options["arguments"]), environ, reactor)

# -*- test-case-name: tests.test_workers -*-
"""
C{--workers N}: N hub processes that share the hub's listeners, on one host.

With C{--workers} above 1 the process that twistd starts serves no client itself: it is the
L{supervisor.Supervisor}.  It listens on every C{--listen} endpoint, stops accepting on them at
once, and starts N workers, each a C{twistd -n mission-control} with the same options that
inherits the listening sockets and accepts on them (L{worker}); the kernel hands each new
connection to one of them.  A worker that dies is started again, with a backoff; SIGTERM to the
supervisor stops every worker the way one hub stops (WebSockets closed with 1001) and then exits.

The workers are separate hubs that share nothing in memory, so they only make one hub together
on a shared store (C{--store redis://...}): with SQLite each would own the database file, and
with memory each would have a history of its own.  L{refusal} says so before anything starts.

This module holds what both sides agree on and the option rules, with no Twisted in them:
  - L{refusal}: whether C{--workers}, C{--store} and C{--listen} go together;
  - L{WorkerAssignment}: which worker a process is and which inherited descriptors are its
    listeners, passed from the supervisor to each worker in L{WORKER_VARIABLE}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The C{--store} schemes of a store that several hub processes share.
SHARED_STORE_SCHEMES = ("redis://", "rediss://")
#: The largest C{--workers}: more processes than that on one host is a mistake, not a plan.
MAX_WORKERS = 256
#: The endpoint types whose socket a worker can inherit: TCP, over IPv4 or IPv6, with or without
#: TLS.
SHAREABLE_TYPES = ("tcp", "tcp6", "ssl")
#: The environment variable that makes a C{twistd mission-control} a worker: set by the
#: supervisor, never by hand.  Not an option (no C{--worker}), so C{--help} does not offer it.
WORKER_VARIABLE = "_MISSION_CONTROL_WORKER"
#: The first descriptor number of the inherited listeners in a worker: after stdin, stdout and
#: stderr, in the order of C{--listen}.
FIRST_INHERITED_FD = 3


def is_shared_store(store: str) -> bool:
    """Whether C{--store} names a store that several hub processes can share (Redis)."""
    return store.strip().lower().startswith(SHARED_STORE_SCHEMES)


def refusal(workers: int, store: str, listen: Sequence[str]) -> str | None:
    """
    Why C{--workers} cannot run with this C{--store} and these C{--listen} endpoints, as one usage
    line, or L{None} when they go together.

    One worker is the hub as always.  Several need a shared store (each would otherwise be a hub
    of its own that hears none of the others' events), and listeners whose socket a worker can
    inherit: not C{unix:}, whose socket file the first worker to stop would remove.
    """
    if workers <= 1:
        return None
    if not is_shared_store(store):
        return f"--workers above 1 needs a shared store (--store redis://...), not --store {store}"
    for description in listen:
        kind = description.split(":", 1)[0].strip().lower()
        if kind not in SHAREABLE_TYPES:
            return (f"--workers above 1 shares tcp:, tcp6: and ssl: listeners only, "
                    f"not --listen {description}")
    return None


@dataclass(frozen=True)
class WorkerAssignment:
    """
    What the supervisor tells one worker: its number (from 1) and the descriptors it inherited,
    one listening socket per C{--listen} endpoint, in their order.
    """

    number: int
    fds: tuple[int, ...]

    def encode(self) -> str:
        """The value of L{WORKER_VARIABLE} that L{assignment_from} reads back."""
        return json.dumps({"number": self.number, "fds": list(self.fds)}, separators=(",", ":"))


def assignment_for(number: int, listeners: int) -> WorkerAssignment:
    """Worker C{number}'s assignment with C{listeners} sockets, at descriptors 3, 4, ..."""
    return WorkerAssignment(number, tuple(range(FIRST_INHERITED_FD,
                                                FIRST_INHERITED_FD + listeners)))


def assignment_from(environ: Mapping[str, str], listeners: int) -> WorkerAssignment | None:
    """
    This process's assignment, when a supervisor started it (L{WORKER_VARIABLE} is set), else
    L{None}.

    @param listeners: how many C{--listen} endpoints this process was given: a worker inherits a
        socket for each, or something is wrong.
    @raise ValueError: the variable is set but does not say what a supervisor would.
    """
    text = environ.get(WORKER_VARIABLE)
    if not text:
        return None
    wrong = ValueError(f"{WORKER_VARIABLE} is set only by the supervisor of --workers; "
                       f"unset it to run one hub")
    try:
        value = json.loads(text)
        number, fds = value["number"], value["fds"]
    except (ValueError, TypeError, KeyError):
        raise wrong from None
    if (type(number) is not int or number < 1 or not isinstance(fds, list)
            or any(type(fd) is not int or fd < FIRST_INHERITED_FD for fd in fds)):
        raise wrong
    if len(fds) != listeners:
        raise ValueError(f"{WORKER_VARIABLE} names {len(fds)} inherited listeners for "
                         f"{listeners} --listen endpoints")
    return WorkerAssignment(number, tuple(fds))


__all__ = [
    "FIRST_INHERITED_FD",
    "MAX_WORKERS",
    "SHARED_STORE_SCHEMES",
    "WORKER_VARIABLE",
    "WorkerAssignment",
    "assignment_for",
    "assignment_from",
    "is_shared_store",
    "refusal",
]

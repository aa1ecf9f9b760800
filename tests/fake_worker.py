"""
A stand-in for a hub worker, started by the L{Supervisor} in tests/test_workers_supervisor.py:
it reads its assignment as a worker does, accepts on the listening sockets it inherited, and
answers each connection with one line, C{<pid> <worker number>}, then closes it.

It logs one event through the worker's own log observer (JSON on stdout) and one plain line on
stderr as it starts, so that the tests see what the supervisor makes of both.  SIGTERM ends it
with status 0, unless C{FAKE_WORKER_IGNORES_SIGTERM} is set: then only SIGKILL does.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

from twisted.logger import Logger

from mission_control.workers import WORKER_VARIABLE, assignment_from
from mission_control.workers.worker import log_observer


def main() -> None:
    listeners = int(os.environ["FAKE_WORKER_LISTENERS"])
    assignment = assignment_from(os.environ, listeners)
    assert assignment is not None, f"{WORKER_VARIABLE} is not set"
    if os.environ.get("FAKE_WORKER_IGNORES_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Logger(namespace="fake", observer=log_observer()).warn(
        "fake worker {number} ready", number=assignment.number)
    print(f"plain line from fake worker {assignment.number}", file=sys.stderr, flush=True)

    selector = selectors.DefaultSelector()
    for fd in assignment.fds:
        listener = socket.socket(fileno=fd)
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ)
    answer = f"{os.getpid()} {assignment.number}\n".encode()
    while True:
        for key, _ in selector.select():
            try:
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
            except BlockingIOError:
                continue  # another worker took it
            with conn:
                conn.setblocking(True)
                conn.sendall(answer)


if __name__ == "__main__":
    main()

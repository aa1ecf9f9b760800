# -*- test-case-name: tests.test_cli_watch -*-
"""
One WebSocket connection of C{watch}, and what its end means.

L{WatchProtocol} is Autobahn's client protocol, handing frames and the connection's end to its
watcher and remembering what Autobahn does not report: the HTTP status of a refused handshake
and the transport's reason for the end (a TLS failure, say).  L{judge_ending} decides, from how
a connection ended, whether the watch reconnects or ends with exit code 1, and what it says on
stderr; it is pure, so each of those decisions is tested without a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from mission_control.cli.credentials import Credentials
from mission_control.cli.errors import certificate_problem, printable
from mission_control.cli.urls import display_url

#: Close codes that the hub gives a client for its own behaviour (4008 too slow to read, 4029 too
#: many messages): reconnecting is right, but not at once, so the backoff keeps growing across
#: the connections that end this way instead of starting again at each handshake.
BACKOFF_CLOSE_CODES = frozenset({4008, 4029})


class WatchFactory(WebSocketClientFactory):
    """Autobahn's client factory, for one connection of C{watcher} (a L{Watcher})."""

    watcher: Any = None


class WatchProtocol(WebSocketClientProtocol):
    """
    One connection of a watcher (C{factory.watcher}): hands frames and the connection's end to
    it, and remembers the HTTP status when the hub refuses the handshake (Autobahn only says
    "upgrade failed").
    """

    refusal: tuple[int, str] | None = None
    opened = False
    #: Why the connection ended, as the transport said (a TLS failure, say).
    lost_reason: Failure | None = None

    factory: WatchFactory

    @property
    def watcher(self) -> Any:
        return self.factory.watcher

    def failHandshake(self, reason: str) -> None:
        self.refusal = handshake_status(getattr(self, "http_status_line", None))
        super().failHandshake(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)

    def onOpen(self) -> None:
        self.opened = True
        self.watcher.connection_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.watcher.frame_received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.watcher.connection_closed(self, code, reason)


WatchFactory.protocol = WatchProtocol


def handshake_status(status_line: str | None) -> tuple[int, str] | None:
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


def refusal_is_final(status: int) -> bool:
    """
    Whether a handshake refusal will not change by asking again: the token (401), the Origin (403),
    the path (404), a URL that is no WebSocket at all (200, 3xx) ...  408, 429 and every 5xx are
    worth retrying.
    """
    return status < 500 and status not in (408, 429)


@dataclass(frozen=True)
class Ending:
    """
    What to do once a connection has ended: say C{message} (without the command's prefix) and
    either end the watch with exit code 1 (C{final}) or reconnect; C{keep_backoff} when the
    backoff keeps growing from where it was before this connection opened.
    """

    message: str
    final: bool = False
    keep_backoff: bool = False


def judge_ending(connection: Any, code: int | None, reason: str | None,
                 credentials: Credentials, url: str, cafile: str | None) -> Ending:
    """
    How the watch goes on after C{connection} (a L{WatchProtocol}) ended with close C{code} and
    C{reason}.  Final: a refusal that asking again cannot change (L{refusal_is_final}), a
    certificate that cannot be verified, 4003 (token no longer accepted), 4009 (closed by an
    administrator), 4001 (token expired) for a token given rather than minted.  Anything else is
    retried.
    """
    if connection.refusal is not None:
        status, phrase = connection.refusal
        if refusal_is_final(status):
            hint = credentials.refusal_hint() if status == 401 else ""
            return Ending(f"the hub refused the connection: {status} {phrase}{hint}", final=True)
        return Ending(f"the hub refused the connection: {status} {phrase}")
    problem = None if connection.opened else certificate_problem(
        connection.lost_reason, urlsplit(url).hostname, cafile)
    if problem is not None:
        return Ending(f"cannot connect to {display_url(url)}: {problem}", final=True)
    if code == 4003:
        return Ending("the hub no longer accepts this token (4003); not reconnecting", final=True)
    if code == 4009:
        # An administrator meant this connection to end: coming back on its own would undo it.
        return Ending("an administrator closed the connection (4009); not reconnecting",
                      final=True)
    if code == 4001 and not credentials.mints:
        return Ending("the token given has expired and the hub closed the connection (4001); "
                      "not reconnecting with it: pass a fresh --token", final=True)
    if connection.opened:
        detail = f"{code} {printable((reason or '')[:120])}".strip()
        return Ending(f"connection to {display_url(url)} closed ({detail})",
                      keep_backoff=code in BACKOFF_CLOSE_CODES)
    detail = printable((connection.wasNotCleanReason or "closed")[:160])
    return Ending(f"WebSocket handshake with {display_url(url)} failed: {detail}")

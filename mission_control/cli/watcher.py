# -*- test-case-name: tests.test_cli_watch -*-
"""
The L{Watcher}: follows a hub's event stream on an injected reactor, one L{WatchProtocol}
connection at a time, reconnecting with backoff and resuming from its L{StreamPosition}, until
it is stopped or refused for good.  What it prints is the L{FramePrinter}'s business, and how a
connection's end is judged is L{judge_ending}'s; this is the reactor-side loop around them.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, TextIO
from urllib.parse import urlsplit

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.ssl import Certificate
from twisted.python.failure import Failure

from mission_control import events
from mission_control.cli import frames
from mission_control.cli.connect_options import USER_AGENT
from mission_control.cli.connection import WatchFactory, WatchProtocol, judge_ending
from mission_control.cli.credentials import Credentials
from mission_control.cli.errors import describe_error, printable
from mission_control.cli.options import PROGRAM
from mission_control.cli.position import StreamPosition
from mission_control.cli.render import FramePrinter, clock_time
from mission_control.cli.tls import hub_endpoint
from mission_control.cli.urls import display_url, resume_url


def default_retry_policy() -> Callable[[int], float]:
    """1 s, 2 s, 4 s, ... up to 30 s between attempts, each plus up to 1 s of random jitter."""
    return backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0, jitter=random.random)


class Watcher:
    """
    Follows a hub's event stream until told to stop or refused for good, without losing events
    across reconnects.

    A small reconnect loop on the injected reactor: connect; print frames; when the connection
    fails or ends, wait C{retry_policy(n)} seconds (n counting failures since the last successful
    handshake, from 0; closes for the client's own behaviour, L{BACKOFF_CLOSE_CODES}, do not reset
    it) and connect again, with a freshly minted token when it mints its own.  Autobahn's own
    client does the WebSocket; the token goes in C{Authorization: Bearer}.

    Resume: the watcher keeps its L{StreamPosition} and reconnects with C{since} and C{epoch}, so
    the hub replays what was published meanwhile (or says the history is lost and sends a fresh
    snapshot).  A named watcher (C{client}) also connects with C{client=NAME}, so its first
    connection resumes from the position the hub kept for it, and acknowledges its position every
    C{ack_interval} seconds when it moved, and once more before a clean stop.

    Tokens: on C{auth:expiring} a watcher that mints its tokens sends a fresh one over the
    connection; with a fixed token it warns on stderr.  A close with 4001 (token expired) is
    retried with a fresh token, or ends the watch with a fixed one.

    L{run} fires with the exit code: 1 when the hub refuses the handshake with a final status
    (L{refusal_is_final}: 401, 403, 404, ...), when its TLS certificate cannot be verified (not
    trusted, or issued for another name: the same next time), closes with 4003 (token no longer
    accepted) or 4009 (closed by an administrator), or with 4001 when the token is a fixed one;
    0 after L{stop}.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        credentials: Credentials,
        printer: FramePrinter,
        err: TextIO,
        trust_root: Certificate | None = None,
        retry_policy: Callable[[int], float] | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        endpoint: Any = None,
        client: str | None = None,
        ack_interval: float = 1.0,
        cafile: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.url = url
        self.credentials = credentials
        self.printer = printer
        self.err = err
        self.trust_root = trust_root
        self.retry_policy = retry_policy or default_retry_policy()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.handshake_timeout = handshake_timeout
        self.client = client
        self.ack_interval = ack_interval
        self.cafile = cafile
        self.position = StreamPosition()
        self._endpoint = endpoint
        self.failures = 0
        self._failures_at_open = 0
        self._stopping = False
        self._result: int | None = None
        self._waiting: list[defer.Deferred] = []
        self._connecting: defer.Deferred | None = None
        self._retry_call: Any = None
        self._protocol: WatchProtocol | None = None
        self._ack_loop: task.LoopingCall | None = None
        self._acked: tuple[str | None, int] = (None, 0)

    # Control

    def run(self) -> defer.Deferred:
        """Start following; fires with the exit code."""
        self._connect()
        return self.finished()

    def finished(self) -> defer.Deferred:
        """A Deferred that fires with the exit code once the watcher has ended."""
        if self._result is not None:
            return defer.succeed(self._result)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def stop(self) -> defer.Deferred:
        """
        Acknowledge what was printed (a named watcher), close the connection (1000), or stop
        waiting to reconnect; fires with 0 when done.
        """
        if self._result is None and not self._stopping:
            self._stopping = True
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
                self._finish(0)
            elif self._connecting is not None:
                self._connecting.cancel()
            elif self._protocol is not None:
                self._close(self._protocol)
            else:
                self._finish(0)
        return self.finished()

    # The loop

    def connection_url(self) -> str:
        """The URL of the next connection: the one given, plus where to resume and who we are."""
        return resume_url(self.url, self.position.seq, self.position.epoch, self.client)

    def _connect(self) -> None:
        self._retry_call = None
        factory = WatchFactory(
            self.connection_url(),
            headers={"Authorization": f"Bearer {self.credentials.token(self.reactor.seconds())}"},
            useragent=USER_AGENT,
            reactor=self.reactor,
        )
        factory.watcher = self
        factory.setProtocolOptions(
            openHandshakeTimeout=self.handshake_timeout,
            closeHandshakeTimeout=2,
            autoPingInterval=self.ping_interval,
            autoPingTimeout=self.ping_timeout,
            # A hub's frames are small; this bounds what a misbehaving server can make us buffer.
            maxFramePayloadSize=16 * 1024 * 1024,
            maxMessagePayloadSize=16 * 1024 * 1024,
        )
        d = self._make_endpoint().connect(factory)
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed)

    def _make_endpoint(self) -> Any:
        """The endpoint to connect to: an C{IStreamClientEndpoint}, injected or the hub's."""
        if self._endpoint is not None:
            return self._endpoint
        parts = urlsplit(self.url)
        return hub_endpoint(self.reactor, parts.scheme, parts.hostname or "", parts.port,
                            self.trust_root, self.handshake_timeout)

    def _connected(self, protocol: WatchProtocol) -> None:
        self._connecting = None
        self._protocol = protocol

    def _connect_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self._stopping:
            self._finish(0)
            return
        self._retry(f"cannot connect to {display_url(self.url)}: {describe_error(reason)}")

    def connection_opened(self, protocol: WatchProtocol) -> None:
        self._failures_at_open, self.failures = self.failures, 0
        self.position.connection_started()
        if self.client is not None:
            self._ack_loop = task.LoopingCall(self._ack, protocol)
            self._ack_loop.clock = self.reactor
            self._ack_loop.start(self.ack_interval, now=False)

    def frame_received(self, protocol: WatchProtocol, data: bytes, is_binary: bool) -> None:
        """Print the frame first, then move the position: nothing is acked before it is shown."""
        frame = self.printer.frame_received(data, is_binary)
        if frame is None:
            return
        self.position.observe(frame)
        if frame.get("type") == "auth:expiring":
            self._token_expiring(protocol, frames.payload(frame))

    def connection_closed(self, protocol: WatchProtocol, code: int | None,
                          reason: str | None) -> None:
        if protocol is self._protocol:
            self._protocol = None
        self._stop_acking()
        self.printer.connection_lost()
        if self._stopping:
            self._finish(0)
            return
        ending = judge_ending(protocol, code, reason, self.credentials, self.url, self.cafile)
        if ending.final:
            self._say(f"{PROGRAM} watch: {ending.message}")
            self._finish(1)
            return
        if ending.keep_backoff:
            self.failures = self._failures_at_open
        self._retry(ending.message)

    def _retry(self, why: str) -> None:
        delay = max(0.0, float(self.retry_policy(self.failures)))
        self.failures += 1
        self._say(f"{PROGRAM} watch: {why}; reconnecting in {delay:.1f} s "
                  f"(attempt {self.failures})")
        self._retry_call = self.reactor.callLater(delay, self._connect)

    def _close(self, protocol: WatchProtocol) -> None:
        # Autobahn's close handshake timeout drops a hub that does not answer the close.
        if protocol.state == protocol.STATE_OPEN:
            self._ack(protocol)
            protocol.sendClose(1000)
        else:
            protocol.dropConnection(abort=True)

    def _finish(self, code: int) -> None:
        if self._result is not None:
            return
        self._stop_acking()
        self._result = code
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(code)

    # Frames to the hub

    def _ack(self, protocol: WatchProtocol) -> None:
        """
        Acknowledge the position, when it moved on this connection since the last ack: the hub
        keeps it for this user and client name, and the next watch of that name starts after it.
        """
        position = self.position
        if self.client is None or not position.current or position.seq is None:
            return
        acked_epoch, acked_seq = self._acked
        if position.epoch == acked_epoch and position.seq <= acked_seq:
            return
        if position.seq == 0:
            return  # nothing to acknowledge yet
        if self._send(protocol, {"type": "ack", "seq": position.seq}):
            self._acked = (position.epoch, position.seq)

    def _stop_acking(self) -> None:
        loop, self._ack_loop = self._ack_loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _token_expiring(self, protocol: WatchProtocol, warning: Mapping) -> None:
        """Renew a minted token over the connection; with a fixed one, say when it will end."""
        if self.credentials.mints:
            self._send(protocol, {"type": "auth",
                                  "token": self.credentials.token(self.reactor.seconds())})
            return
        left = warning.get("secondsLeft")
        when = clock_time(warning.get("expiresAt"), self.printer.tz)
        self._say(f"{PROGRAM} watch: the token given expires in {printable(str(left))} s (at {when}); "
                  f"the hub will close the connection then and watch will end: pass a token "
                  f"that lives longer")

    def _send(self, protocol: WatchProtocol, frame: Mapping) -> bool:
        """Send one frame if the connection is open; return whether it was sent."""
        if protocol.state != protocol.STATE_OPEN:
            return False
        protocol.sendMessage(events.encode_json(frame), isBinary=False)
        return True

    def _say(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

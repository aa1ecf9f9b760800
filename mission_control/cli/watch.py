# -*- test-case-name: tests.test_cli -*-
"""
C{mission-control watch}: its options; the printer that turns the hub's frames into lines
(L{describe_frame}, L{FramePrinter}); and the L{Watcher}, which follows the event stream on an
injected reactor, one L{WatchProtocol} connection at a time, and resumes it across reconnects
from its L{StreamPosition}.  L{watch_main} runs it for L{task.react}.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from datetime import datetime, tzinfo
from typing import Any, Callable, Mapping, TextIO
from urllib.parse import urlsplit

from OpenSSL.crypto import Error as OpenSSLError
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python import usage
from twisted.python.failure import Failure

from mission_control import auth, events
from mission_control.ids import ID_RULE
from mission_control.cli.common import (
    DEFAULT_WS_URL,
    ENV_PREFIX,
    LOCAL_TOKEN_SUBJECT,
    LOCAL_TOKEN_TTL,
    PROGRAM,
    USER_AGENT,
    Credentials,
    _read_cafile,
    _ServerOptions,
    _token_help,
    certificate_problem,
    check_subject,
    describe_error,
    display_url,
    printable,
    resume_url,
    websocket_url,
)


# mission-control watch


class WatchOptions(_ServerOptions):
    synopsis = ("[--url ws://127.0.0.1:8080/ws] [--token JWT | --sub ID] [--cafile PEM] "
                "[--client NAME] [--json] [--verbose]")
    longdesc = (
        "Follow the hub's event stream: one line per event, or the raw JSON frames with --json. "
        "Reconnects with exponential backoff when the hub goes away, and resumes where it left "
        "off: the events published meanwhile are printed, then a 'resumed' line; when the hub no "
        "longer has them, a 'history lost' line and a fresh snapshot. Stops with exit code 1 when "
        "the hub refuses the token (401) or the origin (403), with 0 on Ctrl-C. Without --token, "
        f"a {LOCAL_TOKEN_TTL // 60}-minute viewer token is minted from the local development "
        "secret for each connection, and renewed over the connection before it expires "
        "(--data-dir, --jwt-secret-file). With --client NAME the hub keeps how far this watcher "
        "has printed, and the next watch of the same user and NAME starts there: at-least-once "
        "delivery across restarts of watch itself (a clean stop acknowledges everything printed; "
        "after a crash, up to a second's worth of events may be printed again)."
    )
    optFlags = [
        ["json", None, "Print every frame as received, one JSON object per line."],
        ["verbose", "v", "Also print heartbeats and the hub's replies to acks and token renewals."],
    ]
    optParameters = [
        ["url", None, None,
         f"The hub's WebSocket URL; http:// URLs are turned into ws:// ones. "
         f"[env {ENV_PREFIX}URL, default {DEFAULT_WS_URL}]"],
        ["token", None, None, _token_help("viewer")],
        ["client", None, None,
         f"Name this watcher ({ID_RULE}): it acknowledges what it printed, "
         "and a later watch with the same user and name resumes after it (at-least-once "
         "delivery across restarts of watch)."],
        ["sub", None, None,
         f"The user the minted token is for (without --token), so that two watches are two "
         f"users, as in presence lines. [{LOCAL_TOKEN_SUBJECT}]"],
    ]
    local_role = "viewer"
    default_url = DEFAULT_WS_URL

    def normalize_url(self, value: str) -> str:
        return websocket_url(value)

    def load_tls(self, path: str, url: str) -> object:
        data = _read_cafile(path)
        try:
            authority = Certificate.loadPEM(data)
        except (OpenSSLError, ValueError):
            raise usage.UsageError(f"--cafile {path} holds no PEM certificate") from None
        return optionsForClientTLS(urlsplit(url).hostname, trustRoot=authority)

    def postOptions(self) -> None:
        if self["client"] is not None and not auth.is_valid_id(self["client"]):
            raise usage.UsageError(f"--client must be {ID_RULE}")
        self.resolve_connection()
        if self["sub"] is not None:
            if not self["credentials"].mints:
                raise usage.UsageError("--sub is for the token watch mints; a token given with "
                                       "--token (or MISSION_CONTROL_TOKEN) names its own user")
            check_subject(self["sub"], self.local_role)
            self["credentials"] = dataclasses.replace(self["credentials"], sub=self["sub"])


def _quoted(text: object) -> str:
    value = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{printable(value)}"'


def _field(value: object) -> str:
    return printable(str(value))


def clock_time(ts: object, tz: tzinfo | None = None) -> str:
    """C{HH:MM:SS} of a frame's C{ts} in C{tz} (local time by default)."""
    try:
        moment = datetime.fromisoformat(str(ts))
        if moment.tzinfo is None:
            raise ValueError("no time zone")
        return moment.astimezone(tz).strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def _payload(frame: Mapping) -> Mapping:
    """A frame's payload, or an empty one when the hub sent something else there."""
    payload = frame.get("payload")
    return payload if isinstance(payload, Mapping) else {}


def _is_seq(value: object) -> bool:
    """Whether C{value} can be a seq: a whole number, not negative (and not C{True})."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 18


def describe_frame(frame: Mapping, tz: tzinfo | None = None) -> str:
    """
    One readable line for a server frame (L{FramePrinter} joins C{welcome} and C{snapshot}):

        16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=12
        16:04:06 session:activity  sess-1  tool_call  agent=agent-atlas  "web.search"  seq=13
        16:04:07 resumed: replayed seq 41-57
        16:04:07 history lost (epoch): showing a fresh snapshot
        16:04:08 presence:join  bob  "Bob Stone"  (viewer)  connections=1

    Every value from the frame is shown with control characters escaped: a frame cannot move the
    cursor or recolour the terminal.
    """
    kind = frame.get("type")
    payload = _payload(frame)
    when = clock_time(frame.get("ts"), tz)
    if kind == "resumed":
        return f"{when} {describe_resume(payload)}"
    if kind == "snapshot":
        return f"{when} snapshot: {_state_summary(payload)}"
    fields: list[str] = [_field(kind)]
    if kind == events.AGENT_STATUS:
        fields += [_field(payload.get("agentId")), _field(payload.get("status"))]
        if payload.get("message"):
            fields.append(_quoted(payload["message"]))
    elif kind == events.SESSION_ACTIVITY:
        fields += [_field(payload.get("sessionId")), _field(payload.get("activity"))]
        if payload.get("agentId"):
            fields.append(f"agent={_field(payload['agentId'])}")
        if payload.get("summary"):
            fields.append(_quoted(payload["summary"]))
    elif kind in ("presence:join", "presence:leave"):
        fields.append(_field(payload.get("userId")))
        if payload.get("name"):
            fields.append(_quoted(payload["name"]))
        fields += [f"({_field(payload.get('role'))})",
                   f"connections={_field(payload.get('connections'))}"]
    elif kind == "heartbeat":
        fields.append(f"lastSeq={_field(payload.get('lastSeq'))}")
    elif kind == "error":
        fields += [_field(payload.get("code")), _quoted(payload.get("message", ""))]
    elif payload:
        text = events.encode_json(payload).decode("utf-8")
        fields.append(printable(text if len(text) <= 200 else text[:197] + "..."))
    if "seq" in frame:
        fields.append(f"seq={_field(frame['seq'])}")
    return f"{when} " + "  ".join(fields)


def describe_resume(payload: Mapping) -> str:
    """
    What a C{resumed} frame means for the reader: C{resumed: replayed seq 41-57} (the events
    printed just before it), C{resumed: nothing missed}, or C{history lost (REASON): showing a
    fresh snapshot} when the hub could not replay (another epoch, events already dropped, a
    position it has never reached) and the snapshot after it starts the picture afresh.
    """
    if payload.get("recovered") is not True:
        return f"history lost ({_field(payload.get('reason'))}): showing a fresh snapshot"
    first, last = payload.get("from"), payload.get("to")
    if _is_seq(first) and _is_seq(last) and first > last:
        return "resumed: nothing missed"
    if first == last:
        return f"resumed: replayed seq {_field(first)}"
    return f"resumed: replayed seq {_field(first)}-{_field(last)}"


def _state_summary(state: Mapping) -> str:
    """C{12 agents, 3 sessions, lastSeq=40} from a C{snapshot} payload."""
    agents, sessions = state.get("agents"), state.get("sessions")
    return (f"{len(agents) if isinstance(agents, list) else 0} agents, "
            f"{len(sessions) if isinstance(sessions, list) else 0} sessions, "
            f"lastSeq={_field(state.get('lastSeq'))}")


def describe_connected(welcome: Mapping, snapshot: Mapping | None,
                       tz: tzinfo | None = None) -> str:
    """
    C{16:04:05 connected as alice (viewer), 12 agents, 3 sessions, lastSeq=40}; without a
    snapshot (a connection that resumes) C{16:04:05 connected as alice (viewer), lastSeq=57},
    the hub's last seq at that moment.
    """
    hello = _payload(welcome)
    user = hello.get("user") if isinstance(hello.get("user"), Mapping) else {}
    who = f"connected as {_field(user.get('id'))} ({_field(user.get('role'))})"
    if snapshot is not None:
        state = dict(_payload(snapshot))
        state.setdefault("lastSeq", hello.get("lastSeq"))
        summary = _state_summary(state)
    else:
        summary = f"lastSeq={_field(hello.get('lastSeq'))}"
    return f"{clock_time(welcome.get('ts'), tz)} {who}, {summary}"


class FramePrinter:
    """
    Writes server frames to C{out}, one line each, flushed at once (C{watch | grep} must not wait
    for a buffer to fill).

    The C{welcome} frame is held until the next frame: with the C{snapshot} of a fresh start it
    becomes one C{connected as ...} line; before anything else (the replayed events of a resume)
    it is written alone, first, and the frame after it at once.  A C{resumed} frame that says the
    history is lost keeps the welcome for the snapshot that follows it.

    Heartbeats and the hub's answers to the watcher's own frames (C{ack}, C{auth:ok}, C{pong})
    and its token warnings (C{auth:expiring}, which the L{Watcher} acts on) are left out unless
    C{verbose}.  With C{json_mode} each frame is written as received, heartbeats only if
    C{verbose}.
    """

    #: Frame types written only when verbose.
    quiet_types = frozenset({"heartbeat", "ack", "auth:ok", "auth:expiring", "pong"})

    def __init__(self, out: TextIO, err: TextIO, json_mode: bool = False, verbose: bool = False,
                 tz: tzinfo | None = None) -> None:
        self.out = out
        self.err = err
        self.json_mode = json_mode
        self.verbose = verbose
        self.tz = tz
        self._welcome: Mapping | None = None

    def frame_received(self, data: bytes, is_binary: bool) -> Mapping | None:
        """Write what C{data} calls for; return the decoded frame (C{None} if it was not one)."""
        frame = self._decode(data, is_binary)
        if frame is None:
            return None
        if self.json_mode:
            if frame.get("type") != "heartbeat" or self.verbose:
                self._write_raw(data, frame)
        elif frame.get("type") not in self.quiet_types or self.verbose:
            self._write_line(frame)
        return frame

    def connection_lost(self) -> None:
        """A welcome still held is shown: it was the whole of that connection."""
        self._flush_welcome()

    def _write_raw(self, data: bytes, frame: Mapping) -> None:
        text = data.decode("utf-8")
        if "\n" in text or "\r" in text:
            text = events.encode_json(frame).decode("utf-8")
        self._line(text)

    def _write_line(self, frame: Mapping) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            self._flush_welcome()
            self._welcome = frame
            return
        if kind == "snapshot" and self._welcome is not None:
            welcome, self._welcome = self._welcome, None
            self._line(describe_connected(welcome, frame, self.tz))
            return
        if kind == "resumed" and self._welcome is not None \
                and _payload(frame).get("recovered") is not True:
            self._line(describe_frame(frame, self.tz))  # the snapshot comes next
            return
        self._flush_welcome()
        self._line(describe_frame(frame, self.tz))

    def _flush_welcome(self) -> None:
        if self._welcome is not None:
            welcome, self._welcome = self._welcome, None
            self._line(describe_connected(welcome, None, self.tz))

    def _decode(self, data: bytes, is_binary: bool) -> Mapping | None:
        try:
            if is_binary:
                raise ValueError("binary")
            frame = json.loads(data.decode("utf-8"))
            if not isinstance(frame, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError):
            self.err.write(f"{PROGRAM} watch: skipped a frame that is not a JSON object "
                           f"({len(data)} bytes)\n")
            self.err.flush()
            return None
        return frame

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _handshake_status(status_line: str | None) -> tuple[int, str] | None:
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


class WatchProtocol(WebSocketClientProtocol):
    """
    One connection of a L{Watcher}: hands frames and the connection's end to it, and remembers
    the HTTP status when the hub refuses the handshake (Autobahn only says "upgrade failed").
    """

    refusal: tuple[int, str] | None = None
    opened = False
    #: Why the connection ended, as the transport said (a TLS failure, say).
    lost_reason: Failure | None = None

    def failHandshake(self, reason: str) -> None:
        self.refusal = _handshake_status(getattr(self, "http_status_line", None))
        super().failHandshake(reason)

    def connectionLost(self, reason: Failure) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)

    def onOpen(self) -> None:
        self.opened = True
        self.factory.watcher.connection_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.watcher.frame_received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.watcher.connection_closed(self, code, reason)


def refusal_is_final(status: int) -> bool:
    """
    Whether a handshake refusal will not change by asking again: the token (401), the Origin (403),
    the path (404), a URL that is no WebSocket at all (200, 3xx) ...  408, 429 and every 5xx are
    worth retrying.
    """
    return status < 500 and status not in (408, 429)


def default_retry_policy() -> Callable[[int], float]:
    """1 s, 2 s, 4 s, ... up to 30 s between attempts, each plus up to 1 s of random jitter."""
    return backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0, jitter=random.random)


#: Close codes that the hub gives a client for its own behaviour (4008 too slow to read, 4029 too
#: many messages): reconnecting is right, but not at once, so the backoff keeps growing across
#: the connections that end this way instead of starting again at each handshake.
BACKOFF_CLOSE_CODES = frozenset({4008, 4029})

#: What an epoch may look like: what the hub accepts in the C{epoch} query parameter.  Anything
#: else from a hub is not used, rather than sent back and refused with a (final) 400.
_EPOCH_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")


def _is_epoch(value: object) -> bool:
    return isinstance(value, str) and _EPOCH_RE.match(value) is not None


class StreamPosition:
    """
    How far a watcher has followed the hub's history: C{seq}, the last event it has been given,
    and C{epoch}, the history that seq belongs to.  They are the C{since} and C{epoch} of its next
    connection, and what a named watcher acknowledges.

    The two move together, and only on frames that show the watcher has everything up to the
    seq: an event, a C{snapshot}, a C{heartbeat} (the hub sends those only to connections that
    are caught up), a C{resumed}.  The C{welcome} moves nothing: its C{lastSeq} is the hub's, which
    a resuming connection has yet to be sent, and its epoch may be a new one that the C{resumed}
    frame after it is about to call lost.  Taking either from it would skip events, or miss the
    news that history was lost, whenever the connection dropped right after it.

    @ivar current: whether it moved on the current connection, so that C{seq} is one the hub at
        the other end knows (and an ack of it is meaningful there).
    """

    def __init__(self) -> None:
        self.seq: int | None = None
        self.epoch: str | None = None
        self.current = False
        self._connection_epoch: str | None = None

    def connection_started(self) -> None:
        """A new connection: nothing it says is known yet."""
        self._connection_epoch = None
        self.current = False

    def observe(self, frame: Mapping) -> bool:
        """Move to where C{frame} shows the watcher is, if it shows that; return whether it did."""
        kind, payload = frame.get("type"), _payload(frame)
        if kind == "welcome":
            announced = payload.get("epoch")
            self._connection_epoch = announced if _is_epoch(announced) else None
            return False
        epoch: object = self._connection_epoch
        if kind == "resumed":
            epoch = payload.get("epoch", epoch)
            recovered = payload.get("recovered") is True
            seq = payload.get("to") if recovered else payload.get("lastSeq")
        elif kind in ("snapshot", "heartbeat"):
            seq = payload.get("lastSeq")
        else:
            seq = frame.get("seq")
        if not (_is_seq(seq) and _is_epoch(epoch)):
            return False
        self.seq, self.epoch, self.current = seq, epoch, True
        return True


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
        tls: object | None = None,
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
        self.tls = tls
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
        factory = WebSocketClientFactory(
            self.connection_url(),
            headers={"Authorization": f"Bearer {self.credentials.token(self.reactor.seconds())}"},
            useragent=USER_AGENT,
            reactor=self.reactor,
        )
        factory.protocol = WatchProtocol
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
        if self._endpoint is not None:
            return self._endpoint
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        endpoint = HostnameEndpoint(self.reactor, parts.hostname, port,
                                    timeout=self.handshake_timeout)
        if parts.scheme == "wss":
            tls = self.tls or optionsForClientTLS(parts.hostname)
            endpoint = wrapClientTLS(tls, endpoint)
        return endpoint

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
            self._token_expiring(protocol, _payload(frame))

    def connection_closed(self, protocol: WatchProtocol, code: int | None,
                          reason: str | None) -> None:
        if protocol is self._protocol:
            self._protocol = None
        self._stop_acking()
        self.printer.connection_lost()
        if self._stopping:
            self._finish(0)
            return
        prefix = f"{PROGRAM} watch"
        if protocol.refusal is not None:
            status, phrase = protocol.refusal
            if refusal_is_final(status):
                hint = self.credentials.refusal_hint() if status == 401 else ""
                self._say(f"{prefix}: the hub refused the connection: {status} {phrase}{hint}")
                self._finish(1)
                return
            self._retry(f"the hub refused the connection: {status} {phrase}")
            return
        problem = None if protocol.opened else certificate_problem(
            protocol.lost_reason, urlsplit(self.url).hostname, self.cafile)
        if problem is not None:
            self._say(f"{prefix}: cannot connect to {display_url(self.url)}: {problem}")
            self._finish(1)
            return
        if code == 4003:
            self._say(f"{prefix}: the hub no longer accepts this token (4003); not reconnecting")
            self._finish(1)
            return
        if code == 4009:
            # An administrator meant this connection to end: coming back on its own would undo it.
            self._say(f"{prefix}: an administrator closed the connection (4009); not reconnecting")
            self._finish(1)
            return
        if code == 4001 and not self.credentials.mints:
            self._say(f"{prefix}: the token given has expired and the hub closed the connection "
                      f"(4001); not reconnecting with it: pass a fresh --token")
            self._finish(1)
            return
        if protocol.opened:
            if code in BACKOFF_CLOSE_CODES:
                self.failures = self._failures_at_open
            detail = f"{code} {printable((reason or '')[:120])}".strip()
            self._retry(f"connection to {display_url(self.url)} closed ({detail})")
        else:
            detail = printable((protocol.wasNotCleanReason or "closed")[:160])
            self._retry(f"WebSocket handshake with {display_url(self.url)} failed: {detail}")

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
        self._say(f"{PROGRAM} watch: the token given expires in {_field(left)} s (at {when}); "
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


def build_watcher(reactor: Any, options: WatchOptions, stdout: TextIO, stderr: TextIO,
                  **settings: Any) -> Watcher:
    """A L{Watcher} for parsed C{watch} options; C{settings} go to its constructor (tests)."""
    tz = settings.pop("tz", None)
    printer = FramePrinter(stdout, stderr, json_mode=bool(options["json"]),
                           verbose=bool(options["verbose"]), tz=tz)
    return Watcher(reactor, options["url"], options["credentials"], printer, stderr,
                   tls=options["tls"], client=options["client"], cafile=options["cafile"],
                   **settings)


def watch_main(reactor: Any, options: WatchOptions, stdout: TextIO,
               stderr: TextIO) -> defer.Deferred:
    """For L{task.react}: watch until refused or until the reactor is told to stop (Ctrl-C)."""
    watcher = build_watcher(reactor, options, stdout, stderr)
    # Ctrl-C and SIGTERM stop the reactor; shutdown waits for the clean close.
    reactor.addSystemEventTrigger("before", "shutdown", watcher.stop)
    return watcher.run().addCallback(_exit_with)


def _exit_with(code: int) -> None:
    if code:
        raise SystemExit(code)

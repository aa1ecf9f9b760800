# -*- test-case-name: tests.test_cli_render -*-
"""
What C{watch} prints: the lines for the hub's frames.

L{describe_frame}, L{describe_resume} and L{describe_connected} make one line of a frame;
L{FrameRenderer} decides which frames make which lines (a C{welcome} joined with the C{snapshot}
after it, the watcher's own business left out unless verbose, raw JSON with C{--json}).  Both
are pure: frames in, lines out, no reactor and no stream, so every line C{watch} can print is
tested on its own.  L{FramePrinter} is the thin part that decodes what arrives and writes the
lines, flushed at once.

Every value from a frame is shown with control characters escaped: a frame cannot move the
cursor or recolour the terminal.
"""

from __future__ import annotations

import json
from datetime import datetime, tzinfo
from typing import Any, Mapping, TextIO

from mission_control import events
from mission_control.cli import frames
from mission_control.cli.errors import printable
from mission_control.cli.options import PROGRAM

#: A decoded frame from the hub.
Frame = Mapping[str, Any]


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


def describe_frame(frame: Frame, tz: tzinfo | None = None) -> str:
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
    payload = frames.payload(frame)
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


def describe_resume(payload: Frame) -> str:
    """
    What a C{resumed} frame means for the reader: C{resumed: replayed seq 41-57} (the events
    printed just before it), C{resumed: nothing missed}, or C{history lost (REASON): showing a
    fresh snapshot} when the hub could not replay (another epoch, events already dropped, a
    position it has never reached) and the snapshot after it starts the picture afresh.
    """
    if payload.get("recovered") is not True:
        return f"history lost ({_field(payload.get('reason'))}): showing a fresh snapshot"
    first, last = payload.get("from"), payload.get("to")
    if frames.is_seq(first) and frames.is_seq(last) and first > last:
        return "resumed: nothing missed"
    if first == last:
        return f"resumed: replayed seq {_field(first)}"
    return f"resumed: replayed seq {_field(first)}-{_field(last)}"


def _state_summary(state: Frame) -> str:
    """C{12 agents, 3 sessions, lastSeq=40} from a C{snapshot} payload."""
    agents, sessions = state.get("agents"), state.get("sessions")
    return (f"{len(agents) if isinstance(agents, list) else 0} agents, "
            f"{len(sessions) if isinstance(sessions, list) else 0} sessions, "
            f"lastSeq={_field(state.get('lastSeq'))}")


def describe_connected(welcome: Frame, snapshot: Frame | None,
                       tz: tzinfo | None = None) -> str:
    """
    C{16:04:05 connected as alice (viewer), 12 agents, 3 sessions, lastSeq=40}; without a
    snapshot (a connection that resumes) C{16:04:05 connected as alice (viewer), lastSeq=57},
    the hub's last seq at that moment.
    """
    hello = frames.payload(welcome)
    found = hello.get("user")
    user: Frame = found if isinstance(found, Mapping) else {}
    who = f"connected as {_field(user.get('id'))} ({_field(user.get('role'))})"
    if snapshot is not None:
        state = dict(frames.payload(snapshot))
        state.setdefault("lastSeq", hello.get("lastSeq"))
        summary = _state_summary(state)
    else:
        summary = f"lastSeq={_field(hello.get('lastSeq'))}"
    return f"{clock_time(welcome.get('ts'), tz)} {who}, {summary}"


class FrameRenderer:
    """
    The lines for a connection's frames, in order: L{render} for each frame, L{end} when the
    connection is over.

    The C{welcome} frame is held until the next frame: with the C{snapshot} of a fresh start it
    becomes one C{connected as ...} line; before anything else (the replayed events of a resume)
    it is rendered alone, first, and the frame after it at once.  A C{resumed} frame that says the
    history is lost keeps the welcome for the snapshot that follows it.

    Heartbeats and the hub's answers to the watcher's own frames (C{ack}, C{auth:ok}, C{pong})
    and its token warnings (C{auth:expiring}, which the watcher acts on) are left out unless
    C{verbose}.  With C{json_mode} each frame is rendered as received, heartbeats only if
    C{verbose}.
    """

    #: Frame types rendered only when verbose.
    quiet_types = frozenset({"heartbeat", "ack", "auth:ok", "auth:expiring", "pong"})

    def __init__(self, json_mode: bool = False, verbose: bool = False,
                 tz: tzinfo | None = None) -> None:
        self.json_mode = json_mode
        self.verbose = verbose
        self.tz = tz
        self._welcome: Frame | None = None

    def render(self, frame: Frame, text: str | None = None) -> list[str]:
        """
        The lines for C{frame}, now.  C{text} is the frame as received, which C{json_mode}
        renders unchanged when it is one line (else the frame is encoded again).
        """
        if self.json_mode:
            if frame.get("type") == "heartbeat" and not self.verbose:
                return []
            if text is None or "\n" in text or "\r" in text:
                text = events.encode_json(frame).decode("utf-8")
            return [text]
        if frame.get("type") in self.quiet_types and not self.verbose:
            return []
        return self._lines(frame)

    def end(self) -> list[str]:
        """The connection is over: a welcome still held is rendered, as the whole of it."""
        return self._release_welcome()

    def _lines(self, frame: Frame) -> list[str]:
        kind = frame.get("type")
        if kind == "welcome":
            lines = self._release_welcome()
            self._welcome = frame
            return lines
        if kind == "snapshot" and self._welcome is not None:
            welcome, self._welcome = self._welcome, None
            return [describe_connected(welcome, frame, self.tz)]
        if kind == "resumed" and self._welcome is not None \
                and frames.payload(frame).get("recovered") is not True:
            return [describe_frame(frame, self.tz)]  # the snapshot comes next
        return self._release_welcome() + [describe_frame(frame, self.tz)]

    def _release_welcome(self) -> list[str]:
        if self._welcome is None:
            return []
        welcome, self._welcome = self._welcome, None
        return [describe_connected(welcome, None, self.tz)]


def decode_frame(data: bytes, is_binary: bool) -> Frame | None:
    """The JSON object a WebSocket message holds, or C{None} when it holds something else."""
    if is_binary:
        return None
    try:
        frame = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) else None


class FramePrinter:
    """
    Writes the lines of L{FrameRenderer} to C{out}, each flushed at once (C{watch | grep} must not
    wait for a buffer to fill); a message that is not a JSON object is skipped with a note on
    C{err}.
    """

    def __init__(self, out: TextIO, err: TextIO, json_mode: bool = False, verbose: bool = False,
                 tz: tzinfo | None = None) -> None:
        self.out = out
        self.err = err
        self.tz = tz
        self.renderer = FrameRenderer(json_mode=json_mode, verbose=verbose, tz=tz)

    def frame_received(self, data: bytes, is_binary: bool) -> Frame | None:
        """Write what C{data} calls for; return the decoded frame (C{None} if it was not one)."""
        frame = decode_frame(data, is_binary)
        if frame is None:
            self.err.write(f"{PROGRAM} watch: skipped a frame that is not a JSON object "
                           f"({len(data)} bytes)\n")
            self.err.flush()
            return None
        self._write(self.renderer.render(frame, data.decode("utf-8")))
        return frame

    def connection_lost(self) -> None:
        """A welcome still held is shown: it was the whole of that connection."""
        self._write(self.renderer.end())

    def _write(self, lines: list[str]) -> None:
        for line in lines:
            self.out.write(line + "\n")
            self.out.flush()

# -*- test-case-name: tests.test_cli_render -*-
"""
Tests for L{mission_control.cli.render}: the lines C{watch} prints for the hub's frames.  No
reactor and no socket: frames in, lines out.
"""

from __future__ import annotations

import io
import json
from datetime import timezone

from twisted.trial.unittest import SynchronousTestCase

from mission_control import cli
from tests.cli_helpers import (
    ACTIVITY,
    AUTH_OK,
    EXPIRING,
    HEARTBEAT,
    SNAPSHOT,
    STATUS,
    WELCOME,
    encode,
    event,
    history_lost,
    resumed,
    snapshot,
    welcome,
)


class FramePrinterTests(SynchronousTestCase):
    """The lines C{watch} prints."""

    def printed(self, frames, **settings):
        out, err = io.StringIO(), io.StringIO()
        printer = cli.FramePrinter(out, err, tz=timezone.utc, **settings)
        for frame in frames:
            printer.frame_received(frame if isinstance(frame, bytes) else encode(frame), False)
        return out.getvalue().splitlines(), err.getvalue()

    def test_event_lines(self):
        """agent:status and session:activity are one line each: time, type, subject, what, seq."""
        lines, _ = self.printed([STATUS, ACTIVITY])
        self.assertEqual(lines, [
            '16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=12',
            '16:04:06 session:activity  sess-00001  tool_call  agent=agent-atlas  '
            '"called web.search"  seq=13',
        ])

    def test_welcome_and_snapshot_make_one_line(self):
        """welcome and the snapshot after it become one line: who, how many agents and sessions,
        lastSeq."""
        lines, _ = self.printed([WELCOME, SNAPSHOT, STATUS])
        self.assertEqual(lines[0],
                         "16:04:05 connected as alice (viewer), 2 agents, 1 sessions, lastSeq=40")
        self.assertEqual(len(lines), 2)

    def test_welcome_without_snapshot(self):
        """A welcome not followed by a snapshot is still shown, before the next event."""
        lines, _ = self.printed([WELCOME, STATUS])
        self.assertEqual(lines[0], "16:04:05 connected as alice (viewer), lastSeq=40")
        self.assertIn("agent:status", lines[1])

    def test_heartbeats_only_when_verbose(self):
        """Heartbeats are left out, unless verbose."""
        self.assertEqual(self.printed([HEARTBEAT])[0], [])
        self.assertEqual(self.printed([HEARTBEAT], verbose=True)[0],
                         ["16:04:07 heartbeat  lastSeq=13"])

    def test_control_characters_escaped(self):
        """Text from the hub cannot drive the terminal: escapes and line breaks are escaped."""
        frame = json.loads(json.dumps(STATUS))
        frame["payload"]["message"] = 'red\x1b[31m "quoted"\nnext\x9b'
        frame["payload"]["agentId"] = "a\x07b"
        [line], _ = self.printed([frame])
        self.assertEqual(
            line, '16:04:05 agent:status  a\\x07b  busy  "red\\x1b[31m \\"quoted\\"\\x0anext\\x9b"'
                  '  seq=12')

    def test_json_mode_prints_frames_as_received(self):
        """--json writes each frame's text unchanged, one per line, heartbeats still left out."""
        raw = [b'{"type": "welcome",  "payload": {}}', encode(STATUS), encode(HEARTBEAT)]
        out, err = io.StringIO(), io.StringIO()
        printer = cli.FramePrinter(out, err, json_mode=True)
        for data in raw:
            printer.frame_received(data, False)
        self.assertEqual(out.getvalue(), raw[0].decode() + "\n" + raw[1].decode() + "\n")

    def test_not_json(self):
        """A frame that is not a JSON object is skipped with a note on stderr."""
        lines, err = self.printed([b"\xff\xfe", b"[1, 2]"])
        self.assertEqual(lines, [])
        self.assertEqual(err.count("skipped a frame that is not a JSON object"), 2)

    def test_resume_prints_replayed_events_at_once(self):
        """A resume (welcome, the replayed events, resumed) prints the connected line without
        counts first, every replayed event as it comes, then the range that was replayed."""
        out, err = io.StringIO(), io.StringIO()
        printer = cli.FramePrinter(out, err, tz=timezone.utc)
        printer.frame_received(encode(welcome(last_seq=42)), False)
        printer.frame_received(encode(event(41)), False)
        self.assertEqual(len(out.getvalue().splitlines()), 2)  # the event is not held back
        printer.frame_received(encode(event(42)), False)
        printer.frame_received(encode(resumed(41, 42)), False)
        self.assertEqual(out.getvalue().splitlines(), [
            "16:04:05 connected as alice (viewer), lastSeq=42",
            '16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=41',
            '16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=42',
            "16:04:08 resumed: replayed seq 41-42",
        ])

    def test_resume_with_nothing_missed(self):
        """A resume with nothing to replay (from after to) says so, after the connected line;
        one event replayed is named alone."""
        lines, _ = self.printed([welcome(), resumed(41, 40)])
        self.assertEqual(lines, ["16:04:05 connected as alice (viewer), lastSeq=40",
                                 "16:04:08 resumed: nothing missed"])
        lines, _ = self.printed([welcome(), event(41), resumed(41, 41)])
        self.assertEqual(lines[-1], "16:04:08 resumed: replayed seq 41")

    def test_history_lost(self):
        """recovered false prints why history was lost, then the usual connected line with the
        fresh snapshot's counts, for each reason the hub gives."""
        for reason in ("epoch", "too_old", "ahead"):
            lines, _ = self.printed([welcome("f", 3), history_lost(reason, 3), snapshot(3),
                                     event(4)])
            self.assertEqual(lines[:2], [
                f"16:04:08 history lost ({reason}): showing a fresh snapshot",
                "16:04:05 connected as alice (viewer), 2 agents, 1 sessions, lastSeq=3",
            ], reason)
            self.assertIn("seq=4", lines[2])

    def test_history_lost_during_a_replay(self):
        """When the hub gives up in the middle of a replay, the snapshot after the history-lost
        line is summed up on its own line."""
        lines, _ = self.printed([welcome(), event(41), history_lost("too_old", 90, "e"),
                                 snapshot(90)])
        self.assertEqual(lines[2:], ["16:04:08 history lost (too_old): showing a fresh snapshot",
                                     "16:04:05 snapshot: 2 agents, 1 sessions, lastSeq=90"])

    def test_replies_to_the_watchers_own_frames_only_when_verbose(self):
        """ack, auth:ok, auth:expiring and pong are the watcher's business: left out of the
        output, shown with verbose."""
        ack = {"type": "ack", "ts": "2026-11-27T16:04:08.000Z", "payload": {"seq": 41}}
        pong = {"type": "pong", "id": "p", "ts": "2026-11-27T16:04:08.000Z", "payload": {}}
        frames = [welcome(), SNAPSHOT, ack, AUTH_OK, EXPIRING, pong, STATUS]
        lines, _ = self.printed(frames)
        self.assertEqual(len(lines), 2)
        self.assertIn("agent:status", lines[1])
        lines, _ = self.printed(frames, verbose=True)
        self.assertEqual(len(lines), 6)
        self.assertEqual(lines[1], '16:04:08 ack  {"seq":41}')

    def test_json_mode_prints_resume_frames_raw(self):
        """--json writes the resume frames as they are, the acks' replies too: every frame."""
        frames = [welcome(), event(41), resumed(41, 41),
                  {"type": "ack", "payload": {"seq": 41}}, AUTH_OK]
        lines, _ = self.printed(frames, json_mode=True)
        self.assertEqual([json.loads(line) for line in lines], frames)

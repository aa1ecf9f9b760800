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


class FrameRendererTests(SynchronousTestCase):
    """L{cli.FrameRenderer} on its own: decoded frames in, the lines for each out, at once."""

    def test_lines_per_frame(self):
        """The welcome alone makes no line yet; the snapshot after it makes the connected line;
        an event makes its own line; end() has nothing left to show."""
        renderer = cli.FrameRenderer(tz=timezone.utc)
        self.assertEqual(renderer.render(WELCOME), [])
        self.assertEqual(renderer.render(SNAPSHOT),
                         ["16:04:05 connected as alice (viewer), 2 agents, 1 sessions, "
                          "lastSeq=40"])
        self.assertEqual(renderer.render(STATUS), [
            '16:04:05 agent:status  agent-atlas  busy  "working on a task"  seq=12'])
        self.assertEqual(renderer.end(), [])

    def test_welcome_held_until_the_end(self):
        """A connection that ends after its welcome shows it, without counts, at the end; the
        next connection starts afresh."""
        renderer = cli.FrameRenderer(tz=timezone.utc)
        renderer.render(welcome(last_seq=7))
        self.assertEqual(renderer.end(), ["16:04:05 connected as alice (viewer), lastSeq=7"])
        self.assertEqual(renderer.end(), [])

    def test_json_mode(self):
        """In JSON mode the text received is the line; a frame whose text spans lines is encoded
        again on one; heartbeats only when verbose."""
        renderer = cli.FrameRenderer(json_mode=True)
        self.assertEqual(renderer.render({"type": "x"}, '{"type":  "x"}'), ['{"type":  "x"}'])
        [line] = renderer.render({"type": "x"}, '{"type":\n"x"}')
        self.assertEqual(json.loads(line), {"type": "x"})
        self.assertNotIn("\n", line)
        self.assertEqual(renderer.render(HEARTBEAT, encode(HEARTBEAT).decode()), [])
        self.assertEqual(len(cli.FrameRenderer(json_mode=True, verbose=True).render(HEARTBEAT)),
                         1)

    def test_unknown_frames_and_odd_values(self):
        """A frame type it does not know is shown with its payload, cut to 200 characters; values
        of the wrong kind (a list for a payload, a string for a seq) are shown, never trusted."""
        renderer = cli.FrameRenderer(tz=timezone.utc)
        [line] = renderer.render({"type": "custom", "ts": "2026-11-27T16:04:05Z",
                                  "payload": {"text": "y" * 300}})
        self.assertTrue(line.startswith('16:04:05 custom  {"text":"yyy'), line)
        self.assertTrue(line.endswith("..."))
        self.assertEqual(len(line), len("16:04:05 custom  ") + 200)
        self.assertEqual(renderer.render({"type": "resumed", "payload": ["x"]}),
                         ["--:--:-- history lost (None): showing a fresh snapshot"])
        self.assertEqual(renderer.render(dict(STATUS, seq="7\x1b")),
                         ['16:04:05 agent:status  agent-atlas  busy  "working on a task"  '
                          'seq=7\\x1b'])

    def test_decode_frame(self):
        """Only a text message holding a JSON object is a frame."""
        self.assertEqual(cli.render.decode_frame(b'{"type": "x"}', False), {"type": "x"})
        for data, is_binary in [(b'{"type": "x"}', True), (b"[1]", False), (b"\xff", False),
                                (b"{", False), (b"[" * 100000, False)]:
            self.assertIsNone(cli.render.decode_frame(data, is_binary), data[:10])

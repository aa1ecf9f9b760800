# -*- test-case-name: tests.test_cli_watch -*-
"""
C{mission-control watch}: its options (L{WatchOptions}), and L{watch_main}, which runs a
L{Watcher} for them under L{task.react} until it is refused or the reactor is told to stop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TextIO

from twisted.internet import defer
from twisted.python import usage

from mission_control import ids
from mission_control.ids import ID_RULE
from mission_control.cli.connect_options import DEFAULT_WS_URL, _ServerOptions, token_help
from mission_control.cli.credentials import LOCAL_TOKEN_SUBJECT, LOCAL_TOKEN_TTL
from mission_control.cli.options import ENV_PREFIX, check_subject
from mission_control.cli.render import FramePrinter
from mission_control.cli.urls import websocket_url
from mission_control.cli.watcher import Watcher


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
        ["token", None, None, token_help("viewer")],
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

    def postOptions(self) -> None:
        if self["client"] is not None and not ids.is_valid_id(self["client"]):
            raise usage.UsageError(f"--client must be {ID_RULE}")
        self.resolve_connection()
        if self["sub"] is not None:
            if not self["credentials"].mints:
                raise usage.UsageError("--sub is for the token watch mints; a token given with "
                                       "--token (or MISSION_CONTROL_TOKEN) names its own user")
            check_subject(self["sub"], self.local_role)
            self["credentials"] = dataclasses.replace(self["credentials"], sub=self["sub"])


def build_watcher(reactor: Any, options: WatchOptions, stdout: TextIO, stderr: TextIO,
                  **settings: Any) -> Watcher:
    """A L{Watcher} for parsed C{watch} options; C{settings} go to its constructor (tests)."""
    tz = settings.pop("tz", None)
    printer = FramePrinter(stdout, stderr, json_mode=bool(options["json"]),
                           verbose=bool(options["verbose"]), tz=tz)
    return Watcher(reactor, options["url"], options["credentials"], printer, stderr,
                   trust_root=options["trust_root"], client=options["client"],
                   cafile=options["cafile"], **settings)


def watch_main(reactor: Any, options: WatchOptions, stdout: TextIO,
               stderr: TextIO) -> defer.Deferred[int]:
    """
    For L{task.react}: watch until refused or until the reactor is told to stop (Ctrl-C);
    fires with the exit code.
    """
    watcher = build_watcher(reactor, options, stdout, stderr)
    # Ctrl-C and SIGTERM stop the reactor; shutdown waits for the clean close.
    reactor.addSystemEventTrigger("before", "shutdown", watcher.stop)
    return watcher.run()

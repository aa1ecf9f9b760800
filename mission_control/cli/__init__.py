# -*- test-case-name: tests.test_cli -*-
"""
The C{mission-control} console script: mint tokens, publish events, watch the stream.

    mission-control token --sub ID [--role ROLE] [--name NAME] [--ttl 1h]
                          [--data-dir DIR | --jwt-secret-file FILE] [--issuer I] [--audience A]
    mission-control publish status AGENT_ID STATUS [--message M] [--name N] [--metadata JSON]
    mission-control publish activity SESSION_ID ACTIVITY [--agent A] [--summary S] [--detail JSON]
    mission-control watch [--url ws://127.0.0.1:8080/ws] [--sub ID] [--client NAME] [--json]
                          [--verbose]

C{publish} and C{watch} also take C{--url}, C{--token} and C{--cafile}.  Without a token they mint a
five-minute one from the local development secret (the C{jwt-secret} that the server generates in
its data dir), so that both work with no arguments next to a locally started server.

C{watch} loses nothing across reconnects: it remembers the last C{seq} and the C{epoch} of the
hub's history and reconnects with C{since} and C{epoch}, so the hub replays what it missed, or says
the history is lost and sends a fresh snapshot.  With C{--client NAME} it also acknowledges what it
printed, and the next C{watch} of that name starts there.  A token it minted itself is renewed over
the connection before it expires.

Exit codes: 0 success, 1 a runtime failure (the server refused or could not be reached),
2 a usage error.  Everything a user can get wrong on the command line, including an unusable
secret or CA file, is found while parsing, before any network traffic, and reported as one line on
stderr.  A token is never written anywhere but to the stdout of C{token}.

Environment (the command line wins; the first four are the server's own names):
C{MISSION_CONTROL_DATA_DIR}, C{MISSION_CONTROL_JWT_SECRET_FILE}, C{MISSION_CONTROL_JWT_ISSUER},
C{MISSION_CONTROL_JWT_AUDIENCE}, C{MISSION_CONTROL_URL} (an C{http://} or C{ws://} URL serves both
C{publish} and C{watch}), C{MISSION_CONTROL_TOKEN}.

No proxy settings are used: the hub is reached directly, by C{publish} and C{watch} alike.

Layout: this package is the command line itself: L{MissionControlOptions}, the root of the
L{usage.Options} tree, and L{run} and L{main}, which parse it and run the command.  The modules
of the package hold one concern each:

    options          the base of every command's options, usage errors, checks of values
    credentials      the local secret, and the token a client command sends
    connect_options  the options of the commands that talk to a hub (URL, token, CA)
    urls             the hub's URL in its HTTP and WebSocket forms, and a resuming query
    tls              the one --cafile loader, TLS client setup and endpoint of both commands
    errors           failures as one plain line, untrusted text made safe for a terminal
    token            C{token}: mint and print
    publish          C{publish}: its options, and the POST run on the reactor
    exchange         one HTTP exchange with treq: no redirects, bounded answer, a timeout
    watch            C{watch}: its options, and the L{Watcher} run under L{task.react}
    watcher          the reconnect loop, on an injected reactor
    connection       one WebSocket connection, and what its end means
    position         where the watcher is in the hub's history (pure)
    frames           reading values from the hub's frames (pure)
    render           the lines printed for the hub's frames (pure), and their printer

C{publish} and C{watch} both run under L{task.react} with the real reactor; their functions
take the reactor as an argument, so the tests drive them on theirs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping, NoReturn, Sequence, TextIO

from twisted.internet import defer, task
from twisted.python import usage

from mission_control.cli.credentials import (
    LOCAL_TOKEN_SUBJECT,
    LOCAL_TOKEN_TTL,
    Credentials,
    SigningKey,
)
from mission_control.cli.options import (
    CommandMissing,
    CommandUsageError,
    HelpRequested,
    _Options,
    parse_duration,
)
from mission_control.cli.position import StreamPosition
from mission_control.cli.publish import PublishOptions, _PublishEventOptions, publish_command
from mission_control.cli.render import FramePrinter, FrameRenderer
from mission_control.cli.token import TokenOptions, mint_command
from mission_control.cli.urls import display_url, http_base_url, resume_url, websocket_url
from mission_control.cli.watch import WatchOptions, build_watcher, watch_main
from mission_control.cli.watcher import Watcher

__all__ = [
    # The command line, defined here.
    "MissionControlOptions",
    "main",
    "parse_command_line",
    "run",
    # From the modules of the package, for the tests and for callers of mission_control.cli.
    "LOCAL_TOKEN_SUBJECT",
    "LOCAL_TOKEN_TTL",
    "Credentials",
    "FramePrinter",
    "FrameRenderer",
    "SigningKey",
    "StreamPosition",
    "Watcher",
    "build_watcher",
    "display_url",
    "http_base_url",
    "parse_duration",
    "publish_command",
    "resume_url",
    "usage",
    "websocket_url",
]


# The command line


class MissionControlOptions(_Options):
    synopsis = "<command> [options]"
    longdesc = (
        "Talk to a mission-control hub: mint tokens, publish agent statuses and session "
        "activity, watch the live event stream. 'mission-control <command> --help' tells more. "
        "Exit codes: 0 done, 1 failed (refused, unreachable), 2 usage error."
    )
    subCommands = [
        ["token", None, TokenOptions, "Mint a token with the hub's secret and print it."],
        ["publish", None, PublishOptions, "Publish an agent:status or session:activity event."],
        ["watch", None, WatchOptions, "Print the hub's live event stream."],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def environ(self) -> Mapping[str, str]:
        return self._environ

    def postOptions(self) -> None:
        self.require_subcommand()


def parse_command_line(argv: Sequence[str],
                       environ: Mapping[str, str]) -> MissionControlOptions:
    """
    Parse a whole command line.

    @raise HelpRequested: for C{--help} and C{--version}.
    @raise CommandMissing: when no command was given.
    @raise CommandUsageError: for everything else that is wrong with it.
    """
    options = MissionControlOptions(environ)
    options.parseOptions(list(argv))
    return options


def _leaf(options: usage.Options) -> usage.Options:
    while getattr(options, "subOptions", None) is not None:
        options = options.subOptions
    return options


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO,
        environ: Mapping[str, str]) -> int:
    """
    Run one command line; return its exit code.  C{token} runs here; C{publish} and C{watch} run
    the global reactor until they end (the tests drive L{publish_command} and L{Watcher} on theirs).
    """
    try:
        options = parse_command_line(argv, environ)
    except HelpRequested as e:
        stdout.write(e.text + "\n")
        return 0
    except CommandMissing as e:
        stderr.write(f"{e.usage_text}\n\n{e.command}: no command given\n")
        return 2
    except CommandUsageError as e:
        stderr.write(f"{e.command}: {e.message} (see '{e.command} --help')\n")
        return 2
    leaf = _leaf(options)
    if isinstance(leaf, TokenOptions):
        return mint_command(leaf, stdout, time.time())
    if isinstance(leaf, _PublishEventOptions):
        return _react(publish_command, leaf, stdout, stderr)
    return _react(watch_main, leaf, stdout, stderr)


def _react(main: Callable[..., defer.Deferred[int]], *args: Any) -> int:
    """Run C{main(reactor, *args)} under L{task.react}; return the exit code it fires with."""
    def exit_with(code: int) -> None:
        if code:
            raise SystemExit(code)

    try:
        task.react(lambda reactor: main(reactor, *args).addCallback(exit_with))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # pragma: no cover - react always exits


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The C{mission-control} console script."""
    try:
        code = run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr, os.environ)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

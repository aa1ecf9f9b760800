# -*- test-case-name: tests.test_cli -*-
"""
The base of every C{mission-control} command's options and what they are checked with.

L{_Options} returns help and version rather than printing them and exiting, tags usage errors
with the command they belong to, accepts options after positional arguments, and reads the
environment that the root of the tree holds.  The checks (L{parse_duration}, L{check_subject},
L{check_role}, L{check_name}, L{parse_json_object}) are the hub's own rules, applied while
parsing, so that a command line the hub would refuse never leaves the machine.
"""

from __future__ import annotations

import getopt
import json
import re
import sys
from typing import Mapping, NoReturn, Sequence

from twisted.python import usage

from mission_control import __version__, auth, ids, policy
from mission_control.ids import ID_RULE
from mission_control.text import is_display_text

PROGRAM = "mission-control"
ENV_PREFIX = "MISSION_CONTROL_"

#: The longest C{--ttl} accepted: a token is a credential, and a year is already a lot.
MAX_TTL = 366 * 86400

_DURATION_RE = re.compile(r"(\d{1,12})([smhd]?)\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# Parsing


class CommandUsageError(usage.UsageError):
    """A usage error, tagged with the command it belongs to (C{mission-control publish status})."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.message = message
        self.command = command


class CommandMissing(usage.UsageError):
    """No subcommand was given where one is needed; C{usage_text} is that command's help."""

    def __init__(self, command: str, usage_text: str) -> None:
        super().__init__(f"{command}: no command given")
        self.command = command
        self.usage_text = usage_text


class HelpRequested(Exception):
    """C{--help} or C{--version}: C{text} goes to stdout, and the exit code is 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Options(usage.Options):
    """
    What every command's options share: help and version that are returned rather than printed
    and exited on, the command's full name in its synopsis, usage errors tagged with the command,
    and the environment, which the root holds.
    """

    synopsis = "[options]"
    longdesc = ""

    def opt_help(self) -> NoReturn:
        """Display this help and exit."""
        raise HelpRequested(str(self).rstrip())

    opt_h = opt_help

    def opt_version(self) -> NoReturn:
        """Display the version and exit."""
        raise HelpRequested(f"{PROGRAM} {__version__}")

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        try:
            if not getattr(self, "subCommands", None):
                argv = self._options_first(argv)
            super().parseOptions(argv)
        except getopt.GetoptError as e:
            raise CommandUsageError(self._clarify(str(e)), self.command_name()) from None
        except (CommandMissing, CommandUsageError):
            raise
        except usage.UsageError as e:
            raise CommandUsageError(self._clarify(str(e)), self.command_name()) from None

    def _options_first(self, argv: list[str]) -> list[str]:
        """
        Move options given after positional arguments in front of them, as GNU tools allow
        (C{publish status a1 busy --message hi}): Twisted's parser stops at the first positional
        argument.  Only for commands without subcommands, whose arguments are all their own.
        """
        found, arguments = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        front: list[str] = []
        for option, value in found:
            if option.startswith("--"):
                takes_value = option[2:] + "=" in self.longOpt
            else:
                takes_value = option[1:] + ":" in self.shortOpt
            front += [option, value] if takes_value else [option]
        return front + ["--"] + arguments

    def _clarify(self, message: str) -> str:
        """Twisted's and getopt's wording, made plainer where it is unclear."""
        if message.startswith("Unknown command: "):
            name = message[len("Unknown command: "):]
            choices = ", ".join(c[0] for c in getattr(self, "subCommands", ()))
            return f"unknown command {name!r}; choose one of: {choices}"
        unknown = re.match(r"option (\S+) not recognized\Z", message)
        if unknown:
            return f"unknown option {unknown.group(1)}"
        return message

    def command_name(self) -> str:
        """C{mission-control}, C{mission-control publish}, C{mission-control publish status}."""
        parent = self.parent
        if not isinstance(parent, _Options):
            return PROGRAM
        return f"{parent.command_name()} {parent.subCommand}"

    def getSynopsis(self) -> str:
        return f"Usage: {self.command_name()} {self.synopsis}".rstrip()

    def environ(self) -> Mapping[str, str]:
        parent = self.parent
        return parent.environ() if isinstance(parent, _Options) else {}

    def env(self, name: str) -> str | None:
        """C{MISSION_CONTROL_<name>} from the environment; an empty value counts as unset."""
        value = self.environ().get(ENV_PREFIX + name)
        return value if value else None

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")

    def require_subcommand(self) -> None:
        if self.subCommand is None:
            raise CommandMissing(self.command_name(), str(self).rstrip())


# Checks of option values


def parse_duration(text: str, option: str = "--ttl") -> int:
    """
    Seconds from C{90}, C{30s}, C{15m}, C{1h} or C{7d}: a whole positive number, at most L{MAX_TTL}.

    @raise usage.UsageError: for anything else.
    """
    match = _DURATION_RE.match(text.strip().lower())
    if match is None:
        raise usage.UsageError(
            f"{option} must be a whole number of seconds or have a unit, "
            f"like 90, 30s, 15m, 1h, 7d (not {text!r})"
        )
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise usage.UsageError(f"{option} must be more than 0")
    if seconds > MAX_TTL:
        raise usage.UsageError(f"{option} must be at most {MAX_TTL // 86400}d")
    return seconds


def check_subject(sub: str, role: str) -> None:
    """The hub's rules for C{sub} (docs/websocket-api.md, token claims): a minted token is not refused for it."""
    if not sub or len(sub) > auth.MAX_SUB_LENGTH or not is_display_text(sub):
        raise usage.UsageError(
            f"--sub must be 1-{auth.MAX_SUB_LENGTH} characters without control or invisible "
            "characters"
        )
    if role == "agent" and not ids.is_valid_id(sub):
        raise usage.UsageError(f"with --role agent, --sub is the agent id: {ID_RULE}")


def check_role(role: str) -> str:
    if role not in policy.ROLES:
        raise usage.UsageError(f"unknown role {role!r}; choose one of: {', '.join(policy.ROLES)}")
    return role


def check_name(name: str | None, option: str = "--name") -> None:
    if name is not None and (len(name) > auth.MAX_NAME_LENGTH or not is_display_text(name)):
        raise usage.UsageError(
            f"{option} must be at most {auth.MAX_NAME_LENGTH} characters without control or "
            "invisible characters"
        )


def parse_json_object(text: str, option: str) -> dict:
    """A JSON object from the command line, or a usage error that says what is wrong with it."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise usage.UsageError(f"{option} is not valid JSON ({e})") from None
    except RecursionError:
        raise usage.UsageError(f"{option} is nested too deeply") from None
    if not isinstance(value, dict):
        raise usage.UsageError(f"{option} must be a JSON object, like '{{\"key\": \"value\"}}'")
    return value

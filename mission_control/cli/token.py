# -*- test-case-name: tests.test_cli -*-
"""
C{mission-control token}: its options, and L{mint_command}, which mints a token with the hub's
secret and prints it.
"""

from __future__ import annotations

from typing import TextIO

from twisted.python import usage

from mission_control import channels, policy
from mission_control.ids import ID_RULE
from mission_control.cli.credentials import _KeyOptions
from mission_control.cli.errors import printable
from mission_control.cli.options import check_name, check_role, check_subject, parse_duration


# mission-control token


class TokenOptions(_KeyOptions):
    synopsis = (
        "--sub ID [--role ROLE] [--name NAME] [--ttl 1h] [--channel C ...] "
        "[--data-dir DIR | --jwt-secret-file FILE] [--issuer I] [--audience A]"
    )
    longdesc = (
        "Mint an HS256 token with the hub's secret and print it, alone, on stdout. The secret is "
        "the one the server generated in its data dir, or the file given with --jwt-secret-file. "
        "Example: mission-control token --sub alice --role admin --ttl 8h"
    )
    optParameters = [
        ["sub", None, None,
         f"The user id; for role agent the agent id ({ID_RULE}). Required."],
        ["role", None, policy.DEFAULT_ROLE, "One of: " + ", ".join(policy.ROLES) + "."],
        ["name", None, None, "Display name (name claim)."],
        ["ttl", None, "1h", "Lifetime: 90 (seconds), 30s, 15m, 1h, 7d."],
    ]

    def opt_channel(self, channel: str) -> None:
        """
        Narrow the token to this channel or pattern (repeatable): agents, agents:<id>,
        agents:*, sessions, sessions:<id>, sessions:*, presence.  Never widens the role.
        """
        if not channels.is_valid_pattern(channel):
            raise usage.UsageError(
                f"--channel {printable(channel)!r} is not a channel name or prefix:* pattern"
            )
        self.setdefault("channels", []).append(channel)

    def postOptions(self) -> None:
        if self["sub"] is None:
            raise usage.UsageError("--sub is required: the user id the token is for")
        check_role(self["role"])
        check_subject(self["sub"], self["role"])
        check_name(self["name"])
        self["ttl"] = parse_duration(self["ttl"])
        self["key"] = self.signing_key("cannot mint a token")


def mint_command(options: TokenOptions, stdout: TextIO, now: float) -> int:
    """Print the token, and nothing else: C{$(mission-control token ...)} must work."""
    token = options["key"].mint(options["sub"], now, options["ttl"], role=options["role"],
                                name=options["name"], channels=options.get("channels"))
    stdout.write(token + "\n")
    return 0

# -*- test-case-name: tests.test_cli -*-
"""
The options of the commands that talk to a hub (L{_ServerOptions}): where (C{--url}, in the form
the command needs), with which token (C{--token}, or one minted from the local secret), trusting
which CA (C{--cafile}, loaded by L{mission_control.cli.tls}).  All of it is resolved and checked
while parsing, so a command that starts talking to the hub has everything it needs.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from twisted.python import usage

from mission_control import __version__, policy
from mission_control.cli.credentials import LOCAL_TOKEN_TTL, Credentials, _KeyOptions
from mission_control.cli.options import ENV_PREFIX
from mission_control.cli.tls import load_trust_root

DEFAULT_HTTP_URL = "http://127.0.0.1:8080"
DEFAULT_WS_URL = "ws://127.0.0.1:8080/ws"

USER_AGENT = f"mission-control-cli/{__version__}"

#: What a JWT can be made of.  Anything else (white space, a line break that would end a header
#: early) is refused before it goes near a request.
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]+\Z")


class _ServerOptions(_KeyOptions):
    """
    Options of the commands that talk to a hub: where, with which token, trusting which CA.
    Parsed into C{self["url"]}, C{self["credentials"]} (L{Credentials}) and
    C{self["trust_root"]} (the C{--cafile} certificate, or C{None} for the system's CAs).
    Each command adds C{--url} and C{--token} with its own default and role in their help.
    """

    optParameters = [
        ["cafile", None, None,
         "PEM certificate of the CA that signed the hub's certificate (https:// and wss:// only)."],
    ]

    #: Every option a subcommand takes from its parent when not given after the subcommand.
    CONNECTION_OPTIONS = ("url", "token", "cafile", "data-dir", "jwt-secret-file", "issuer",
                          "audience")

    #: The role of the token minted without C{--token}.
    local_role = policy.DEFAULT_ROLE
    default_url = DEFAULT_HTTP_URL

    def normalize_url(self, value: str) -> str:
        raise NotImplementedError

    def inherit(self) -> None:
        """Take connection options given before the subcommand: C{publish --url U status ...}."""
        if isinstance(self.parent, _ServerOptions):
            for name in self.CONNECTION_OPTIONS:
                if self[name] is None:
                    self[name] = self.parent[name]

    def resolve_connection(self) -> None:
        """
        Fill in C{url}, C{credentials} and C{trust_root} from options, environment and defaults.
        """
        self.inherit()
        self["url"] = self.normalize_url(self["url"] or self.env("URL") or self.default_url)
        self["trust_root"] = None
        if self["cafile"]:
            if urlsplit(self["url"]).scheme not in ("https", "wss"):
                raise usage.UsageError("--cafile is only used with https:// or wss:// URLs")
            self["trust_root"] = load_trust_root(self["cafile"])
        token = self["token"] or self.env("TOKEN")
        if token is not None:
            token = token.strip()
            if not _TOKEN_RE.match(token):
                raise usage.UsageError("the token given does not look like a JWT")
            self["credentials"] = Credentials(given=token)
        else:
            key = self.signing_key("no --token given and none to mint one with")
            self["credentials"] = Credentials(key=key, role=self.local_role)


def token_help(role: str) -> str:
    """The help of C{--token}, for a command whose minted tokens have C{role}."""
    return (f"Bearer token (JWT). [env {ENV_PREFIX}TOKEN] Without one, a "
            f"{LOCAL_TOKEN_TTL // 60}-minute {role} token is minted from the local development "
            f"secret (see --data-dir).")

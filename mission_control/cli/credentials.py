# -*- test-case-name: tests.test_cli -*-
"""
Tokens: the hub's secret read for minting (L{SigningKey}), the bearer token a client command sends
(L{Credentials}: the one given, or one minted for each request or connection), and the options
that find the secret with the server's own names and environment (L{_KeyOptions}).

A token is a credential: nothing here writes one anywhere, and the secret never appears in a
C{repr} or a message, only the path it was read from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from twisted.python import usage

from mission_control import keys, policy, tokens
from mission_control.cli.options import ENV_PREFIX, PROGRAM, _Options

DEFAULT_DATA_DIR = "./mission-control-data"

#: Tokens that C{publish} and C{watch} mint for themselves live this long (seconds).
LOCAL_TOKEN_TTL = 300
#: The C{sub} of those tokens: what the hub's logs show for the CLI.
LOCAL_TOKEN_SUBJECT = "mission-control-cli"

_SECRET_HINT = (
    "start the server once (twistd -n mission-control) and it generates one there, "
    "or pass --data-dir DIR or --jwt-secret-file FILE"
)


@dataclass(frozen=True)
class SigningKey:
    """
    The HMAC secret the hub verifies tokens with, and the C{iss}/C{aud} it checks, for minting.

    @ivar path: where the secret was read from (safe to show; the secret is not).
    """

    secret: bytes = field(repr=False)
    path: str
    issuer: str | None = None
    audience: str | None = None

    def mint(self, sub: str, now: float, ttl: float, role: str | None = None,
             name: str | None = None, channels: list[str] | None = None) -> str:
        return tokens.mint_token(self.secret, sub, now, ttl=ttl, role=role, name=name,
                               issuer=self.issuer, audience=self.audience, channels=channels)


@dataclass(frozen=True)
class Credentials:
    """
    The bearer token a client command sends: the one given, or a fresh one minted for each
    request or connection from the local secret (C{key}), for the user C{sub}, with C{role},
    valid for C{ttl} seconds.
    """

    given: str | None = field(default=None, repr=False)
    key: SigningKey | None = None
    role: str = policy.DEFAULT_ROLE
    ttl: float = LOCAL_TOKEN_TTL
    sub: str = LOCAL_TOKEN_SUBJECT

    @property
    def mints(self) -> bool:
        """Whether fresh tokens can be had (from the local secret), rather than one fixed token."""
        return self.given is None

    def token(self, now: float) -> str:
        if self.given is not None:
            return self.given
        assert self.key is not None
        name = f"{PROGRAM} CLI" if self.sub == LOCAL_TOKEN_SUBJECT else None
        return self.key.mint(self.sub, now, self.ttl, role=self.role, name=name)

    def refusal_hint(self) -> str:
        """What to suggest when the hub answers 401 to these credentials."""
        if self.key is not None:
            return (f" (the token was minted from {self.key.path}: does the server use that "
                    f"secret? Otherwise pass --token)")
        return ""


class _KeyOptions(_Options):
    """Options that find the local secret: the same names and environment as the server's."""

    optParameters = [
        ["data-dir", None, None,
         f"The server's data dir, which holds its generated jwt-secret. "
         f"[env {ENV_PREFIX}DATA_DIR, default {DEFAULT_DATA_DIR}]"],
        ["jwt-secret-file", None, None,
         f"The HMAC secret file, instead of the data dir's. [env {ENV_PREFIX}JWT_SECRET_FILE]"],
        ["issuer", None, None,
         f"iss claim, when the server checks one. [env {ENV_PREFIX}JWT_ISSUER]"],
        ["audience", None, None,
         f"aud claim, when the server checks one. [env {ENV_PREFIX}JWT_AUDIENCE]"],
    ]

    def secret_path(self) -> str:
        """
        The secret file: C{--jwt-secret-file} or C{--data-dir}, else the same two from the
        environment, else the default data dir.
        """
        secret_file, data_dir = self["jwt-secret-file"], self["data-dir"]
        if secret_file and data_dir:
            raise usage.UsageError("give --data-dir or --jwt-secret-file, not both")
        if secret_file:
            return secret_file
        if data_dir:
            return os.path.join(data_dir, keys.SECRET_FILE_NAME)
        from_env = self.env("JWT_SECRET_FILE")
        if from_env:
            return from_env
        return os.path.join(self.env("DATA_DIR") or DEFAULT_DATA_DIR, keys.SECRET_FILE_NAME)

    def signing_key(self, missing: str) -> SigningKey:
        """
        Read the secret; never create it (a secret the server does not use mints useless tokens).

        @param missing: the start of the message when there is no secret file.
        """
        path = self.secret_path()
        if not os.path.exists(path):
            raise usage.UsageError(f"{missing}: no JWT secret at {path}; {_SECRET_HINT}")
        try:
            secret = keys.read_secret(path)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        return SigningKey(
            secret,
            path,
            issuer=self["issuer"] or self.env("JWT_ISSUER"),
            audience=self["audience"] or self.env("JWT_AUDIENCE"),
        )

# -*- test-case-name: tests.test_tokens -*-
"""
Tokens made: a JWT the hub accepts, for the C{mission-control token} command, the dashboard link
the hub logs at start, and the tests and benchmarks that play clients.

Apart from verification (L{mission_control.auth}): minting is what a holder of the signing key
does, checking what every request goes through, and neither needs the other.
"""

from __future__ import annotations

from typing import Any

import jwt

from mission_control.keys import SigningKey


def mint_token(
    secret: SigningKey,
    sub: str,
    now: float,
    ttl: float = 3600.0,
    role: str | None = None,
    name: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    algorithm: str = "HS256",
    channels: list[str] | None = None,
) -> str:
    """Mint a token the hub accepts: C{sub}, C{exp}, C{iat}, and the optional claims given."""
    claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl)}
    if channels is not None:
        claims["channels"] = list(channels)
    if role is not None:
        claims["role"] = role
    if name is not None:
        claims["name"] = name
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)

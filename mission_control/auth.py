# -*- test-case-name: tests.test_auth -*-
"""
Who is calling, and what they may do.

Everything here is pure: a token, the configured keys and the current time go in, a L{Principal}
or a L{Refusal} with a fixed, short reason comes out.  The WebSocket handshake (L{protocol}) and the
HTTP API (L{web}) are thin adapters around it, so the rules are tested without sockets.

Reasons are fixed phrases on purpose: they end up in an HTTP status line and in logs, so nothing
taken from the request (and never the token) may appear in them.

The keys themselves are read or generated at start by L{mission_control.keys}; tokens are minted
by L{mission_control.tokens}.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import jwt
from jwt.types import Options

from mission_control.channels import parse_claim
from mission_control.ids import is_valid_id
from mission_control.keys import VerifyingKey
from mission_control.lru import BoundedLRU
from mission_control.policy import DEFAULT_ROLE, ROLES, Principal
from mission_control.text import decode_json, is_display_text


#: Longest token we bother to parse.  Real tokens are a few hundred bytes; this stops a client
#: from making us base64-decode and verify megabytes.
MAX_TOKEN_LENGTH = 8192

MAX_SUB_LENGTH = 256
MAX_NAME_LENGTH = 256

#: Time claims past the year 9999 are refused: no real token needs one, and Python's datetime
#: (and every client's) cannot show them.
MAX_TIME_CLAIM = 253_402_300_799

_BEARER_RE = re.compile(r"\s*bearer\s+(\S+)\s*\Z", re.IGNORECASE)


class Refusal(Exception):
    """
    A request is refused.  C{status} is the HTTP status to answer with, C{reason} a fixed short
    phrase that is safe to put in a status line, a log line and a JSON error body.
    """

    def __init__(self, status: int, reason: str, code: str | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.code = code or _CODES.get(status, "error")


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    426: "upgrade_required",
    429: "too_many_connections",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}


class _StrictJWT(jwt.PyJWT):
    """
    PyJWT, decoding the claims with our strict JSON decoder: a claim given twice, NaN or
    Infinity, or a lone surrogate makes the token invalid, where C{json.loads} would let the last
    duplicate win and pass C{exp: NaN} on as a number.  (C{_decode_payload} is PyJWT's documented
    hook for subclasses that decode the payload differently.)
    """

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = decode_json(decoded["payload"])
        except (ValueError, RecursionError):
            raise jwt.DecodeError("invalid payload") from None
        if not isinstance(payload, dict):
            raise jwt.DecodeError("invalid payload")
        return payload


@dataclass
class TokenVerifier:
    """
    Verifies JWTs against one key and a pinned list of algorithms.

    The algorithm list comes from configuration, never from the token: a token signed with any
    other algorithm (C{none}, or HS256 signed with an RSA public key) is refused.

    @ivar key: the HMAC secret (bytes) or a public key object from C{cryptography}.
    """

    key: VerifyingKey
    algorithms: Sequence[str]
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 5.0
    #: How many verified tokens to remember (see L{verify}).
    cache_size: int = 4096
    _options: Options = field(init=False, repr=False)
    _verified: BoundedLRU[str, Mapping] = field(init=False, repr=False)
    _jwt: _StrictJWT = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError("at least one algorithm is required")
        self.algorithms = list(self.algorithms)
        self._verified = BoundedLRU(self.cache_size)
        # Time claims are checked by us against the injected clock (PyJWT reads time.time()),
        # the rest by PyJWT.  Nothing is required by PyJWT's default: require what we need.
        self._options = {
            "require": ["exp", "sub"],
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": self.issuer is not None,
            "verify_aud": self.audience is not None,
            "verify_sub": False,
            "verify_jti": False,
        }
        # The options are merged with PyJWT's defaults once, here, not on every decode.
        self._jwt = _StrictJWT(options=self._options)

    def verify(self, token: str | bytes | None, now: float) -> Principal:
        """
        Verify C{token} at time C{now}.

        @raise Refusal: with status 401 and a fixed reason when the token is not acceptable.
        """
        if token is None or token == "" or token == b"":
            raise Refusal(401, "missing token")
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise Refusal(401, "invalid token") from None
        if len(token) > MAX_TOKEN_LENGTH:
            raise Refusal(401, "invalid token")
        # A token whose signature and claims were verified once is remembered: a dashboard or an
        # agent sends the same token with every request, and the signature check is most of the
        # cost of an API call.  Time claims are checked again on every call, against `now`.
        claims = self._verified.get(token)
        if claims is not None:
            return self._principal(claims, now)
        claims = self._decode(token)
        principal = self._principal(claims, now)
        self._verified.put(token, claims)
        return principal

    def _decode(self, token: str) -> Mapping:
        try:
            return self._jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
            )
        except jwt.MissingRequiredClaimError:
            raise Refusal(401, "invalid claims") from None
        except jwt.InvalidIssuerError:
            raise Refusal(401, "invalid issuer") from None
        except jwt.InvalidAudienceError:
            raise Refusal(401, "invalid audience") from None
        except jwt.PyJWTError:
            raise Refusal(401, "invalid token") from None
        except Exception:
            # A key/algorithm mismatch deep in a backend must never become a 500 with its text.
            raise Refusal(401, "invalid token") from None

    def _principal(self, claims: Mapping, now: float) -> Principal:
        exp = _number(claims.get("exp"))
        if exp is None:
            raise Refusal(401, "invalid claims")
        if exp + self.leeway <= now:
            raise Refusal(401, "token expired")
        for claim in ("nbf", "iat"):
            if claim in claims:
                value = _number(claims[claim])
                if value is None:
                    raise Refusal(401, "invalid claims")
                if value - self.leeway > now:
                    raise Refusal(401, "token not yet valid")

        sub = claims.get("sub")
        if (
            not isinstance(sub, str)
            or not sub
            or len(sub) > MAX_SUB_LENGTH
            or not is_display_text(sub)
        ):
            raise Refusal(401, "invalid claims")
        role = claims.get("role", DEFAULT_ROLE)
        if role not in ROLES:
            raise Refusal(401, "invalid claims")
        if role == "agent" and not is_valid_id(sub):
            raise Refusal(401, "invalid claims")
        name = claims.get("name")
        if name is not None and (
            not isinstance(name, str)
            or len(name) > MAX_NAME_LENGTH
            or not is_display_text(name)
        ):
            raise Refusal(401, "invalid claims")
        try:
            channels = parse_claim(claims.get("channels"))
        except ValueError:
            raise Refusal(401, "invalid claims") from None
        return Principal(sub=sub, role=role, name=name, expires_at=float(exp), channels=channels)


def _number(value: object) -> float | None:
    """A time claim as seconds, or C{None} when it is not a finite number within L{MAX_TIME_CLAIM}."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) <= MAX_TIME_CLAIM else None
    return value if math.isfinite(value) and abs(value) <= MAX_TIME_CLAIM else None


def token_from_request(
    headers: Mapping[str, str], params: Mapping[str, Sequence[str]] | None = None
) -> str | None:
    """
    The token of a request: C{Authorization: Bearer <jwt>} first, else the C{token} query parameter.

    @param headers: lower-cased header names to values (Autobahn's C{request.headers}).
    @param params: query parameters to lists of values, or L{None} where the query is not accepted.
    @raise Refusal: 401 when an Authorization header is there but is not a bearer token.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        match = _BEARER_RE.match(authorization)
        if match is None:
            raise Refusal(401, "invalid token")
        return match.group(1)
    if params:
        values = params.get("token") or []
        if values:
            return values[0]
    return None


def normalize_origin(origin: str) -> str | None:
    """
    An Origin as browsers send it, reduced to C{scheme://host[:port]} with the default port of the
    scheme left out and letters lower-cased, or L{None} when it is not an http(s) origin.
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    if port is None or port == default:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """
    The browser Origins allowed to open a WebSocket.  No list means any Origin.  A request without
    an Origin header is not from a browser page and is allowed: the token is what protects the hub,
    the Origin check only stops other web pages from riding a browser's credentials.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed: set[str] = set()
        for origin in allowed:
            normalized = normalize_origin(origin)
            if normalized is None:
                raise ValueError(f"not an origin: {origin!r} (write it as https://host[:port])")
            self._allowed.add(normalized)

    def allows(self, origin: str | None) -> bool:
        if not self._allowed or origin is None:
            return True
        normalized = normalize_origin(origin)
        return normalized is not None and normalized in self._allowed

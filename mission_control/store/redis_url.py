# -*- test-case-name: tests.test_store_redis_url -*-
"""
Where the shared Redis is: C{--store redis://[[user]:password@]host[:port][/db][?prefix=P]}, or
C{rediss://} for TLS, read into a L{RedisURL}, and the Twisted client endpoint that reaches it.

Parsing is pure and strict so that the command line can turn a mistake into one usage line
before anything connects: an unknown query parameter is refused rather than ignored (a typo in
C{prefix} would otherwise put a hub into another hub's keys).  The password never appears in a
repr, a message or L{RedisURL.redacted}, and no error message echoes the URL, which holds it.

TLS verifies the server's certificate and host name, always: against the system's trust store,
or against the CA certificate named by C{?ca=/path/ca.pem} for a private CA.  There is no option
to turn verification off.

The key prefix (default C{mission-control}) lets one Redis hold several hubs; every key of a hub
is C{{<prefix>}:...}, so all of them hash to one slot (see L{mission_control.store.redis_scripts}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "mission-control"
#: The query parameters a Redis URL may carry.
PARAMETERS = ("prefix", "ca")

# Key prefixes: no braces (the prefix is the hash tag), no glob characters (cleaning up a prefix
# is a SCAN MATCH on it), no spaces or control characters.
_PREFIX_RE = re.compile(r"[A-Za-z0-9._:\-]{1,64}\Z")
PREFIX_RULE = "1-64 characters of A-Z a-z 0-9 . _ : -"


@dataclass(frozen=True)
class RedisURL:
    """
    A parsed Redis URL.

    @ivar tls: C{rediss://}: TLS with the server's certificate verified.
    @ivar ca: the path of a PEM file of the CA certificates to trust instead of the system's.
    @ivar prefix: the key prefix of this hub's keys.
    """

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    tls: bool = False
    prefix: str = DEFAULT_PREFIX
    ca: Optional[str] = None

    def redacted(self) -> str:
        """The URL to show in a log line: the password, if any, replaced by C{***}."""
        scheme = "rediss" if self.tls else "redis"
        user = ""
        if self.username is not None or self.password is not None:
            user = (self.username or "") + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?prefix={self.prefix}"
        if self.ca is not None:
            query += f"&ca={self.ca}"
        return f"{scheme}://{user}{host}:{self.port}/{self.db}{query}"

    def __str__(self) -> str:
        return self.redacted()

    def endpoint(self, reactor: IReactorTCP, timeout: float = 10.0) -> IStreamClientEndpoint:
        """
        The client endpoint of this Redis: TCP, with TLS over it for C{rediss://}.

        @raise ValueError: when the C{ca} file cannot be read or holds no certificate.
        """
        tcp = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if not self.tls:
            return tcp
        return wrapClientTLS(optionsForClientTLS(self.host, trustRoot=self.trust_root()), tcp)

    def trust_root(self) -> Any:
        """
        What the server's certificate must chain to: the C{ca} file's certificate, else the
        system's trust store.

        @raise ValueError: when the C{ca} file cannot be read or is not a PEM certificate.
        """
        if self.ca is None:
            return platformTrust()
        try:
            with open(self.ca, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ValueError(f"cannot read the Redis CA file {self.ca}: {e.strerror}") from None
        try:
            return Certificate.loadPEM(pem)
        except Exception:
            raise ValueError(f"the Redis CA file {self.ca} holds no PEM certificate") from None


def parse_redis_url(text: str) -> RedisURL:
    """
    Read C{redis://[[user]:password@]host[:port][/db][?prefix=P&ca=PATH]} (C{rediss://}: TLS).
    The user name and password may be percent-encoded.

    @raise ValueError: with one line saying what is wrong; it never repeats the URL.
    """
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise ValueError("bad Redis URL: it contains spaces or control characters")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError("bad Redis URL: it cannot be read as a URL") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("bad Redis URL: it must start with redis:// or rediss://")
    if parts.fragment or text.endswith("#"):
        raise ValueError("bad Redis URL: it must not have a #fragment")
    host = parts.hostname
    if not host:
        raise ValueError("bad Redis URL: it names no host")
    if parts.username and parts.password is None:
        raise ValueError("bad Redis URL: a user name needs a password (user:password@host)")
    return RedisURL(
        host=host,
        port=_port(parts.netloc),
        db=_db(parts.path),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
        **_query(parts.query, parts.scheme == "rediss"),
    )


def _port(netloc: str) -> int:
    """The port of C{netloc} (default 6379); read here, not by urlsplit, to word the error."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise ValueError("bad Redis URL: an IPv6 address must be closed with ]")
        rest = hostport[close + 1:]
    else:
        rest = hostport[hostport.find(":"):] if ":" in hostport else ""
    if not rest:
        return DEFAULT_PORT
    digits = rest[1:]
    if not rest.startswith(":") or not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise ValueError("bad Redis URL: the port must be a number from 1 to 65535")
    return int(digits)


def _db(path: str) -> int:
    """The database number of the URL's path: C{/3}; none (or C{/}) is 0."""
    number = path[1:] if path.startswith("/") else path
    if not number:
        return 0
    if not number.isdigit() or len(number) > 5:
        raise ValueError("bad Redis URL: the path must be a database number, as in /0")
    return int(number)


def _query(query: str, tls: bool) -> dict:
    """The C{prefix} and C{ca} of the URL's query; anything else is refused."""
    try:
        values = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("bad Redis URL: the query must be name=value pairs") from None
    unknown = sorted(name for name in values if name not in PARAMETERS)
    if unknown:
        shown = unknown[0] if _PREFIX_RE.match(unknown[0]) else "?"
        raise ValueError(f"bad Redis URL: unknown parameter {shown} (known: prefix, ca)")
    for name, given in values.items():
        if len(given) > 1:
            raise ValueError(f"bad Redis URL: {name} is given more than once")
    found: dict = {}
    if "prefix" in values:
        prefix = values["prefix"][0]
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"bad Redis URL: the prefix must be {PREFIX_RULE}")
        found["prefix"] = prefix
    if "ca" in values:
        if not tls:
            raise ValueError("bad Redis URL: ca is for rediss:// (TLS) only")
        if not values["ca"][0]:
            raise ValueError("bad Redis URL: ca must name a PEM file")
        found["ca"] = values["ca"][0]
    return found


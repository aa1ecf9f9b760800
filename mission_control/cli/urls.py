# -*- test-case-name: tests.test_cli -*-
"""
The hub's URL in the forms the commands need: its HTTP base for C{publish}, its WebSocket URL for
C{watch}, the query of a connection that resumes, and a form safe to show in messages.

Both forms are accepted everywhere, so one C{MISSION_CONTROL_URL} serves C{publish} and C{watch}.
A URL from the command line is never echoed: it may carry a token in its query.  All of it is pure
string work, checked while parsing.
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import SplitResult, quote, unquote_plus, urlsplit, urlunsplit

from twisted.python import usage

_HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def _split_url(value: str, option: str) -> SplitResult:
    """Split a URL from the command line; it is never echoed, as it may carry a token."""
    try:
        parts = urlsplit(value.strip())
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise usage.UsageError(f"{option} is not a valid URL") from None
    if parts.scheme.lower() not in _HTTP_SCHEMES:
        raise usage.UsageError(f"{option} must start with http://, https://, ws:// or wss://")
    if not parts.hostname:
        raise usage.UsageError(f"{option} has no host")
    if parts.username is not None or parts.password is not None:
        raise usage.UsageError(f"{option} must not hold a user name or password; use --token")
    if parts.fragment:
        raise usage.UsageError(f"{option} must not have a #fragment")
    return parts


def http_base_url(value: str, option: str = "--url") -> str:
    """
    The hub's HTTP base URL, C{http(s)://host[:port][/prefix]}.  A C{ws(s)://} URL is turned into
    the matching C{http(s)://} one, its trailing C{/ws} dropped.
    """
    parts = _split_url(value, option)
    scheme = parts.scheme.lower()
    if parts.query:
        raise usage.UsageError(f"{option} must not have a query for publish")
    path = parts.path.rstrip("/")
    if scheme in ("ws", "wss") and path.endswith("/ws"):
        path = path[: -len("/ws")]
    return urlunsplit((_HTTP_SCHEMES[scheme], parts.netloc, path, "", ""))


def websocket_url(value: str, option: str = "--url") -> str:
    """
    The hub's WebSocket URL.  An C{http(s)://} URL becomes C{ws(s)://}; an empty path (or C{/})
    becomes C{/ws}, where the hub serves it.
    """
    parts = _split_url(value, option)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((_WS_SCHEMES[parts.scheme.lower()], parts.netloc, path, parts.query, ""))


def display_url(url: str) -> str:
    """C{url} for messages: scheme, host, port and path; never the query, which may hold a token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def with_query_params(url: str, params: Sequence[tuple[str, str]]) -> str:
    """
    C{url} with C{params} set in its query: each replaces any parameter of the same name and is
    appended after the others, which are kept as they were written (order and encoding), so a
    C{?token=...} or anything else the hub is reached with survives.
    """
    if not params:
        return url
    parts = urlsplit(url)
    names = {name for name, _ in params}
    kept = [piece for piece in parts.query.split("&")
            if piece and unquote_plus(piece.partition("=")[0]) not in names]
    added = [f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params]
    return urlunsplit(parts._replace(query="&".join(kept + added)))


def resume_url(url: str, since: int | None = None, epoch: str | None = None,
               client: str | None = None) -> str:
    """
    The WebSocket URL of one connection: C{url} plus C{client=NAME} when the watcher is named,
    and C{since=SEQ&epoch=E} once it knows where it is in the hub's history (both or neither: a
    seq means nothing without the epoch it belongs to).
    """
    params: list[tuple[str, str]] = []
    if since is not None and epoch is not None:
        params += [("since", str(since)), ("epoch", epoch)]
    if client is not None:
        params.append(("client", client))
    return with_query_params(url, params)

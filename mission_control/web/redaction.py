# -*- test-case-name: tests.test_web_redaction,tests.test_hardening_http -*-
"""
Tokens kept out of the logs: L{redact} replaces every token in a text with C{[redacted]}, and
L{access_log_formatter} writes the access log's lines with the request line, the Referer and the
User-Agent redacted.

A token is recognised by what it looks like, not by where it is: anything shaped like a JWT, the
value after a C{token} name however it is spelled (C{%74oken}, C{;token=}, C{#token=}) and what
follows C{Bearer}.  Here on its own because the WebSocket's handshake log redacts the same way as
the site's access log.
"""

from __future__ import annotations

import re
from typing import Any, AnyStr

from twisted.web import http


# A token is recognised by what it looks like, not by where it is: a JWT (three
# base64url segments, the first one a JSON object: "eyJ"), the value after a name ending in
# "token" (each letter possibly percent-encoded, as Autobahn's query parsing decodes names), and
# whatever follows "Bearer".  Dots may be percent-encoded too.
_DOT = r"(?:\.|%2[Ee])"
_B64 = r"[A-Za-z0-9_\-]"
_JWT = r"eyJ" + _B64 + r"*" + _DOT + _B64 + r"+" + _DOT + _B64 + r"*"


def _spelled(word: str) -> str:
    """A pattern for C{word} with any of its letters percent-encoded (case-insensitive)."""
    return "".join(
        f"(?:{c}|%{ord(c.lower()):02x}|%{ord(c.upper()):02x})" for c in word
    )


_NAMED = (r"((?<![A-Za-z0-9])" r"(?:[A-Za-z0-9]+[_\-])?" + _spelled("token")
          + r"(?:\[\]|%5[Bb]%5[Dd])?\s*(?:=|%3[Dd]|:)\s*)[^&;#\s\"',]+")
_BEARER = r"(bearer(?:\s|%20|\+)+)[^\s\"',;]+"


class _Redactor:
    """The redaction patterns, compiled for C{bytes} or for C{str}."""

    def __init__(self, kind: type) -> None:
        def compile_(pattern: str, flags: int = 0) -> re.Pattern[Any]:
            source = pattern.encode("ascii") if kind is bytes else pattern
            return re.compile(source, flags)

        self.jwt = compile_(_JWT)
        self.named = compile_(_NAMED, re.IGNORECASE)
        self.bearer = compile_(_BEARER, re.IGNORECASE)
        # What every match above contains: text without any of it (most request lines) is
        # returned as it is, after one quick search instead of three substitutions.
        self.maybe = compile_(r"eyJ|oken|earer|%", re.IGNORECASE)
        self.marker: Any = b"[redacted]" if kind is bytes else "[redacted]"
        self.keep: Any = b"\\1" if kind is bytes else "\\1"

    def __call__(self, text: AnyStr) -> AnyStr:
        if self.maybe.search(text) is None:
            return text
        text = self.jwt.sub(self.marker, text)
        text = self.named.sub(self.keep + self.marker, text)
        return self.bearer.sub(self.keep + self.marker, text)


_redact_bytes = _Redactor(bytes)
_redact_str = _Redactor(str)


def redact(text: AnyStr) -> AnyStr:
    """
    C{text} (C{bytes} or C{str}: a URI, a header value, a log detail) with every token in it
    replaced by C{[redacted]}.
    """
    if isinstance(text, bytes):
        return _redact_bytes(text)
    return _redact_str(text)



class _RedactedRequest:
    """A view of a request for the access log formatter: its request line and headers redacted."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact(request.uri)
        self.method = redact(request.method)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        return redact(value) if value is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def access_log_formatter(timestamp: str, request: Any) -> str:
    """Combined log format, with any token in the request line, Referer or User-Agent redacted."""
    return http.combinedLogFormatter(timestamp, _RedactedRequest(request))

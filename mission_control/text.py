# -*- test-case-name: tests.test_text -*-
"""
What counts as text where text enters the hub: JSON from clients, and names in tokens.

Two rules, each written once:

  - L{decode_json}: the one strict JSON decoder for what clients send (HTTP bodies, WebSocket
    frames, token claims).  It refuses what Python's C{json} accepts but nothing downstream can
    use: C{NaN} and C{Infinity} (not JSON; browsers refuse them), an object with the same key
    twice (parsers disagree on which one wins, so a proxy and the hub could read two different
    requests), and lone surrogates such as C{"\\ud800"} (valid JSON escapes that are not Unicode
    text: they cannot be encoded back to UTF-8, so one stored event would break every later read).
  - L{is_display_text}: whether a user id or display name is safe to show and to log: no control
    characters, no line or paragraph separators, no invisible formatting characters (zero-width
    spaces, right-to-left overrides), no surrogates, private-use or unassigned code points.  Such
    characters let a name forge log lines or pass for another user's.
"""

from __future__ import annotations

import json
import re
import unicodedata

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: A JSON escape of a UTF-16 surrogate; only a decoded value with one needs the slow check.
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
#: Unicode categories refused in display text: controls, format characters (zero-width, bidi
#: controls), surrogates, private use, unassigned, line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class NotText(ValueError):
    """JSON that decodes but is not text the hub can store and send: the message says why."""


def has_control_characters(value: str) -> bool:
    """Whether C{value} holds a C0 or C1 control character (newlines and tabs included)."""
    return _CONTROL_RE.search(value) is not None


def is_display_text(value: str) -> bool:
    """Whether C{value} holds only characters that show as themselves (see the module docstring)."""
    if value.isascii():
        return not has_control_characters(value)
    return not any(unicodedata.category(c) in _HIDDEN_CATEGORIES for c in value)


def _refuse_constant(name: str) -> None:
    raise NotText(f"{name} is not JSON")


def _unique_keys(pairs: list) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise NotText("an object has the same key twice")
    return value


def _check_encodable(value: object) -> None:
    """Raise L{NotText} when a string anywhere in C{value} (keys too) holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = (item,)
        elif isinstance(item, dict):
            strings = tuple(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise NotText("a string holds a lone surrogate (\\ud800-\\udfff)") from None


def decode_json(data: bytes | str) -> object:
    """
    Decode C{data} as strict JSON (see the module docstring).  Bytes must be UTF-8 (RFC 8259):
    Python's C{json} would also guess UTF-16 and UTF-32.

    @raise NotText: for NaN or Infinity, a repeated key, or a lone surrogate.
    @raise ValueError: for anything that is not JSON (bad UTF-8 included: UnicodeDecodeError).
    @raise RecursionError: for absurd nesting.
    """
    if isinstance(data, bytes):
        text = data.decode("utf-8")
    else:
        text = data
        _check_encodable(text)
    value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    if _SURROGATE_ESCAPE_RE.search(text) is not None:
        _check_encodable(value)
    return value

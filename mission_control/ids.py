"""
The id rule shared by agents, sessions, client names and channel names (CONTRACT section 3):
1-128 characters of C{A-Z a-z 0-9 . _ : -}.
"""

from __future__ import annotations

import re

_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")


def is_valid_id(value: object) -> bool:
    """Whether C{value} is a string that follows the id rule."""
    return isinstance(value, str) and _ID_RE.match(value) is not None

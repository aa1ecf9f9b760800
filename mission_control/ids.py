# -*- test-case-name: tests.test_ids -*-
"""
The id rules.  The one shared by agents, sessions, client names and channel names: 1-128
characters of C{A-Z a-z 0-9 . _ : -}, and not C{.} or C{..} (a client that builds a URL path from
an id must not be walked up a directory).  And the epoch's, the name of one history: what the
hub accepts back in C{?epoch=}, and what C{watch} will send back.
"""

from __future__ import annotations

import re
from typing import TypeGuard

_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")
_EPOCH_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")

#: The rule in words, for error messages.
ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : - (not . or ..)"


def is_valid_id(value: object) -> TypeGuard[str]:
    """Whether C{value} is a string that follows the id rule."""
    return (isinstance(value, str) and _ID_RE.match(value) is not None
            and value not in (".", ".."))


def is_valid_epoch(value: object) -> TypeGuard[str]:
    """Whether C{value} can be an epoch: 1-64 characters of C{A-Z a-z 0-9 _ -}."""
    return isinstance(value, str) and _EPOCH_RE.match(value) is not None

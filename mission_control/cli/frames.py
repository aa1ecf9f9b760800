# -*- test-case-name: tests.test_cli_render,tests.test_cli_position -*-
"""
How C{watch} reads the values in the hub's frames, for the renderer and the stream position
alike: a frame's payload, and whether a value can be a seq or an epoch.  A hub's frames are
untrusted input: a value of the wrong kind is treated as absent, never trusted or sent back.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeGuard

from mission_control import ids



def payload(frame: Mapping[str, Any]) -> Mapping[str, Any]:
    """A frame's payload, or an empty one when the hub sent something else there."""
    value = frame.get("payload")
    return value if isinstance(value, Mapping) else {}


def is_seq(value: object) -> TypeGuard[int]:
    """Whether C{value} can be a seq: a whole number, not negative (and not C{True})."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 18


def is_epoch(value: object) -> TypeGuard[str]:
    """
    Whether C{value} can be an epoch the hub would accept back (L{ids.is_valid_epoch}).  Anything
    else from a hub is not used, rather than sent back and refused with a (final) 400.
    """
    return ids.is_valid_epoch(value)

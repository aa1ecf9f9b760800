# -*- test-case-name: tests.test_api_batch -*-
"""
The body of C{POST /api/events}, a batch publish: C{{"events": [{"type", "payload"}, ...]}}.

Pure functions the route in L{mission_control.web.api} applies before it hands the events to
L{Hub.publish_many}, which checks each one as a single publish is checked: the body's own shape,
which decides how many events the request is charged for, and the fingerprint its
C{Idempotency-Key} is compared by.
"""

from __future__ import annotations

from mission_control import events
from mission_control.events import ValidationError
from mission_control.hub.publishing import MAX_BATCH
from mission_control.text import has_control_characters

#: The fingerprint's event type: a batch is never the same request as a single publish.
BATCH = "batch"


def events_of(body: object) -> list:
    """
    The C{events} list of a batch body: an object with that one field, a list of 1 to
    L{MAX_BATCH} items (each checked later, by the hub).

    @raise ValidationError: for any other body.
    """
    if not isinstance(body, dict):
        raise ValidationError("payload must be a JSON object")
    unknown = sorted(name for name in body if name != "events" and body[name] is not None)
    if unknown:
        # Echoed as the payload rules echo field names: only short, printable ones.
        shown = all(len(name) <= 64 and not has_control_characters(name) for name in unknown)
        raise ValidationError(f"unknown field: {', '.join(unknown[:5])}" if shown
                              else "unknown field")
    items = body.get("events")
    if items is None:
        raise ValidationError("events is required")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ValidationError(f"events must be a list of 1 to {MAX_BATCH} events")
    return items


def fingerprint(body: object) -> str:
    """What a batch's Idempotency-Key is compared by: the whole body, as a JSON value."""
    return events.request_fingerprint(BATCH, None, body)

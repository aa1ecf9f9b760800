# -*- test-case-name: tests.test_api -*-
"""
JSON responses written as the client reads them.

A large read (every session of a busy fleet, a thousand history events) must not cost the hub its
whole size in memory for a client that does not read: the body is built from pieces (the store's
ready encodings of the latest state, or items encoded one at a time) and written one chunk per
demand of the transport, through a pull producer, so what waits for a slow reader is one chunk
and the transport's buffer.  Small bodies are written at once, as before.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

from twisted.internet.interfaces import IPullProducer
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from mission_control.events import json_array_chunks

#: Bodies up to this size are joined and written at once.
STREAM_THRESHOLD = 64 * 1024


class StreamedBody:
    """
    A JSON body made of C{head}, comma-separated C{items} and C{tail} (see L{json_array_chunks}).
    C{items} is any iterable of encoded values; it is consumed lazily once the body is known to
    be larger than L{STREAM_THRESHOLD}.
    """

    def __init__(self, head: bytes, items: Iterable[bytes], tail: bytes) -> None:
        self.head, self.items, self.tail = head, items, tail

    def write_to(self, request: Request) -> bytes | int:
        """
        Write the body to C{request}; returns what C{render} should return: the whole body when it
        is small (so it gets a Content-Length), else C{NOT_DONE_YET} while it streams (chunked).
        """
        items = iter(self.items)
        taken: list[bytes] = []
        size = len(self.head) + len(self.tail)
        for item in items:
            taken.append(item)
            size += len(item) + 1
            if size > STREAM_THRESHOLD:
                break
        else:
            return b"".join(json_array_chunks(self.head, taken, self.tail, size=size + 1))
        if request.method == b"HEAD":
            return b""
        chunks = json_array_chunks(self.head, itertools.chain(taken, items), self.tail)
        _ChunkProducer(request, chunks).start()
        return NOT_DONE_YET


@implementer(IPullProducer)
class _ChunkProducer:
    """Writes one chunk each time the request's transport asks for more (as static.File does)."""

    def __init__(self, request: Request, chunks: Iterator[bytes]) -> None:
        self._request = request
        self._chunks: Iterator[bytes] | None = chunks

    def start(self) -> None:
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._chunks is None:
            return
        chunk = next(self._chunks, None)
        if chunk is None:
            self._chunks = None
            self._request.unregisterProducer()
            self._request.finish()
        else:
            self._request.write(chunk)

    def stopProducing(self) -> None:
        """The client went away: drop what was left to send."""
        self._chunks = None

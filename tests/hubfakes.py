"""
Fakes for the hub's unit tests: connections that record what the hub hands them, a broker whose
appends are answered only when the test says so, and a test case with a hub on a L{Clock} and a
memory store.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mission_control.auth import TokenVerifier
from mission_control.hub import Hub, IConnection
from mission_control.hub.broker import IBroker, InProcessBroker
from mission_control.policy import Principal
from mission_control.store import MemoryStore

SECRET = b"k" * 32


FAR_FUTURE = 4_000_000_000.0


@implementer(IConnection)
class FakeConnection:
    """
    Records what the hub hands it, in order, in C{frames} (deliveries and direct sends alike);
    C{open} false models a half-closed connection, C{paused} a transport that takes no data.
    Queued frames (C{enqueue}) are recorded at C{flush}, or before anything sent after them, as
    the real connection writes them; C{writes} counts the writes of broadcast frames: the flushes
that wrote something and the deliveries of anything but the snapshot.
    """

    def __init__(self, sub="alice", role="viewer", expires_at=FAR_FUTURE):
        self.principal = Principal(sub=sub, role=role, name=None, expires_at=expires_at)
        self.connection_id = None
        self.delivered = []
        self.frames = []
        self.closed_with = None
        self.open = True
        self.paused = False
        self.queued = []
        self.writes = 0

    #: Never in the common case: every frame goes through deliver or flush, and is recorded.
    fast_send = None

    def write_rest(self, data, sent):
        raise AssertionError("write_rest without fast_send")

    def enqueue(self, prepared):
        self.queued.append(prepared)

    def flush(self):
        queued, self.queued = self.queued, []
        if queued and self.open:
            self.writes += 1
            for prepared in queued:
                self._record(prepared)

    def deliver(self, prepared):
        self.flush()
        if self._record(prepared):
            self.writes += 1

    def _record(self, prepared):
        """Record a frame if open; whether it was a broadcast (anything but the snapshot)."""
        if self.open:
            frame = json.loads(prepared)
            self.frames.append(frame)
            if frame["type"] != "snapshot":  # broadcasts only; the snapshot is in frames
                self.delivered.append(frame)
                return True
        return False

    def send_frame(self, frame):
        self.flush()
        self.frames.append(json.loads(json.dumps(frame)))

    def send_stream(self, chunks, done):
        self.deliver(b"".join(chunks))
        done()

    def close(self, code, reason):
        self.flush()
        self.closed_with = (code, reason)

    def bytes_waiting(self):
        return 0

    def types(self):
        return [f["type"] for f in self.frames]


class HeldStreamConnection(FakeConnection):
    """
    A connection whose streamed message completes only when the test says so; as the real one
    does, it keeps what is sent meanwhile (C{held}) until the message ends.
    """

    held = None

    def send_stream(self, chunks, done):
        self.flush()
        self._stream, self.held = (chunks, done), []

    def _record(self, prepared):
        if self.held is not None:
            self.held.append(("deliver", prepared))
        else:
            super()._record(prepared)

    def send_frame(self, frame):
        if self.held is not None:
            self.held.append(("send_frame", frame))
        else:
            super().send_frame(frame)

    def finish(self):
        (chunks, done), held, self.held = self._stream, self.held, None
        self.deliver(b"".join(chunks))
        for method, value in held:
            getattr(self, method)(value)
        done()


@implementer(IBroker)
class DeferredBroker:
    """
    A broker on a backbone that answers late: each append is held, unanswered, in C{pending}
    (its method's name, its arguments and the Deferred it returned) until the test calls
    L{fire}, which stores it through C{inner} (an L{InProcessBroker}: listeners told, then the
    Deferred fired), or L{fail}, which stores nothing and fails the Deferred.  Either may take a
    later append before an earlier one.
    """

    def __init__(self, inner):
        self.inner = inner
        self.pending: list[tuple[str, tuple, Deferred]] = []

    @classmethod
    def around(cls, testcase, hub):
        """Put a DeferredBroker between C{hub} and the broker it has, for this test only."""
        broker = cls(hub.broker)
        testcase.patch(hub, "broker", broker)
        testcase.patch(hub.commits, "broker", broker)
        return broker

    def _held(self, name, *args):
        d = Deferred()
        self.pending.append((name, args, d))
        return d

    def append(self, event_type, payload, ts, now, idempotency=None, claimant=None):
        return self._held("append", event_type, payload, ts, now, idempotency, claimant)

    def append_many(self, items, ts, now, idempotency=None, claimant=None):
        return self._held("append_many", items, ts, now, idempotency, claimant)

    def append_each(self, items, ts, now):
        return self._held("append_each", items, ts, now)

    def fire(self, index=0):
        """Store the append held at C{index} (the oldest by default) and answer it."""
        name, args, d = self.pending.pop(index)
        getattr(self.inner, name)(*args).chainDeferred(d)

    def fail(self, error, index=0):
        """Answer the append held at C{index} with C{error}; nothing is stored."""
        _, _, d = self.pending.pop(index)
        d.errback(error)

    def subscribe(self, listener):
        self.inner.subscribe(listener)

    def unsubscribe(self, listener):
        self.inner.unsubscribe(listener)


def deferred_broker(store):
    """A L{DeferredBroker} over an in-process broker of C{store}."""
    return DeferredBroker(InProcessBroker(store))


class HubTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.prepared = []

        def prepare(data):
            self.prepared.append(data)
            return data

        self.verifier = TokenVerifier(key=SECRET, algorithms=["HS256"], leeway=5)
        self.hub = Hub(self.clock, MemoryStore(), heartbeat_interval=30, prepare=prepare,
                       max_connections=5, max_connections_per_user=3, verifier=self.verifier,
                       message_rate=2, message_burst=4)

    def connect(self, sub="alice", role="viewer", request=None, **kwargs):
        conn = FakeConnection(sub, role, **kwargs)
        self.hub.register(conn, request)
        return conn

    def publish_for(self, *args, **kwargs):
        """L{Hub.publish_for}, its envelope once stored (the memory store stores at once)."""
        return self.successResultOf(self.hub.publish_for(*args, **kwargs))

    def publish_many(self, *args, **kwargs):
        """L{Hub.publish_many}, its envelopes once stored (the memory store stores at once)."""
        return self.successResultOf(self.hub.publish_many(*args, **kwargs))

    def publish(self, count=1, agent="a1"):
        """Publish C{count} statuses of C{agent} as an operator; their envelopes, once stored."""
        return [self.successResultOf(self.hub.publish_for(self.principal(), "agent:status",
                                                          {"status": "busy"}, agent))
                for _ in range(count)]

    def principal(self, sub="op", role="operator"):
        return Principal(sub=sub, role=role, name=None, expires_at=0)



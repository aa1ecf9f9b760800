# -*- test-case-name: tests.test_hub_catchup -*-
"""
Catching a new connection up: the snapshot of the latest state, or the replay of what it missed.

A connection without C{since} (and no saved position for its client name) gets a C{snapshot}.  A
resuming one gets the events after its C{since} from the store, then C{resumed}; when the history
cannot serve it (another epoch, events retention removed, a seq from the future:
L{mission_control.replay.resume_problem}, the rule C{GET /api/events} applies too) it gets
C{resumed} with C{recovered: false} and a snapshot instead.

Without gaps or duplicates: a catching-up client is registered (it counts against the limits) but
is not in the live fan-out while its history is replayed, page by page, one page per reactor turn
and only while its transport takes data.  When a page reaches the store's C{last_seq}, the client
goes live in that same turn: every event after that is delivered live, every one before it came
from the store.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterator, Protocol

from twisted.internet.interfaces import IReactorTime

from mission_control import channels, events, replay
from mission_control.hub.client import Client
from mission_control.hub.registry import Registry
from mission_control.metrics import Metrics
from mission_control.store import IEventStore, StoredEvent


class CatchUpNode(Protocol):
    """What catching up needs of the node (L{mission_control.hub.node.Hub} is one)."""

    clock: IReactorTime
    store: IEventStore
    registry: Registry[Client]
    #: Where resumes are counted, by outcome.
    metrics: Metrics
    #: Turns encoded bytes into what L{IConnection.deliver} takes.
    prepare: Callable[[bytes], Any]

    def frame(self, frame_type: str, payload: dict, reply_to: str | None = None) -> dict: ...

    def now(self) -> str: ...


class CatchUp:
    """Snapshots and replays for the clients of one node."""

    #: Events per replay page (one page per reactor turn).
    replay_batch = 500
    #: Snapshots larger than this many bytes are streamed (see L{send_snapshot}).
    snapshot_stream_threshold = 256 * 1024

    #: Bytes of replayed frames per write.
    replay_write_bytes = 64 * 1024
    #: Replayed frames kept prepared, by seq, for the next client that replays them.
    replay_cache_size = 2048
    #: Pages of history kept for the next client that replays from the same seq.
    replay_pages_cached = 16

    def __init__(self, node: CatchUpNode) -> None:
        self.node = node
        self._prepared_frames: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self._pages: OrderedDict[tuple[int, int, int], list[StoredEvent]] = OrderedDict()
        #: C{(lastSeq, the full snapshot up to its "ts":)}: shared by every connection that
        #: subscribes to everything, until the next event.
        self.snapshot_cache: tuple[int, bytes] | None = None

    def start(self, client: Client) -> None:
        """Send a new connection's snapshot, or start its resume."""
        store = self.node.store
        request, principal = client.request, client.conn.principal
        since, epoch = request.since, request.epoch
        if since is None and request.client is not None:
            since = store.position(principal.sub, request.client)
            epoch = store.epoch
        if since is None:
            self.send_snapshot(client)
            return
        problem = replay.resume_problem(since, epoch, store.epoch, store.first_seq,
                                        store.last_seq)
        if problem is not None:
            self._not_recovered(client, problem)
            return
        client.acked_seq = since
        client.replay_start = client.replay_cursor = since
        client.resuming = True
        self.node.registry.watch_presence(client)
        self.replay(client)

    def _not_recovered(self, client: Client, reason: str) -> None:
        store = self.node.store
        self.node.metrics.resumed(reason)
        client.replay_cursor = None
        client.conn.send_frame(
            self.node.frame("resumed", {"recovered": False, "reason": reason,
                                        "lastSeq": store.last_seq, "epoch": store.epoch})
        )
        self.send_snapshot(client)

    def replay(self, client: Client) -> None:
        """Send one page of history; schedule the next, or go live when caught up."""
        node, conn = self.node, client.conn
        if node.registry.get(conn) is not client:
            return  # closed meanwhile
        client.replay_waiting = False
        store = node.store
        cursor = client.replay_cursor
        assert cursor is not None
        page = self._page(cursor)
        if cursor < store.last_seq and (not page or page[0].seq != cursor + 1):
            # Retention removed events this client had not been sent yet: it must redraw.
            self._not_recovered(client, "too_old")
            return
        # The page leaves in writes of about replay_write_bytes, each frame encoded and framed
        # once for every client that replays it (after a restart the whole audience replays the
        # same seqs); the rest of a page waits for writable() once the transport pauses: a page
        # is not a byte limit.
        queued = 0
        for event in page:
            if queued >= self.replay_write_bytes:
                conn.flush()
                queued = 0
            if conn.paused:
                break
            if channels.covers(client.channels, channels.event_channels(event.type, event.payload)):
                prepared, size = self._prepared(event)
                conn.enqueue(prepared)
                queued += size
            cursor = client.replay_cursor = event.seq
        conn.flush()
        if cursor >= store.last_seq:
            if client.resuming:
                assert client.replay_start is not None
                node.metrics.resumed("recovered")
                conn.send_frame(
                    node.frame("resumed", {"recovered": True, "from": client.replay_start + 1,
                                           "to": cursor, "epoch": store.epoch})
                )
            client.replay_cursor = None
            node.registry.go_live(client)
        elif conn.paused:
            client.replay_waiting = True  # writable() picks it up
        else:
            node.clock.callLater(0, self.replay, client)

    def _page(self, cursor: int) -> list[StoredEvent]:
        """
        The page of history after C{cursor}: read from the store once for every client that
        replays from there while the history stays as it is (the key holds its bounds).
        """
        store = self.node.store
        key = (cursor, store.first_seq, store.last_seq)
        pages = self._pages
        page = pages.get(key)
        if page is None:
            page = pages[key] = store.events_after(cursor, self.replay_batch)
            if len(pages) > self.replay_pages_cached:
                pages.popitem(last=False)
        else:
            pages.move_to_end(key)
        return page

    def _prepared(self, event: StoredEvent) -> tuple[Any, int]:
        """C{event}'s frame as the node prepares it, and its size: made once per seq (LRU)."""
        cache = self._prepared_frames
        hit = cache.get(event.seq)
        if hit is not None:
            cache.move_to_end(event.seq)
            return hit
        data = events.encode_json(event.envelope())
        hit = cache[event.seq] = (self.node.prepare(data), len(data))
        if len(cache) > self.replay_cache_size:
            cache.popitem(last=False)
        return hit

    def writable(self, client: Client) -> None:
        """The client's transport takes data again: go on with a replay that waited for it."""
        if client.replay_waiting:
            client.replay_waiting = False
            self.node.clock.callLater(0, self.replay, client)

    def send_snapshot(self, client: Client) -> None:
        """
        Send the snapshot frame, the latest state of what the client is subscribed to as of one
        C{lastSeq}, then make it live.

        The state's entries carry their encodings, so a snapshot is a join of ready bytes; the
        full one is joined once per state, not once per connection (after a restart every
        dashboard reconnects at once).  A snapshot larger than L{snapshot_stream_threshold} is
        streamed as one message the connection writes as its client reads
        (L{IConnection.send_stream}): a client that does not read then holds a list of references
        to the state, not a copy of it.  Events published while it streams are sent from the
        history once it is done, before the client goes live, as a resume does.
        """
        node, conn = self.node, client.conn
        last_seq = node.store.last_seq
        full = {channels.AGENTS, channels.SESSIONS} <= client.channels
        cache = self.snapshot_cache
        if full and cache is not None and cache[0] == last_seq:
            conn.deliver(node.prepare(cache[1] + events.encode_json(node.now()) + b"}"))
            node.registry.go_live(client)
            return
        agents = self._entries(client.channels, events.AGENT_STATUS)
        sessions = self._entries(client.channels, events.SESSION_ACTIVITY)
        size = sum(map(len, agents)) + sum(map(len, sessions))
        if size > self.snapshot_stream_threshold:
            chunks = snapshot_chunks(agents, sessions, last_seq, node.now())

            def streamed() -> None:
                if node.registry.get(conn) is client:
                    client.replay_start = client.replay_cursor = last_seq
                    self.replay(client)

            conn.send_stream(chunks, streamed)
            node.registry.watch_presence(client)
            return
        head = b"".join(snapshot_chunks(agents, sessions, last_seq, None))
        if full:
            self.snapshot_cache = (last_seq, head)
        conn.deliver(node.prepare(head + events.encode_json(node.now()) + b"}"))
        node.registry.go_live(client)

    def _entries(self, subscribed: set[str], event_type: str) -> list[bytes]:
        """The encoded latest state of C{event_type} that C{subscribed} channels carry."""
        entries = self.node.store.state(event_type)
        whole = channels.AGENTS if event_type == events.AGENT_STATUS else channels.SESSIONS
        if whole in subscribed:
            return [entry.encoded for entry in entries]
        return [entry.encoded for entry in entries
                if channels.covers(subscribed, channels.event_channels(event_type, entry.payload))]


def snapshot_chunks(agents: list[bytes], sessions: list[bytes], last_seq: int,
                    ts: str | None, size: int = 64 * 1024) -> Iterator[bytes]:
    """
    The C{snapshot} frame, from the encoded entries of its two lists, in chunks of about C{size}
    bytes: C{{"type":"snapshot","payload":{"lastSeq":N,"agents":[...],"sessions":[...]},"ts":T}}.
    With C{ts} None the frame stops after C{"ts":}, for a caller that adds the time itself.
    """
    head = b'{"type":"snapshot","payload":{"lastSeq":%d,"agents":[' % last_seq
    tail = b']},"ts":' + (b"" if ts is None else events.encode_json(ts) + b"}")
    yield from events.json_array_chunks(head, agents, b"", size)
    yield from events.json_array_chunks(b'],"sessions":[', sessions, tail, size)

# -*- test-case-name: tests.test_store -*-
"""
The durable store: one SQLite database file, the default (C{--store sqlite}, in the data dir).

Durability: the database runs in WAL mode with C{synchronous=NORMAL}.  Each L{SQLiteStore.append}
is one transaction (a batch, L{SQLiteStore.append_many}, and a group of single appends,
L{SQLiteStore.append_each}, are one each), and when it returns the event is in the write-ahead log in the operating
system's hands, so it survives the server process crashing or being killed with C{kill -9}.  It is
not fsynced on every commit, so a power failure or kernel crash can lose the last moments of
events (never the consistency of the database: it comes back as of some earlier commit).  That is
the promise we make, and it is what makes thousands of appends per second possible.

Calls are synchronous and short: the store runs on the reactor thread, and an append is a handful
of statements on one connection.  One process owns the file: the seq range and the latest state
are also kept in memory, so two hubs must not share a database.  Other processes may read it (a
backup, the C{sqlite3} shell); a busy timeout covers the rare moment one of them holds a lock.

The C{seq} column is C{INTEGER PRIMARY KEY AUTOINCREMENT}: SQLite never reuses a seq, even after
every event has been trimmed, and a rolled-back transaction consumes none, so the sequence is
gap-free and C{last_seq} is read back from C{sqlite_sequence} on open.

The file's settings, its schema and the upgrades of older versions are in
L{mission_control.store.schema}; this module is the store that reads and writes it.  It is nearer
500 lines than 400 lines because each of its queries stays beside the one method that runs it, the
batch and group appends' included: moving the statements away to shorten it would split every operation of
the store across two files.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Tuple

from zope.interface import implementer

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY, encode_json
from mission_control.store.interface import (
    IDEMPOTENCY_WINDOW,
    EachItem,
    EachResult,
    Idempotency,
    IdempotencyConflict,
    IEventStore,
    Retention,
    StoredEvent,
)
from mission_control.store.latest import LatestState, LatestStateReads
from mission_control.store.rules import (
    STATE_KEY_FIELDS,
    check_retention,
    is_live,
    is_match,
    new_epoch,
    scan_window,
    state_key,
)
from mission_control.store.schema import configure, create_private_file, describe, migrate, unusable

# The statements of an append, prepared once by the connection's statement cache.
_FIND_KEY = (
    "SELECT fingerprint, seq, type, payload, ts, created FROM idempotency "
    "WHERE user = ? AND key = ?"
)
_INSERT_EVENT = "INSERT INTO events (type, payload, ts, created) VALUES (?, ?, ?, ?)"
_UPSERT_LATEST = (
    "INSERT INTO latest (kind, key, payload, seq, updated) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    "payload = excluded.payload, seq = excluded.seq, updated = excluded.updated"
)
_CLAIM_SESSION = (
    "INSERT INTO session_owners (session, agent, seq) VALUES (?, ?, ?) "
    "ON CONFLICT (session) DO UPDATE SET seq = excluded.seq"
)
_TOUCH_SESSION = "UPDATE session_owners SET seq = ? WHERE session = ?"
_RECORD_KEY = (
    "INSERT OR REPLACE INTO idempotency (user, key, fingerprint, seq, created, type, payload, ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The C{type} of an idempotency row that answers a batch: its C{seq} is the batch's first, its
#: C{payload} the JSON list of C{[type, payload]} of every event, in seq order.
_BATCH = "batch"

#: An event about to be inserted: its type, payload, state key and JSON text.
_Row = Tuple[str, dict, str, str]


def read_boot_id() -> Optional[str]:
    """This boot of the machine (Linux), or None where that cannot be told."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


@implementer(IEventStore)
class SQLiteStore(LatestStateReads):
    """
    L{IEventStore} in one SQLite database file.

    Reads of the latest state are served from memory: a copy, bounded like the table, loaded
    when the database is opened and moved only after a commit.  A snapshot goes to every client
    that connects, and decoding thousands of payloads for each would stall the reactor.

    @ivar path: the database file.
    @ivar epoch: names this database's history: created with the database, so it changes only when
        the file is lost (deleted, replaced by a new one).
    """

    def __init__(
        self,
        path: str,
        retention: Retention = Retention(),
        boot_id: Optional[Callable[[], Optional[str]]] = None,
    ) -> None:
        """
        Open the database at C{path}, creating it (and its directory) when missing.  The file is
        created readable and writable by its owner only (0600); SQLite gives its WAL and shared
        memory files the same mode.

        @raise ValueError: when C{path} is not a usable database: not SQLite, corrupt, written by
            a newer version, or a file that cannot be opened.  The message is one line.
        """
        check_retention(retention)
        self.path = path
        self._boot_id = boot_id or read_boot_id
        #: Why the epoch was renewed at open, or None (see L{_check_last_run}).
        self.epoch_renewed: Optional[str] = None
        self.retention = retention
        self._caps = {AGENT_STATUS: retention.max_agents, SESSION_ACTIVITY: retention.max_sessions}
        self._db: Optional[sqlite3.Connection] = None
        # Latest-state keys forgotten in memory whose rows the next trim deletes.
        self._forgotten: set[tuple[str, str]] = set()
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            self.close()
            raise unusable(path, describe(e)) from None
        except OSError as e:
            self.close()
            raise unusable(path, e.strerror or str(e)) from None
        except ValueError:
            self.close()
            raise

    # Opening

    def _open(self) -> None:
        """Connect, check or create the schema, and read the epoch and the seq range."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        create_private_file(self.path)
        # Autocommit mode: transactions are begun and committed explicitly (see _transaction).
        db = self._db = sqlite3.connect(self.path, isolation_level=None)
        configure(db, self.path)
        with self._transaction():
            migrate(db, self.path)
            self._check_last_run(db)
        self.epoch: str = db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()[0]
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._last_seq: int = row[0] if row else 0
        self._first_stored = self._min_stored_seq()
        self._latest = self._load_latest(db)

    def _load_latest(self, db: sqlite3.Connection) -> LatestState:
        """The latest-state table, decoded once, in the order it was updated."""
        latest = LatestState(self.retention)
        for kind, key, payload in db.execute("SELECT kind, key, payload FROM latest ORDER BY seq"):
            for gone in latest.set(kind, key, json.loads(payload), payload.encode("utf-8")):
                self._forgotten.add((kind, gone))
        return latest

    def _check_last_run(self, db: sqlite3.Connection) -> None:
        """
        Renew the epoch when the machine restarted while the database was open.

        synchronous=NORMAL makes a commit survive the death of the process, not of the machine: a
        power cut may take the last commits with it, and their seqs would then be handed out
        again.  A client that saw them must redraw, so the history gets a new epoch.  A kill -9
        (same boot) or a clean stop (marked at close) keeps it.
        """
        meta = dict(db.execute("SELECT name, value FROM meta WHERE name IN ('open', 'boot')"))
        boot = self._boot_id()
        if meta.get("open") == "1" and boot is not None and meta.get("boot") not in (None, boot):
            db.execute("UPDATE meta SET value = ? WHERE name = 'epoch'", (new_epoch(),))
            self.epoch_renewed = "the machine restarted while the store was open"
        for name, value in (("open", "1"), ("boot", boot or "")):
            db.execute("INSERT INTO meta (name, value) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """
        One write transaction: committed when the block ends, rolled back when it raises, so a
        failed append leaves no trace (and consumes no seq).
        """
        db = self._open_db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _open_db(self) -> sqlite3.Connection:
        """The connection, or a clear error once the store is closed."""
        if self._db is None:
            raise sqlite3.ProgrammingError("the store is closed")
        return self._db

    def _min_stored_seq(self) -> Optional[int]:
        """The lowest seq still in the events table, or C{None} when it is empty."""
        return self._open_db().execute("SELECT MIN(seq) FROM events").fetchone()[0]

    # The seq range

    @property
    def last_seq(self) -> int:
        """The seq of the newest event ever appended, 0 before the first."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """
        The seq of the oldest retained event; C{last_seq + 1} when none is.  Events past
        C{max_events} count as gone at once, before L{trim} deletes their rows.
        """
        stored = self._last_seq + 1 if self._first_stored is None else self._first_stored
        return max(stored, self._last_seq + 1 - self.retention.max_events)

    # Appending

    def append(
        self,
        event_type: str,
        payload: dict,
        ts: str,
        now: float,
        idempotency: Optional[Idempotency] = None,
    ) -> tuple[StoredEvent, bool]:
        """
        One transaction: find a live idempotency key, else insert the event (which assigns its
        seq), make it the latest state of its agent or session, and record the key: a group of
        one (L{append_each}), its failure raised.  See L{IEventStore.append}.
        """
        result = self.append_each([(event_type, payload, idempotency)], ts, now)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def append_many(
        self,
        items: Sequence[tuple[str, dict]],
        ts: str,
        now: float,
        idempotency: Optional[Idempotency] = None,
    ) -> tuple[list[StoredEvent], bool]:
        """
        One transaction for the whole batch: each event inserted as L{append} inserts one, in
        order, and the key recorded with all of their envelopes; a failure anywhere rolls all of
        it back.  See L{IEventStore.append_many}.
        """
        if not items:
            raise ValueError("a batch needs at least one event")
        rows = [self._row(kind, payload) for kind, payload in items]
        with self._transaction() as db:
            if idempotency is not None:
                repeat = self._repeat(db, idempotency, now, batch=True)
                if repeat is not None:
                    return repeat, False
            for row in rows:
                seq = self._insert(db, row, ts, now)
            first = seq - len(rows) + 1
            if idempotency is not None:
                user, idem_key, fingerprint = idempotency
                envelopes = "[" + ",".join(
                    f'[{encode_json(kind).decode()},{text}]' for kind, _, _, text in rows) + "]"
                db.execute(_RECORD_KEY, (user, idem_key, fingerprint, first, now, _BATCH,
                                         envelopes, ts))
        return self._committed(rows, seq, ts), True

    def append_each(self, items: Sequence[EachItem], ts: str,
                    now: float) -> list[EachResult]:
        """
        One transaction for a group of single appends: each key looked up (the group's own
        earlier keys included: they are recorded in the same transaction) and each new event
        inserted as L{append} does it; an item that fails alone is answered with its exception.
        A failure of the database rolls all of it back.  See L{IEventStore.append_each}.
        """
        results: list[Optional[EachResult]] = []
        rows: list[Optional[_Row]] = []
        for event_type, payload, *_ in items:
            try:
                rows.append(self._row(event_type, payload))
                results.append(None)
            except (TypeError, ValueError) as e:
                rows.append(None)
                results.append(e)
        inserted: list[_Row] = []
        seq = self._last_seq
        with self._transaction() as db:
            for index, row in enumerate(rows):
                idempotency = items[index][2]
                if row is None:
                    continue
                if idempotency is not None:
                    try:
                        repeat = self._repeat(db, idempotency, now, batch=False)
                    except IdempotencyConflict as e:
                        results[index] = e
                        continue
                    if repeat is not None:
                        results[index] = (repeat[0], False)
                        continue
                seq = self._insert(db, row, ts, now)
                inserted.append(row)
                if idempotency is not None:
                    user, idem_key, fingerprint = idempotency
                    db.execute(_RECORD_KEY, (user, idem_key, fingerprint, seq, now, row[0],
                                             row[3], ts))
        created = iter(self._committed(inserted, seq, ts) if inserted else ())
        return [(next(created), True) if result is None else result for result in results]

    @staticmethod
    def _row(event_type: str, payload: dict) -> _Row:
        """What an append writes of one event: its type, payload, state key and encoding."""
        return (event_type, payload, state_key(event_type, payload),
                encode_json(payload).decode("utf-8"))

    @staticmethod
    def _insert(db: sqlite3.Connection, row: _Row, ts: str, now: float) -> int:
        """Insert one event in the open transaction, with its latest state and owner; its seq."""
        event_type, payload, key, encoded = row
        seq = db.execute(_INSERT_EVENT, (event_type, encoded, ts, now)).lastrowid
        assert seq is not None  # an INSERT into a table with rowids always sets it
        db.execute(_UPSERT_LATEST, (event_type, key, encoded, seq, now))
        if event_type == SESSION_ACTIVITY:
            agent = payload.get("agentId")
            if agent is not None:
                db.execute(_CLAIM_SESSION, (key, agent, seq))
            else:
                db.execute(_TOUCH_SESSION, (seq, key))
        return seq

    def _committed(self, rows: list[_Row], last: int, ts: str) -> list[StoredEvent]:
        """Committed: only now does the in-memory view move, over C{rows} ending at C{last}."""
        first = last - len(rows) + 1
        self._last_seq = last
        if self._first_stored is None:
            self._first_stored = first
        stored = []
        for seq, (event_type, payload, key, encoded) in enumerate(rows, first):
            for gone in self._latest.set(event_type, key, payload, encoded.encode("utf-8")):
                self._forgotten.add((event_type, gone))
            stored.append(StoredEvent(seq=seq, type=event_type, payload=payload, ts=ts))
        return stored

    def _repeat(
        self, db: sqlite3.Connection, idempotency: Idempotency, now: float, batch: bool
    ) -> Optional[list[StoredEvent]]:
        """
        The events a live earlier use of this key produced (one for a single append), or
        C{None}.  The events are kept with the key, so a repeat is answered even after they left
        the history.

        @raise IdempotencyConflict: when the key was used for a different request, or for a
            batch where this is a single append (or the other way round).
        """
        user, idem_key, fingerprint = idempotency
        row = db.execute(_FIND_KEY, (user, idem_key)).fetchone()
        if row is None or not is_live(row[5], now):
            return None
        if row[0] != fingerprint or (row[2] == _BATCH) != batch:
            raise IdempotencyConflict("the Idempotency-Key was used for a different request")
        first, text, ts = row[1], row[3], row[4]
        if not batch:
            return [StoredEvent(seq=first, type=row[2], payload=json.loads(text), ts=ts)]
        return [StoredEvent(seq=seq, type=event_type, payload=payload, ts=ts)
                for seq, (event_type, payload) in enumerate(json.loads(text), first)]

    # Reading

    def events_after(self, seq: int, limit: int) -> list[StoredEvent]:
        """Up to C{limit} retained events with a seq greater than C{seq}, oldest first."""
        if limit <= 0:
            return []
        rows = self._open_db().execute(
            "SELECT seq, type, payload, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (max(seq, self.first_seq - 1), limit),
        )
        return [
            StoredEvent(seq=seq, type=kind, payload=json.loads(payload), ts=ts)
            for seq, kind, payload, ts in rows
        ]

    def events_matching(self, seq: int, limit: int, scan: int, event_type: str,
                        subject: Optional[str] = None) -> tuple[list[StoredEvent], int]:
        """
        The events of C{event_type} (and C{subject}) among the C{scan} seqs after C{seq}, at most
        C{limit}, and the seq looked at last.  See L{IEventStore.events_matching}.

        The window is a range of the primary key and the type is a column, so only the rows of
        that type are read; with a C{subject}, a payload whose text does not hold the field as
        L{encode_json} wrote it (C{"sessionId":"s1"}) cannot match and is not decoded.  The
        decoded payload decides.
        """
        if limit <= 0:
            return [], seq
        start, end = scan_window(seq, scan, self.first_seq, self._last_seq)
        if start >= end:
            return [], max(seq, end)
        needle = None
        if subject is not None:
            field = STATE_KEY_FIELDS.get(event_type, "")
            needle = encode_json(field).decode("utf-8") + ":" + encode_json(subject).decode("utf-8")
        rows = self._open_db().execute(
            "SELECT seq, payload, ts FROM events WHERE seq > ? AND seq <= ? AND type = ? "
            "ORDER BY seq",
            (start, end, event_type),
        )
        found: list[StoredEvent] = []
        try:
            for row_seq, text, ts in rows:
                if needle is not None and needle not in text:
                    continue
                payload = json.loads(text)
                if is_match(event_type, payload, event_type, subject):
                    found.append(StoredEvent(seq=row_seq, type=event_type, payload=payload, ts=ts))
                    if len(found) == limit:
                        return found, row_seq
        finally:
            rows.close()  # a statement left open would hold its read snapshot of the database
        return found, end

    def session_owner(self, session_id: str) -> Optional[str]:
        """The agent C{session_id} belongs to, or C{None} (see L{IEventStore.session_owner})."""
        row = self._open_db().execute(
            "SELECT agent FROM session_owners WHERE session = ?", (session_id,)
        ).fetchone()
        return None if row is None else row[0]

    # Retention

    def trim(self, now: float) -> None:
        """
        In one transaction, delete: events past C{max_events}; events older than C{max_age} from
        the front of the history (so what is retained stays one unbroken range of seqs, even if
        the clock stepped back); latest-state rows past the caps; idempotency keys older than
        L{IDEMPOTENCY_WINDOW}; client positions not updated within C{max_age}, since a
        position older than the history it points into cannot resume; and the owners of
        sessions left in neither the history nor the latest state.
        """
        cutoff = now - self.retention.max_age
        forgotten = [(kind, key) for kind, key in self._forgotten
                     if self._latest.get(kind, key) is None]
        with self._transaction() as db:
            db.execute(
                "DELETE FROM events WHERE seq <= ?", (self._last_seq - self.retention.max_events,)
            )
            db.execute(
                "DELETE FROM events WHERE seq < COALESCE("
                "(SELECT seq FROM events WHERE created >= ? ORDER BY seq LIMIT 1), ?)",
                (cutoff, self._last_seq + 1),
            )
            for kind, cap in self._caps.items():
                self._trim_latest(db, kind, cap)
            db.executemany("DELETE FROM latest WHERE kind = ? AND key = ?", forgotten)
            db.execute("DELETE FROM idempotency WHERE created <= ?", (now - IDEMPOTENCY_WINDOW,))
            db.execute("DELETE FROM positions WHERE updated < ?", (cutoff,))
            first = self._min_stored_seq()
            retained = max(self._last_seq + 1 if first is None else first,
                           self._last_seq + 1 - self.retention.max_events)
            db.execute(
                "DELETE FROM session_owners WHERE seq < ? AND session NOT IN "
                "(SELECT key FROM latest WHERE kind = ?)",
                (retained, SESSION_ACTIVITY),
            )
        self._first_stored = first
        self._forgotten.clear()

    @staticmethod
    def _trim_latest(db: sqlite3.Connection, kind: str, cap: int) -> None:
        """Delete the C{kind} rows beyond the C{cap} most recently updated."""
        if cap <= 0:
            db.execute("DELETE FROM latest WHERE kind = ?", (kind,))
            return
        db.execute(
            "DELETE FROM latest WHERE kind = ? AND seq < "
            "(SELECT seq FROM latest WHERE kind = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (kind, kind, cap - 1),
        )

    # Client positions

    def save_position(self, user: str, client: str, seq: int, now: float) -> None:
        """Remember that C{user}'s client named C{client} has processed everything up to C{seq}."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO positions (user, client, seq, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user, client) DO UPDATE SET seq = excluded.seq, "
                "updated = excluded.updated",
                (user, client, seq, now),
            )

    def position(self, user: str, client: str) -> Optional[int]:
        """The seq saved for this user and client name, or C{None}."""
        row = self._open_db().execute(
            "SELECT seq FROM positions WHERE user = ? AND client = ?", (user, client)
        ).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        """
        Close the connection; the last close checkpoints the write-ahead log into the database
        file.  Safe to call twice.
        """
        db, self._db = self._db, None
        if db is not None:
            try:
                db.execute("UPDATE meta SET value = '0' WHERE name = 'open'")
            except sqlite3.Error:
                pass  # closing must not fail; an unmarked close only risks a new epoch
            db.close()

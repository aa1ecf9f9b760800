# -*- test-case-name: tests.test_store -*-
"""
The SQLite store's database file: the settings it is opened with, its schema and the schema's
version, the upgrade of a database written by an older version, and the one-line refusal of a
file the store cannot use (not SQLite, corrupt, another application's, or from a newer version).

The version is C{PRAGMA user_version}.  L{migrate} creates the schema in a new file and upgrades
an older one in place, inside the transaction the store opens it in; a database written by a newer
version of mission-control is refused rather than misread.  L{mission_control.store.sqlite} is the
store itself.
"""

from __future__ import annotations

import json
import os
import sqlite3

from mission_control.events import SESSION_ACTIVITY
from mission_control.store.rules import new_epoch

#: The schema this code reads and writes, kept in C{PRAGMA user_version}.  Version 2 added the
#: owners of sessions (L{SCHEMA_2}); a version 1 database is upgraded when it is opened.
SCHEMA_VERSION = 2

#: How long to wait for a lock another process holds, in milliseconds.
BUSY_TIMEOUT_MS = 5000

#: Past this size, the write-ahead log is truncated back after a checkpoint.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

#: Version 1: the history, the latest state, client positions and idempotency keys.
SCHEMA_1 = """
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    ts TEXT NOT NULL,
    created REAL NOT NULL
);

-- No index on (kind, seq): the table is read once, when the store opens, and one index fewer
-- is one page fewer written per append.
CREATE TABLE latest (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;

CREATE TABLE positions (
    user TEXT NOT NULL,
    client TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (user, client)
) WITHOUT ROWID;

CREATE TABLE idempotency (
    user TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (user, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_by_created ON idempotency (created);
"""

#: Version 2: who owns each session, and the seq of its newest event.  An owner is forgotten only
#: once its session is in neither the history nor the latest state (see SQLiteStore.trim).
SCHEMA_2 = """
CREATE TABLE session_owners (
    session TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX session_owners_by_seq ON session_owners (seq);
"""


def unusable(path: str, why: str) -> ValueError:
    """The one-line error for a database file the store cannot use."""
    return ValueError(f"cannot use {path} as the event store: {why}")


def describe(error: sqlite3.Error) -> str:
    """A short reason for a SQLite error met while opening the database."""
    text = str(error)
    if "not a database" in text:
        return "not a SQLite database"
    if "malformed" in text:
        return "the database is corrupt"
    return text


def create_private_file(path: str) -> None:
    """Create C{path} as an empty file readable by its owner only, unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        # The umask can only narrow the mode; this pins it to exactly 0600.
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run each statement of C{script} inside the current transaction (executescript commits)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def record_owners(db: sqlite3.Connection) -> None:
    """
    Fill the session owners of a database made before they were stored: the first agent each
    session's history names, else the agent its latest state names.
    """
    owners: dict[str, list] = {}
    rows = db.execute("SELECT seq, payload FROM events WHERE type = ? ORDER BY seq",
                      (SESSION_ACTIVITY,))
    for seq, text in rows:
        payload = json.loads(text)
        owner = owners.get(payload.get("sessionId"))
        if owner is not None:
            owner[1] = seq
        elif payload.get("agentId") is not None:
            owners[payload["sessionId"]] = [payload["agentId"], seq]
    for key, text, seq in db.execute("SELECT key, payload, seq FROM latest WHERE kind = ?",
                                     (SESSION_ACTIVITY,)):
        agent = json.loads(text).get("agentId")
        if key not in owners and agent is not None:
            owners[key] = [agent, seq]
    db.executemany("INSERT INTO session_owners (session, agent, seq) VALUES (?, ?, ?)",
                   [(session, agent, seq) for session, (agent, seq) in owners.items()])


def configure(db: sqlite3.Connection, path: str) -> None:
    """
    Set up a fresh connection to the database at C{path}: the busy timeout, an integrity check
    (L{check_integrity}), and the write-ahead log with C{synchronous=NORMAL} (the durability the
    store promises).

    @raise ValueError: when the file is corrupt or cannot be switched to WAL mode.
    """
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    check_integrity(db, path)
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise unusable(path, f"cannot switch it to WAL mode (it is in {mode} mode)")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")


def check_integrity(db: sqlite3.Connection, path: str) -> None:
    """
    Read every page once, so that a damaged file is refused at start rather than failing
    some later append or replay.
    """
    result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise unusable(path, "the database is corrupt")


def migrate(db: sqlite3.Connection, path: str) -> None:
    """
    Create the schema in a new database, or upgrade one of an older version in place; refuse
    one from elsewhere or from the future.  Runs inside the caller's transaction.

    @raise ValueError: for another application's database or a newer schema version.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise unusable(
            path,
            f"its schema version {version} is newer than this mission-control supports "
            f"({SCHEMA_VERSION}); upgrade mission-control",
        )
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if tables:
            raise unusable(path, "it is a SQLite database of some other application")
        execute_script(db, SCHEMA_1)
        db.execute("INSERT INTO meta (name, value) VALUES ('epoch', ?)", (new_epoch(),))
    if version < 2:
        execute_script(db, SCHEMA_2)
        record_owners(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

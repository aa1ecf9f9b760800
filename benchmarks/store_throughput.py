"""
Sustained append throughput and history paging speed of the event stores.

Appends realistic C{agent:status} and C{session:activity} payloads one at a time, each its own
committed transaction as the hub does it, first to L{MemoryStore} (the ceiling), then to
L{SQLiteStore} on a real file (WAL, synchronous=NORMAL: durable across a process crash), then
to SQLite again with an Idempotency-Key on every append.  Then it pages through the whole history
with C{events_after}, reads the latest state as a snapshot does, trims half of the history, and
reopens the file.

    python benchmarks/store_throughput.py --events 50000 --path /tmp/store-bench.db

"Sustained" is the slowest tenth of the run, not the average: write-ahead-log checkpoints land
in some tenths and not others, and the slowest tenth is what a burst has to live with.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY, format_timestamp
from mission_control.store import IEventStore, MemoryStore, Retention, SQLiteStore

STATUSES = ("online", "busy", "idle", "offline", "error")
ACTIVITIES = ("started", "message", "tool_call", "tool_result", "completed", "failed")
TOOLS = ("read_file", "write_file", "run_tests", "search", "shell")


def make_events(n: int, agents: int, sessions: int, seed: int) -> list[tuple[str, dict]]:
    """
    C{n} events shaped like a busy fleet's: a third statuses, two thirds session activity, with
    the optional fields (name, message, metadata, summary, detail) filled in as agents do.
    """
    rng = random.Random(seed)
    start = 1_800_000_000.0
    events = []
    for i in range(n):
        stamp = format_timestamp(start + i * 0.001)
        agent = f"agent-{rng.randrange(agents):04d}"
        if rng.random() < 1 / 3:
            events.append((AGENT_STATUS, {
                "agentId": agent,
                "status": rng.choice(STATUSES),
                "timestamp": stamp,
                "name": f"Builder {agent[-4:]}",
                "message": "running the integration suite on branch feature/resume",
                "metadata": {"model": "large-2", "tokens": rng.randrange(10**6),
                             "cpu": round(rng.random(), 3), "host": "worker-7"},
            }))
        else:
            tool = rng.choice(TOOLS)
            events.append((SESSION_ACTIVITY, {
                "sessionId": f"session-{rng.randrange(sessions):05d}",
                "activity": rng.choice(ACTIVITIES),
                "timestamp": stamp,
                "agentId": agent,
                "summary": f"called {tool} on src/mission_control/hub.py (lines 120-180)",
                "detail": {"tool": tool, "durationMs": rng.randrange(5000),
                           "args": {"path": "src/mission_control/hub.py", "limit": 200},
                           "exitCode": 0},
            }))
    return events


@dataclass
class AppendResult:
    """What one append run measured."""

    name: str
    events: int
    seconds: float
    slowest_tenth_rate: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def run_appends(
    name: str, store: IEventStore, events: list[tuple[str, dict]], idempotent: bool
) -> AppendResult:
    """Append every event, one transaction each, timing each append and each tenth of the run."""
    latencies = []
    tenth = max(1, len(events) // 10)
    tenth_rates = []
    clock = time.perf_counter
    begin = tenth_begin = clock()
    for i, (event_type, payload) in enumerate(events):
        key = ("bench", f"key-{i}", f"fingerprint-{i}") if idempotent else None
        now = time.time()
        t = clock()
        store.append(event_type, payload, payload["timestamp"], now, key)
        latencies.append(clock() - t)
        if (i + 1) % tenth == 0:
            end = clock()
            tenth_rates.append(tenth / (end - tenth_begin))
            tenth_begin = end
    seconds = clock() - begin
    return AppendResult(name, len(events), seconds, min(tenth_rates), latencies)


def page_through(store: IEventStore, page: int) -> tuple[int, float]:
    """Read the whole retained history with events_after, C{page} events a call."""
    count, after = 0, 0
    begin = time.perf_counter()
    while True:
        batch = store.events_after(after, page)
        if not batch:
            break
        count += len(batch)
        after = batch[-1].seq
    return count, time.perf_counter() - begin


def snapshot_time(name: str, store: IEventStore) -> tuple[str, str]:
    """How long reading every agent's and session's latest state takes (a snapshot's worth)."""
    size = len(store.agents()) + len(store.sessions())
    seconds = timed(lambda: (store.agents(), store.sessions()))
    return (f"{name}: agents() + sessions(), {size} entries", f"{seconds * 1e3:.1f} ms")


def timed(action: Callable[[], object]) -> float:
    """Seconds C{action} took."""
    begin = time.perf_counter()
    action()
    return time.perf_counter() - begin


def remove_database(path: str) -> None:
    """Delete the database and its WAL and shared-memory files, for a fresh start."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def report(results: list[AppendResult], extra: list[tuple[str, str]]) -> None:
    """Print the table."""
    print(f"{'store':<28}{'events':>8}{'events/s':>10}{'slowest 1/10':>14}"
          f"{'p50 us':>9}{'p99 us':>9}{'max ms':>9}")
    for r in results:
        print(f"{r.name:<28}{r.events:>8}{r.rate:>10,.0f}{r.slowest_tenth_rate:>14,.0f}"
              f"{r.percentile(0.5) * 1e6:>9.0f}{r.percentile(0.99) * 1e6:>9.0f}"
              f"{max(r.latencies) * 1e3:>9.1f}")
    print()
    for label, value in extra:
        print(f"{label:<44}{value}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--events", type=int, default=50_000, help="events per run")
    parser.add_argument("--path", default="store-bench.db",
                        help="SQLite file to use; it is deleted before and after each run")
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=5_000)
    parser.add_argument("--page", type=int, default=1_000, help="events_after page size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    events = make_events(args.events, args.agents, args.sessions, args.seed)
    retention = Retention(max_events=max(args.events, 1))
    results: list[AppendResult] = []
    extra: list[tuple[str, str]] = []

    memory = MemoryStore(retention)
    results.append(run_appends("memory", memory, events, idempotent=False))
    extra.append(snapshot_time("memory", memory))
    count, seconds = page_through(memory, args.page)
    extra.append((f"memory: events_after, pages of {args.page}", f"{count / seconds:,.0f}/s"))

    remove_database(args.path)
    store = SQLiteStore(args.path, retention)
    results.append(run_appends("sqlite", store, events, idempotent=False))
    extra.append(snapshot_time("sqlite", store))
    count, seconds = page_through(store, args.page)
    extra.append((f"sqlite: events_after, pages of {args.page}", f"{count / seconds:,.0f}/s"))
    seconds = timed(lambda: store.events_after(args.events - args.page, args.page))
    extra.append(("sqlite: one page at the end of the history", f"{seconds * 1e3:.1f} ms"))
    size = sum(os.path.getsize(f) for f in (args.path, args.path + "-wal") if os.path.exists(f))
    extra.append(("sqlite: database + WAL size", f"{size / 2**20:.1f} MiB"))
    store.retention = Retention(max_events=args.events // 2)
    seconds = timed(lambda: store.trim(time.time()))
    extra.append((f"sqlite: trim deleting {args.events - args.events // 2} events",
                  f"{seconds * 1e3:.0f} ms"))
    store.close()
    seconds = timed(lambda: SQLiteStore(args.path, retention).close())
    extra.append(("sqlite: reopen (integrity check included)", f"{seconds * 1e3:.0f} ms"))
    remove_database(args.path)

    store = SQLiteStore(args.path, retention)
    results.append(run_appends("sqlite + Idempotency-Key", store, events, idempotent=True))
    store.close()
    remove_database(args.path)

    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs, {args.events} events, mean payload "
          f"{statistics.mean(len(str(p)) for _, p in events[:1000]):.0f} characters\n")
    report(results, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())

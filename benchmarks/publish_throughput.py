"""
Publish throughput end to end: HTTP POSTs to a real hub process with the SQLite store.

    python benchmarks/publish_throughput.py [--seconds 10] [--clients 4]
                                            [--store sqlite|memory|redis://...] [--batch N]

Starts ``twistd -n mission-control`` on a free loopback port with a fresh data dir, then
``--clients`` threads each keep one HTTP/1.1 connection open and POST ``agent:status`` events
(about 200 bytes of JSON) as fast as the hub answers, for ``--seconds``.  Every counted event was
answered 200, which means it was committed to the store first.  With ``--batch N`` each request
is a ``POST /api/events`` of N smaller ``agent:status`` events (about 100 bytes each, so that a
batch stays within the 64 KiB body limit: at most about 600 of them), committed together.  Prints events/s over the whole run
and over its slowest second (the sustained figure), and the answer latency.

The hub is one Python process on one core; the client threads run on the other.  Figures are for
comparison between versions on the same machine, not promises.

With ``--store redis://...`` the hub is a node on that Redis, under a key prefix of its own (the
URL's ``prefix``, or ``bench``, and a random suffix: an empty history), counted as started once
``/healthz`` answers 200; its keys are deleted (SCAN and DEL) once it has stopped.  ``--clients 1``
sends one request at a time, so its latency is what one publish costs end to end: run it with
``--store sqlite`` and with a Redis URL for what Redis adds to each.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mission_control import keys, tokens  # noqa: E402
from mission_control.store.redis_url import parse_redis_url  # noqa: E402
from fanout import Redis, fresh_store_url  # noqa: E402  (benchmarks/fanout.py: SCAN and DEL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hub(port: int, data_dir: str, store: str) -> subprocess.Popen:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log = open(os.path.join(data_dir, "hub.log"), "wb")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--logfile=-", "mission-control",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir,
         "--store", store, "--heartbeat-interval", "0",
         # One token publishes everything here: lift the per-user limit, we measure the hub.
         "--max-publishes-per-second", "1000000"],
        stdout=log, stderr=subprocess.STDOUT, cwd=data_dir,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            # 503 "starting" until a shared store's history is loaded.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the hub did not start; see " + log.name)


def single_request(index, n):
    """One event's POST: its path and body."""
    body = json.dumps({"status": "busy", "message": f"step {n} of a long task",
                       "metadata": {"client": index, "n": n}})
    return f"/api/agents/agent-{index}-{n % 50}/status", body


def batch_request(index, n, size):
    """A batch of C{size} events as one POST /api/events: its path and body."""
    events = [{"type": "agent:status",
               "payload": {"agentId": f"agent-{index}-{i % 50}", "status": "busy",
                           "message": f"step {n}.{i}"}} for i in range(size)]
    return "/api/events", json.dumps({"events": events}, separators=(",", ":"))


def publisher(port, token, stop_at, counts, latencies, index, batch, failures):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    n = 0
    while time.monotonic() < stop_at:
        path, body = batch_request(index, n, batch) if batch else single_request(index, n)
        started = time.monotonic()
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status == 200:
            finished = time.monotonic()
            counts.extend([finished] * (batch or 1))
            latencies.append(finished - started)
        elif not failures:
            failures.append(f"{response.status} {answer[:200]!r}")
        n += 1
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--store", default="sqlite",
                        help="sqlite, memory, or a redis:// URL (a fresh key prefix, deleted "
                             "afterwards)")
    parser.add_argument("--batch", type=int, default=0,
                        help="events per request, as POST /api/events (default: one event per "
                             "request, to its own path)")
    args = parser.parse_args()
    if args.batch:
        size = len(batch_request(99, 10**6, args.batch)[1])
        if not 1 <= args.batch <= 1000 or size > 64 * 1024:
            raise SystemExit(f"--batch {args.batch}: {size} bytes a request; a batch holds 1 to "
                             "1000 events in at most 64 KiB")

    shared = args.store.startswith(("redis://", "rediss://"))
    if not shared and args.store not in ("sqlite", "memory"):
        raise SystemExit("--store must be sqlite, memory or a redis:// or rediss:// URL")
    store = fresh_store_url(args.store) if shared else args.store
    data_dir = tempfile.mkdtemp(prefix="mc-bench-")
    port = free_port()
    hub = start_hub(port, data_dir, store)
    try:
        secret = keys.read_secret(os.path.join(data_dir, "jwt-secret"))
        token = tokens.mint_token(secret, "bench", time.time(), ttl=3600, role="admin")
        counts: list[float] = []
        latencies: list[float] = []
        failures: list[str] = []
        started = time.monotonic()
        stop_at = started + args.seconds
        threads = [threading.Thread(target=publisher,
                                    args=(port, token, stop_at, counts, latencies, i,
                                          args.batch, failures))
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        per_second = [0] * (int(args.seconds) + 1)
        for moment in counts:
            per_second[min(int(moment - started), len(per_second) - 1)] += 1
        full_seconds = per_second[: int(args.seconds)] or per_second
        latencies.sort()

        def pct(p):
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

        if failures:
            raise SystemExit("a request was refused: " + failures[0])
        shown = parse_redis_url(args.store).redacted() if shared else store
        print(f"store={shown} clients={args.clients} "
              f"seconds={args.seconds:g} "
              f"batch={args.batch or 'none (one event per request)'}")
        print(f"events answered 200: {len(counts)}")
        print(f"events/s overall:    {len(counts) / elapsed:,.0f}")
        print(f"events/s slowest 1s: {min(full_seconds):,}")
        print(f"requests answered 200: {len(latencies)}")
        print(f"request latency ms p50/p99/max: {pct(0.5):.2f} / {pct(0.99):.2f} / {latencies[-1]*1000:.1f}")
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=15)
        shutil.rmtree(data_dir, ignore_errors=True)
        if shared:
            redis = Redis(store)
            try:
                redis.delete_prefix()
            finally:
                redis.close()


if __name__ == "__main__":
    main()

"""
Authenticated WebSocket handshakes against a real hub: how many a second, what each costs the
hub's CPU, and how much memory an idle connection holds.

    python benchmarks/handshakes.py [--connections 2000] [--workers 2] [--in-flight 200]
                                    [--repeat 1] [--idle] [--profile hub.prof] [--root DIR]
    python benchmarks/handshakes.py --restart [--connections 10000] [--missed 10]

Starts ``twistd -n mission-control`` (memory store, no demo) on a free loopback port with a fresh
data dir and its generated secret, mints one token per connection (a user each, as a fleet of
dashboards signed in by different people: every handshake verifies a token it has not seen),
then opens ``--connections`` WebSockets from ``--workers`` client processes, ``--in-flight`` at
a time in each, with raw asyncio sockets: the upgrade request with ``?token=``, then frames until
the ``welcome``.  A connection counts once its ``welcome`` arrived.  Reported, per run:

- **handshakes/s**: connections over the wall time from the first connect to the last welcome;
- **hub CPU us/handshake**: the hub process's user + system time over that same span
  (``/proc/PID/stat``), divided by the connections: the figure to compare versions with on a
  busy machine, where wall time depends on who else runs;
- **p50/p99 ms**: from the connect call to the welcome, per connection;
- **overflows**: connections the kernel dropped for a full listen queue meanwhile (its
  ``ListenOverflows`` counter, for the whole machine): each waits for its client's SYN retry.

With ``--idle`` the connections of the last run stay open (the clients answer pings) and the hub's
``VmRSS`` (``/proc/PID/status``) is read before they connect and once they are all idle: the
difference over the connections is the memory each idle connection holds.

``--restart`` measures a whole audience coming back after a restart.  The hub runs with its
durable SQLite store; 50 events are published in one ``POST /api/events`` batch; every client
connects and stays, remembering ``lastSeq`` and ``epoch`` from its ``welcome``.  Then the hub is
stopped with SIGTERM (each client gets close 1001) and started again on the same data directory.
Each client reconnects as a dashboard does, at once and then with jittered backoff (50 ms,
doubling to 1 s, +-50%) while nothing listens, with ``since`` set ``--missed`` seqs before its
``lastSeq`` (the events it lost in flight) and its ``epoch``, and counts as back when its
``resumed`` frame came, with ``recovered: true`` and exactly the missed events before it, in
order.  Reported: how many are back and checked, the seconds from the new hub accepting
connections (and from the SIGTERM) to the last ``resumed``, and the new hub's CPU over that span.

``--profile FILE`` runs the hub under ``cProfile``, enabled only while the clients connect and
disconnect (the start-up is left out), and writes the statistics to FILE for ``python -m pstats``; it prints the
top functions by own time and by cumulative time.  ``--root DIR`` puts DIR first on the hub's
``PYTHONPATH``, to run another checkout's code (an A/B comparison) with this script.

Linux only (``/proc``).  Figures compare versions on one machine; they are not promises.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from mission_control import keys, tokens  # noqa: E402

#: Runs twistd with a profiler that SIGUSR1 enables and SIGUSR2 disables and dumps.
PROFILED_TWISTD = """
import cProfile, signal, sys
profile, out = cProfile.Profile(), sys.argv.pop(1)
def start(*_): profile.enable()
def stop(*_):
    profile.disable()
    profile.dump_stats(out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def listen_overflows() -> int:
    """The kernel's count of connections dropped for a full listen queue (every socket's)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


def start_hub(port: int, data_dir: str, limit: int, root: str | None,
              profile: str | None, store: str = "memory") -> subprocess.Popen:
    """Start the hub with C{store} (C{"sqlite"}: the default durable store in C{data_dir})."""
    log = open(os.path.join(data_dir, "hub.log"), "ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
    path = [root] if root else [ROOT]
    env["PYTHONPATH"] = os.pathsep.join(path + ([env["PYTHONPATH"]] if "PYTHONPATH" in env
                                                else []))
    args = ["-n", "--pidfile=", "--logfile=-", "mission-control",
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir,
            "--max-connections", str(limit)] + ([] if store == "sqlite" else ["--store", store])
    if profile:
        command = [sys.executable, "-c", PROFILED_TWISTD, profile, *args]
    else:
        command = [os.path.join(os.path.dirname(sys.executable), "twistd"), *args]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir,
                            env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the hub did not start; see " + log.name)


# The client side: one process per worker, asyncio raw sockets.

class Peer:
    """One WebSocket client: upgrade, read frames, answer pings."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return head[0] & 0x0F, await self.reader.readexactly(length)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def idle(self) -> None:
        """Read and drop frames, answering pings, until the connection ends."""
        try:
            while True:
                opcode, payload = await self.frame()
                if opcode == 0x9:
                    self.send(0xA, payload)
                elif opcode == 0x8:
                    self.send(0x8, payload[:2])  # the closing handshake, as a browser answers
                    return
        except (asyncio.IncompleteReadError, OSError):
            return


async def handshake(port: int, token: str) -> Peer:
    peer = await open_ws(port, f"/ws?token={token}")
    opcode, payload = await peer.frame()
    if opcode != 0x1 or b'"welcome"' not in payload[:40]:
        raise RuntimeError(f"first frame is not a welcome: {payload[:60]!r}")
    return peer


async def connect_all(port: int, tokens_: list[str], in_flight: int, hold: bool,
                      start_at: float, conn) -> None:
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    errors: list[str] = []
    peers: list[Peer] = []

    async def one(token: str) -> None:
        async with gate:
            began = time.monotonic()
            try:
                peer = await handshake(port, token)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                return
            latencies.append(time.monotonic() - began)
            peers.append(peer)

    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(one(t) for t in tokens_))
    conn.send((time.time(), latencies, errors[:5], len(errors)))
    idlers = [asyncio.ensure_future(p.idle()) for p in peers]
    if hold:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # until told to close
    for peer in peers:
        peer.writer.close()
    await asyncio.gather(*idlers, return_exceptions=True)


def worker(port: int, tokens_: list[str], in_flight: int, hold: bool, start_at: float,
           conn) -> None:
    asyncio.run(connect_all(port, tokens_, in_flight, hold, start_at, conn))


def run_once(proc: subprocess.Popen, port: int, tokens_: list[str], args) -> dict:
    """Connect every token (one worker process per share), then close them (or hold them)."""
    ctx = multiprocessing.get_context("fork")
    shares = [tokens_[i::args.workers] for i in range(args.workers)]
    start_at = time.time() + 0.5
    pipes, procs = [], []
    for share in shares:
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=worker, args=(port, share, args.in_flight, args.idle, start_at,
                                             theirs))
        p.start()
        pipes.append(mine)
        procs.append(p)
    rss_before = rss_bytes(proc.pid)
    time.sleep(max(0.0, start_at - time.time() - 0.05))
    if args.profile:
        proc.send_signal(signal.SIGUSR1)
    cpu_before, overflows_before = cpu_seconds(proc.pid), listen_overflows()
    results = [pipe.recv() for pipe in pipes]
    cpu = cpu_seconds(proc.pid) - cpu_before
    overflows = listen_overflows() - overflows_before
    ended = max(r[0] for r in results)
    latencies = sorted(x for r in results for x in r[1])
    failed = sum(r[3] for r in results)
    for r in results:
        for error in r[2]:
            print("  error:", error, file=sys.stderr)
    done = len(latencies)
    report = {"done": done, "failed": failed, "overflows": overflows, "seconds": ended - start_at, "cpu": cpu,
              "p50": latencies[done // 2] if done else 0.0,
              "p99": latencies[min(done - 1, done * 99 // 100)] if done else 0.0}
    if args.idle:
        time.sleep(2.0)  # let the hub finish sending the snapshots and settle
        report["rss_before"] = rss_before
        report["rss_after"] = rss_bytes(proc.pid)
    if args.idle:
        for pipe in pipes:
            pipe.send("close")
    for p in procs:
        p.join(60)
    if args.profile:
        time.sleep(1.0)  # the hub has seen the connections go
        proc.send_signal(signal.SIGUSR2)
    return report


# --restart: a whole audience resuming after the hub restarts.

def publish_batch(port: int, token: str, count: int) -> None:
    """Publish C{count} agent:status events in one POST /api/events batch."""
    import json
    import urllib.request
    body = json.dumps({"events": [
        {"type": "agent:status", "payload": {"agentId": f"agent-{i}", "status": "busy",
                                             "timestamp": "2026-12-01T00:00:00Z"}}
        for i in range(count)]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/events", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.status != 200:
            raise SystemExit(f"publishing the history failed: {response.status}")


async def open_ws(port: int, path: str) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = await reader.readuntil(b"\r\n\r\n")
    if not response.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise ConnectionRefusedError(response.split(b"\r\n", 1)[0].decode(errors="replace"))
    return Peer(reader, writer)


async def stay_then_resume(port: int, token: str, missed: int, gate: asyncio.Semaphore,
                           connected: list, back: list, errors: list,
                           resumed_peers: list) -> None:
    """Connect, stay until the hub goes away, reconnect with since/epoch until resumed."""
    import json
    import random
    async with gate:
        try:
            peer = await open_ws(port, f"/ws?token={token}")
            _, payload = await peer.frame()
        except Exception as e:
            errors.append(f"connect: {type(e).__name__}: {e}")
            return
    welcome = json.loads(payload)["payload"]
    last_seq, epoch = welcome["lastSeq"], welcome["epoch"]
    since = max(0, last_seq - missed)
    connected.append(time.time())
    await peer.idle()  # until the close frame (1001) or the end of the stream
    peer.writer.close()
    delay = 0.05
    while True:
        try:
            peer = await open_ws(port, f"/ws?token={token}&since={since}&epoch={epoch}")
            break
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(1.0, delay * 2)
    seqs: list[int] = []
    try:
        while True:
            opcode, payload = await peer.frame()
            if opcode == 0x9:
                peer.send(0xA, payload)
                continue
            frame = json.loads(payload)
            if frame["type"] == "agent:status":
                seqs.append(frame["seq"])
            elif frame["type"] == "resumed":
                ok = frame["payload"].get("recovered") is True
                if seqs != list(range(since + 1, last_seq + 1)):
                    ok = False
                back.append((time.time(), ok))
                resumed_peers.append(peer)  # stays open, as a dashboard does, until the end
                return
    except Exception as e:
        errors.append(f"resume: {type(e).__name__}: {e}")
    peer.writer.close()


def restart_worker(port: int, tokens_: list[str], in_flight: int, missed: int, conn) -> None:
    async def main() -> None:
        gate = asyncio.Semaphore(in_flight)
        connected: list = []
        back: list = []
        errors: list = []
        peers: list[Peer] = []
        tasks = [asyncio.ensure_future(stay_then_resume(port, t, missed, gate, connected, back,
                                                        errors, peers)) for t in tokens_]
        while len(connected) + len(errors) < len(tokens_):
            await asyncio.sleep(0.05)
        conn.send(("connected", len(connected)))
        await asyncio.gather(*tasks)
        idlers = [asyncio.ensure_future(p.idle()) for p in peers]
        conn.send(("back", back, errors[:5], len(errors)))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to close
        for peer in peers:
            peer.writer.close()
        await asyncio.gather(*idlers, return_exceptions=True)
    asyncio.run(main())


def run_restart(args, secret, data_dir: str) -> None:
    port = free_port()
    limit = args.connections + 100
    proc = start_hub(port, data_dir, limit, args.root, None, store="sqlite")
    now = time.time()
    try:
        publish_batch(port, tokens.mint_token(secret, "history-writer", now, role="operator"),
                      max(args.missed, 50))
        tokens_ = [tokens.mint_token(secret, f"dashboard-{i}", now, role="viewer")
                   for i in range(args.connections)]
        ctx = multiprocessing.get_context("fork")
        pipes, procs = [], []
        for share in [tokens_[i::args.workers] for i in range(args.workers)]:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=restart_worker,
                            args=(port, share, args.in_flight, args.missed, theirs))
            p.start()
            pipes.append(mine)
            procs.append(p)
        connected = sum(pipe.recv()[1] for pipe in pipes)
        print(f"{connected:,} of {args.connections:,} connected; restarting the hub", flush=True)
        stopped_at = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        down_at = time.time()
        proc = start_hub(port, data_dir, limit, args.root, args.profile, store="sqlite")
        up_at = time.time()
        if args.profile:
            proc.send_signal(signal.SIGUSR1)
        cpu_before = cpu_seconds(proc.pid)
        results = [pipe.recv() for pipe in pipes]
        cpu = cpu_seconds(proc.pid) - cpu_before
        if args.profile:
            proc.send_signal(signal.SIGUSR2)
            time.sleep(1.0)
        for pipe in pipes:
            pipe.send("close")
        for p in procs:
            p.join(60)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    back = [b for r in results for b in r[1]]
    checked = sum(1 for _, ok in back if ok)
    for r in results:
        for error in r[2]:
            print("  error:", error, file=sys.stderr)
    last = max((t for t, _ in back), default=up_at)
    print(f"old hub stopped in {down_at - stopped_at:.2f} s; new hub accepting "
          f"{up_at - down_at:.2f} s later")
    print(f"back and resumed: {len(back):,} of {connected:,} ({checked:,} with recovered: true "
          f"and exactly the {args.missed} missed events, in order); "
          f"failed {sum(r[3] for r in results)}")
    print(f"last resumed {last - up_at:.2f} s after the new hub accepted connections "
          f"({last - stopped_at:.2f} s after the SIGTERM); "
          f"new hub CPU {cpu:.2f} s, {cpu / max(1, len(back)) * 1e6:,.0f} us per resume")


def print_profile(path: str, limit: int = 25) -> None:
    for order in ("tottime", "cumulative"):
        print(f"\nhub profile, top {limit} by {order}:")
        stats = pstats.Stats(path, stream=sys.stdout)
        stats.strip_dirs().sort_stats(order).print_stats(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--in-flight", type=int, default=200,
                        help="handshakes under way at once, per client process")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--idle", action="store_true",
                        help="hold the connections of each run open and measure the hub's RSS")
    parser.add_argument("--profile", metavar="FILE", help="run the hub under cProfile")
    parser.add_argument("--root", help="a checkout whose code the hub runs (default: this one)")
    parser.add_argument("--restart", action="store_true",
                        help="connect, restart the hub, and time every client's resume")
    parser.add_argument("--missed", type=int, default=10,
                        help="with --restart: events each client resumes from before its last")
    args = parser.parse_args()
    if args.profile:
        args.profile = os.path.abspath(args.profile)

    data_dir = tempfile.mkdtemp(prefix="handshake-bench-")
    if args.restart:
        try:
            secret, _, _ = keys.load_or_create_secret(data_dir)
            run_restart(args, secret, data_dir)
            if args.profile:
                print_profile(args.profile)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        return
    try:
        secret, _, _ = keys.load_or_create_secret(data_dir)
        port = free_port()
        proc = start_hub(port, data_dir, args.connections + 100, args.root, args.profile)
        try:
            print(f"{'run':>3} {'done':>6} {'failed':>6} {'seconds':>8} {'handshakes/s':>13} "
                  f"{'hub CPU us/hs':>14} {'p50 ms':>7} {'p99 ms':>7} {'overflows':>9}"
                  + (f" {'RSS KiB/conn':>13}" if args.idle else ""))
            rates, costs = [], []
            for run in range(1, args.repeat + 1):
                # New users each run: the hub remembers verified tokens, and a reconnecting
                # fleet's tokens are new to a restarted hub.
                now = time.time()
                tokens_ = [tokens.mint_token(secret, f"user-{run}-{i}", now, role="viewer")
                           for i in range(args.connections)]
                r = run_once(proc, port, tokens_, args)
                rate = r["done"] / r["seconds"] if r["seconds"] > 0 else 0.0
                cost = r["cpu"] / max(1, r["done"]) * 1e6
                rates.append(rate)
                costs.append(cost)
                line = (f"{run:>3} {r['done']:>6} {r['failed']:>6} {r['seconds']:>8.2f} "
                        f"{rate:>13,.0f} {cost:>14,.0f} {r['p50'] * 1e3:>7.1f} "
                        f"{r['p99'] * 1e3:>7.1f} {r['overflows']:>9}")
                if args.idle:
                    per = (r["rss_after"] - r["rss_before"]) / max(1, r["done"]) / 1024
                    line += f" {per:>13.2f}"
                print(line, flush=True)
                time.sleep(1.0)  # the closes of this run are not the next run's cost
            if args.repeat > 1:
                print(f"median: {statistics.median(rates):,.0f} handshakes/s, "
                      f"{statistics.median(costs):,.0f} hub CPU us/handshake")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.profile:
            print_profile(args.profile)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

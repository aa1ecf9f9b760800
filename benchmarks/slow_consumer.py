"""
What stalled WebSocket clients cost the hub, and whether they slow down everyone else.

Starts a real hub as a child process (C{twistd -n mission-control} on a loopback port, SQLite in a
temporary data directory, heartbeats off), twice:

  - run A: one fast client that reads everything;
  - run B: the same fast client plus N stalled clients.  A stalled client is a plain socket with a
    4 KiB receive buffer that completes the WebSocket handshake and then never reads again.

In both runs this process publishes C{--rate} events per second for C{--seconds} seconds over one
HTTP/1.1 keep-alive connection (C{POST /api/agents/ID/status}, pipelined, so a slow answer does not
hold back the next publish).  Each event carries, in its C{metadata}, the time it was written to
the socket; the fast client (Autobahn, in this same process, so on the same clock) subtracts it
from the time the frame arrives.  That is the end-to-end latency: HTTP parsing, validation, the
SQLite append, the fan-out, and both network hops.

    python benchmarks/slow_consumer.py [--stalled 5] [--rate 200] [--seconds 20] [--size 2048]
                                       [--max-outbound-bytes 1048576] [--timeline] [--keep]

Reading the output:

  - published / received / missing, duplicates, out of order: the fast client must receive every
    event that was answered 200, each seq once and in order, in both runs.
  - latency p50 ... max (ms): publish-to-receive at the fast client.  "in first W s" restricts
    both runs to the events published while run B's stalled clients were still connected (W is
    when the last one was cut off), which is where any harm would show.  The machine's own noise
    shows in run A; compare B with it, not with zero.
  - server CPU: user + system seconds the hub used while publishing (from /proc/PID/stat).
  - server RSS (MiB): VmRSS of the hub sampled every 100 ms: just before publishing (baseline),
    the highest sample (peak), after the last event was delivered and every stalled client cut
    off was gone (end).  VmHWM is the kernel's own high-water mark, which no sampler can miss.
    Run A's growth is what publishing alone costs (SQLite page cache, allocator); B's growth
    minus A's is what the stalled clients cost.
  - per stalled client (run B), in seconds after publishing started: when the hub logged "too
    slow" (with the bytes it reported waiting in its user-space buffers), when it logged the
    connection closed, and when the stalled socket saw the connection end, without reading: the
    4008 close frame is queued behind everything the client did not read, so it never arrives;
    after Autobahn's 5 s closing-handshake timeout the hub aborts the connection and the client
    sees a reset.  "kernel sndq" is the most the hub's kernel send queue held for that
    connection, "client rcvq" the most waiting unread at the client (from /proc/net/tcp).
    Events seen by the 100 ms poll are +- 0.1 s.
  - --timeline adds one line per second of each run: latency, RSS and hub CPU, and when the
    stalled clients were cut off.

The memory one stalled client can hold, by design: C{--max-outbound-bytes} counted from the
moment Twisted's transport pauses its producer, plus the ~64 KiB (the transport's bufferSize) it
held when it paused, plus at most one frame.  That is user space, and shows in RSS.  On top of it
comes the hub's kernel send buffer for the socket, which is not in RSS and is not counted by the
hub: Linux grows it on its own (net.ipv4.tcp_wmem, up to 4 MiB by default); on loopback it reaches
about 2 MB before the hub's own buffer starts to fill, which also delays the 4008.  Frames are
encoded once for all clients, so stalled clients can share frame objects and cost less RSS than
the bound until Twisted copies its pending writes into one private buffer per connection.

A benchmark is one file to read, copy and run on its own, so this one keeps its load generator,
its child process and its report together, at over 700 lines.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from mission_control import keys, tokens

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
SAMPLE_INTERVAL = 0.1
STALLED_RCVBUF = 4096
AGENTS = 4
MiB = 1024 * 1024

TCP_STATES = {1: "established", 7: "reset", 8: "FIN received"}
TOO_SLOW_RE = re.compile(r"connection (\w+) of (\S+): too slow \((\d+) bytes waiting\)")
CLOSED_RE = re.compile(r"connection (\w+) of (\S+) closed")


def now() -> float:
    return time.perf_counter()


def sleep(reactor, seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


# The hub, as a child process


class HubProcess:
    """C{twistd -n mission-control} on C{port}, logging to a file in C{workdir}."""

    def __init__(self, workdir: str, port: int, max_outbound_bytes: int) -> None:
        self.workdir = workdir
        self.port = port
        self.data_dir = os.path.join(workdir, "data")
        self.log_path = os.path.join(workdir, "twistd.log")
        self._log_offset = 0
        self._partial = b""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [PROJECT_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        self.popen = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={self.log_path}", "mission-control",
             "--listen", f"tcp:{port}:interface={HOST}", "--data-dir", self.data_dir,
             "--heartbeat-interval", "0", "--max-outbound-bytes", str(max_outbound_bytes)],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.pid = self.popen.pid

    @defer.inlineCallbacks
    def wait_ready(self, reactor, timeout: float = 30.0):
        ready = f"ws://{HOST}:{self.port}/ws"
        deadline = now() + timeout
        while now() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"the hub exited with {self.popen.returncode}:\n{self.log_text()}")
            if ready in self.log_text():
                return
            yield sleep(reactor, 0.05)
        raise RuntimeError(f"the hub did not start within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def new_log_lines(self) -> list[str]:
        """Complete lines appended to the log since the last call."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._log_offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]

    def memory(self) -> tuple[int, int] | None:
        """(VmRSS, VmHWM) in bytes, or None once the process is gone."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            return None
        return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)

    def cpu(self) -> float | None:
        """User plus system CPU seconds used so far, or None once the process is gone."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def token(self, sub: str, role: str | None = None) -> str:
        secret = keys.read_secret(os.path.join(self.data_dir, "jwt-secret"))
        return tokens.mint_token(secret, sub, time.time(), ttl=3600, role=role)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """{(local port, remote port): (send queue, receive queue)} for loopback IPv4 TCP sockets."""
    queues = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, queue = parts[1], parts[2], parts[4]
                tx, rx = queue.split(":")
                queues[(int(local.split(":")[1], 16), int(remote.split(":")[1], 16))] = (
                    int(tx, 16), int(rx, 16))
    except OSError:
        pass
    return queues


# The clients


class FastClient(WebSocketClientProtocol):
    """Reads every frame; records the latency of each benchmark event."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self.samples: list[tuple[float, float, int, int]] = []  # (sent at, latency, seq, bytes)

    def onMessage(self, payload, isBinary):
        received = now()
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "snapshot" and not self.ready.called:
            self.ready.callback(self)
        elif kind == "agent:status":
            sent = (frame["payload"].get("metadata") or {}).get("t")
            if sent is not None:
                self.samples.append((sent, received - sent, frame["seq"], len(payload)))

    def onClose(self, wasClean, code, reason):
        if not self.ready.called:
            self.ready.errback(ConnectionError(f"fast client closed: {code} {reason}"))
        self.closed.callback(code)


class Publisher(Protocol):
    """Pipelined POSTs over one keep-alive HTTP/1.1 connection."""

    def __init__(self, token: str, size: int) -> None:
        self.token = token
        self.pad = "x" * max(0, size - 235)  # the rest of the broadcast frame is ~235 bytes
        self.buffer = b""
        self.pending: deque = deque()
        self.seqs: list[int] = []
        self.failures: list[int] = []
        self.rtts: list[float] = []
        self.sent = 0

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def publish(self, index: int) -> None:
        sent = now()
        body = json.dumps(
            {"status": "busy", "message": f"benchmark event {index}",
             "metadata": {"t": sent, "i": index, "pad": self.pad}},
            separators=(",", ":"),
        ).encode()
        head = (
            f"POST /api/agents/bench-{index % AGENTS}/status HTTP/1.1\r\n"
            f"Host: {HOST}\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        self.pending.append(sent)
        self.sent += 1

    def dataReceived(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            status = int(lines[0].split()[1])
            self.rtts.append(now() - self.pending.popleft())
            if status == 200:
                self.seqs.append(json.loads(body)["event"]["seq"])
            else:
                self.failures.append(status)

    @property
    def answered(self) -> int:
        return len(self.seqs) + len(self.failures)


class StalledClient:
    """
    A WebSocket client that completes the handshake, then never reads again: a plain socket with
    a small receive buffer, outside the reactor.  It only looks at its TCP state, which changes
    without reading when the hub resets the connection.
    """

    def __init__(self, name: str, port: int, token: str) -> None:
        self.name = name
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        sock.settimeout(5)
        sock.connect((HOST, port))
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: stop reading right after the head
            if not chunk:
                raise ConnectionError(f"{name}: closed during the handshake: {head!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"{name}: handshake refused: {head.splitlines()[0]!r}")
        sock.setblocking(False)
        self.sock = sock
        self.local_port = sock.getsockname()[1]
        self.ended_at: float | None = None
        self.ended_how = ""
        self.max_server_sendq = 0
        self.max_client_recvq = 0

    def poll(self, t: float) -> None:
        """Note when the connection ended: its TCP state changes without reading."""
        if self.ended_at is None:
            state = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            if state != 1:
                error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self.ended_at = t
                self.ended_how = TCP_STATES.get(state, f"TCP state {state}") + (
                    f" ({errno.errorcode.get(error, error)})" if error else "")

    def note_queues(self, queues: dict, server_port: int) -> None:
        """Keep the largest kernel queues seen at both ends of this connection."""
        server_side = queues.get((server_port, self.local_port))
        if server_side is not None:
            self.max_server_sendq = max(self.max_server_sendq, server_side[0])
        client_side = queues.get((self.local_port, server_port))
        if client_side is not None:
            self.max_client_recvq = max(self.max_client_recvq, client_side[1])

    def close(self) -> None:
        self.sock.close()


# One run


@dataclass
class StalledReport:
    name: str
    too_slow_at: float | None = None
    bytes_waiting: int | None = None
    unregistered_at: float | None = None
    ended_at: float | None = None
    ended_how: str = ""
    server_sendq: int = 0
    client_recvq: int = 0


@dataclass
class RunResult:
    label: str
    stalled: int
    published: int = 0
    failed: int = 0
    received: int = 0
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    frame_bytes: float = 0.0
    samples: list = field(default_factory=list)  # (sent, seconds after start; latency)
    post_rtts: list = field(default_factory=list)
    rss: list = field(default_factory=list)  # (seconds after start, VmRSS)
    cpu: list = field(default_factory=list)  # (seconds after start, CPU seconds of the hub)
    rss_baseline: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    hwm: int = 0
    stalled_reports: list = field(default_factory=list)
    log_problems: list = field(default_factory=list)


class Monitor:
    """
    Every 100 ms: the hub's memory and CPU, the new lines of its log, the state of each stalled
    socket and (in a thread) the kernel queues of their connections.  Times are seconds after
    C{start} (negative before it is set).
    """

    def __init__(self, hub: HubProcess, stalled: list[StalledClient], result: RunResult) -> None:
        self.hub = hub
        self.stalled = stalled
        self.result = result
        self.reports = {client.name: StalledReport(client.name) for client in stalled}
        self.start: float | None = None
        self._reading_queues = False
        self._loop = task.LoopingCall(self.sample)

    def elapsed(self) -> float:
        return -1.0 if self.start is None else now() - self.start

    def begin(self) -> None:
        self._loop.start(SAMPLE_INTERVAL)

    def end(self) -> None:
        if self._loop.running:
            self._loop.stop()
            self.sample()  # the last log lines and socket states

    def sample(self) -> None:
        t, result = self.elapsed(), self.result
        memory = self.hub.memory()
        if memory is not None:
            result.rss.append((t, memory[0]))
            result.hwm = max(result.hwm, memory[1])
        used = self.hub.cpu()
        if used is not None:
            result.cpu.append((t, used))
        for line in self.hub.new_log_lines():
            if "Traceback" in line or "Unhandled" in line or "#critical]" in line:
                result.log_problems.append(line)
            match = TOO_SLOW_RE.search(line)
            if match and match.group(2) in self.reports:
                report = self.reports[match.group(2)]
                report.too_slow_at, report.bytes_waiting = t, int(match.group(3))
            match = CLOSED_RE.search(line)
            if match and match.group(2) in self.reports:
                self.reports[match.group(2)].unregistered_at = t
        for client in self.stalled:
            client.poll(t)
        if not self._reading_queues and any(c.ended_at is None for c in self.stalled):
            # Listing every TCP socket takes the kernel ~5 ms on a busy machine: not in the
            # reactor thread, where it would show up as the fast client's latency.
            self._reading_queues = True
            threads.deferToThread(tcp_queues).addBoth(self._got_queues)

    def _got_queues(self, queues) -> None:
        self._reading_queues = False
        if isinstance(queues, dict):
            for client in self.stalled:
                client.note_queues(queues, self.hub.port)

    def stalled_reports(self) -> list[StalledReport]:
        for client in self.stalled:
            report = self.reports[client.name]
            report.ended_at, report.ended_how = client.ended_at, client.ended_how
            report.server_sendq = client.max_server_sendq
            report.client_recvq = client.max_client_recvq
        return [self.reports[client.name] for client in self.stalled]


@defer.inlineCallbacks
def wait_for(reactor, predicate, timeout: float):
    deadline = now() + timeout
    while not predicate() and now() < deadline:
        yield sleep(reactor, 0.05)


@defer.inlineCallbacks
def run(reactor, label: str, stalled_count: int, args) -> RunResult:
    """Start a hub, connect the clients, publish on schedule, measure; always clean up."""
    result = RunResult(label, stalled_count)
    workdir = tempfile.mkdtemp(prefix="mc-slow-consumer-")
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    hub = HubProcess(workdir, port, args.max_outbound_bytes)
    fast = monitor = None
    stalled: list[StalledClient] = []
    try:
        yield hub.wait_ready(reactor)
        factory = WebSocketClientFactory(
            f"ws://{HOST}:{port}/ws", headers={"Authorization": f"Bearer {hub.token('fast')}"})
        factory.protocol = FastClient
        factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=10)
        fast = yield TCP4ClientEndpoint(reactor, HOST, port).connect(factory)
        yield fast.ready
        for i in range(1, stalled_count + 1):
            stalled.append(StalledClient(f"stalled-{i}", port, hub.token(f"stalled-{i}")))
        publisher = Publisher(hub.token("bench", role="admin"), args.size)
        yield connectProtocol(TCP4ClientEndpoint(reactor, HOST, port), publisher)

        monitor = Monitor(hub, stalled, result)
        monitor.begin()
        yield sleep(reactor, 1.0)  # let the first frames land; baseline samples
        result.rss_baseline = result.rss[-1][1]

        # Publish on a fixed schedule: event i is due at start + i / rate.
        start = monitor.start = now()
        total = int(args.rate * args.seconds)
        index = 0
        while index < total:
            due = min(total, int((now() - start) * args.rate) + 1)
            while index < due:
                publisher.publish(index)
                index += 1
            if index < total:
                yield sleep(reactor, max(0.0, start + index / args.rate - now()))

        # Every answer, every event at the fast client, and every stalled client that was found
        # too slow actually gone (the hub holds its buffers until then).
        yield wait_for(reactor, lambda: publisher.answered == total and (
            {s[2] for s in fast.samples} >= set(publisher.seqs)), timeout=20)
        yield wait_for(reactor, lambda: all(
            r.too_slow_at is None or c.ended_at is not None
            for c, r in zip(stalled, monitor.reports.values())), timeout=15)
        yield sleep(reactor, 3 * SAMPLE_INTERVAL)
        monitor.end()
        result.rss_end = result.rss[-1][1]
    finally:
        if monitor is not None:
            monitor.end()
        if fast is not None and fast.state == fast.STATE_OPEN:
            fast.sendClose(1000)
            yield defer.DeferredList([fast.closed, sleep(reactor, 5)], fireOnOneCallback=True)
        for client in stalled:
            client.close()
        hub.stop()
        if args.keep:
            print(f"run {label}: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    result.published = len(publisher.seqs)
    result.failed = len(publisher.failures)
    result.post_rtts = publisher.rtts
    seqs = [s[2] for s in fast.samples]
    result.received = len(seqs)
    result.missing = len(set(publisher.seqs) - set(seqs))
    result.duplicates = len(seqs) - len(set(seqs))
    result.out_of_order = sum(1 for x, y in zip(seqs, seqs[1:]) if y <= x)
    if seqs:
        result.frame_bytes = statistics.fmean(s[3] for s in fast.samples)
    result.samples = [(s[0] - start, s[1]) for s in fast.samples]
    result.rss_peak = max([m for t, m in result.rss if t >= 0] or [0])
    result.stalled_reports = monitor.stalled_reports()
    return result


# Output


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def ms(values, p):
    return f"{percentile(values, p) * 1000:.2f}"


def mib(value: float, digits: int = 1) -> str:
    return f"{value / MiB:.{digits}f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(a: RunResult, b: RunResult, args) -> None:
    ends = [r.ended_at for r in b.stalled_reports if r.ended_at is not None]
    window = max(ends) if ends and len(ends) == len(b.stalled_reports) else None

    def latencies(run, upto=None):
        return [lat for t, lat in run.samples if upto is None or t < upto]

    rows = [
        ("events published (200)",
         lambda r: f"{r.published}" + (f" ({r.failed} failed)" if r.failed else "")),
        ("received by fast client", lambda r: str(r.received)),
        ("missing / dup / out of order",
         lambda r: f"{r.missing} / {r.duplicates} / {r.out_of_order}"),
        ("mean frame bytes", lambda r: f"{r.frame_bytes:.0f}"),
        ("latency p50 ms", lambda r: ms(latencies(r), 50)),
        ("latency p95 ms", lambda r: ms(latencies(r), 95)),
        ("latency p99 ms", lambda r: ms(latencies(r), 99)),
        ("latency max ms", lambda r: ms(latencies(r), 100)),
    ]
    if window is not None:
        rows += [
            (f"p99 / max in first {window:.1f} s", lambda r: f"{ms(latencies(r, window), 99)} / "
                                                         f"{ms(latencies(r, window), 100)}"),
        ]
    rows += [
        ("server CPU s while publishing", lambda r: f"{cpu_between(r, 0, None):.2f}"),
        ("POST answer p50 / p99 ms", lambda r: f"{ms(r.post_rtts, 50)} / {ms(r.post_rtts, 99)}"),
        ("server RSS baseline MiB", lambda r: mib(r.rss_baseline)),
        ("server RSS peak MiB",
         lambda r: f"{mib(r.rss_peak)} (+{mib(r.rss_peak - r.rss_baseline)})"),
        ("server RSS end MiB", lambda r: f"{mib(r.rss_end)} (+{mib(r.rss_end - r.rss_baseline)})"),
        ("server VmHWM MiB", lambda r: mib(r.hwm)),
    ]
    heading_a, heading_b = "A: fast only", f"B: fast + {b.stalled} stalled"
    print()
    print(f"{args.rate:g} events/s for {args.seconds:g} s, ~{args.size} bytes each, "
          f"--max-outbound-bytes {args.max_outbound_bytes}")
    print()
    print(f"{'':28} {heading_a:>18} {heading_b:>22}")
    for name, cell in rows:
        print(f"{name:28} {cell(a):>18} {cell(b):>22}")
    growth = (b.rss_peak - b.rss_baseline) - (a.rss_peak - a.rss_baseline)
    print(f"{'peak RSS growth B - A MiB':28} {'':>18} {mib(growth):>22}")

    if b.stalled_reports:
        print()
        print("run B, stalled clients (seconds after publishing started; +- 0.1 s):")
        print(f"  {'client':11} {'too slow':>8} {'bytes waiting':>13} {'hub closed':>10} "
              f"{'client saw':>10}  {'what':18} {'kernel sndq':>11} {'client rcvq':>11}")
        for r in b.stalled_reports:
            waiting = "-" if r.bytes_waiting is None else f"{r.bytes_waiting:,}"
            print(f"  {r.name:11} {seconds(r.too_slow_at):>8} {waiting:>13} "
                  f"{seconds(r.unregistered_at):>10} {seconds(r.ended_at):>10}  "
                  f"{r.ended_how or 'still open':18} {r.server_sendq:>11,} {r.client_recvq:>11,}")
        bound = args.max_outbound_bytes + 64 * 1024 + args.size
        growth = (b.rss_peak - b.rss_baseline) - (a.rss_peak - a.rss_baseline)
        sendq = max(r.server_sendq for r in b.stalled_reports)
        print(f"  per stalled client: peak RSS growth (B - A) / {b.stalled} = "
              f"{mib(growth / b.stalled, 2)} MiB; bound max-outbound-bytes + 64 KiB + one frame = "
              f"{mib(bound, 2)} MiB;")
        print(f"  plus up to {mib(sendq, 2)} MiB each in the hub's kernel send queue (not in RSS)")
    if args.timeline:
        print_timeline(a, b)
    for run_result in (a, b):
        for line in run_result.log_problems[:5]:
            print(f"{run_result.label}: server log: {line}")


def cpu_between(r: RunResult, begin: float, end: float | None) -> float:
    """Hub CPU seconds used from C{begin} to C{end} (seconds after publishing started)."""
    inside = [c for t, c in r.cpu if t >= begin and (end is None or t < end)]
    before = [c for t, c in r.cpu if t < begin]
    if not inside:
        return 0.0
    return inside[-1] - (before[-1] if before else inside[0])


def print_timeline(a: RunResult, b: RunResult) -> None:
    """Per second of publishing: latency percentiles (ms), last RSS sample (MiB), hub CPU %."""
    print()
    print(f"{'second':>6} | {'A p50':>6} {'p99':>6} {'max':>6} {'RSS':>5} {'CPU%':>4} | "
          f"{'B p50':>6} {'p99':>6} {'max':>6} {'RSS':>5} {'CPU%':>4} | run B stalled clients")
    last = int(max([t for t, _ in a.samples + b.samples] or [0]))
    for second in range(last + 1):
        cells = []
        for r in (a, b):
            lat = [x for t, x in r.samples if second <= t < second + 1]
            mem = [m for t, m in r.rss if second <= t < second + 1]
            cells.append(f"{ms(lat, 50):>6} {ms(lat, 99):>6} {ms(lat, 100):>6} "
                         f"{mib(mem[-1]) if mem else '-':>5} "
                         f"{cpu_between(r, second, second + 1) * 100:>4.0f}")
        marks = []
        for what, attr in (("too slow", "too_slow_at"), ("closed", "unregistered_at"),
                           ("socket reset", "ended_at")):
            times = [getattr(rep, attr) for rep in b.stalled_reports]
            count = sum(1 for t in times if t is not None and second <= t < second + 1)
            if count:
                marks.append(f"{count} {what}")
        print(f"{second:>6} | {cells[0]} | {cells[1]} | {', '.join(marks)}")


@defer.inlineCallbacks
def main(reactor, args):
    print(f"run A: fast client only, {args.seconds:g} s ...", file=sys.stderr)
    a = yield run(reactor, "A", 0, args)
    print(f"run B: fast client + {args.stalled} stalled, {args.seconds:g} s ...", file=sys.stderr)
    b = yield run(reactor, "B", args.stalled, args)
    print_report(a, b, args)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--stalled", type=int, default=5, help="stalled clients in run B [5]")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="events published per second [200]")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="seconds of publishing per run [20]")
    parser.add_argument("--size", type=int, default=2048,
                        help="approximate bytes per event frame [2048]")
    parser.add_argument("--max-outbound-bytes", type=int, default=MiB,
                        help="passed to the hub [1048576]")
    parser.add_argument("--timeline", action="store_true",
                        help="also print latency and RSS for each second of both runs")
    parser.add_argument("--keep", action="store_true",
                        help="keep each run's temporary directory (hub log, database)")
    args = parser.parse_args(argv)
    if not 0 <= args.stalled <= 100:
        parser.error("--stalled must be from 0 to 100")
    if not 0 < args.rate <= 5000 or not 0 < args.seconds <= 600:
        parser.error("--rate must be in (0, 5000] and --seconds in (0, 600]")
    if not 400 <= args.size <= 8000:
        parser.error("--size must be from 400 to 8000 (metadata is capped at 8 KiB)")
    return args


if __name__ == "__main__":
    task.react(main, [parse_args()])

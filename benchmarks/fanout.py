"""
The most fan-out per core: what one delivered event costs the hub, end to end, next to peers
doing the same job and to the machine's floor.

    python benchmarks/fanout.py [--subscribers 1000] [--rate 100] [--seconds 10]
                                [--peers all|none|websockets,ws,socketio,floor] [--tls]
                                [--loaders N] [--store sqlite|memory|redis://...] [--workers N]
                                [--json] [--quick]

For each case (mission-control, then each peer, then the floor) it starts the server as a child
process pinned to CPU 0, with a fresh data directory, then:

  1. opens C{--subscribers} authenticated WebSocket connections (one JWT each, distinct users)
     from C{--loaders} Node processes pinned to the other CPUs, as fast as they open: handshakes
     per second is C{K} over the time until the last one got its C{welcome} frame;
  2. reads the server's VmRSS before and after, with those connections idle: the difference over
     C{K} is the memory of one idle authenticated connection;
  3. publishes C{--rate} C{agent:status} events a second for C{--seconds} seconds over one
     WebSocket (an operator's C{publish} frames, paced every millisecond), after a short warm-up.
     Each event carries its index and its send time (CLOCK_MONOTONIC, shared by every process)
     in C{payload.metadata}; each subscriber counts the events it gets, checks each arrived once
     and in order, and records the latency;
  4. reads the server's own CPU accounting (utime + stime in /proc/PID/stat, every thread
     included, and every process it started) before the first publish and after the last
     delivery: CPU per delivery is that difference over the deliveries counted by the subscribers.

For mission-control it then measures the publishes accepted a second: HTTP
C{POST /api/agents/{id}/status} on 8 keep-alive connections, C{POST /api/events} in batches of 100
(when the hub answers it with 200, else "n/a"), and C{publish} frames on one WebSocket with 64
in flight.  The hub runs as deployed (SQLite store, default heartbeats), with its per-user and
per-connection rate limits lifted: one operator publishes everything here.

C{--store} and C{--workers} are passed to the hub's C{twistd mission-control} (the peers do not
change).  With C{--store redis://...} each run of the hub gets a key prefix of its own (the URL's
C{prefix}, or C{bench}, followed by a random suffix), so it starts on an empty history, and its
keys are deleted (SCAN and DEL) once the hub has stopped; the hub counts as started once it has
loaded the shared history (each worker logs it) and answers C{/healthz}.  With C{--workers} above 1
the hub is the supervisor and its N workers, not pinned (they run on every CPU, next to the load
generators); their CPU and memory are summed over the supervisor's process tree (the children in
/proc/PID/task/*/children).  Redis's own CPU is not the hub's: when the Redis server runs on this
machine (its C{process_id} from C{INFO server} is a C{redis-server} here), its CPU over the same
span is reported apart, per delivery and per accepted publish.  When C{--store} or C{--workers} is
given, the publish lines also show the hub's (and Redis's) CPU per accepted publish.

The peers (benchmarks/peers/) do the least of the same job: a JWT checked at the handshake, a
welcome frame, each published frame given a seq, encoded once and sent to every connection.
C{websockets} is Python on the C{websockets} package; C{ws} and C{socketio} are Node (C{ws} +
C{jsonwebtoken}; Socket.IO 4.8 with the WebSocket transport only) and run only where Node and
benchmarks/node's packages are (C{npm ci} is run when node_modules is missing); C{floor} does one
raw send per delivered frame and nothing else.

A benchmark is one file to read and run on its own: this one keeps its child processes, its
orchestration and its report together, at over 400 lines.  The load generator and the Node peers
are JavaScript, in benchmarks/node/load.js and benchmarks/peers/.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import queue
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(HERE)
NODE_DIR = os.path.join(HERE, "node")
PEERS_DIR = os.path.join(HERE, "peers")
LOAD_JS = os.path.join(NODE_DIR, "load.js")
sys.path.insert(0, PROJECT_ROOT)

from mission_control import keys, tokens  # noqa: E402
from mission_control.store.redis_url import parse_redis_url  # noqa: E402

HOST = "127.0.0.1"
PEERS = ("websockets", "ws", "socketio", "floor")
NODE_PEERS = ("ws", "socketio")
LABELS = {"mission-control": "mission-control", "websockets": "websockets (Python)",
          "ws": "ws (Node)", "socketio": "Socket.IO 4.8 (Node)", "floor": "floor (raw send)"}
WARM_UP_FROM = 500_000_000  # indices of the warm-up events, which the subscribers ignore


# The machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process C{pid}, all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS of process C{pid} (/proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def process_tree(pid: int) -> list[int]:
    """C{pid} and every process below it (/proc/PID/task/*/children), parents first."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            tasks = os.listdir(f"/proc/{tree[i]}/task")
        except OSError:
            tasks = []
        for task in tasks:
            try:
                with open(f"/proc/{tree[i]}/task/{task}/children") as f:
                    tree.extend(int(child) for child in f.read().split())
            except OSError:
                pass
        i += 1
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """L{cpu_seconds} summed over C{pid}'s process tree (a process gone meanwhile counts 0)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            pass
    return total


def tree_rss_bytes(pid: int) -> int:
    """L{rss_bytes} summed over C{pid}'s process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            total += rss_bytes(member)
        except OSError:
            pass
    return total


def cpu_plan() -> tuple[set[int] | None, list[set[int]]]:
    """(the server's CPUs, the load CPUs): CPU 0 and the rest, or no pinning on one CPU."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) < 2:
        return None, []
    return {allowed[0]}, [{cpu} for cpu in allowed[1:]]


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus is not None:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def raise_file_limit() -> None:
    """Let the children (which inherit it) hold a socket per subscriber."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def self_signed(directory: str) -> tuple[str, str]:
    """A self-signed EC certificate for 127.0.0.1 and localhost: (cert path, key path)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def node_setup() -> tuple[bool, str | None]:
    """
    (whether Node can run the load generator, why the Node packages are missing or None).
    Runs C{npm ci} in benchmarks/node when its node_modules is missing.
    """
    if shutil.which("node") is None:
        return False, "node is not installed"
    if os.path.isdir(os.path.join(NODE_DIR, "node_modules", "ws")):
        return True, None
    npm = shutil.which("npm")
    if npm is None:
        return True, "npm is not installed"
    try:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return True, "npm ci took over 300 s"
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines()
                  if line.startswith("npm error") and "complete log" not in line]
        return True, f"npm ci failed ({(errors or ['no error message'])[0]})"
    return True, None


# Redis


def fresh_store_url(url: str) -> str:
    """C{url} with a key prefix of its own for one run: its C{prefix} (or C{bench}) + a suffix."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefix = dict(query).get("prefix", "bench")
    query = [(k, v) for k, v in query if k != "prefix"]
    query.append(("prefix", f"{prefix[:55]}-{os.urandom(4).hex()}"))  # at most 64 characters
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="/")))


class Redis:
    """The few commands the benchmark sends to the hub's Redis itself: INFO, SCAN and DEL."""

    def __init__(self, url: str) -> None:
        parsed = parse_redis_url(url)
        self.prefix = parsed.prefix
        self.host = parsed.host
        sock = socket.create_connection((parsed.host, parsed.port), timeout=10)
        if parsed.tls:
            context = ssl.create_default_context(cafile=parsed.ca)
            sock = context.wrap_socket(sock, server_hostname=parsed.host)
        self.sock = sock
        self.file = sock.makefile("rwb")
        if parsed.password is not None:
            self.call("AUTH", *([parsed.username] if parsed.username else []), parsed.password)
        if parsed.db:
            self.call("SELECT", str(parsed.db))

    def call(self, *args: str | bytes):
        encoded = [a.encode() if isinstance(a, str) else a for a in args]
        self.file.write(b"*%d\r\n" % len(encoded)
                        + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded))
        self.file.flush()
        return self._reply()

    def _reply(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(f"Redis answered: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"unexpected reply from Redis: {line[:80]!r}")

    def local_pid(self) -> int | None:
        """The Redis server's pid when it is a C{redis-server} process of this machine, else None."""
        info = self.call("INFO", "server").decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        try:
            pid = int(fields.get("process_id", ""))
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except (ValueError, OSError):
            return None
        return pid if comm.startswith("redis-server") else None

    def delete_prefix(self) -> int:
        """Delete every key of this prefix (SCAN MATCH {prefix}:*, DEL): how many."""
        cursor, deleted = b"0", 0
        while True:
            cursor, found = self.call("SCAN", cursor, "MATCH", "{%s}:*" % self.prefix,
                                      "COUNT", "1000")
            if found:
                deleted += self.call("DEL", *found)
            if cursor == b"0":
                return deleted

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


# The servers


class Server:
    """A server under test as a child process, pinned to the server CPU."""

    def __init__(self, case: str, workdir: str, port: int, cpus: set[int] | None,
                 tls: tuple[str, str] | None, subscribers: int, store: str | None = None,
                 workers: int = 1) -> None:
        self.case = case
        self.port = port
        self.tls = tls
        self.store = store if case == "mission-control" else None
        self.workers = workers if case == "mission-control" else 1
        self.shared = self.store is not None and self.store.startswith(("redis://", "rediss://"))
        self.data_dir = os.path.join(workdir, "data")
        os.makedirs(self.data_dir)
        self.log_path = os.path.join(workdir, "server.log")
        self.secret_path = os.path.join(workdir, "secret")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [PROJECT_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if case == "mission-control":
            listen = f"tcp:{port}:interface={HOST}"
            if tls:
                listen = f"ssl:{port}:interface={HOST}:privateKey={tls[1]}:certKey={tls[0]}"
            big = str(max(1_000_000, subscribers * 10))
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            argv = [twistd, "-n", "--pidfile=", f"--logfile={self.log_path}", "mission-control",
                    "--listen", listen, "--data-dir", self.data_dir,
                    # One operator publishes everything and the subscribers connect at once:
                    # lift the per-user and per-connection limits, we measure the hub.
                    "--max-publishes-per-second", big, "--max-messages-per-second", big,
                    "--max-handshakes-per-second", big, "--max-connections-per-user", big,
                    "--max-connections", str(subscribers + 100),
                    "--max-http-connections", str(subscribers + 100)]
            argv += ["--store", self.store] if self.store else []
            argv += ["--workers", str(self.workers)] if self.workers > 1 else []
        else:
            with open(self.secret_path, "w") as f:
                f.write(os.urandom(32).hex())
            script = {"websockets": "websockets_hub.py", "ws": "ws_hub.js",
                      "socketio": "socketio_hub.js", "floor": "floor.py"}[case]
            program = sys.executable if script.endswith(".py") else shutil.which("node") or "node"
            argv = [program, os.path.join(PEERS_DIR, script), str(port), self.secret_path]
            argv += list(tls) if tls else []
        self.log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                      stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.popen.pid
        # The workers of --workers inherit the supervisor's CPUs: leave them on every CPU.
        pin(self.pid, cpus if self.workers == 1 else None)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        secret = os.path.join(self.data_dir, "jwt-secret")
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.case} exited with {self.popen.returncode}:\n"
                                   + self.log_text()[-2000:])
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    if self.case != "mission-control" or (
                            os.path.exists(secret) and self.loaded()):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.case} did not start within {timeout} s:\n"
                           + self.log_text()[-2000:])

    def loaded(self) -> bool:
        """
        On a shared store: whether every worker has loaded the shared history (each logs it)
        and /healthz answers 200; else True.
        """
        if not self.shared:
            return True
        if self.log_text().count("loaded: epoch") < self.workers:
            return False
        context = None
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        scheme = "https" if self.tls else "http"
        try:
            with urllib.request.urlopen(f"{scheme}://{HOST}:{self.port}/healthz", timeout=2,
                                        context=context) as answer:
                return answer.status == 200
        except OSError:
            return False

    def secret(self) -> bytes:
        if self.case == "mission-control":
            return keys.read_secret(os.path.join(self.data_dir, "jwt-secret"))
        with open(self.secret_path, "rb") as f:
            return f.read().strip()

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


# The Node load processes


class Node:
    """One C{node load.js MODE CONFIG} child: JSON lines out, commands in."""

    def __init__(self, mode: str, config: dict, workdir: str, cpus: set[int] | None,
                 builtin_websocket: bool) -> None:
        path = os.path.join(workdir, f"{mode}-{id(self)}.json")
        with open(path, "w") as f:
            json.dump(config, f)
        argv = [shutil.which("node") or "node"]
        argv += ["--experimental-websocket"] if builtin_websocket else []
        self.popen = subprocess.Popen(argv + [LOAD_JS, mode, path], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pin(self.popen.pid, cpus)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr_reader = threading.Thread(
            target=lambda: self.stderr.extend(self.popen.stderr), daemon=True)
        self.stderr_reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, command: dict) -> None:
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()

    def wait(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        skipped: list[dict] = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no {kind!r} from the load generator within {timeout} s")
            if line is None:
                self.stderr_reader.join(2)
                raise RuntimeError(f"the load generator ended before {kind!r}: {skipped[-5:]}\n"
                                   + "".join(self.stderr)[-2000:])
            if line.get("type") == kind:
                return line
            skipped.append(line)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


# One case


def percentile(histogram: dict[int, int], base: float, q: float) -> float:
    """The q-th fraction of latencies, in microseconds, from 1% buckets."""
    total = sum(histogram.values())
    if not total:
        return math.nan
    rank, seen = q * total, 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return base ** (bucket + 0.5)
    return base ** (max(histogram) + 0.5)


def run_case(case: str, args, plan, workdir: str, tls, builtin_websocket: bool) -> dict:
    server_cpus, load_cpus = plan
    scheme = "wss" if tls else "ws"
    port = free_port()
    store = args.store if case == "mission-control" else None
    redis: Redis | None = None
    redis_pid: int | None = None
    if store is not None and store.startswith(("redis://", "rediss://")):
        store = fresh_store_url(store)
        redis = Redis(store)
        redis_pid = redis.local_pid()
    server = Server(case, tempfile.mkdtemp(prefix=f"{case}-", dir=workdir), port, server_cpus,
                    tls, args.subscribers, store, args.workers)
    loaders: list[Node] = []
    result: dict = {"case": case, "label": LABELS[case] + (" TLS" if tls else ""), "tls": bool(tls),
                    "workers": server.workers, "store": parse_redis_url(store).redacted()
                    if redis is not None else store}

    def redis_cpu() -> float:
        return cpu_seconds(redis_pid) if redis_pid is not None else math.nan

    try:
        server.wait_ready()
        secret = server.secret()
        now = time.time()
        protocol = "socketio" if case == "socketio" else "ws"
        url = f"{scheme}://{HOST}:{port}" + ("" if protocol == "socketio" else "/ws")
        ready = "snapshot" if case == "mission-control" else "welcome"
        subscriber_tokens = [tokens.mint_token(secret, f"bench-sub-{n}", now, ttl=3600)
                             for n in range(args.subscribers)]
        operator = tokens.mint_token(secret, "bench-publisher", now, ttl=3600, role="operator")
        time.sleep(args.settle)
        rss_before = tree_rss_bytes(server.pid)

        # 1-2. Handshakes, and the memory of idle connections.
        count = max(1, min(args.loaders, args.subscribers))
        started = time.monotonic()
        for n in range(count):
            config = {"url": url, "protocol": protocol, "ready": ready,
                      "tokens": subscriber_tokens[n::count]}
            loaders.append(Node("subscribe", config, workdir,
                                load_cpus[n % len(load_cpus)] if load_cpus else None,
                                builtin_websocket))
        readies = [loader.wait("ready", 120) for loader in loaders]
        opened = sum(r["opened"] for r in readies)
        failed = sum(r["failed"] for r in readies)
        result["opened"], result["failed"] = opened, failed
        result["errors"] = {k: v for r in readies for k, v in r["errors"].items()}
        seconds = max(r["welcomeSeconds"] for r in readies)
        result["handshakes_per_s"] = opened / seconds if seconds > 0 else math.nan
        result["connect_wall_s"] = time.monotonic() - started
        time.sleep(args.settle)
        rss_idle = tree_rss_bytes(server.pid)
        result["rss_before"], result["rss_idle"] = rss_before, rss_idle
        result["bytes_per_idle_connection"] = (rss_idle - rss_before) / max(opened, 1)

        # 3-4. Fan-out at a paced rate.
        acks = case == "mission-control"
        warm = {"url": url, "protocol": protocol, "ready": ready, "token": operator,
                "rate": args.rate, "seconds": args.warm_up, "from": WARM_UP_FROM, "acks": acks}
        warm_up = Node("publish", warm, workdir, load_cpus[-1] if load_cpus else None,
                       builtin_websocket)
        warm_up.wait("published", args.warm_up + 60)
        warm_up.stop()
        total = round(args.rate * args.seconds)
        for loader in loaders:
            loader.send({"cmd": "expect", "from": 0, "to": total})
        for loader in loaders:
            loader.wait("expecting", 30)
        publisher = Node("publish", dict(warm, seconds=args.seconds, **{"from": 0}), workdir,
                         load_cpus[-1] if load_cpus else None, builtin_websocket)
        cpu_start, redis_start = tree_cpu_seconds(server.pid), redis_cpu()
        load_pids = [node.popen.pid for node in [*loaders, publisher]]
        load_start = sum(map(cpu_seconds, load_pids))
        root_start = cpu_seconds(server.pid)
        t_start = time.monotonic()
        sent = publisher.wait("sent", args.seconds + 60)
        for loader in loaders:
            loader.send({"cmd": "drain", "quiet": args.quiet})
        reports = [loader.wait("report", args.seconds + 600) for loader in loaders]
        cpu_end, redis_end = tree_cpu_seconds(server.pid), redis_cpu()
        load_end = sum(map(cpu_seconds, load_pids))
        root_end = cpu_seconds(server.pid)
        t_end = time.monotonic()
        published = publisher.wait("published", 30)
        publisher.stop()
        delivered = sum(r["frames"] for r in reports)
        histogram: dict[int, int] = {}
        for r in reports:
            for bucket, n in r["histogram"]:
                histogram[bucket] = histogram.get(bucket, 0) + n
        result.update(
            published=sent["sent"], acked=published["acked"] if acks else None,
            refused=published["refused"], publish_seconds=sent["seconds"],
            delivered=delivered, expected=total * opened,
            complete=sum(r["complete"] for r in reports),
            disorder=sum(r["disorder"] for r in reports),
            all_delivered=(failed == 0 and opened == args.subscribers
                           and sum(r["complete"] for r in reports) == opened
                           and delivered == total * opened),
            deliveries_per_s=delivered / (t_end - t_start),
            cpu_us_per_delivery=(cpu_end - cpu_start) * 1e6 / delivered if delivered else math.nan,
            cpu_seconds=cpu_end - cpu_start,
            redis_cpu_us_per_delivery=((redis_end - redis_start) * 1e6 / delivered
                                       if delivered else math.nan),
            # CPUs busy over the fan-out (CPU seconds a second): the server, Redis, the load.
            cores_server=(cpu_end - cpu_start) / (t_end - t_start),
            cores_redis=(redis_end - redis_start) / (t_end - t_start),
            cores_load=(load_end - load_start) / (t_end - t_start),
            # With --workers: the supervisor's own part of cores_server.
            cores_supervisor=((root_end - root_start) / (t_end - t_start)
                              if server.workers > 1 else None),
            p50_ms=percentile(histogram, 1.01, 0.50) / 1000,
            p99_ms=percentile(histogram, 1.01, 0.99) / 1000,
            max_ms=max(r["maxLatencyUs"] for r in reports) / 1000,
        )
        for loader in loaders:
            loader.send({"cmd": "close"})
        for loader in loaders:
            loader.stop()
        loaders = []

        # The publishes mission-control accepts a second.
        if case == "mission-control":
            base = f"{'https' if tls else 'http'}://{HOST}:{port}"
            http = {"url": base, "token": operator, "seconds": args.publish_seconds,
                    "connections": 8, "batch": 0}

            def cpu_per_publish(name: str, before: tuple[float, float], accepted: int) -> None:
                # The hub's and Redis's CPU over one publish phase, per accepted publish.
                hub, red = tree_cpu_seconds(server.pid) - before[0], redis_cpu() - before[1]
                result[f"{name}_cpu_us_per_publish"] = hub * 1e6 / accepted if accepted else None
                result[f"{name}_redis_cpu_us_per_publish"] = (
                    red * 1e6 / accepted if accepted and not math.isnan(red) else None)

            before = (tree_cpu_seconds(server.pid), redis_cpu())
            posted = Node("http", http, workdir, load_cpus[-1] if load_cpus else None,
                          builtin_websocket)
            accepted = posted.wait("posted", args.publish_seconds + 60)["accepted"]
            cpu_per_publish("http", before, accepted)
            result["http_publishes_per_s"] = accepted / args.publish_seconds
            posted.stop()
            before = (tree_cpu_seconds(server.pid), redis_cpu())
            batched = Node("http", dict(http, batch=100), workdir,
                           load_cpus[-1] if load_cpus else None, builtin_websocket)
            answer = batched.wait("posted", args.publish_seconds + 60)
            cpu_per_publish("batch", before, answer["accepted"])
            batched.stop()
            result["batch_publishes_per_s"] = (
                answer["accepted"] / args.publish_seconds if answer["accepted"] else None)
            result["batch_statuses"] = answer["statuses"]
            before = (tree_cpu_seconds(server.pid), redis_cpu())
            flood = Node("flood", dict(warm, seconds=args.publish_seconds, window=64), workdir,
                         load_cpus[-1] if load_cpus else None, builtin_websocket)
            flooded = flood.wait("flooded", args.publish_seconds + 60)
            cpu_per_publish("ws", before, flooded["acked"])
            flood.stop()
            result["ws_publishes_per_s"] = flooded["acked"] / args.publish_seconds
    finally:
        for loader in loaders:
            loader.stop()
        server.stop()
        if redis is not None:
            try:
                result["redis_keys_deleted"] = redis.delete_prefix()
            finally:
                redis.close()
    return result


# The report


def number(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(value, reference) -> str:
    if not value or not reference or math.isnan(value) or math.isnan(reference):
        return "n/a"
    return f"{value / reference:.2f}x"


def plain(value):
    """C{value} with NaN as None, so that the JSON output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def placement(args, pinned: bool) -> str:
    """Where the servers and the load ran, for the table's first line."""
    if not pinned:
        return "nothing pinned: fewer than 2 CPUs"
    if args.workers > 1:
        return (f"mission-control: supervisor + {args.workers} workers on every CPU, not pinned; "
                "the peers on CPU 0; load on the others")
    return "server on CPU 0, load on the others"


def table(results: list[dict], skipped: dict[str, str], args, pinned: bool = True) -> str:
    shared = any(r.get("redis_cpu_us_per_delivery") is not None
                 and not math.isnan(r["redis_cpu_us_per_delivery"]) for r in results)
    head = (f"{'case':<26}{'deliveries/s':>13}{'all':>5}{'us CPU':>9}"
            + (f"{'Redis us':>9}" if shared else "") + f"{'p50 ms':>9}"
            f"{'p99 ms':>9}{'max ms':>9}{'hs/s':>9}{'KiB/conn':>10}{'CPU x':>8}{'p99 x':>8}")
    lines = [f"{args.subscribers} subscribers, {args.rate} events/s for {args.seconds} s "
             f"({placement(args, pinned)})"]
    if args.store is not None or args.workers > 1:
        lines.append(f"mission-control: --store {results[0].get('store') if results else ''}"
                     + (f" --workers {args.workers}" if args.workers > 1 else "")
                     + ("; us CPU is the hub's processes, Redis us the Redis server's" if shared
                        else "; us CPU is the hub's processes, without the Redis server's"
                        if args.store and args.store.startswith(("redis://", "rediss://"))
                        else ""))
    lines += ["", head]
    reference = {r["tls"]: r for r in results if r["case"] == "mission-control"}
    for r in results:
        ref = reference.get(r["tls"], {})
        lines.append(
            f"{r['label']:<26}{number(r.get('deliveries_per_s')):>13}"
            f"{('y' if r.get('all_delivered') else 'n'):>5}"
            f"{number(r.get('cpu_us_per_delivery'), 2):>9}"
            + (f"{number(r.get('redis_cpu_us_per_delivery'), 2):>9}" if shared else "")
            + f"{number(r.get('p50_ms'), 2):>9}"
            f"{number(r.get('p99_ms'), 2):>9}{number(r.get('max_ms'), 1):>9}"
            f"{number(r.get('handshakes_per_s')):>9}"
            f"{number(r.get('bytes_per_idle_connection', math.nan) / 1024, 1):>10}"
            f"{ratio(r.get('cpu_us_per_delivery'), ref.get('cpu_us_per_delivery')):>8}"
            f"{ratio(r.get('p99_ms'), ref.get('p99_ms')):>8}")
    for case, why in skipped.items():
        lines.append(f"{LABELS[case]:<26}skipped: {why}")
    if args.store is not None or args.workers > 1:
        for r in results:
            if r["case"] == "mission-control" and "cores_server" in r:
                supervisor = r.get("cores_supervisor")
                lines.append(f"{r['label']}: CPUs busy over the fan-out: the hub "
                             f"{number(r['cores_server'], 2)}"
                             + (f" (its supervisor {number(supervisor, 2)})"
                                if supervisor is not None else "") + ", Redis "
                             f"{number(r['cores_redis'], 2)}, the load generators "
                             f"{number(r['cores_load'], 2)} (of {os.cpu_count()})")
    for r in results:
        if not r.get("all_delivered"):
            lines.append(f"{r['label']}: {r.get('delivered')} of {r.get('expected')} deliveries, "
                         f"{r.get('complete')}/{r.get('opened')} connections complete, "
                         f"{r.get('disorder')} out of order, {r.get('failed')} failed to open "
                         f"{r.get('errors') or ''}")
    costs = args.store is not None or args.workers > 1

    def cost(r: dict, name: str) -> str:
        # The hub's (and Redis's) CPU per accepted publish, when --store or --workers is given.
        if not costs:
            return ""
        text = f"   hub {number(r.get(f'{name}_cpu_us_per_publish'), 1)} us"
        redis = r.get(f"{name}_redis_cpu_us_per_publish")
        return text + (f", Redis {number(redis, 1)} us" if redis is not None else "") + " each"

    for r in results:
        if r["case"] == "mission-control":
            lines += ["", f"mission-control{' TLS' if r['tls'] else ''}, publishes accepted "
                      f"a second (for {args.publish_seconds} s each):",
                      f"  HTTP POST /api/agents/{{id}}/status, 8 keep-alive connections  "
                      f"{number(r['http_publishes_per_s'])}{cost(r, 'http')}",
                      f"  HTTP POST /api/events, batches of 100, 8 connections        "
                      f"{number(r['batch_publishes_per_s'])}{cost(r, 'batch')}",
                      f"  WebSocket publish frames, one connection, 64 in flight       "
                      f"{number(r['ws_publishes_per_s'])}{cost(r, 'ws')}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=None, help="K (default 1000)")
    parser.add_argument("--rate", type=int, default=None, help="events/s (default 100)")
    parser.add_argument("--seconds", type=float, default=None, help="D (default 10)")
    parser.add_argument("--peers", default="all", help="all, none or a comma-separated list of "
                        + ", ".join(PEERS))
    parser.add_argument("--tls", action="store_true", help="run every case over TLS too")
    parser.add_argument("--loaders", type=int, default=None,
                        help="subscriber processes (default one per 1000 subscribers, 1-4)")
    parser.add_argument("--store", default=None,
                        help="mission-control's --store: sqlite (the hub's default), memory or a "
                             "redis:// URL (a fresh key prefix per run, deleted after it)")
    parser.add_argument("--workers", type=int, default=1,
                        help="mission-control's --workers (above 1 needs --store redis://...; "
                             "the hub is then not pinned)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="a tiny run, to check it works")
    args = parser.parse_args()
    quick = args.quick
    args.subscribers = args.subscribers or (5 if quick else 1000)
    args.rate = args.rate or (20 if quick else 100)
    args.seconds = args.seconds or (1.0 if quick else 10.0)
    args.loaders = args.loaders or max(1, min(4, math.ceil(args.subscribers / 1000)))
    args.warm_up = 0.2 if quick else 2.0
    args.settle = 0.2 if quick else 1.0
    args.quiet = 2.0 if quick else 5.0
    args.publish_seconds = 0.5 if quick else 5.0
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.store is not None and not (args.store in ("sqlite", "memory")
                                       or args.store.startswith(("redis://", "rediss://"))):
        parser.error("--store must be sqlite, memory or a redis:// or rediss:// URL")
    if args.workers > 1 and not (args.store or "").startswith(("redis://", "rediss://")):
        parser.error("--workers above 1 needs --store redis://...")
    if args.store is not None and args.store.startswith(("redis://", "rediss://")):
        try:
            parse_redis_url(args.store)
        except ValueError as e:
            parser.error(f"--store: {e}")
    if args.peers == "all":
        wanted = list(PEERS)
    elif args.peers == "none":
        wanted = []
    else:
        wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = set(wanted) - set(PEERS)
        if unknown:
            parser.error(f"unknown peers: {', '.join(sorted(unknown))}")

    node, missing = node_setup()
    if not node:
        print(f"cannot run: the load generator needs Node ({missing})", file=sys.stderr)
        return 2
    skipped = {}
    if missing:
        for peer in NODE_PEERS:
            if peer in wanted:
                skipped[peer] = missing
        wanted = [p for p in wanted if p not in NODE_PEERS]
        print(f"Node packages missing: {missing}; the Node peers are skipped and the load "
              "generator uses Node's built-in WebSocket", file=sys.stderr)
    if "websockets" in wanted:
        if not all(importlib.util.find_spec(name) for name in ("jwt", "websockets")):
            wanted.remove("websockets")
            skipped["websockets"] = "the websockets package is not installed"

    raise_file_limit()
    # Stopped from outside (a test's clean-up, Ctrl-C), still stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    plan = cpu_plan()
    workdir = tempfile.mkdtemp(prefix="fanout-bench-")
    results = []
    try:
        tls = self_signed(workdir) if args.tls else None
        for layer in [None] + ([tls] if tls else []):
            for case in ["mission-control"] + wanted:
                if not args.json:
                    print(f"running {LABELS[case]}{' TLS' if layer else ''} ...",
                          file=sys.stderr, flush=True)
                results.append(run_case(case, args, plan, workdir, layer, missing is not None))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(plain({"subscribers": args.subscribers, "rate": args.rate,
                          "seconds": args.seconds, "pinned": plan[0] is not None,
                          "workers": args.workers, "results": results, "skipped": skipped}),
                         indent=2))
    else:
        print(table(results, skipped, args, plan[0] is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

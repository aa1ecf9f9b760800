"""
Failing over when a hub node dies: two nodes on one Redis, one of them killed with SIGKILL.

    python benchmarks/failover.py [--store redis://127.0.0.1:6379/0] [--viewers 5]
                                  [--rate 20] [--reconnect-delay 0] [--repeat 3] [--json]

Each run starts two nodes, A and B: two C{twistd -n mission-control} processes on loopback ports
with one C{--jwt-secret-file} and C{--store} with a key prefix of their own (the URL's C{prefix},
or C{bench}, and a random suffix: an empty history), deleted (SCAN and DEL) after the run.  Then:

  1. connects to A an agent (a token of role C{agent}, C{sub} C{agent-1}) and C{--viewers}
     viewers, and to B one watcher (a viewer); waits until the watcher has seen A publish the
     agent C{online}, and until every viewer has its snapshot;
  2. publishes C{--rate} C{agent:status} events a second (of other agents) to B over HTTP, as an
     operator, from then until the end of the run, so that the viewers always have events to
     catch up on;
  3. sends SIGKILL to A.  Its operating system closes A's connections at once: each viewer sees
     its connection drop and reconnects to B, at once or after C{--reconnect-delay} seconds (a
     client's backoff), with C{?since=<the last seq it applied>&epoch=<its epoch>}; the agent
     does not reconnect (as if its own process had died too);
  4. measures, from the kill:
       - offline: until the watcher on B receives the agent's C{agent:status} C{offline}.  A
         node that dies without a word stops renewing its presence entry (every 2 s, valid 6 s);
         the first surviving node to notice it expired (at its next renewal) marks that node's
         agents offline, so this is 4 to 8 s by design;
       - resume: for each viewer, until its C{resumed} frame with C{recovered: true} from B, and
         apart, from its reconnect to that frame (the handshake on B and the replay);
  5. checks that each viewer, across the failover, received every seq once and in order (the
     replay on B picks up exactly where A left off), up to the watcher's last seq.

Node A's process ending closes its sockets at once, so the viewers notice at once: a machine that
vanishes (power, network) is noticed by a client only through its own timeouts (missed
heartbeats, pings), which this does not measure.  Node B, the load and Redis share the machine.

Prints each run and the median of C{--repeat} runs, or one JSON document with C{--json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from fanout import Redis, fresh_store_url  # noqa: E402  (benchmarks/fanout.py: SCAN and DEL)
from mission_control import tokens  # noqa: E402
from mission_control.store.redis_url import parse_redis_url  # noqa: E402

HOST = "127.0.0.1"
AGENT = "agent-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# The nodes


class HubNode:
    """One C{twistd -n mission-control} on a shared store, as a child process."""

    def __init__(self, name: str, workdir: str, store: str, secret_file: str) -> None:
        self.name = name
        self.port = free_port()
        data_dir = os.path.join(workdir, name)
        os.makedirs(data_dir)
        self.log_path = os.path.join(workdir, f"{name}.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={self.log_path}", "mission-control",
             "--listen", f"tcp:{self.port}:interface={HOST}", "--data-dir", data_dir,
             "--store", store, "--jwt-secret-file", secret_file],
            cwd=data_dir, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def log_tail(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-2000:]

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


async def until_healthy(reactor: Any, nodes: list[HubNode], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        while not node.healthy():
            if node.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} did not start:\n{node.log_tail()}")
            await task.deferLater(reactor, 0.1, lambda: None)


# The clients


class Frames(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.client.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client.received(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.client.closed()


class Client:
    """
    A WebSocket client that keeps the last seq it applied and checks that the seqs it gets,
    across reconnects, follow each other without a gap or a repeat.
    """

    def __init__(self, reactor: Any, name: str, token: str) -> None:
        self.reactor = reactor
        self.name = name
        self.token = token
        self.protocol: Frames | None = None
        self.epoch: str | None = None
        self.last_seq: int | None = None  # the snapshot's, then each event's
        self.gaps = 0
        self.repeats = 0
        self.events = 0
        self.frames: list[tuple[float, dict]] = []
        self.is_open = False
        self.resumed: dict | None = None
        self.resumed_at: float | None = None
        self.dropped_at: float | None = None
        self.reconnected_at: float | None = None
        self.on_drop: Any = None
        self._ready: Deferred | None = None

    def connect(self, port: int, resume: bool = False) -> Deferred:
        """Connect; fires once the snapshot (or, resuming, the C{resumed} frame) arrived."""
        query = ""
        if resume and self.last_seq is not None and self.epoch is not None:
            query = "?" + urllib.parse.urlencode({"since": self.last_seq, "epoch": self.epoch})
        factory = WebSocketClientFactory(f"ws://{HOST}:{port}/ws{query}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        factory.protocol = Frames
        factory.client = self
        self._ready = Deferred()
        connectWS(factory)
        return self._ready

    def opened(self, protocol: Frames) -> None:
        self.protocol, self.is_open = protocol, True

    def received(self, frame: dict) -> None:
        now = time.monotonic()
        kind, payload = frame.get("type"), frame.get("payload") or {}
        self.frames.append((now, frame))
        if kind == "welcome":
            self.epoch = payload["epoch"]
        elif kind == "snapshot":
            self.last_seq = payload["lastSeq"]
            self._fire()
        elif kind == "resumed":
            self.resumed, self.resumed_at = payload, now
            self._fire()
        elif "seq" in frame:
            seq = frame["seq"]
            self.events += 1
            if self.last_seq is not None:
                if seq <= self.last_seq:
                    self.repeats += 1
                    return
                if seq != self.last_seq + 1:
                    self.gaps += 1
            self.last_seq = seq

    def _fire(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(self)

    def closed(self) -> None:
        was_open, self.is_open = self.is_open, False
        if self._ready is not None and not was_open:
            ready, self._ready = self._ready, None
            ready.errback(RuntimeError(f"{self.name} could not connect"))
            return
        if self.dropped_at is None:
            self.dropped_at = time.monotonic()
        if self.on_drop is not None:
            on_drop, self.on_drop = self.on_drop, None
            on_drop(self)

    def close(self) -> None:
        if self.protocol is not None and self.is_open:
            self.on_drop = None
            self.protocol.sendClose(1000)

    def first(self, test: Any, after: float = 0.0) -> float | None:
        """When the first frame received at or after C{after} that passes C{test} arrived."""
        for at, frame in self.frames:
            if at >= after and test(frame):
                return at
        return None


def agent_status(status: str) -> Any:
    def test(frame: dict) -> bool:
        payload = frame.get("payload") or {}
        return (frame.get("type") == "agent:status" and payload.get("agentId") == AGENT
                and payload.get("status") == status)

    return test


async def until(reactor: Any, condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


# One run


async def publisher(reactor: Any, node: HubNode, token: str, rate: float,
                    running: list[bool], counts: dict) -> None:
    """C{rate} agent:status events a second to C{node} over HTTP, while C{running[0]}."""
    import treq

    n = 0
    started = time.monotonic()
    headers = {"Authorization": [f"Bearer {token}"], "Content-Type": ["application/json"]}
    while running[0]:
        body = json.dumps({"status": "busy", "message": f"step {n}"}).encode()
        try:
            answer = await treq.post(node.url(f"/api/agents/worker-{n % 10}/status"), body,
                                     headers=headers, persistent=True)
            await answer.content()
            counts[answer.code] = counts.get(answer.code, 0) + 1
        except Exception as e:  # the run reports it; the publisher goes on
            counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
        n += 1
        wait = started + n / rate - time.monotonic()
        if wait > 0:
            await task.deferLater(reactor, wait, lambda: None)


async def one_run(reactor: Any, args: argparse.Namespace, number: int) -> dict:
    store = fresh_store_url(args.store)
    workdir = tempfile.mkdtemp(prefix="failover-bench-")
    secret_file = os.path.join(workdir, "jwt-secret")
    secret = os.urandom(32).hex()
    with open(secret_file, "w") as f:
        f.write(secret)
    key = secret.encode()
    now = time.time()
    a, b = (HubNode("A", workdir, store, secret_file), HubNode("B", workdir, store, secret_file))
    clients: list[Client] = []
    running = [True]
    counts: dict = {}
    result: dict = {"run": number, "prefix": parse_redis_url(store).prefix}
    publishing: Deferred | None = None
    try:
        await until_healthy(reactor, [a, b])
        watcher = Client(reactor, "watcher", tokens.mint_token(key, "watcher", now, ttl=3600))
        agent = Client(reactor, AGENT, tokens.mint_token(key, AGENT, now, ttl=3600, role="agent"))
        viewers = [Client(reactor, f"viewer-{i}", tokens.mint_token(key, f"viewer-{i}", now,
                                                                     ttl=3600))
                   for i in range(args.viewers)]
        clients = [watcher, agent, *viewers]
        await watcher.connect(b.port)
        await defer.gatherResults([v.connect(a.port) for v in viewers], consumeErrors=True)
        agent_connected = time.monotonic()
        await agent.connect(a.port)
        await until(reactor, lambda: watcher.first(agent_status("online")) is not None, 10,
                    "the agent's online on node B")
        result["online_ms"] = (watcher.first(agent_status("online")) - agent_connected) * 1000
        operator = tokens.mint_token(key, "operator", now, ttl=3600, role="operator")
        publishing = Deferred.fromCoroutine(publisher(reactor, b, operator, args.rate, running,
                                                      counts))
        await task.deferLater(reactor, 1.0, lambda: None)

        resumes: list[Deferred] = []

        def reconnect(viewer: Client) -> None:
            viewer.reconnected_at = time.monotonic()
            resumes.append(viewer.connect(b.port, resume=True))

        def dropped(viewer: Client) -> None:
            reactor.callLater(args.reconnect_delay, reconnect, viewer)

        for viewer in viewers:
            viewer.on_drop = dropped
        killed = time.monotonic()
        a.kill()
        await until(reactor, lambda: len(resumes) == len(viewers), 10 + args.reconnect_delay,
                    "the viewers' drops")
        await defer.gatherResults(resumes, consumeErrors=True)
        await until(reactor, lambda: watcher.first(agent_status("offline"), killed) is not None,
                    30, "the agent's offline on node B")
        offline_at = watcher.first(agent_status("offline"), killed)
        offline = [frame for at, frame in watcher.frames if at == offline_at][0]
        await task.deferLater(reactor, 1.0, lambda: None)
        running[0] = False
        await publishing
        publishing = None
        await task.deferLater(reactor, 0.5, lambda: None)

        result.update(
            offline_s=offline_at - killed,
            offline_message=offline["payload"].get("message"),
            drop_ms=[(v.dropped_at - killed) * 1000 for v in viewers],
            resume_from_kill_ms=[(v.resumed_at - killed) * 1000 for v in viewers],
            resume_from_reconnect_ms=[(v.resumed_at - v.reconnected_at) * 1000 for v in viewers],
            recovered=[bool(v.resumed and v.resumed.get("recovered")) for v in viewers],
            replayed=[(v.resumed["to"] - v.resumed["from"] + 1) if v.resumed
                      and v.resumed.get("recovered") else None for v in viewers],
            gaps=sum(v.gaps for v in viewers), repeats=sum(v.repeats for v in viewers),
            caught_up=all(v.last_seq == watcher.last_seq for v in viewers),
            last_seq=watcher.last_seq, publishes=counts,
        )
        return result
    finally:
        running[0] = False
        if publishing is not None:
            await publishing
        for client in clients:
            client.close()
        await task.deferLater(reactor, 0.2, lambda: None)
        a.stop()
        b.stop()
        redis = Redis(store)
        try:
            redis.delete_prefix()
        finally:
            redis.close()
        shutil.rmtree(workdir, ignore_errors=True)


# The report


def report(runs: list[dict], args: argparse.Namespace) -> str:
    url = parse_redis_url(args.store)
    lines = [f"two nodes on redis {url.host}:{url.port}/{url.db} (a fresh prefix each run), "
             f"node A killed with SIGKILL; {args.viewers} viewers on A resume on B"
             + (f" {args.reconnect_delay:g} s after their drop" if args.reconnect_delay else "")
             + f"; {args.rate:g} events/s published to B", ""]
    for r in runs:
        lines.append(
            f"run {r['run']}: agent offline on B after {r['offline_s']:.2f} s "
            f"({r['offline_message']!r}); viewers dropped after "
            f"{max(r['drop_ms']):.1f} ms, resumed on B {min(r['resume_from_kill_ms']):.1f}-"
            f"{max(r['resume_from_kill_ms']):.1f} ms after the kill "
            f"({min(r['resume_from_reconnect_ms']):.1f}-{max(r['resume_from_reconnect_ms']):.1f}"
            f" ms from their reconnect), recovered {sum(r['recovered'])}/{len(r['recovered'])}, "
            f"replayed {min(x or 0 for x in r['replayed'])}-{max(x or 0 for x in r['replayed'])}"
            f" events, {r['gaps']} gaps, {r['repeats']} repeats, "
            f"{'all' if r['caught_up'] else 'NOT all'} caught up to seq {r['last_seq']}")
    if runs:
        resume = [max(r["resume_from_kill_ms"]) for r in runs]
        lines += ["", f"median of {len(runs)}: agent offline after "
                  f"{statistics.median(r['offline_s'] for r in runs):.2f} s "
                  f"(range {min(r['offline_s'] for r in runs):.2f}-"
                  f"{max(r['offline_s'] for r in runs):.2f}); the last viewer resumed "
                  f"{statistics.median(resume):.1f} ms after the kill (range "
                  f"{min(resume):.1f}-{max(resume):.1f})"]
    return "\n".join(lines)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    runs = []
    for number in range(1, args.repeat + 1):
        if not args.json:
            print(f"run {number} ...", file=sys.stderr, flush=True)
        runs.append(await one_run(reactor, args, number))
    if args.json:
        print(json.dumps({"store": parse_redis_url(args.store).redacted(),
                          "viewers": args.viewers, "rate": args.rate,
                          "reconnect_delay": args.reconnect_delay, "runs": runs}, indent=2))
    else:
        print(report(runs, args))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="redis://127.0.0.1:6379/0",
                        help="the Redis both nodes share (default redis://127.0.0.1:6379/0)")
    parser.add_argument("--viewers", type=int, default=5, help="viewers on node A (default 5)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="events a second published to node B (default 20)")
    parser.add_argument("--reconnect-delay", type=float, default=0.0,
                        help="seconds a viewer waits after its drop before it reconnects "
                             "(default 0)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not args.store.startswith(("redis://", "rediss://")):
        parser.error("--store must be a redis:// or rediss:// URL")
    try:
        parse_redis_url(args.store)
    except ValueError as e:
        parser.error(f"--store: {e}")
    if args.viewers < 1 or args.repeat < 1 or args.rate <= 0 or args.reconnect_delay < 0:
        parser.error("--viewers and --repeat must be 1 or more, --rate above 0, "
                     "--reconnect-delay 0 or more")
    return args


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))

"""
The dashboard in headless Chromium against a real hub: page weight, first paint of a large
board, and frames per second under a steady stream of events.

    python benchmarks/dashboard.py [--agents 1000] [--seconds 10] [--rate 200] [--repeat 3]

Starts ``twistd -n mission-control`` (no demo) on a free loopback port with a fresh data dir,
publishes ``--agents`` agent statuses over HTTP (in ``POST /api/events`` batches of at most 1,000
events and 64 KiB when the hub has it, else as concurrent single POSTs), then drives the system's
Chromium with Playwright, signed in as an admin (the heaviest page: analytics and its chart):

- **page weight**: a first load with a cold cache until the board is drawn: the page's own files
  (the document and ``/assets/``) as bytes on the wire (response headers and bodies, as Chromium
  counted them), decoded, and on disk; then the API calls and the WebSocket frames received;
- **first paint**: from the start of navigation (``performance.now()`` is 0 there) to the moment
  the board holds ``--agents`` agents and draws the cards in view (the list is windowed), seen by
  a MutationObserver installed before any of the page's scripts, and to the next animation frame
  after it; a fresh browser context each time, ``--repeat`` times, median and best;
- **frames per second** while a publisher thread makes the hub deliver ``--rate`` events a second
  (half ``session:activity``, half ``agent:status`` of the board's agents) for ``--seconds``:
  ``requestAnimationFrame`` callbacks counted in the page, and long tasks (over 50 ms) reported by
  a ``PerformanceObserver``.

Headless Chromium draws at most 60 frames a second.  Figures compare versions on one machine;
they are not promises.

A benchmark is one file to read, copy and run on its own, so this one keeps its load generator,
its child process and its report together, at over 400 lines.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from mission_control import keys, tokens  # noqa: E402
from tests.browser import CHROMIUM_ARGS, find_chromium  # noqa: E402

STATIC = os.path.join(ROOT, "mission_control", "static", "dashboard")
STATUSES = ("online", "busy", "idle", "error", "offline")
BATCH = 1000
#: The hub refuses a body over 64 KiB; a batch stays a little below.
MAX_BODY = 60 * 1024
#: How long (seconds) to wait for the page to draw the board, unless --timeout says otherwise.
WAIT = 120.0

# Installed before the page's own scripts: when the board first holds `want` agents (its count
# says so and the cards in view are drawn: the list is windowed), and the animation frame after
# that (marked on <html> for a locator to wait on: the page's CSP forbids
# the eval that a wait_for_function predicate needs).
BOARD_WATCH = """
(() => {
  const want = %d;
  window.__board = null;
  const observer = new MutationObserver(() => {
    const count = document.getElementById("agent-count");
    if (window.__board === null && count && count.textContent === `(${want})`
        && document.querySelector("#agents li")) {
      window.__board = {cards: performance.now(), frame: null};
      observer.disconnect();
      requestAnimationFrame(() => {
        window.__board.frame = performance.now();
        document.documentElement.dataset.benchDrawn = "";
      });
    }
  });
  observer.observe(document, {childList: true, subtree: true, characterData: true});
})();
"""

# Counts animation frames and long tasks for `ms` milliseconds.
FRAME_COUNT = """
ms => new Promise(resolve => {
  const longTasks = [];
  let observer = null;
  try {
    observer = new PerformanceObserver(list => {
      for (const entry of list.getEntries()) longTasks.push(entry.duration);
    });
    observer.observe({type: "longtask"});
  } catch (e) { /* no longtask support: reported as none */ }
  let frames = 0;
  const started = performance.now();
  const seqBefore = Number(document.querySelector("#last-seq")?.textContent || 0);
  function frame(now) {
    if (now - started < ms) { frames += 1; requestAnimationFrame(frame); return; }
    if (observer) observer.disconnect();
    const seqAfter = Number(document.querySelector("#last-seq")?.textContent || 0);
    resolve({frames, elapsed: now - started, longTasks, seqBefore, seqAfter});
  }
  requestAnimationFrame(frame);
})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hub(port: int, data_dir: str) -> subprocess.Popen:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log = open(os.path.join(data_dir, "hub.log"), "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env
                                                   else []))
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--logfile=-", "mission-control",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir,
         # One token publishes everything here: lift the per-user limit, we measure the page.
         "--max-publishes-per-second", "1000000"],
        stdout=log, stderr=subprocess.STDOUT, cwd=data_dir, env=env,
    )
    deadline = time.monotonic() + 30
    secret = os.path.join(data_dir, keys.SECRET_FILE_NAME)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if os.path.exists(secret):
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the hub did not start; see " + log.name)


class Publisher:
    """Keep-alive HTTP publishing for one thread."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body) -> tuple[int, bytes]:
        self.connection.request("POST", path, json.dumps(body), self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def publish(self, event: dict) -> None:
        """One event as its single form."""
        payload = dict(event["payload"])
        if event["type"] == "agent:status":
            path = f"/api/agents/{payload.pop('agentId')}/status"
        else:
            path = f"/api/sessions/{payload.pop('sessionId')}/activity"
        status, answer = self.post(path, payload)
        if status != 200:
            raise SystemExit(f"POST {path} answered {status}: {answer[:200]!r}")

    def close(self) -> None:
        self.connection.close()


def agent_status(i: int, n: int = 0) -> dict:
    return {"type": "agent:status", "payload": {
        "agentId": f"agent-{i:05d}", "name": f"Agent {i}", "status": STATUSES[(i + n) % 5],
        "message": f"step {n} of a long task", "metadata": {"bench": True}}}


def session_activity(i: int, n: int) -> dict:
    return {"type": "session:activity", "payload": {
        "sessionId": f"sess-{i % 50:03d}", "agentId": f"agent-{i:05d}", "activity": "tool_call",
        "summary": f"called web.search ({n})", "detail": {"n": n}}}


def batches(events: list[dict]) -> list[list[dict]]:
    """C{events} in batches the hub takes: at most 1,000 events and 64 KiB of JSON each."""
    out, batch, size = [], [], 16
    for event in events:
        length = len(json.dumps(event)) + 1
        if batch and (len(batch) == BATCH or size + length > MAX_BODY):
            out.append(batch)
            batch, size = [], 16
        batch.append(event)
        size += length
    if batch:
        out.append(batch)
    return out


def publish_all(port: int, token: str, events: list[dict]) -> str:
    """Publish C{events}: in batches when the hub has POST /api/events, else one by one."""
    chunks = batches(events)
    first = Publisher(port, token)
    status, answer = first.post("/api/events", {"events": chunks[0]})
    if status == 200:
        for chunk in chunks[1:]:
            status, answer = first.post("/api/events", {"events": chunk})
            if status != 200:
                raise SystemExit(f"POST /api/events answered {status}: {answer[:200]!r}")
        first.close()
        return f"{len(chunks)} POST /api/events batches"
    first.close()
    if status not in (404, 405):
        raise SystemExit(f"POST /api/events answered {status}: {answer[:200]!r}")
    local = threading.local()
    publishers = []

    def one(event):
        if not hasattr(local, "publisher"):
            local.publisher = Publisher(port, token)
            publishers.append(local.publisher)
        local.publisher.publish(event)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, events))
    for publisher in publishers:
        publisher.close()
    return "concurrent single POSTs (the hub has no POST /api/events)"


def steady_load(port: int, token: str, agents: int, rate: int, stop: threading.Event,
                sent: list) -> None:
    """Publish C{rate} events a second, in ticks of 50 ms, until C{stop} is set."""
    publisher = Publisher(port, token)
    tick = 0.05
    per_tick = rate * tick
    owed = 0.0
    n = 0
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            owed += per_tick
            while owed >= 1:
                owed -= 1
                i = n % max(agents, 1)
                publisher.publish(session_activity(i, n) if n % 2 else agent_status(i, n))
                n += 1
            sent.append(n)
            next_at += tick
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
    finally:
        publisher.close()


def board_drawn(page, agents: int, wait_ms: float) -> None:
    """
    Wait until the board holds C{agents} agents and shows its first cards (locators: the page's
    CSP forbids eval). The list is windowed: only the cards in view are in the document.
    """
    page.locator("#agent-count", has_text=f"({agents})").wait_for(timeout=wait_ms)
    page.locator("#agents li").first.wait_for(state="attached", timeout=wait_ms)


def page_weight(browser, url: str, agents: int, wait_ms: float) -> dict:
    """
    A first load with a cold cache, until the board is drawn: the page's own files (the document
    and /assets/), the API calls, and the WebSocket frames received (the snapshot, mostly).
    """
    context = browser.new_context()
    page = context.new_page()
    finished = []
    frames = []
    page.on("requestfinished", lambda request: finished.append(request))
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: frames.append(frame)))
    page.goto(url)
    board_drawn(page, agents, wait_ms)
    page.wait_for_load_state("networkidle")
    ws_frames = len(frames)
    ws_bytes = sum(len(f.encode() if isinstance(f, str) else f) for f in frames)
    files = {"count": 0, "wire": 0, "decoded": 0, "on_disk": 0}
    api = {"count": 0, "wire": 0}
    for request in finished:
        sizes = request.sizes()
        wire = sizes["responseHeadersSize"] + sizes["responseBodySize"]
        path = urlsplit(request.url).path
        if path.startswith("/api/"):
            api["count"] += 1
            api["wire"] += wire
            continue
        response = request.response()
        files["count"] += 1
        files["wire"] += wire
        files["decoded"] += len(response.body()) if response is not None else 0
        name = "index.html" if path == "/" else path.removeprefix("/assets/")
        local = os.path.join(STATIC, *name.split("/"))
        if os.path.isfile(local):
            files["on_disk"] += os.path.getsize(local)
    context.close()
    return {"files": files, "api": api, "ws_frames": ws_frames, "ws_bytes": ws_bytes}


def first_paint(browser, url: str, agents: int, wait_ms: float) -> dict:
    context = browser.new_context()
    context.add_init_script(BOARD_WATCH % agents)
    page = context.new_page()
    page.goto(url)
    page.locator("html[data-bench-drawn]").wait_for(state="attached", timeout=wait_ms)
    board = page.evaluate("window.__board")
    context.close()
    return board


def frames_under_load(browser, url: str, port: int, token: str, agents: int, rate: int,
                      seconds: float, wait_ms: float) -> dict:
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    board_drawn(page, agents, wait_ms)
    idle = page.evaluate(FRAME_COUNT, min(1000, seconds * 1000))
    stop = threading.Event()
    sent: list = [0]
    load = threading.Thread(target=steady_load, args=(port, token, agents, rate, stop, sent))
    load.start()
    try:
        busy = page.evaluate(FRAME_COUNT, seconds * 1000)
    finally:
        stop.set()
        load.join()
    context.close()
    busy["sent"] = sent[-1]
    busy["idle_fps"] = idle["frames"] * 1000 / idle["elapsed"]
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="events a second under load")
    parser.add_argument("--repeat", type=int, default=3, help="first-paint runs")
    parser.add_argument("--chromium", default=None, help="the Chromium to drive")
    parser.add_argument("--timeout", type=float, default=WAIT,
                        help="seconds to wait for the page to draw the board")
    args = parser.parse_args()

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("Playwright is not installed: pip install '.[test]'")
    chromium = args.chromium or find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found: install it, or pass --chromium PATH")

    data_dir = tempfile.mkdtemp(prefix="mc-bench-")
    port = free_port()
    hub = start_hub(port, data_dir)
    try:
        secret = keys.read_secret(os.path.join(data_dir, keys.SECRET_FILE_NAME))
        token = tokens.mint_token(secret, "bench", time.time(), ttl=3600, role="admin")
        started = time.monotonic()
        how = publish_all(port, token, [agent_status(i) for i in range(args.agents)])
        published = time.monotonic() - started
        url = f"http://127.0.0.1:{port}/#token={token}"

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=list(CHROMIUM_ARGS))
            try:
                wait_ms = args.timeout * 1000
                weight = page_weight(browser, url, args.agents, wait_ms)
                paints = [first_paint(browser, url, args.agents, wait_ms)
                          for _ in range(max(1, args.repeat))]
                load = frames_under_load(browser, url, port, token, args.agents, args.rate,
                                         args.seconds, wait_ms)
            finally:
                browser.close()
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=15)
        except subprocess.TimeoutExpired:
            hub.kill()
        shutil.rmtree(data_dir, ignore_errors=True)

    files, api = weight["files"], weight["api"]
    cards = [p["cards"] for p in paints]
    frames = [p["frame"] for p in paints]
    fps = load["frames"] * 1000 / load["elapsed"]
    long_tasks = load["longTasks"]
    delivered = load["seqAfter"] - load["seqBefore"]
    print(f"{args.agents} agents published in {published:.2f} s with {how}; "
          f"load {args.rate} events/s for {args.seconds:g} s; Chromium {chromium}")
    print()
    rows = [
        ("page weight", f"{files['count']} files, {files['wire'] / 1024:,.1f} KiB on the wire "
                        f"({files['decoded'] / 1024:,.1f} KiB decoded, "
                        f"{files['on_disk'] / 1024:,.1f} KiB on disk)"),
        ("  then", f"{api['count']} API calls, {api['wire'] / 1024:,.1f} KiB; "
                   f"{weight['ws_frames']} WebSocket frames, {weight['ws_bytes'] / 1024:,.1f} KiB"),
        ("first paint", f"{args.agents} agents at {statistics.median(cards):,.0f} ms "
                        f"(best {min(cards):,.0f}), next frame at "
                        f"{statistics.median(frames):,.0f} ms (best {min(frames):,.0f}); "
                        f"median of {len(paints)}"),
        ("frames per second", f"{fps:.1f} under load ({load['idle_fps']:.1f} idle); "
                              f"{load['sent']} events sent, last seq advanced by {delivered}"),
        ("long tasks", f"{len(long_tasks)}, longest {max(long_tasks, default=0):.0f} ms, "
                       f"{sum(long_tasks):.0f} ms in all"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

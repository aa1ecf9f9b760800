"""
benchmarks/fanout.py keeps working: tiny runs of it, against the real hub, the peers and the
floor, end with status 0 and print every row.  Its numbers are never checked: a test machine is
no place to measure them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.helpers import PROJECT_ROOT, ChildProcess, spawn_process

SCRIPT = os.path.join(PROJECT_ROOT, "benchmarks", "fanout.py")
UNAVAILABLE = None if shutil.which("node") else "the benchmark's load generator needs Node"


class FanoutBenchmarkTests(TestCase):
    """A tiny run of the fan-out benchmark (its numbers are not checked)."""

    skip = UNAVAILABLE
    timeout = 400  # npm ci, when benchmarks/node has no node_modules yet, then the runs

    def run_benchmark(self, *options: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        env["PYTHONPATH"] = PROJECT_ROOT
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        return spawn_process(self, ChildProcess("benchmark"),
                             [sys.executable, SCRIPT, "--quick", "--subscribers", "3", *options],
                             env, cwd)

    @defer.inlineCallbacks
    def test_tiny_run_prints_every_case(self):
        """
        With every peer, the benchmark ends with status 0 and prints a row for mission-control,
        the websockets peer and the floor, a row or the reason for skipping each Node peer (npm ci
        can fail), and mission-control's publishes accepted over HTTP and the WebSocket.
        """
        proc = self.run_benchmark("--peers", "all")
        code = yield proc.ended
        self.assertEqual(code, 0, proc.describe())
        text = proc.out.decode()
        for row in ("deliveries/s", "mission-control ", "websockets (Python)", "floor (raw send)",
                    "ws (Node)", "Socket.IO 4.8 (Node)", "HTTP POST /api/agents/{id}/status",
                    "HTTP POST /api/events", "WebSocket publish frames"):
            self.assertIn(row, text)
        for line in text.splitlines():
            if line.startswith(("ws (Node)", "Socket.IO")) and "skipped" in line:
                self.assertIn("npm", line)  # the only reason a Node peer is left out here

    @defer.inlineCallbacks
    def test_json_output(self):
        """
        --json prints one JSON document: a result for mission-control with the measures the
        table shows, and no peer with --peers none.
        """
        proc = self.run_benchmark("--peers", "none", "--json")
        code = yield proc.ended
        self.assertEqual(code, 0, proc.describe())
        report = json.loads(proc.out)
        self.assertEqual([r["case"] for r in report["results"]], ["mission-control"])
        result = report["results"][0]
        for key in ("deliveries_per_s", "all_delivered", "cpu_us_per_delivery", "p50_ms",
                    "p99_ms", "max_ms", "handshakes_per_s", "bytes_per_idle_connection",
                    "http_publishes_per_s", "ws_publishes_per_s", "batch_publishes_per_s"):
            self.assertIn(key, result)

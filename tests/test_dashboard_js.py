"""
The dashboard's pure JavaScript, run by Node.js without a browser.

Each test writes a small ES module into its temporary folder that imports the page's own
C{mission_control/static/dashboard/util.js} and C{analytics.js} by file URL (the very files the
hub serves), calls them, and prints one JSON document; the test compares that document with what
the functions must return, so a failure shows what differed.  No JavaScript test framework and no
npm package is involved: only the machine's C{node}, which C{.ci/run} installs; without it (or
with one too old for the page's JavaScript) these tests skip, saying why.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import pathlib
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mission_control import tokens
from tests.helpers import PROJECT_ROOT, node_version

DASHBOARD = pathlib.Path(PROJECT_ROOT, "mission_control", "static", "dashboard")
#: The oldest Node.js with every global the page's helpers use (atob, TextDecoder, replaceAll).
NODE_MAJOR = 18
#: The columns of every CSV export, in order (util.js's CSV_COLUMNS).
CSV_COLUMNS = ["seq", "ts", "type", "agentId", "sessionId", "status", "activity", "message",
               "summary"]


def node() -> str:
    """The machine's C{node}, or skip the test saying why it cannot run."""
    found, (major, _), printed = node_version()
    if major < NODE_MAJOR:
        raise SkipTest(f"the dashboard's JavaScript needs Node.js {NODE_MAJOR} or newer; "
                       f"this is {printed}")
    return found


class NodeTestCase(SynchronousTestCase):
    """Runs a script against the dashboard's modules in Node.js."""

    def run_js(self, body: str, given=None):
        """
        Run C{body} as an ES module in which C{util} and C{analytics} are the page's modules and
        C{given} is the JSON value passed in; C{body} ends by calling C{report(value)}.  Returns
        that value, decoded.
        """
        program = node()
        folder = pathlib.Path(self.mktemp()).resolve()
        folder.mkdir(parents=True)
        (folder / "given.json").write_text(json.dumps(given), encoding="utf-8")
        script = folder / "check.mjs"
        script.write_text(
            'import { readFileSync } from "node:fs";\n'
            f'import * as util from {json.dumps((DASHBOARD / "util.js").as_uri())};\n'
            f'import * as analytics from {json.dumps((DASHBOARD / "analytics.js").as_uri())};\n'
            'const given = JSON.parse(readFileSync(new URL("./given.json", import.meta.url), "utf8"));\n'
            "const report = (value) => process.stdout.write(JSON.stringify(value));\n"
            + body,
            encoding="utf-8")
        done = subprocess.run([program, str(script)], capture_output=True, text=True, timeout=30,
                              cwd=folder)
        self.assertEqual(done.returncode, 0, f"node failed:\n{done.stderr}")
        return json.loads(done.stdout)


def frame(seq, **payload):
    """A session:activity frame as the hub sends it."""
    return {"seq": seq, "ts": f"2026-11-27T17:00:{seq:02d}.000Z", "type": "session:activity",
            "payload": {"sessionId": "sess-1", "agentId": "agent-1", "activity": "message",
                        **payload}}


class CsvTests(NodeTestCase):
    """util.eventsToCsv: what the Export CSV buttons write."""

    def test_header_and_one_row_per_frame(self):
        """
        The CSV starts with the header C{seq,ts,type,agentId,sessionId,status,activity,message,
        summary} and has one row per frame, in the order given, every line ending with CRLF;
        a field the payload lacks is an empty cell, and fields not among the columns are left out.
        """
        frames = [frame(1, summary="first", detail={"tool": "x"}),
                  frame(2, status="busy", message="working")]
        text = self.run_js("report(util.eventsToCsv(given));", frames)
        self.assertEqual(text.split("\r\n"), [
            ",".join(CSV_COLUMNS),
            "1,2026-11-27T17:00:01.000Z,session:activity,agent-1,sess-1,,message,,first",
            "2,2026-11-27T17:00:02.000Z,session:activity,agent-1,sess-1,busy,message,working,",
            "",
        ])

    def test_commas_quotes_and_newlines_are_quoted(self):
        """
        A cell holding a comma, a double quote, a newline or a carriage return is enclosed in
        double quotes, with its quotes doubled; a spreadsheet (here Python's csv reader) reads
        every value back as it was.
        """
        summaries = ["a, b", 'say "hi"', "two\nlines", "cr\rhere", 'all, "of"\r\nit', "plain"]
        frames = [frame(i + 1, summary=s) for i, s in enumerate(summaries)]
        text = self.run_js("report(util.eventsToCsv(given));", frames)
        self.assertIn(',"a, b"\r\n', text)
        self.assertIn(',"say ""hi"""\r\n', text)
        self.assertIn(',"two\nlines"\r\n', text)
        rows = list(csv.reader(io.StringIO(text, newline="")))
        self.assertEqual([row[8] for row in rows[1:]], summaries)
        self.assertEqual(len(rows), 1 + len(summaries))

    def test_formula_prefixes_are_written_as_text(self):
        """
        A cell that a spreadsheet would run as a formula (it begins with =, +, -, @, a tab or a
        carriage return) gets a leading apostrophe, so it is shown as text; one that also needs
        quoting is quoted around the apostrophe; a character further in changes nothing.
        """
        summaries = ["=SUM(A1:A2)", "+1", "-2", "@cmd", "\tx", "\rx", "=1,2", "a=b", "1-2"]
        frames = [frame(i + 1, summary=s) for i, s in enumerate(summaries)]
        text = self.run_js("report(util.eventsToCsv(given));", frames)
        rows = list(csv.reader(io.StringIO(text, newline="")))
        self.assertEqual([row[8] for row in rows[1:]],
                         ["'=SUM(A1:A2)", "'+1", "'-2", "'@cmd", "'\tx", "'\rx", "'=1,2", "a=b",
                          "1-2"])
        self.assertIn(",'=SUM(A1:A2)\r\n", text)
        self.assertIn(',"\'=1,2"\r\n', text)
        self.assertIn(',"\'\rx"\r\n', text)


class DurationTests(NodeTestCase):
    """util.formatDuration: the ages and the time left that the page shows."""

    def test_units_and_their_boundaries(self):
        """
        Below a minute, whole seconds ("59 s"); below an hour, whole minutes ("59 min"); below
        48 hours, hours and the minutes past them ("1 h", "1 h 1 min", "47 h 59 min"); from 48
        hours on, whole days ("2 d").  Fractions are cut, never rounded up, and a negative
        duration (a clock slightly ahead) is "0 s".
        """
        s, m, h = 1000, 60_000, 3_600_000
        cases = {
            -5000: "0 s", 0: "0 s", 999: "0 s", s: "1 s", 59_999: "59 s",
            m: "1 min", 2 * m - 1: "1 min", 60 * m - 1: "59 min",
            h: "1 h", h + m: "1 h 1 min", 2 * h - 1: "1 h 59 min", 24 * h: "24 h",
            48 * h - m: "47 h 59 min", 48 * h - 1: "47 h 59 min", 48 * h: "2 d",
            72 * h - 1: "2 d", 72 * h: "3 d", 400 * 24 * h: "400 d",
        }
        got = self.run_js(
            "report(Object.fromEntries(given.map((ms) => [ms, util.formatDuration(ms)])));",
            list(cases))
        self.assertEqual(got, {str(ms): text for ms, text in cases.items()})


class ClaimsTests(NodeTestCase):
    """util.readClaims: what the page reads from a token (without verifying it)."""

    def test_a_minted_token_round_trips(self):
        """
        A token minted by L{tokens.mint_token} reads back with its sub, exp, role and name, also
        when its base64url holds the two characters base64 spells otherwise ("-" and "_"); a
        token whose JSON is UTF-8 rather than \\u escapes (as other token services write it)
        reads back with its characters outside ASCII as they were.
        """
        now = time.time()
        name = "Zoë ?????>>>>>"  # runs that encode as "_" and "-" whatever their offset
        minted = tokens.mint_token(b"k" * 32, "alice", now, ttl=240, role="operator", name=name)
        middle = minted.split(".")[1]
        self.assertTrue("-" in middle and "_" in middle, middle)
        utf8 = ".".join(
            base64.urlsafe_b64encode(part).decode().rstrip("=")
            for part in (b'{"alg":"HS256","typ":"JWT"}',
                         json.dumps({"sub": "zoë", "exp": 1_800_000_000, "name": "Zoë Ångström"},
                                    ensure_ascii=False).encode("utf-8"),
                         b"signature"))
        got = self.run_js("report(given.map((t) => util.readClaims(t)));", [minted, utf8])
        self.assertEqual(got[0], {"sub": "alice", "iat": int(now), "exp": int(now + 240),
                                  "role": "operator", "name": name})
        self.assertEqual(got[1], {"sub": "zoë", "exp": 1_800_000_000, "name": "Zoë Ångström"})

    def test_garbage_is_null(self):
        """
        Anything that is not three dot-separated parts whose middle one is base64url JSON of an
        object reads as null: an empty string, a word, two or four parts (even around good
        claims), a middle part that is not base64, not JSON, or JSON that is a number, a string
        or null.
        """
        def token(middle: str) -> str:
            encoded = base64.urlsafe_b64encode(middle.encode()).decode().rstrip("=")
            return f"x.{encoded}.y"

        claims = token('{"sub": "alice"}')
        garbage = ["", "garbage", "a.b", claims.rsplit(".", 1)[0], claims + ".z", "x.!!!.y",
                   token("not json"), token("42"), token("null"), token('"text"')]
        got = self.run_js("report(given.map((t) => util.readClaims(t)));", garbage)
        self.assertEqual(dict(zip(garbage, got)), {t: None for t in garbage})


class RateCounterTests(NodeTestCase):
    """analytics.RateCounter: the events-per-minute tile and the rate chart."""

    def test_count_per_minute_and_series_over_whole_seconds(self):
        """
        Events are counted in the whole second of their hub timestamp (an unreadable one is
        ignored).  perMinute(now) sums the 60 whole seconds ending with now's and says over how
        many seconds the page has watched (at least 1, at most 60, from start()); series(now)
        gives the last 300 whole seconds before now's (which is not over yet), oldest first,
        with 0 for a quiet second and null for a second before start() (unknown, not quiet);
        prune(now) forgets what lies before that window.
        """
        base = 1_800_000_000  # a whole second, in seconds since the epoch

        def iso(second, ms=0):
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{ms:03d}Z"

        stamps = ([iso(base - 400)]             # forgotten by prune
                  + [iso(base - 60, 999)]       # just outside the minute before base + 0.5
                  + [iso(base - 59)] * 2        # the first second of that minute
                  + [iso(base - 1, 0), iso(base - 1, 999)]  # one second, two events
                  + [iso(base, 500)]            # the current second
                  + ["not a time"])
        got = self.run_js("""
            const rate = new analytics.RateCounter();
            const before = rate.perMinute(given.now);
            rate.start(given.now - 100_000);
            for (const ts of given.stamps) rate.count(ts);
            const [xs, ys] = rate.series(given.now);
            const counted = [...rate.buckets.entries()].sort((a, b) => a[0] - b[0]);
            rate.prune(given.now);
            const fresh = new analytics.RateCounter();
            fresh.start(given.now - 10_000);
            report({
              freshSeconds: fresh.perMinute(given.now).seconds,
              before, counted,
              perMinute: rate.perMinute(given.now),
              later: rate.perMinute(given.now + 120_000),
              xs: [xs.length, xs[0], xs.at(-1)],
              ys: {
                total: ys.reduce((a, b) => a + b, 0), last: ys.at(-1), atMinus59: ys[ys.length - 59],
                firstCounted: ys[ys.length - 100], beforeStart: ys[ys.length - 101],
              },
              kept: [...rate.buckets.keys()].sort((a, b) => a - b),
            });
        """, {"now": base * 1000 + 500, "stamps": stamps})
        self.assertEqual(got["before"], {"events": 0, "seconds": 0})
        self.assertEqual(got["counted"], [[base - 400, 1], [base - 60, 1], [base - 59, 2],
                                          [base - 1, 2], [base, 1]])
        self.assertEqual(got["perMinute"], {"events": 5, "seconds": 60})
        self.assertEqual(got["freshSeconds"], 10)
        self.assertEqual(got["later"], {"events": 0, "seconds": 60})
        self.assertEqual(got["xs"], [300, base - 300, base - 1])
        self.assertEqual(got["ys"], {"total": 5, "last": 2, "atMinus59": 2, "firstCounted": 0,
                                     "beforeStart": None})
        self.assertEqual(got["kept"], [base - 60, base - 59, base - 1, base])

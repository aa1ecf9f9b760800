"""
The dashboard at C{/}, in headless Chromium, against a real hub process.

Each test starts C{twistd -n mission-control --demo} on a free loopback port with a data dir of
its own, mints tokens with C{mission-control token}, and drives the page through the DOM that the
dashboard promises its tests: C{#signin}, C{#connection[data-state]}, C{#agents
li[data-agent-id]}, C{#feed li.activity[data-seq]}, C{#analytics}, C{#connections}, C{#theme}.
Events are published over the HTTP API, as agents publish them.

The browser runs on a thread of its own (L{tests.browser}); every check that waits uses
Playwright's auto-waiting C{expect} on a locator (not C{wait_for_function}, whose predicate
needs an eval that the page's CSP forbids), bounded by a timeout that only
says how long to wait for something that must happen: none of them measures speed, except the
one second the contract gives a published status to reach the board.  The benchmark measures.

Set C{MISSION_CONTROL_SCREENSHOT=1} to write docs/images/dashboard.png from the screenshot test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import struct
import sys
import time
import types
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mission_control import tokens
from mission_control.demo import AGENT_NAMES
from tests import browser
from tests.browser import UNAVAILABLE, DashboardHub, PageError, run_browser
from tests.helpers import PROJECT_ROOT, ChildProcess, connect, spawn_process, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # the tests skip: UNAVAILABLE says why
    expect = None
else:
    expect.set_options(timeout=browser.DEFAULT_TIMEOUT_MS)

AXE = os.path.join(PROJECT_ROOT, "tests", "vendor", "axe.min.js")
SCREENSHOT = os.path.join(PROJECT_ROOT, "docs", "images", "dashboard.png")
#: The contract: a status published over HTTP is on the board within a second.
ONE_SECOND_MS = 1000
#: How long a page may take to reconnect after the hub came back (its backoff included).
RECONNECT_MS = 30_000
#: Seconds a page closed by an administrator is watched for a reconnect of its own: many times
#: the half second its first retry would wait at most.
NO_RECONNECT_SECONDS = 3
#: Text that an agent controls, and that must stay text.
HOSTILE = "<img src=x onerror=alert(1)><b>bold</b>"


def live(page):
    """Wait until the page is signed in and its WebSocket is live."""
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")


def sign_in(hub: DashboardHub, page, token: str):
    """Open the dashboard signed in with C{token} (from the fragment), and wait until it is live."""
    page.goto(hub.page_url(token))
    live(page)


def card(page, agent_id: str):
    return page.locator(f'#agents li[data-agent-id="{agent_id}"]')


def feed_item(page, seq: int):
    return page.locator(f'#feed li.activity[data-seq="{seq}"]')


def feed_seqs(page, session_id: str) -> list[int]:
    """The seqs of the feed's items of C{session_id}, in the order the feed shows them."""
    return page.eval_on_selector_all(
        f'#feed li.activity[data-session-id="{session_id}"]',
        "items => items.map(item => Number(item.dataset.seq))")


def has_path(log, prefix: str) -> list[str]:
    return [path for path in log.request_paths() if path.startswith(prefix)]


def shown_seqs(page) -> list[int]:
    """The seqs of every item #feed shows, in its order (newest first)."""
    return page.eval_on_selector_all("#feed li.activity",
                                     "items => items.map(item => Number(item.dataset.seq))")


def timeline_seqs(page) -> list[int]:
    """The seqs of the items #timeline-events shows, in its order (oldest first)."""
    return page.eval_on_selector_all("#timeline-events li",
                                     "items => items.map(item => Number(item.dataset.seq))")


def record_websockets(page):
    """
    What C{page} does with WebSockets from now on: C{opened}, the URL of each one it opens, and
    C{sent}, every frame it sends on them, decoded.  Call it before the page opens its first.
    """
    record = types.SimpleNamespace(opened=[], sent=[])

    def opened(websocket):
        record.opened.append(websocket.url)
        websocket.on("framesent", lambda payload: record.sent.append(json.loads(payload)))

    page.on("websocket", opened)
    return record


def auth_frames(record) -> list:
    return [frame for frame in record.sent if frame.get("type") == "auth"]


#: Before the page's own scripts: keep the code of every close of its WebSockets in
#: C{window.__closeCodes}, as the page itself received them.
RECORD_CLOSE_CODES = """
    window.__closeCodes = [];
    window.WebSocket = class extends window.WebSocket {
        constructor(...args) {
            super(...args);
            this.addEventListener("close", (event) => window.__closeCodes.push(event.code));
        }
    };
"""


def read_download(page, button: str):
    """Click C{button}, which must start a download; its suggested file name and its text."""
    with page.expect_download() as info:
        page.locator(button).click()
    download = info.value
    with open(download.path(), encoding="utf-8", newline="") as f:
        return download.suggested_filename, f.read()


class DashboardTestCase(TestCase):
    """A hub with the demo fleet, and an admin token (alice), for each test."""

    skip = UNAVAILABLE
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        self.hub = DashboardHub(self)
        yield self.hub.start()
        self.admin = yield self.hub.token("alice", "admin", name="Alice")

    def browse(self, fn, **context_options):
        return run_browser(self, fn, **context_options)


class QuietDashboardTestCase(DashboardTestCase):
    """
    A hub without the demo fleet: nothing is published but what the test publishes, so counts
    and orders are exact.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.hub = DashboardHub(self, demo=False)
        yield self.hub.start()
        self.admin = yield self.hub.token("alice", "admin", name="Alice")


class SignInTests(DashboardTestCase):
    """How the page signs in, and what it shows when it cannot."""

    @defer.inlineCallbacks
    def test_start_up_link_signs_in_and_leaves_the_address_bar(self):
        """
        The link the hub logs at start-up when it uses its development secret
        (C{dashboard: http://127.0.0.1:PORT/#token=...}) opens a signed-in, live board, and the
        token is gone from the address bar at once (by the load event, before the page has even
        connected): C{location.hash} is empty and the URL does not contain it; the token is kept
        in sessionStorage, so a reload stays signed in.
        """
        yield wait_until(lambda: self.hub.dashboard_link() is not None, timeout=10).addErrback(
            lambda _: self.fail("no `dashboard: http://...#token=...` line in the start-up "
                                "log:\n" + self.hub.log()))
        link = self.hub.dashboard_link()
        token = link.split("#token=", 1)[1]

        def check(session):
            page = session.page
            page.goto(link)  # returns on the load event, before the page has connected
            self.assertEqual(page.evaluate("location.hash"), "")
            self.assertNotIn(token, page.url)
            self.assertNotIn("token", page.evaluate("location.href"))
            live(page)
            expect(page.locator("#signin")).to_be_hidden()
            expect(page.locator("#whoami")).not_to_be_empty()
            self.assertEqual(
                page.evaluate("sessionStorage.getItem('mission-control.token')"), token)
            page.reload()
            live(page)
            expect(page.locator("#signin")).to_be_hidden()

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_pasted_token_signs_in_and_sign_out_forgets_it(self):
        """
        Without a fragment the page shows #signin; a token pasted into #token-input and sent
        with "Sign in" signs in (live, #whoami names the user and role, the sign-in form is
        hidden).  #sign-out forgets the token: #signin is back, sessionStorage no longer holds
        it, and a reload stays signed out.
        """
        operator = yield self.hub.token("olivia", "operator", name="Olivia")

        def check(session):
            page = session.page
            page.goto(self.hub.url("/"))
            expect(page.locator("#signin")).to_be_visible()
            page.get_by_label("Token", exact=True).fill(operator)
            page.locator("#signin button[type=submit]").click()
            live(page)
            expect(page.locator("#signin")).to_be_hidden()
            expect(page.locator("#whoami")).to_contain_text("Olivia")
            expect(page.locator("#whoami")).to_contain_text("operator")
            page.locator("#sign-out").click()
            expect(page.locator("#signin")).to_be_visible()
            self.assertIsNone(
                page.evaluate("sessionStorage.getItem('mission-control.token')"))
            page.reload()
            expect(page.locator("#signin")).to_be_visible()
            self.assertNotEqual(page.locator("#connection").get_attribute("data-state"), "live")

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_invalid_and_expired_tokens_show_sign_in_with_a_reason(self):
        """
        A token that is not one (C{/#token=garbage}), a token of the hub's own secret that has
        expired, and a well-formed token signed with another secret (which only the hub can
        tell apart) each leave the page refused: #signin is shown with a message in
        #signin-message saying why (for the expired one that it expired, for the foreign one
        the hub's reason), and #connection says refused.
        """
        expired = self.hub.expired_token("alice", "admin")
        foreign = tokens.mint_token(b"another hub's secret, 32 bytes long", "alice", time.time(),
                                   role="admin")

        def check(session):
            for label, token, reason in (
                    ("garbage", "garbage", re.compile(r"\S")),
                    ("expired", expired, re.compile("expired", re.I)),
                    ("foreign", foreign, re.compile("refused this token: invalid token"))):
                page = session.new_page(label)
                page.goto(self.hub.page_url(token))
                expect(page.locator("#signin")).to_be_visible()
                expect(page.locator("#signin-message")).to_be_visible()
                expect(page.locator("#signin-message")).to_have_text(reason)
                expect(page.locator("#connection")).to_have_attribute("data-state", "refused")

        yield self.browse(check)


class BoardTests(DashboardTestCase):
    """The fleet board and the activity feed, fed by the hub."""

    @defer.inlineCallbacks
    def test_demo_agents_are_on_the_board(self):
        """
        The board shows one card per agent the hub knows, which with --demo is the demo's
        fleet: every demo agent, no other card than the agents of GET /api/agents, and each card
        with the agent's name.
        """
        demo_ids = {f"agent-{name.lower()}" for name in AGENT_NAMES}

        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            for agent_id in sorted(demo_ids):
                expect(card(page, agent_id)).to_have_count(1)
            status, answer = self.hub.request("GET", "/api/agents", self.admin)
            self.assertEqual(status, 200, answer)
            agents = answer["agents"]
            self.assertEqual({agent["agentId"] for agent in agents}, demo_ids)
            for agent in agents:
                expect(card(page, agent["agentId"]).locator(".agent-name")).to_have_text(
                    agent["name"])
            shown = page.eval_on_selector_all(
                "#agents li.agent", "cards => cards.map(card => card.dataset.agentId)")
            self.assertEqual(sorted(shown), sorted(demo_ids))

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_published_status_reaches_its_card_within_a_second(self):
        """
        A status POSTed to /api/agents/{id}/status shows on that agent's card, within a
        second: its .agent-status word, its .agent-message and its data-status; the card of
        another agent keeps its own.
        """
        def check(session):
            page = session.page
            self.hub.publish_status(self.admin, "test-a", status="online", message="ready a")
            self.hub.publish_status(self.admin, "test-b", status="idle", message="ready b")
            sign_in(self.hub, page, self.admin)
            expect(card(page, "test-a").locator(".agent-message")).to_have_text("ready a")
            expect(card(page, "test-b").locator(".agent-message")).to_have_text("ready b")

            self.hub.publish_status(self.admin, "test-a", status="busy",
                                    message="summarizing the weekly report")
            a = card(page, "test-a")
            expect(a.locator(".agent-status")).to_have_text("busy", timeout=ONE_SECOND_MS)
            expect(a.locator(".agent-message")).to_have_text(
                "summarizing the weekly report", timeout=ONE_SECOND_MS)
            expect(a).to_have_attribute("data-status", "busy", timeout=ONE_SECOND_MS)
            b = card(page, "test-b")
            self.assertEqual(b.locator(".agent-status").text_content().strip(), "idle")
            self.assertEqual(b.locator(".agent-message").text_content().strip(), "ready b")
            self.assertEqual(b.get_attribute("data-status"), "idle")

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_published_activity_appears_in_the_feed(self):
        """
        A session:activity POSTed to /api/sessions/{id}/activity appears in #feed as an item
        with its seq, session id, agent id and activity, and its summary as text.
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            event = self.hub.publish_activity(self.admin, "sess-test-1", activity="tool_call",
                                              agentId="test-a",
                                              summary="called web.search for Lisbon")
            item = feed_item(page, event["seq"])
            expect(item).to_have_count(1)
            expect(item).to_have_attribute("data-session-id", "sess-test-1")
            expect(item).to_have_attribute("data-agent-id", "test-a")
            expect(item).to_have_attribute("data-activity", "tool_call")
            expect(item.locator(".activity-summary")).to_have_text("called web.search for Lisbon")

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_agent_text_is_shown_as_text(self):
        """
        HTML in what agents send (a status's name and message, an activity's summary) is shown
        literally: the card and the feed item show the characters, no element is made from
        them (no img, no b), and no script runs (no dialog opens).
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            self.hub.publish_status(self.admin, "test-x", status="error", name=HOSTILE,
                                    message=HOSTILE)
            event = self.hub.publish_activity(self.admin, "sess-x", activity="message",
                                              agentId="test-x", summary=HOSTILE)
            x = card(page, "test-x")
            expect(x.locator(".agent-message")).to_have_text(HOSTILE)
            expect(x.locator(".agent-name")).to_have_text(HOSTILE)
            item = feed_item(page, event["seq"])
            expect(item.locator(".activity-summary")).to_have_text(HOSTILE)
            for scope in (x, item):
                self.assertEqual(scope.locator("img").count(), 0)
                self.assertEqual(scope.locator("b").count(), 0)
            self.assertEqual(page.locator('img[src="x"]').count(), 0)
            self.assertEqual(session.log().dialogs, [])

        yield self.browse(check)


    @defer.inlineCallbacks
    def test_a_large_board_is_windowed_with_errors_first(self):
        """
        A board larger than its box holds only the cards in view in the document (so a fleet of
        thousands costs the browser what a screenful does), while its count says how many agents
        there are; errors sort first; scrolling to the end and searching by id bring any card
        into the document.
        """
        def check(session):
            page = session.page
            for i in range(150):
                self.hub.publish_status(self.admin, f"fleet-{i:03d}", status="idle",
                                        name=f"Fleet {i:03d}")
            self.hub.publish_status(self.admin, "zz-broken", status="error", name="Zz Broken",
                                    message="disk full")
            self.hub.publish_status(self.admin, "zz-gone", status="offline", name="Zz Gone")
            sign_in(self.hub, page, self.admin)
            total = 150 + 2 + len(AGENT_NAMES)
            expect(page.locator("#agent-count")).to_have_text(f"({total})")
            drawn = page.locator("#agents li.agent").count()
            self.assertGreater(drawn, 0)
            self.assertLess(drawn, total // 2)
            first = page.locator("#agents li.agent").first
            expect(first).to_have_attribute("data-status", "error")
            expect(card(page, "zz-broken")).to_have_count(1)

            expect(card(page, "zz-gone")).to_have_count(0)
            page.locator("#agents-scroll").evaluate("box => { box.scrollTop = box.scrollHeight; }")
            expect(card(page, "zz-gone")).to_have_count(1)

            page.locator("#agents-scroll").evaluate("box => { box.scrollTop = 0; }")
            page.locator("#agent-search").fill("fleet-123")
            expect(page.locator("#agents li.agent")).to_have_count(1)
            expect(card(page, "fleet-123").locator(".agent-name")).to_have_text("Fleet 123")

        yield self.browse(check)


class AnnouncementTests(DashboardTestCase):
    """What the page says to screen readers: status changes that matter, politely, and no more."""

    @defer.inlineCallbacks
    def test_an_agent_turning_to_error_is_announced_and_activity_is_not(self):
        """
        #announcer is a polite live region; an agent turning to error puts "<name> is in error"
        in it, while session activity, which fills the feed (a log region that is not live),
        announces nothing.
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            announcer = page.locator("#announcer")
            expect(announcer).to_have_attribute("aria-live", "polite")
            expect(page.locator("#feed-log")).to_have_attribute("aria-live", "off")
            self.hub.publish_status(self.admin, "test-e", status="busy", name="Edda")
            expect(card(page, "test-e")).to_have_count(1)
            page.evaluate("document.getElementById('announcer').textContent = ''")
            event = self.hub.publish_activity(self.admin, "sess-quiet", activity="message",
                                              agentId="test-e", summary="a quiet line")
            expect(feed_item(page, event["seq"])).to_have_count(1)
            page.wait_for_timeout(300)  # an announcement is written 50 ms after it is made
            self.assertEqual(announcer.text_content(), "")
            self.hub.publish_status(self.admin, "test-e", status="error", name="Edda",
                                    message="tool call failed")
            expect(announcer).to_have_text("Edda is in error")

        yield self.browse(check)


class ReconnectTests(DashboardTestCase):
    """The page across a restart of the hub."""

    @defer.inlineCallbacks
    def test_reconnects_after_a_restart_and_the_feed_catches_up(self):
        """
        When the hub stops (SIGTERM) the page says so (#connection data-state "reconnecting");
        when it is back on the same port and data dir, the page reconnects by itself and the
        feed catches up: the items of one session are exactly the activities published before
        the stop and after the restart, each once, newest first.
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            before = [self.hub.publish_activity(self.admin, "sess-restart", activity="message",
                                                agentId="test-r", summary=f"before {i}")["seq"]
                      for i in range(3)]
            expect(page.locator('#feed li.activity[data-session-id="sess-restart"]')
                   ).to_have_count(3)

            session.call(self.hub.stop)
            expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
            session.call(self.hub.start)
            after = [self.hub.publish_activity(self.admin, "sess-restart", activity="message",
                                               agentId="test-r", summary=f"after {i}")["seq"]
                     for i in range(2)]
            # Published last: once it is shown, everything before it has been delivered.
            marker = self.hub.publish_activity(self.admin, "sess-marker", activity="completed",
                                               agentId="test-r", summary="marker")["seq"]
            expect(feed_item(page, marker)).to_have_count(1, timeout=RECONNECT_MS)
            live(page)
            self.assertEqual(feed_seqs(page, "sess-restart"),
                             sorted(before + after, reverse=True))

        yield self.browse(check)


class RedrawTests(TestCase):
    """The page when the hub cannot replay what it missed, and while the tab is hidden."""

    skip = UNAVAILABLE
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        # --store memory: a restart loses the history and starts a new epoch.
        self.hub = DashboardHub(self, demo=False, args=["--store", "memory"])
        yield self.hub.start()
        self.admin = yield self.hub.token("alice", "admin", name="Alice")

    @defer.inlineCallbacks
    def test_a_hub_that_lost_its_history_makes_the_page_redraw(self):
        """
        After a restart that lost the history (a new epoch), the resume is answered
        recovered: false; the page redraws the board from the new snapshot (the agent the old
        history had is gone, the new one is there) and says in the feed that events were not
        replayed.
        """
        def check(session):
            page = session.page
            self.hub.publish_status(self.admin, "test-old", status="busy", message="before")
            sign_in(self.hub, page, self.admin)
            expect(card(page, "test-old")).to_have_count(1)

            session.call(self.hub.stop)
            expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
            session.call(self.hub.start)
            self.hub.publish_status(self.admin, "test-new", status="online", message="after")
            expect(card(page, "test-new")).to_have_count(1, timeout=RECONNECT_MS)
            live(page)
            expect(card(page, "test-old")).to_have_count(0)
            expect(page.locator("#feed li.feed-gap")).to_contain_text("could not be replayed")

        yield run_browser(self, check)

    @defer.inlineCallbacks
    def test_a_hidden_tab_draws_nothing_and_catches_up_when_shown(self):
        """
        While the document is hidden, events are taken in but the page draws none of them (no
        card changes, no feed item appears); once it is shown again, it draws them all in one
        go.
        """
        def check(session):
            page = session.page
            page.add_init_script("""
                window.__hidden = false;
                Object.defineProperty(document, "hidden", {get: () => window.__hidden});
                Object.defineProperty(document, "visibilityState",
                                      {get: () => (window.__hidden ? "hidden" : "visible")});
            """)
            self.hub.publish_status(self.admin, "test-h", status="idle", message="visible")
            sign_in(self.hub, page, self.admin)
            expect(card(page, "test-h").locator(".agent-message")).to_have_text("visible")

            page.evaluate("window.__hidden = true; "
                          "document.dispatchEvent(new Event('visibilitychange'))")
            self.hub.publish_status(self.admin, "test-h", status="busy", message="while hidden")
            event = self.hub.publish_activity(self.admin, "sess-h", activity="message",
                                              agentId="test-h", summary="while hidden")
            # Time enough for the events to arrive and, were the page drawing, to be drawn.
            page.wait_for_timeout(1500)
            expect(card(page, "test-h").locator(".agent-message")).to_have_text("visible")
            expect(feed_item(page, event["seq"])).to_have_count(0)

            page.evaluate("window.__hidden = false; "
                          "document.dispatchEvent(new Event('visibilitychange'))")
            expect(card(page, "test-h").locator(".agent-message")).to_have_text("while hidden")
            expect(feed_item(page, event["seq"])).to_have_count(1)

        yield run_browser(self, check)


class RoleTests(DashboardTestCase):
    """What each role sees of the analytics, and the administrator's disconnect."""

    @defer.inlineCallbacks
    def test_viewer_sees_and_fetches_no_analytics(self):
        """
        A viewer's page keeps #analytics hidden and never requests /api/connections or
        /api/presence; an admin's page, watched the same way, shows #analytics and does fetch
        them (so the watching would see a viewer's request).
        """
        viewer = yield self.hub.token("victor", "viewer")

        def check(session):
            page = session.page
            sign_in(self.hub, page, viewer)
            expect(page.locator("#agents li.agent").first).to_be_visible()
            page.wait_for_load_state("networkidle")
            expect(page.locator("#analytics")).to_be_hidden()
            log = session.log(page)
            self.assertEqual(has_path(log, "/api/connections"), [])
            self.assertEqual(has_path(log, "/api/presence"), [])

            admin = session.new_page("admin")
            sign_in(self.hub, admin, self.admin)
            expect(admin.locator("#analytics")).to_be_visible()
            expect(admin.locator("#connections tbody tr").first).to_be_attached()
            admin.wait_for_load_state("networkidle")
            admin_log = session.log(admin)
            self.assertNotEqual(has_path(admin_log, "/api/connections"), [])
            self.assertNotEqual(has_path(admin_log, "/api/presence"), [])

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_admin_disconnects_a_connection_with_4009(self):
        """
        An admin's #connections lists another user's WebSocket; its button.disconnect asks
        for confirmation first ("Confirm", nothing sent), and the second click has the hub close
        that connection with code 4009.  An operator's page lists connections without any
        disconnect button, and the operator's own DELETE /api/connections/{id} gets 403.
        """
        bob = yield self.hub.token("bob", "viewer")
        operator = yield self.hub.token("olivia", "operator")
        target = types.SimpleNamespace(port=self.hub.port,
                                       url=lambda path="/ws", query="": self.hub.ws_url(query))
        client = yield connect(self, target, token=bob)
        welcome = yield client.next_of("welcome")
        connection_id = welcome["payload"]["connectionId"]

        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            row = page.locator(f'#connections tbody tr[data-connection-id="{connection_id}"]')
            expect(row).to_have_count(1, timeout=15_000)
            button = row.locator("button.disconnect")
            button.click()
            expect(button).to_have_text(re.compile("confirm", re.I))
            self.assertEqual([m for m, _ in session.log(page).requests if m == "DELETE"], [])
            self.assertIsNone(client.close_code)
            button.click()
            session.call(wait_until, lambda: client.close_code is not None, timeout=10)
            self.assertEqual(client.close_code, 4009)
            self.assertIn(("DELETE", self.hub.url(f"/api/connections/{connection_id}")),
                          session.log(page).requests)
            expect(page.locator("#connections-message")).not_to_be_empty()

            watcher = session.new_page("operator")
            sign_in(self.hub, watcher, operator)
            rows = watcher.locator("#connections tbody tr")
            expect(rows.first).to_be_attached()
            self.assertEqual(watcher.locator("#connections button.disconnect").count(), 0)
            some_id = rows.first.get_attribute("data-connection-id")
            status, answer = self.hub.request("DELETE", f"/api/connections/{some_id}", operator)
            self.assertEqual(status, 403, answer)

        yield self.browse(check)


class FeedTests(QuietDashboardTestCase):
    """The activity feed: pausing it, filtering it, exporting what it shows."""

    @defer.inlineCallbacks
    def test_scrolling_down_pauses_and_jump_to_live_catches_up(self):
        """
        Scrolling #feed-log down pauses the feed: #feed-live appears and #feed-mode says
        "Paused".  Events published meanwhile do not enter #feed; #feed-missed counts them.
        Pressing #feed-live shows them (newest first, above what was there), scrolls back to
        the top, hides the button again and says "Following live"; scrolling back to the top
        by hand after another pause does the same.
        """
        def check(session):
            page = session.page
            earlier = [self.hub.publish_activity(self.admin, "sess-long", activity="message",
                                                 agentId="test-a", summary=f"earlier {i}")["seq"]
                       for i in range(40)]
            sign_in(self.hub, page, self.admin)
            items = page.locator("#feed li.activity")
            expect(items).to_have_count(40)
            expect(page.locator("#feed-live")).to_be_hidden()
            expect(page.locator("#feed-mode")).to_have_text("Following live")

            page.locator("#feed-log").hover()
            page.mouse.wheel(0, 600)
            expect(page.locator("#feed-mode")).to_have_text("Paused")
            expect(page.locator("#feed-live")).to_be_visible()
            expect(page.locator("#feed-missed")).to_have_text("0")

            held = [self.hub.publish_activity(self.admin, "sess-new", activity="message",
                                              agentId="test-a", summary=f"while paused {i}")
                    ["seq"] for i in range(3)]
            expect(page.locator("#feed-missed")).to_have_text("3")
            for seq in held:
                expect(feed_item(page, seq)).to_have_count(0)
            self.assertEqual(shown_seqs(page), sorted(earlier, reverse=True))
            self.assertGreater(page.locator("#feed-log").evaluate("box => box.scrollTop"), 24)

            page.locator("#feed-live").click()
            expect(items).to_have_count(43)
            self.assertEqual(shown_seqs(page), sorted(earlier + held, reverse=True))
            expect(page.locator("#feed-live")).to_be_hidden()
            expect(page.locator("#feed-mode")).to_have_text("Following live")
            self.assertEqual(page.locator("#feed-log").evaluate("box => box.scrollTop"), 0)

            page.locator("#feed-log").hover()
            page.mouse.wheel(0, 600)
            expect(page.locator("#feed-mode")).to_have_text("Paused")
            more = self.hub.publish_activity(self.admin, "sess-new", activity="message",
                                             agentId="test-a", summary="paused again")["seq"]
            expect(page.locator("#feed-missed")).to_have_text("1")
            expect(feed_item(page, more)).to_have_count(0)
            page.locator("#feed-log").evaluate("box => { box.scrollTop = 0; }")
            expect(feed_item(page, more)).to_have_count(1)
            expect(page.locator("#feed-live")).to_be_hidden()
            expect(page.locator("#feed-mode")).to_have_text("Following live")
            self.assertEqual(shown_seqs(page)[0], more)

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_agent_and_session_filters_narrow_the_feed(self):
        """
        #feed-agent and #feed-session each narrow #feed to the items whose agent id, or
        session id, contains what was typed (in any case); both together narrow to what matches
        both, live events included; clearing them shows every item again, in order.
        """
        def check(session):
            page = session.page
            published = {}
            for agent, sess in (("test-a", "sess-one"), ("test-b", "sess-one"),
                                ("test-a", "sess-two"), ("test-b", "sess-two"),
                                ("test-a", "sess-one"), ("test-b", "sess-two")):
                event = self.hub.publish_activity(self.admin, sess, activity="message",
                                                  agentId=agent, summary=f"{agent} in {sess}")
                published[event["seq"]] = (agent, sess)
            sign_in(self.hub, page, self.admin)
            items = page.locator("#feed li.activity")
            expect(items).to_have_count(len(published))

            def seqs(agent=None, sess=None):
                return sorted((seq for seq, (a, s) in published.items()
                               if (agent is None or a == agent) and (sess is None or s == sess)),
                              reverse=True)

            page.locator("#feed-agent").fill("T-A")
            expect(items).to_have_count(len(seqs(agent="test-a")))
            self.assertEqual(shown_seqs(page), seqs(agent="test-a"))

            page.locator("#feed-session").fill("two")
            expect(items).to_have_count(len(seqs("test-a", "sess-two")))
            self.assertEqual(shown_seqs(page), seqs("test-a", "sess-two"))

            for agent in ("test-b", "test-a"):  # one filtered out, one shown
                event = self.hub.publish_activity(self.admin, "sess-two", activity="message",
                                                  agentId=agent, summary="live")
                published[event["seq"]] = (agent, "sess-two")
            expect(items).to_have_count(len(seqs("test-a", "sess-two")))
            self.assertEqual(shown_seqs(page), seqs("test-a", "sess-two"))

            page.locator("#feed-agent").fill("")
            expect(items).to_have_count(len(seqs(sess="sess-two")))
            self.assertEqual(shown_seqs(page), seqs(sess="sess-two"))

            page.locator("#feed-session").fill("")
            expect(items).to_have_count(len(published))
            self.assertEqual(shown_seqs(page), seqs())

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_export_json_downloads_the_frames_shown(self):
        """
        #export-json downloads a .json file holding exactly the frames the feed shows (with
        a filter on, only the matching ones), oldest first, each as the hub stored it: its
        seq, type, ts and payload.
        """
        def check(session):
            page = session.page
            kept = []
            for i in range(4):
                kept.append(self.hub.publish_activity(
                    self.admin, "sess-export", activity="tool_call", agentId="test-e",
                    summary=f'step {i}, "quoted"', detail={"tool": "web.search"}))
                self.hub.publish_activity(self.admin, "sess-other", activity="message",
                                          agentId="test-e", summary=f"other {i}")
            sign_in(self.hub, page, self.admin)
            expect(page.locator("#feed li.activity")).to_have_count(8)
            page.locator("#feed-session").fill("export")
            expect(page.locator("#feed li.activity")).to_have_count(4)

            name, text = read_download(page, "#export-json")
            self.assertRegex(name, r"^mission-control-activity-.*\.json$")
            exported = json.loads(text)
            self.assertEqual([frame["seq"] for frame in exported],
                             sorted(shown_seqs(page)))
            self.assertEqual([{k: frame[k] for k in ("seq", "type", "ts", "payload")}
                              for frame in exported],
                             [{k: event[k] for k in ("seq", "type", "ts", "payload")}
                              for event in kept])

        yield self.browse(check)


class TimelineTests(QuietDashboardTestCase):
    """A session's timeline, opened from the feed."""

    @defer.inlineCallbacks
    def test_session_link_opens_its_history_then_live_events(self):
        """
        A feed item's button.session-link opens #timeline: #timeline-title contains the
        session id and #timeline-events holds that session's events, oldest first, even those
        published long before the page opened (more than the feed reads back, so absent from
        the feed: they come from GET /api/events?channel=sessions:<id>); a later activity of
        that session is appended live, one of another session is not; #timeline-close hides it.
        """
        def check(session):
            page = session.page
            old = [self.hub.publish_activity(self.admin, "sess-story", activity=activity,
                                             agentId="test-t", summary=f"old {i}")["seq"]
                   for i, activity in enumerate(("started", "tool_call", "message"))]
            for i in range(310):  # more than the feed's backfill of 300 reaches back
                self.hub.publish_activity(self.admin, "sess-filler", activity="message",
                                          agentId="test-f", summary=f"filler {i}")
            recent = self.hub.publish_activity(self.admin, "sess-story", activity="message",
                                               agentId="test-t", summary="recent")["seq"]
            sign_in(self.hub, page, self.admin)
            expect(feed_item(page, recent)).to_have_count(1)
            for seq in old:
                expect(feed_item(page, seq)).to_have_count(0)
            expect(page.locator("#timeline")).to_be_hidden()

            feed_item(page, recent).locator("button.session-link").click()
            expect(page.locator("#timeline")).to_be_visible()
            expect(page.locator("#timeline-title")).to_contain_text("sess-story")
            steps = page.locator("#timeline-events li")
            expect(steps).to_have_count(4)
            self.assertEqual(timeline_seqs(page), old + [recent])
            channels = [parse_qs(urlsplit(path).query).get("channel")
                        for path in has_path(session.log(page), "/api/events?")]
            self.assertIn(["sessions:sess-story"], channels)

            self.hub.publish_activity(self.admin, "sess-filler", activity="message",
                                      agentId="test-f", summary="not this one")
            later = self.hub.publish_activity(self.admin, "sess-story", activity="completed",
                                              agentId="test-t", summary="later")["seq"]
            expect(steps).to_have_count(5)
            self.assertEqual(timeline_seqs(page), old + [recent, later])
            expect(steps.last).to_have_attribute("data-activity", "completed")

            page.locator("#timeline-close").click()
            expect(page.locator("#timeline")).to_be_hidden()

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_export_csv_writes_one_row_per_event_and_formulas_as_text(self):
        """
        #timeline-export-csv downloads a .csv file: the header line, then one row per event of
        the timeline, oldest first, with its seq, ts, type, agent, session, activity and
        summary; commas and quotes survive quoting, and a summary beginning with "=" is written
        as text, prefixed with a quote.
        """
        def check(session):
            page = session.page
            summaries = ["plain", 'with, a comma and "quotes"', "=SUM(A1:A9)", "=1,2"]
            events = [self.hub.publish_activity(self.admin, "sess-csv", activity="message",
                                                agentId="test-c", summary=summary)
                      for summary in summaries]
            sign_in(self.hub, page, self.admin)
            expect(page.locator("#feed li.activity")).to_have_count(len(events))
            feed_item(page, events[0]["seq"]).locator("button.session-link").click()
            expect(page.locator("#timeline-events li")).to_have_count(len(events))

            name, text = read_download(page, "#timeline-export-csv")
            self.assertRegex(name, r"^mission-control-session-sess-csv-.*\.csv$")
            self.assertTrue(text.startswith(
                "seq,ts,type,agentId,sessionId,status,activity,message,summary\r\n"), text)
            self.assertIn(",'=SUM(A1:A9)\r\n", text)
            rows = list(csv.reader(io.StringIO(text, newline="")))
            self.assertEqual(rows[0], ["seq", "ts", "type", "agentId", "sessionId", "status",
                                       "activity", "message", "summary"])
            expected = [[str(e["seq"]), e["ts"], "session:activity", "test-c", "sess-csv", "",
                         "message", "", summary]
                        for e, summary in zip(events, ["plain", 'with, a comma and "quotes"',
                                                       "'=SUM(A1:A9)", "'=1,2"])]
            self.assertEqual(rows[1:], expected)

        yield self.browse(check)


class PreferenceTests(QuietDashboardTestCase):
    """The theme, remembered; the "/" shortcut."""

    @defer.inlineCallbacks
    def test_dark_theme_is_remembered_and_system_removes_it(self):
        """
        Choosing Dark in #theme sets <html data-theme="dark"> at once and keeps it across a
        reload (localStorage), with #theme still on Dark; choosing System removes the
        attribute, and a reload keeps it removed.
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            html = page.locator("html")
            self.assertIsNone(html.get_attribute("data-theme"))
            page.locator("#theme").select_option("dark")
            expect(html).to_have_attribute("data-theme", "dark")
            page.reload()
            live(page)
            expect(html).to_have_attribute("data-theme", "dark")
            expect(page.locator("#theme")).to_have_value("dark")

            page.locator("#theme").select_option("system")
            expect(html).not_to_have_attribute("data-theme", re.compile(".*"))
            page.reload()
            live(page)
            expect(page.locator("#theme")).to_have_value("system")
            self.assertIsNone(html.get_attribute("data-theme"))

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_slash_focuses_the_agent_search_outside_fields(self):
        """
        "/" pressed while the focus is on no field moves it to #agent-search without typing
        the "/"; inside a field (the feed's filter, the search itself) "/" is typed as usual
        and the focus stays.
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            search = page.locator("#agent-search")
            page.evaluate("document.activeElement && document.activeElement.blur()")
            expect(search).not_to_be_focused()
            page.keyboard.press("/")
            expect(search).to_be_focused()
            expect(search).to_have_value("")

            page.locator("#feed-agent").focus()
            page.keyboard.type("a/b")
            expect(page.locator("#feed-agent")).to_have_value("a/b")
            expect(page.locator("#feed-agent")).to_be_focused()

            search.focus()
            page.keyboard.type("x/y")
            expect(search).to_have_value("x/y")
            expect(search).to_be_focused()

        yield self.browse(check)


class ExpiryTests(QuietDashboardTestCase):
    """A token that runs out: the warning, the renewal, the end."""

    @defer.inlineCallbacks
    def test_a_short_token_warns_and_a_fresh_one_renews_it(self):
        """
        With a token of about 4 minutes, #expiry shows at once with the time left.  A token for
        another user pasted into #renew-input is refused by the page, which sends nothing.  A
        fresh token for the same user sends one auth frame carrying it on the open connection
        (no reconnect), the page says "Renewed." in #renew-message, and the warning goes away.
        """
        short = yield self.hub.token("alice", "admin", ttl="4m")
        fresh = yield self.hub.token("alice", "admin", ttl="1h")
        other = yield self.hub.token("bob", "admin", ttl="1h")

        def check(session):
            page = session.page
            sockets = record_websockets(page)
            sign_in(self.hub, page, short)
            expect(page.locator("#expiry")).to_be_visible()
            expect(page.locator("#expiry-text")).to_contain_text(
                re.compile(r"expires in [34] min"))

            page.locator("#renew-input").fill(other)
            page.locator("#renew-form button[type=submit]").click()
            expect(page.locator("#renew-message")).to_contain_text("bob")
            self.assertEqual(auth_frames(sockets), [])

            page.locator("#renew-input").fill(fresh)
            page.locator("#renew-form button[type=submit]").click()
            expect(page.locator("#renew-message")).to_have_text("Renewed.")
            self.assertEqual(auth_frames(sockets), [{"type": "auth", "token": fresh}])
            expect(page.locator("#expiry")).to_be_hidden()
            live(page)
            self.assertEqual(len(sockets.opened), 1, sockets.opened)
            self.assertEqual(
                page.evaluate("sessionStorage.getItem('mission-control.token')"), fresh)

        yield self.browse(check)

    @defer.inlineCallbacks
    def test_a_token_that_runs_out_ends_on_the_sign_in_form(self):
        """
        A token of a few seconds (mission-control token --ttl 6) signs in and goes live; the
        page sends no auth frame of its own (it has no fresh token to send); when the hub
        closes the connection with 4001 at the token's end, the page shows the sign-in form,
        #signin-message saying the token expired, with #connection data-state "refused".
        """
        def check(session):
            page = session.page
            page.add_init_script(RECORD_CLOSE_CODES)
            sockets = record_websockets(page)
            token = session.call(self.hub.token, "alice", "admin", ttl="6")
            sign_in(self.hub, page, token)
            expect(page.locator("#expiry")).to_be_visible()
            expect(page.locator("#signin")).to_be_visible(timeout=30_000)
            expect(page.locator("#signin-message")).to_contain_text("expired")
            expect(page.locator("#connection")).to_have_attribute("data-state", "refused")
            self.assertEqual(page.evaluate("window.__closeCodes"), [4001])
            self.assertEqual(auth_frames(sockets), [])

        yield self.browse(check)


class StoppedTests(QuietDashboardTestCase):
    """A connection an administrator closed."""

    @defer.inlineCallbacks
    def test_disconnected_by_an_administrator_waits_for_reconnect(self):
        """
        After an admin's DELETE /api/connections/<id> of the page's own connection, #connection
        says "Disconnected by an administrator" and the page does not reconnect by itself (for
        a few seconds, far longer than its first retry would wait, GET /api/connections lists
        no connection of its user); pressing #reconnect makes it live again, on a new
        connection.
        """
        viewer = yield self.hub.token("victor", "viewer")

        def own_connections():
            status, answer = self.hub.request("GET", "/api/connections", self.admin)
            self.assertEqual(status, 200, answer)
            return [c["id"] for c in answer["connections"] if c["user"] == "victor"]

        def check(session):
            page = session.page
            sign_in(self.hub, page, viewer)
            first = own_connections()
            self.assertEqual(len(first), 1, first)
            status, answer = self.hub.request("DELETE", f"/api/connections/{first[0]}",
                                              self.admin)
            self.assertEqual((status, answer), (200, {"closed": first[0]}))
            expect(page.locator("#connection")).to_have_text("Disconnected by an administrator")
            expect(page.locator("#connection")).to_have_attribute("data-state", "closed")
            expect(page.locator("#reconnect")).to_be_visible()
            deadline = time.monotonic() + NO_RECONNECT_SECONDS
            while time.monotonic() < deadline:
                self.assertEqual(own_connections(), [])
                page.wait_for_timeout(250)
            expect(page.locator("#connection")).to_have_attribute("data-state", "closed")

            page.locator("#reconnect").click()
            live(page)
            expect(page.locator("#reconnect")).to_be_hidden()
            again = own_connections()
            self.assertEqual(len(again), 1, again)
            self.assertNotEqual(again, first)

        yield self.browse(check)


class SmallScreenTests(DashboardTestCase):
    """The page on a phone."""

    @defer.inlineCallbacks
    def test_phone_viewport_has_no_horizontal_scrolling(self):
        """
        At 390x844 CSS pixels the signed-in page (with the demo fleet, its feed and the
        analytics of an admin) is no wider than the screen (document.documentElement's
        scrollWidth is at most 390), and the board and the feed are shown.
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            expect(page.locator("#agents li.agent").first).to_be_visible()
            expect(page.locator("#feed li.activity").first).to_be_visible()
            expect(page.locator("#analytics")).to_be_visible()
            expect(page.locator("#connections tbody tr").first).to_be_attached()
            for box in ("#board", "#agents-scroll", "#feed-log"):
                expect(page.locator(box)).to_be_visible()
            width = page.evaluate("document.documentElement.scrollWidth")
            self.assertLessEqual(width, 390)

        yield self.browse(check, viewport={"width": 390, "height": 844})


class QualityTests(DashboardTestCase):
    """Accessibility and the Content-Security-Policy."""

    @defer.inlineCallbacks
    def test_no_serious_accessibility_violations(self):
        """
        axe-core finds no violation of impact "serious" or "critical" on the signed-in board
        with its analytics, in the light theme and in the dark one.
        """
        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            expect(page.locator("#analytics")).to_be_visible()
            expect(page.locator("#agents li.agent").first).to_be_visible()
            expect(page.locator("#feed li.activity").first).to_be_visible()
            page.add_script_tag(path=AXE)
            found = {}
            for theme in ("light", "dark"):
                page.locator("#theme").select_option(theme)
                expect(page.locator("html")).to_have_attribute("data-theme", theme)
                violations = page.evaluate("""async () => {
                    const result = await axe.run(document, {resultTypes: ["violations"]});
                    return result.violations.map(v => ({
                        id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5)}));
                }""")
                bad = [v for v in violations if v["impact"] in ("serious", "critical")]
                if bad:
                    found[theme] = bad
            self.assertEqual(found, {}, "\n".join(
                f"{theme}: {v['impact']} {v['id']}: {v['help']} at {v['nodes']}"
                for theme, bad in found.items() for v in bad))

        yield self.browse(check, bypass_csp=True)

    @defer.inlineCallbacks
    def test_content_security_policy_holds_and_nothing_violates_it(self):
        """
        GET / answers with a Content-Security-Policy whose script-src (or default-src) does not
        allow 'unsafe-inline', with frame-ancestors 'none', and with X-Content-Type-Options
        nosniff; the signed-in page with its analytics and an opened session timeline loads and
        runs without a single CSP violation (no securitypolicyviolation event, no console
        report).
        """
        def check(session):
            page = session.page
            page.add_init_script("""
                window.__cspViolations = [];
                document.addEventListener("securitypolicyviolation", e => {
                    window.__cspViolations.push(
                        e.violatedDirective + " " + e.blockedURI + " " + e.sourceFile);
                });
            """)
            response = page.goto(self.hub.page_url(self.admin))
            headers = response.all_headers()
            policy = headers.get("content-security-policy")
            self.assertIsNotNone(policy, headers)
            directives = {}
            for part in policy.split(";"):
                words = part.split()
                if words:
                    directives[words[0].lower()] = [w.lower() for w in words[1:]]
            scripts = directives.get("script-src", directives.get("default-src"))
            self.assertIsNotNone(scripts, policy)
            self.assertNotIn("'unsafe-inline'", scripts, policy)
            self.assertEqual(directives.get("frame-ancestors"), ["'none'"], policy)
            self.assertEqual(headers.get("x-content-type-options"), "nosniff")

            live(page)
            expect(page.locator("#analytics")).to_be_visible()
            expect(page.locator("#rate-chart")).to_be_visible()
            first = page.locator("#feed li.activity button.session-link").first
            first.click()
            expect(page.locator("#timeline")).to_be_visible()
            expect(page.locator("#timeline-events li").first).to_be_attached()
            page.wait_for_load_state("networkidle")
            self.assertEqual(page.evaluate("window.__cspViolations"), [])
            reports = [text for _, text in session.log(page).console
                       if "Content Security Policy" in text or "Content-Security-Policy" in text]
            self.assertEqual(reports, [])

        yield self.browse(check)


class ScreenshotTests(DashboardTestCase):
    """The picture of the board that the documentation shows."""

    @defer.inlineCallbacks
    def test_screenshot_of_the_demo_board(self):
        """
        A full-page screenshot of the signed-in board in a 1280x800 window, once the demo has
        filled the feed for a few seconds and the analytics have their chart and connections, is
        a PNG 1280 wide and at least 800 high; with MISSION_CONTROL_SCREENSHOT=1 it is written to
        docs/images/dashboard.png.
        """
        path = os.path.join(os.path.abspath(self.mktemp()) + ".png")

        def check(session):
            page = session.page
            sign_in(self.hub, page, self.admin)
            expect(page.locator("#analytics")).to_be_visible()
            expect(page.locator("#feed li.activity").nth(9)).to_be_attached(timeout=30_000)
            expect(page.locator("#rate-chart canvas")).to_be_attached()
            expect(page.locator("#connections tbody tr").first).to_be_attached()
            page.screenshot(path=path, full_page=True)

        yield self.browse(check, viewport={"width": 1280, "height": 800})
        with open(path, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", head[16:24])
        self.assertEqual(width, 1280)
        self.assertGreaterEqual(height, 800)
        if os.environ.get("MISSION_CONTROL_SCREENSHOT") == "1":
            os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
            shutil.copyfile(path, SCREENSHOT)


class HarnessTests(TestCase):
    """The browser harness itself, on pages of its own (no hub)."""

    skip = UNAVAILABLE
    timeout = 60

    @defer.inlineCallbacks
    def test_session_result_and_reactor_calls(self):
        """
        run_browser fires with what the function returned; while it runs the reactor keeps
        turning, and the function can wait for reactor work with session.call.
        """
        from twisted.internet import reactor, task

        def fn(session):
            session.page.set_content("<p id=p>hello</p>")
            later = session.call(task.deferLater, reactor, 0.05, lambda: "from the reactor")
            return session.page.inner_text("#p"), later

        result = yield run_browser(self, fn)
        self.assertEqual(result, ("hello", "from the reactor"))

    @defer.inlineCallbacks
    def test_a_page_that_throws_fails_the_session(self):
        """
        An exception a page does not catch fails the session with PageError, even though the
        function itself checked nothing; the error names the exception.
        """
        def fn(session):
            session.page.set_content("<script>throw new Error('boom from the page')</script>")
            session.page.wait_for_function("true")

        d = run_browser(self, fn)
        error = yield self.assertFailure(d, PageError)
        self.assertIn("boom from the page", str(error))

    @defer.inlineCallbacks
    def test_a_failing_check_carries_the_console_errors(self):
        """
        When the function fails, its exception is what the test sees, with the pages' console
        errors added to it.
        """
        def fn(session):
            session.page.set_content("<script>console.error('said by the page')</script>")
            session.page.wait_for_function("true")
            raise ValueError("the check failed")

        d = run_browser(self, fn)
        error = yield self.assertFailure(d, ValueError)
        self.assertIn("said by the page", "\n".join(getattr(error, "__notes__", [])))


class BenchmarkTests(TestCase):
    """benchmarks/dashboard.py keeps working (a tiny run; its numbers are not checked)."""

    skip = UNAVAILABLE
    timeout = 120

    @defer.inlineCallbacks
    def test_tiny_run(self):
        """
        The dashboard benchmark, with a few agents and one second of load, ends with status 0
        and prints its table: page weight, first paint of the board, frames per second and long
        tasks.
        """
        script = os.path.join(PROJECT_ROOT, "benchmarks", "dashboard.py")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
        env["PYTHONPATH"] = PROJECT_ROOT
        if os.environ.get(browser.CHROMIUM_ENV):
            env[browser.CHROMIUM_ENV] = os.environ[browser.CHROMIUM_ENV]
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        proc = spawn_process(self, ChildProcess("benchmark"),
                             [sys.executable, script, "--agents", "20", "--seconds", "1",
                              "--rate", "20", "--repeat", "1", "--timeout", "20"], env, cwd)
        code = yield proc.ended
        self.assertEqual(code, 0, proc.describe())
        for row in ("page weight", "first paint", "frames per second", "long tasks"):
            self.assertIn(row, proc.text)

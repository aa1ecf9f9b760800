"""
Tests for L{mission_control.hub.client}: the answers to client frames (ping, ack, auth,
subscribe, unsubscribe, publish: the publishes of one turn answered after their one commit,
in the order of the frames, also when the broker answers late), the message rate limit and
token expiry, through a hub on a L{Clock} with fake connections.
"""

from __future__ import annotations

import json

from mission_control import tokens
from mission_control.auth import Refusal
from mission_control.hub import ConnectRequest
from mission_control.policy import Principal
from mission_control.store import SessionTaken, StoreUnavailable
from tests.hubfakes import FAR_FUTURE, SECRET, DeferredBroker, FakeConnection, HubTestCase


class ClientFrameTests(HubTestCase):
    """Replies to client frames."""

    def reply(self, conn, value, binary=False):
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        return self.hub.handle_frame(conn, data, binary)

    def test_ping(self):
        """ping gets pong with the same id."""
        reply = self.reply(self.connect(), {"type": "ping", "id": "r1"})
        self.assertEqual((reply["type"], reply["id"], reply["payload"]), ("pong", "r1", {}))

    def test_ack(self):
        """ack records the position (never backwards) and replies with it."""
        conn = self.connect()
        self.publish(5)
        self.assertEqual(self.reply(conn, {"type": "ack", "seq": 4})["payload"], {"seq": 4})
        self.assertEqual(self.reply(conn, {"type": "ack", "seq": 2})["payload"], {"seq": 4})
        self.assertEqual(self.hub.connection_details()[0]["ackedSeq"], 4)
        for bad in (-1, "3", 1.5, True, None, 6):
            self.clock.advance(1)  # stay within the rate limit
            reply = self.reply(conn, {"type": "ack", "seq": bad})
            self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "bad_request"))

    def test_errors(self):
        """Bad frames get error frames with a code, and the id when there was one."""
        conn = self.connect()
        cases = [
            (b"not json", "bad_request", None),
            (b"[]", "bad_request", None),
            ({"type": "dance", "id": "r2"}, "unknown_type", "r2"),
            ({"id": "r3"}, "bad_request", "r3"),
            ({"type": "subscribe", "id": "r4", "channels": []}, "bad_request", "r4"),
        ]
        for value, code, frame_id in cases:
            self.clock.advance(1)
            reply = self.reply(conn, value)
            self.assertEqual(reply["type"], "error")
            self.assertEqual(reply["payload"]["code"], code, value)
            self.assertEqual(reply.get("id"), frame_id)
            self.assertTrue(reply["payload"]["message"])

    def test_binary(self):
        """Binary frames get an error, not silence."""
        reply = self.reply(self.connect(), b'{"type":"ping"}', binary=True)
        self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "bad_request"))


class TokenLifecycleTests(HubTestCase):
    """Expiry, the warning before it, and fresh tokens over the connection."""

    def token(self, sub="alice", ttl=300):
        return tokens.mint_token(SECRET, sub, self.clock.seconds(), ttl=ttl)

    def auth(self, conn, token):
        return self.hub.handle_frame(conn, json.dumps({"type": "auth", "id": "t1", "token": token})
                                     .encode(), False)

    def test_warning_then_4001(self):
        """auth:expiring a minute before exp, close 4001 at exp + leeway, not before."""
        now = self.clock.seconds()
        conn = self.connect(expires_at=now + 300)
        self.clock.advance(239)
        self.assertNotIn("auth:expiring", conn.types())
        self.clock.advance(1)
        self.assertEqual(conn.frames[-1]["type"], "auth:expiring")
        self.assertEqual(conn.frames[-1]["payload"]["secondsLeft"], 60)
        self.clock.advance(64)
        self.assertIsNone(conn.closed_with)
        self.clock.advance(1)
        self.assertEqual(conn.closed_with, (4001, "token expired"))

    def test_fresh_token_moves_the_deadline(self):
        """A valid token for the same sub is answered auth:ok and the old deadline no longer holds."""
        now = self.clock.seconds()
        conn = self.connect(expires_at=now + 100)
        self.clock.advance(50)
        reply = self.auth(conn, self.token(ttl=1000))
        self.assertEqual((reply["type"], reply["id"]), ("auth:ok", "t1"))
        self.clock.advance(200)
        self.assertIsNone(conn.closed_with)
        self.clock.advance(1000)
        self.assertEqual(conn.closed_with[0], 4001)

    def test_same_expiry_is_warned_once(self):
        """
        A client that answers auth:expiring with a token of the same exp (its own, sent back)
        gets auth:ok but no second warning, at once or later: the warning is not a loop. A
        token that moves the exp is warned of again, a minute before its own end.
        """
        now = self.clock.seconds()
        conn = self.connect(expires_at=now + 100)
        same = tokens.mint_token(SECRET, "alice", now, ttl=100)
        self.clock.advance(40)
        self.assertEqual(conn.types().count("auth:expiring"), 1)
        for _ in range(3):
            self.assertEqual(self.auth(conn, same)["type"], "auth:ok")
            self.clock.advance(0)
        self.clock.advance(30)
        self.assertEqual(conn.types().count("auth:expiring"), 1)
        later = self.token(ttl=170)  # exp at now + 240
        self.assertEqual(self.auth(conn, later)["type"], "auth:ok")
        self.clock.advance(109)
        self.assertEqual(conn.types().count("auth:expiring"), 1)
        self.clock.advance(1)
        self.assertEqual(conn.types().count("auth:expiring"), 2)

    def test_token_for_another_user(self):
        """A token for another sub gets an error frame and close 4003."""
        conn = self.connect()
        self.assertIsNone(self.auth(conn, self.token(sub="mallory")))
        self.assertEqual(conn.frames[-1]["payload"]["code"], "forbidden")
        self.assertEqual(conn.closed_with[0], 4003)

    def test_invalid_token(self):
        """An invalid or expired token gets an error frame and close 4003."""
        for token in ("junk", self.token(ttl=-60)):
            conn = self.connect()
            self.assertIsNone(self.auth(conn, token))
            self.assertEqual(conn.frames[-1]["payload"]["code"], "invalid_token")
            self.assertEqual(conn.closed_with[0], 4003)
            self.hub.unregister(conn)

    def test_one_timer_for_all_tokens(self):
        """
        Connections share one clock call for their token deadlines: ten connections add one
        timer, not twenty, and each still gets its own warning and close.
        """
        before = len(self.clock.getDelayedCalls())
        now = self.clock.seconds()
        conns = [self.connect(f"user{i}", expires_at=now + 100 + i) for i in range(10)]
        self.assertEqual(len(self.clock.getDelayedCalls()), before + 1)
        self.clock.advance(40)
        self.assertEqual([c.types().count("auth:expiring") for c in conns], [1] + [0] * 9)
        self.clock.advance(100)
        self.assertEqual([c.closed_with for c in conns], [(4001, "token expired")] * 10)
        self.assertEqual([c.types().count("auth:expiring") for c in conns], [1] * 10)

    def test_timers_cancelled_on_close(self):
        """A closed connection leaves no expiry timer behind."""
        conn = self.connect(expires_at=self.clock.seconds() + 300)
        self.hub.unregister(conn)
        self.hub.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RateLimitTests(HubTestCase):
    """The per-connection inbound message rate (2/s, burst 4 here)."""

    def test_error_then_4029(self):
        """Past the burst each message gets rate_limited; going on past another burst closes 4029."""
        conn = self.connect()
        ping = b'{"type":"ping"}'
        replies = [self.hub.handle_frame(conn, ping, False)["type"] for _ in range(4)]
        self.assertEqual(replies, ["pong"] * 4)
        limited = self.hub.handle_frame(conn, ping, False)
        self.assertEqual(limited["payload"]["code"], "rate_limited")
        for _ in range(3):
            self.hub.handle_frame(conn, ping, False)
        self.assertIsNone(conn.closed_with)
        self.assertIsNone(self.hub.handle_frame(conn, ping, False))
        self.assertEqual(conn.closed_with, (4029, "too many messages"))

    def test_refills(self):
        """After a pause the client may send again."""
        conn = self.connect()
        for _ in range(5):
            self.hub.handle_frame(conn, b'{"type":"ping"}', False)
        self.clock.advance(1)
        self.assertEqual(self.hub.handle_frame(conn, b'{"type":"ping"}', False)["type"], "pong")


class ReviewFixTests(HubTestCase):
    """Edge cases of expiry, acks and closing."""

    def test_short_token_warned_at_once(self):
        """A token with less than a minute left gets auth:expiring at once, not only 4001."""
        conn = self.connect(expires_at=self.clock.seconds() + 20)
        self.clock.advance(0)
        self.assertIn("auth:expiring", conn.types())
        self.assertIsNone(conn.closed_with)

    def test_saved_position_never_goes_back(self):
        """A named connection that acks less than the saved position does not lower it."""
        self.publish(5)
        ahead = self.connect("alice", request=ConnectRequest(client="c"))
        self.hub.handle_frame(ahead, b'{"type":"ack","seq":5}', False)
        behind = self.connect("alice", request=ConnectRequest(since=1, epoch=self.hub.store.epoch,
                                                              client="c"))
        self.clock.advance(1)
        self.hub.handle_frame(behind, b'{"type":"ack","seq":3}', False)
        self.assertEqual(self.hub.store.position("alice", "c"), 5)

    def test_frames_after_4029_ignored(self):
        """Once closing for too many messages, later frames get no reply and no second close."""
        conn = self.connect()
        closes = []
        conn.close = lambda code, reason: closes.append(code)
        for _ in range(30):
            self.hub.handle_frame(conn, b'{"type":"ping"}', False)
        self.assertEqual(closes, [4029])


class ChannelTests(HubTestCase):
    """Subscriptions decide who receives what."""

    def sub(self, conn, names, verb="subscribe"):
        self.clock.advance(1)
        return self.hub.handle_frame(conn, json.dumps({"type": verb, "id": "s", "channels": names})
                                     .encode(), False)

    def test_filtering(self):
        """A client on agents:a1 receives a1's statuses and never a2's."""
        only = self.connect("v", request=ConnectRequest(channels=("agents:a1",)))
        everything = self.connect("w")
        self.publish(1, agent="a1")
        self.publish(1, agent="a2")
        self.assertEqual([f["payload"]["agentId"] for f in only.delivered], ["a1"])
        self.assertEqual(len(everything.delivered), 2)

    def test_index_not_scan(self):
        """Fan-out reaches subscribers through the channel index, each connection once."""
        both = self.connect("v", request=ConnectRequest(channels=("agents", "agents:a1")))
        self.publish(1, agent="a1")
        self.assertEqual(len(both.delivered), 1)
        self.assertEqual(set(self.hub.registry.channels_heard()), {"agents", "agents:a1"})

    def test_subscribe_and_unsubscribe_reply_with_the_set(self):
        """subscribe and unsubscribe are answered with the resulting subscription set."""
        conn = self.connect("v")
        reply = self.sub(conn, ["presence", "agents:x"])
        self.assertEqual((reply["type"], reply["payload"]["channels"]),
                         ("subscribed", ["agents", "agents:x", "presence", "sessions"]))
        reply = self.sub(conn, ["agents", "sessions"], verb="unsubscribe")
        self.assertEqual(reply["payload"]["channels"], ["agents:x", "presence"])
        self.publish(1, agent="a1")
        self.assertEqual(conn.delivered, [])

    def test_forbidden_part(self):
        """A refused channel gets a forbidden error; the rest of the request still applies."""
        agent = self.connect("a1", role="agent")
        reply = self.sub(agent, ["agents:a2", "agents:a1"])
        self.assertEqual(reply["type"], "subscribed")
        errors = [f for f in agent.frames if f["type"] == "error"]
        self.assertEqual(errors[-1]["payload"]["code"], "forbidden")
        self.assertIn("agents:a2", errors[-1]["payload"]["message"])
        self.assertEqual(reply["payload"]["channels"], ["agents:a1"])

    def test_forbidden_at_connect(self):
        """Refused channels in the query: an error after welcome, the allowed ones apply."""
        agent = FakeConnection("a1", "agent")
        self.hub.register(agent, ConnectRequest(channels=("agents", "agents:a1")))
        self.assertEqual(agent.types()[:3], ["welcome", "error", "snapshot"])
        self.assertEqual(agent.frames[0]["payload"]["channels"], ["agents:a1"])

    def test_claim_narrows(self):
        """A token claim narrows what a viewer may subscribe to."""
        conn = FakeConnection("v")
        conn.principal = Principal(sub="v", role="viewer", name=None, expires_at=FAR_FUTURE,
                                   channels=("agents:a*", "agents:a1"))
        self.hub.register(conn, ConnectRequest(channels=("agents", "agents:a1")))
        self.assertEqual(conn.frames[0]["payload"]["channels"], ["agents:a1"])

    def test_agent_sees_its_sessions(self):
        """An agent may subscribe to a session it publishes, not to another's."""
        agent_principal = self.principal("a1", "agent")
        self.publish_for(agent_principal, "session:activity", {"activity": "started"}, "s1")
        self.publish_for(self.principal(), "session:activity",
                         {"activity": "started", "agentId": "a2"}, "s2")
        agent = self.connect("a1", role="agent")
        reply = self.sub(agent, ["sessions:s1", "sessions:s2"])
        self.assertEqual(reply["payload"]["channels"], ["agents:a1", "sessions:s1"])

    def test_snapshot_and_resume_honour_the_subscription(self):
        """The snapshot holds only subscribed state; a resume replays only subscribed events."""
        self.publish(1, agent="a1")
        self.publish(1, agent="a2")
        narrow = self.connect("v", request=ConnectRequest(channels=("agents:a2",)))
        self.assertEqual([a["agentId"] for a in narrow.frames[1]["payload"]["agents"]], ["a2"])
        resumed = self.connect("v", request=ConnectRequest(
            since=0, epoch=self.hub.store.epoch, channels=("agents:a1",)))
        self.assertEqual([f.get("seq") for f in resumed.frames if f["type"] == "agent:status"],
                         [1])
        self.assertEqual(resumed.frames[-1]["payload"]["to"], 2)


class PublishFrameTests(HubTestCase):
    """publish from a client."""

    def publish_frame(self, conn, event, frame_id="p1", key=None):
        self.clock.advance(1)
        frame = {"type": "publish", "event": event}
        if frame_id:
            frame["id"] = frame_id
        if key is not None:
            frame["idempotencyKey"] = key
        sent = len(conn.frames)
        reply = self.hub.handle_frame(conn, json.dumps(frame).encode(), False)
        if reply is not None:
            return reply
        # A publish that passed its checks is answered once its group is committed, at the end
        # of the turn: then the connection is sent its reply, one, after its own event if any.
        self.assertEqual(conn.frames[sent:], [])
        self.clock.advance(0)
        replies = [f for f in conn.frames[sent:] if f["type"] in ("published", "error")]
        self.assertEqual(len(replies), 1)
        return replies[0]

    def test_agent_publishes_its_status(self):
        """An agent publishes its own status; the reply carries the stored seq."""
        agent = self.connect("a1", role="agent")
        watcher = self.connect("v")
        reply = self.publish_frame(agent, {"type": "agent:status",
                                           "payload": {"agentId": "a1", "status": "busy"}})
        self.assertEqual((reply["type"], reply["id"], reply["payload"]["type"]),
                         ("published", "p1", "agent:status"))
        self.assertEqual(watcher.delivered[-1]["seq"], reply["payload"]["seq"])

    def test_forbidden_and_bad(self):
        """A viewer gets forbidden; another agent's status is forbidden; bad events bad_request."""
        viewer = self.connect("v")
        agent = self.connect("a1", role="agent")
        status = {"type": "agent:status", "payload": {"agentId": "a1", "status": "busy"}}
        self.assertEqual(self.publish_frame(viewer, status)["payload"]["code"], "forbidden")
        other = {"type": "agent:status", "payload": {"agentId": "a2", "status": "busy"}}
        self.assertEqual(self.publish_frame(agent, other)["payload"]["code"], "forbidden")
        for bad in ({"type": "agent:status", "payload": {"agentId": "a1"}}, "x",
                    {"type": "agent:status"}, {"type": "agent:status", "payload": {}, "x": 1}):
            self.assertEqual(self.publish_frame(agent, bad)["payload"]["code"], "bad_request")
        self.assertEqual(self.publish_frame(agent, {"type": "presence:join", "payload": {}})
                         ["payload"]["code"], "unknown_type")

    def test_retry_with_same_key(self):
        """
        A retried publish with the same idempotencyKey (fields in any order) returns the same
        seq and stores nothing more; the same key for another event is a conflict; a plain id
        is only for matching the reply, never deduplicated.
        """
        agent = self.connect("a1", role="agent")
        # Connecting published "online" for the agent (liveness): seq 1.
        event = {"type": "agent:status", "payload": {"agentId": "a1", "status": "busy"}}
        reordered = {"payload": {"status": "busy", "agentId": "a1"}, "type": "agent:status"}
        first = self.publish_frame(agent, event, "x", key="k1")
        again = self.publish_frame(agent, reordered, "y", key="k1")
        self.assertEqual(first["payload"]["seq"], again["payload"]["seq"])
        self.assertEqual(self.hub.store.last_seq, first["payload"]["seq"])
        other = {"type": "agent:status", "payload": {"agentId": "a1", "status": "idle"}}
        self.assertEqual(self.publish_frame(agent, other, key="k1")["payload"]["code"],
                         "idempotency_conflict")
        plain = [self.publish_frame(agent, event, "same")["payload"]["seq"] for _ in range(2)]
        self.assertEqual(plain[1], plain[0] + 1)

    def test_fresh_token_narrows_subscriptions(self):
        """An auth frame with a token that allows less drops the channels it no longer allows."""
        conn = self.connect("op", role="operator")
        self.clock.advance(1)
        narrower = tokens.mint_token(SECRET, "op", self.clock.seconds(), role="viewer",
                                    channels=["presence"])
        reply = self.hub.handle_frame(conn, json.dumps({"type": "auth", "token": narrower})
                                      .encode(), False)
        self.assertEqual(reply["payload"]["channels"], [])
        self.publish(1)
        self.assertEqual(conn.delivered, [])




class PublishFramesMixin:
    """Sending frames, publish frames among them, and reading the replies a connection got."""

    def send(self, conn, frame):
        return self.hub.handle_frame(conn, json.dumps(frame).encode(), False)

    def publish(self, conn, frame_id, agent="a1", status="busy", key=None):
        frame = {"type": "publish", "id": frame_id,
                 "event": {"type": "agent:status",
                           "payload": {"agentId": agent, "status": status}}}
        if key is not None:
            frame["idempotencyKey"] = key
        return self.send(conn, frame)

    def replies(self, conn):
        return [(f["type"], f.get("id"), f["payload"].get("seq") or f["payload"].get("code"))
                for f in conn.frames if f["type"] in ("published", "error", "pong")]


class GroupCommitFrameTests(PublishFramesMixin, HubTestCase):
    """publish frames of one reactor turn: checked at once, stored together, answered in order."""

    def setUp(self):
        super().setUp()
        self.hub.message_rate, self.hub.message_burst = 100, 100
        self.stores: list[str] = []
        store = self.hub.store
        append, append_each = store.append, store.append_each

        def one(*args, **kwargs):
            self.stores.append("append")
            return append(*args, **kwargs)

        def each(items, ts, now):
            self.stores.append(f"append_each {len(items)}")
            return append_each(items, ts, now)

        store.append, store.append_each = one, each

    def test_one_transaction_replies_after_it(self):
        """
        Publishes of one turn, from two connections, are stored by one transaction at the end
        of the turn; nothing is answered before it; then each connection gets its replies in
        the order of its frames, with consecutive seqs, each after its own event.
        """
        one = self.connect("op1", role="operator")
        two = self.connect("op2", role="operator")
        before = self.hub.store.last_seq
        self.stores.clear()
        for i in range(3):
            self.assertIsNone(self.publish(one, f"one{i}", f"x{i}"))
            self.assertIsNone(self.publish(two, f"two{i}", f"y{i}"))
        self.assertEqual((self.replies(one), self.replies(two), self.stores), ([], [], []))
        self.clock.advance(0)
        self.assertEqual(self.stores, ["append_each 6"])
        self.assertEqual(self.replies(one), [("published", f"one{i}", before + 1 + 2 * i)
                                             for i in range(3)])
        self.assertEqual(self.replies(two), [("published", f"two{i}", before + 2 + 2 * i)
                                             for i in range(3)])
        types = one.types()
        self.assertLess(types.index("agent:status"), types.index("published"))
        self.assertEqual(self.hub.store.last_seq, before + 6)

    def test_refusal_answered_at_once_and_in_order(self):
        """
        A refused publish is answered at once when nothing of its connection waits; behind a
        waiting publish its error waits too, and a frame of another kind (ping) has the group
        committed first: replies keep the order of the frames.
        """
        viewer = self.connect("v")
        reply = self.publish(viewer, "v1")
        self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "forbidden"))
        conn = self.connect("op", role="operator")
        self.stores.clear()
        self.assertIsNone(self.publish(conn, "p1"))
        self.assertIsNone(self.publish(conn, "p2", status="dancing"))
        self.assertIsNone(self.publish(conn, "p3"))
        self.assertEqual(self.replies(conn), [])
        pong = self.send(conn, {"type": "ping", "id": "r"})
        seq = self.hub.store.last_seq
        self.assertEqual(self.replies(conn), [("published", "p1", seq - 1),
                                              ("error", "p2", "bad_request"),
                                              ("published", "p3", seq)])
        self.assertEqual((pong["type"], pong["id"]), ("pong", "r"))
        self.assertEqual((len(self.hub.commits), self.stores), (0, ["append_each 2"]))

    def test_idempotency_within_a_group(self):
        """
        Two publishes with the same idempotencyKey in one turn: the second is answered with the
        first's seq and nothing more is stored or broadcast; the key with another event in the
        same turn is idempotency_conflict, and the others of the group are stored.
        """
        conn = self.connect("op", role="operator")
        watcher = self.connect("w")
        before = self.hub.store.last_seq
        self.publish(conn, "k1", key="k")
        self.publish(conn, "k2", key="k")
        self.publish(conn, "k3", status="idle", key="k")
        self.publish(conn, "plain")
        self.clock.advance(0)
        self.assertEqual(self.replies(conn), [("published", "k1", before + 1),
                                              ("published", "k2", before + 1),
                                              ("error", "k3", "idempotency_conflict"),
                                              ("published", "plain", before + 2)])
        self.assertEqual([f["seq"] for f in watcher.delivered if f["type"] == "agent:status"],
                         [before + 1, before + 2])
        again = self.publish(conn, "later", key="k")
        self.assertIsNone(again)
        self.clock.advance(0)
        self.assertEqual(self.replies(conn)[-1], ("published", "later", before + 1))

    def test_failed_commit_answers_every_frame(self):
        """
        When the store fails as a whole, every publish of the group is answered internal_error,
        in order, on each connection; nothing is stored or broadcast; the connections stay open.
        """
        one = self.connect("op1", role="operator")
        two = self.connect("op2", role="operator")
        before = (self.hub.store.last_seq, len(self.prepared))

        def broken(items, ts, now):
            raise OSError("disk full")

        self.hub.store.append_each = broken
        self.publish(one, "a")
        self.publish(two, "b")
        self.publish(one, "c")
        self.clock.advance(0)
        self.assertEqual(self.replies(one), [("error", "a", "internal_error"),
                                             ("error", "c", "internal_error")])
        self.assertEqual(self.replies(two), [("error", "b", "internal_error")])
        self.assertEqual((self.hub.store.last_seq, len(self.prepared)), before)
        self.assertEqual((one.closed_with, two.closed_with), (None, None))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_waiting_claim_refuses_another_agent(self):
        """
        An agent's first activity in a session claims it as soon as it is checked: another
        agent's activity in that session, in the same turn, is refused at once, and only the
        first is stored.
        """
        first = self.connect("a1", role="agent")
        second = self.connect("a2", role="agent")
        frame = {"type": "publish", "id": "s",
                 "event": {"type": "session:activity",
                           "payload": {"sessionId": "s-new", "activity": "started"}}}
        self.assertIsNone(self.send(first, frame))
        refused = self.send(second, frame)
        self.assertEqual((refused["type"], refused["payload"]["message"]),
                         ("error", "session belongs to another agent"))
        self.clock.advance(0)
        self.assertEqual(self.hub.store.session_owner("s-new"), "a1")
        self.assertEqual(self.replies(first)[-1][:2], ("published", "s"))


class LateCommitFrameTests(PublishFramesMixin, HubTestCase):
    """
    publish frames on a broker that answers late (L{DeferredBroker}): the groups of two turns
    are stored one after the other and answered in order, whatever the broker does, and a claim
    stays taken while its group is in flight.
    """

    def setUp(self):
        super().setUp()
        self.hub.message_rate, self.hub.message_burst = 100, 100
        self.broker = DeferredBroker.around(self, self.hub)

    def activity(self, conn, frame_id, session="s-new"):
        return self.send(conn, {"type": "publish", "id": frame_id,
                                "event": {"type": "session:activity",
                                          "payload": {"sessionId": session,
                                                      "activity": "started"}}})

    def test_two_groups_answered_in_order(self):
        """
        Two turns' publishes, from two connections: the first turn's group goes to the broker,
        the second waits for it (the broker holds one append, never the second group's, so the
        second cannot be stored or answered first); each connection's replies follow the order
        of its frames, with seqs in the order of arrival, once each group is answered.
        """
        one = self.connect("op1", role="operator")
        two = self.connect("op2", role="operator")
        before = self.hub.store.last_seq
        self.publish(one, "one-a", "x1")
        self.publish(two, "two-a", "y1")
        self.clock.advance(0)
        self.publish(two, "two-b", "y2")
        self.publish(one, "one-b", "x2")
        self.clock.advance(0)
        self.assertEqual([name for name, _, _ in self.broker.pending], ["append_each"])
        self.assertEqual((self.replies(one), self.replies(two)), ([], []))
        self.broker.fire()
        self.assertEqual(self.replies(one), [("published", "one-a", before + 1)])
        self.assertEqual(self.replies(two), [("published", "two-a", before + 2)])
        self.assertEqual(len(self.broker.pending), 1)  # the second group, handed over now
        self.broker.fire()
        self.assertEqual(self.replies(one), [("published", "one-a", before + 1),
                                             ("published", "one-b", before + 4)])
        self.assertEqual(self.replies(two), [("published", "two-a", before + 2),
                                             ("published", "two-b", before + 3)])

    def test_other_frame_waits_behind_a_group_in_flight(self):
        """
        A frame of another kind behind a publish in flight is handled, but its reply waits for
        the publish's: the connection's replies keep the order of its frames.
        """
        conn = self.connect("op", role="operator")
        self.assertIsNone(self.publish(conn, "p1"))
        self.assertIsNone(self.send(conn, {"type": "ping", "id": "r"}))
        self.assertEqual(self.replies(conn), [])
        self.broker.fire()
        self.assertEqual([reply[:2] for reply in self.replies(conn)],
                         [("published", "p1"), ("pong", "r")])

    def test_failure_fired_later_answers_every_frame(self):
        """
        A group whose append fails after a while answers each of its publishes internal_error,
        in order, logged once; the connection stays open.
        """
        conn = self.connect("op", role="operator")
        self.publish(conn, "a")
        self.publish(conn, "b")
        self.clock.advance(0)
        self.broker.fail(OSError("backbone unreachable"))
        self.assertEqual(self.replies(conn), [("error", "a", "internal_error"),
                                              ("error", "b", "internal_error")])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertIsNone(conn.closed_with)

    def test_session_taken_answers_forbidden(self):
        """
        An agent's publish that the shared store refuses for a session another agent claimed
        (SessionTaken, for that item alone) is answered forbidden; the agent was named as the
        claimant; the others of the group are stored.
        """
        agent = self.connect("a1", role="agent")
        while self.broker.pending:
            self.broker.fire()  # its "online" (liveness)
        self.activity(agent, "s")
        self.clock.advance(0)
        (name, args, d), = self.broker.pending
        self.assertEqual(args[0][0][3], "a1")
        self.broker.pending.clear()
        d.callback([SessionTaken("a2")])
        self.assertEqual([reply[2] for reply in self.replies(agent)][-1:], ["forbidden"])

    def test_store_unavailable_answers_unavailable(self):
        """
        A group the store cannot take now (StoreUnavailable: a shared store out of reach)
        answers each of its publishes with an unavailable error frame, in order, logged as one
        warning without a traceback; the connection stays open.
        """
        conn = self.connect("op", role="operator")
        self.publish(conn, "a")
        self.publish(conn, "b")
        self.clock.advance(0)
        self.broker.fail(StoreUnavailable("Redis is out of reach"))
        self.assertEqual(self.replies(conn), [("error", "a", "unavailable"),
                                              ("error", "b", "unavailable")])
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])
        self.assertIsNone(conn.closed_with)

    def test_claim_in_flight_refuses_another_agent(self):
        """
        An agent's first activity in a session, handed to the broker and not answered yet,
        keeps the session that agent's: another agent's activity in it is refused at once, over
        the WebSocket and over HTTP (publish_for), and nothing of it reaches the broker.
        """
        first = self.connect("a1", role="agent")
        second = self.connect("a2", role="agent")
        while self.broker.pending:
            self.broker.fire()  # their "online" (liveness)
        self.assertIsNone(self.activity(first, "s"))
        self.clock.advance(0)
        self.assertEqual((len(self.broker.pending), self.hub.store.session_owner("s-new")),
                         (1, None))
        refused = self.activity(second, "t")
        self.assertEqual((refused["type"], refused["payload"]["message"]),
                         ("error", "session belongs to another agent"))
        thief = Principal(sub="a2", role="agent", name=None, expires_at=FAR_FUTURE)
        error = self.assertRaises(Refusal, self.hub.publish_for, thief, "session:activity",
                                  {"activity": "message"}, "s-new")
        self.assertEqual(error.status, 403)
        self.assertEqual(len(self.broker.pending), 1)
        self.broker.fire()
        self.assertEqual(self.hub.store.session_owner("s-new"), "a1")
        self.assertEqual(self.replies(first)[-1][:2], ("published", "s"))

    def test_http_claim_in_flight_refuses_a_websocket_publish(self):
        """
        A session claimed by an HTTP publish still in flight is taken for the checks of a
        WebSocket publish too; once that publish is answered the store keeps the claim.
        """
        owner = Principal(sub="a1", role="agent", name=None, expires_at=FAR_FUTURE)
        stored = self.hub.publish_for(owner, "session:activity", {"activity": "started"},
                                      "s-new")
        self.assertNoResult(stored)
        second = self.connect("a2", role="agent")
        refused = self.activity(second, "t")
        self.assertEqual(refused["payload"]["message"], "session belongs to another agent")
        self.broker.fire()
        self.broker.fire()  # a2's "online" (liveness)
        self.assertEqual(self.successResultOf(stored)["payload"]["agentId"], "a1")
        self.assertEqual((self.hub.store.session_owner("s-new"), len(self.hub.owners)),
                         ("a1", 0))

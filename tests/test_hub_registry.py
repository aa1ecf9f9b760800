"""
Tests for L{mission_control.hub.registry}: the index of connections by connection, user and
channel, and the live set; pure, no clock, no store, no hub.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.hub.client import Client
from mission_control.hub.connection import ConnectRequest
from mission_control.hub.registry import Registry
from mission_control.limits import TokenBucket
from tests.hubfakes import FakeConnection


def make_client(sub="alice", role="viewer", connection_id="c1", connected_at=0.0) -> Client:
    conn = FakeConnection(sub, role)
    conn.connection_id = connection_id
    return Client(node=None, conn=conn, request=ConnectRequest(peer="10.0.0.1:1"),
                  connected_at=connected_at, bucket=TokenBucket(1, 1, 0))


class ConnectionIndexTests(SynchronousTestCase):
    def setUp(self):
        self.registry = Registry()

    def test_add_and_remove_by_user(self):
        """The first connection of a user says so, the last removed says so; counts follow."""
        one, two = make_client(connection_id="c1"), make_client(connection_id="c2")
        self.assertTrue(self.registry.add(one))
        self.assertFalse(self.registry.add(two))
        self.assertEqual(len(self.registry), 2)
        self.assertEqual(self.registry.connection_count_of("alice"), 2)
        self.assertEqual(self.registry.connections_of("alice"), {one.conn, two.conn})
        self.assertEqual(self.registry.remove(one.conn), (one, False))
        self.assertTrue(self.registry.is_connected("alice"))
        self.assertEqual(self.registry.remove(two.conn), (two, True))
        self.assertFalse(self.registry.is_connected("alice"))
        self.assertEqual(self.registry.users(), [])

    def test_remove_unknown(self):
        """Removing a connection never added, or twice, is a no-op."""
        client = make_client()
        self.assertEqual(self.registry.remove(client.conn), (None, False))
        self.registry.add(client)
        self.registry.remove(client.conn)
        self.assertEqual(self.registry.remove(client.conn), (None, False))

    def test_lookup(self):
        """A client is found by its connection and by its connection id."""
        client = make_client(connection_id="abc")
        self.registry.add(client)
        self.assertIs(self.registry.get(client.conn), client)
        self.assertIs(self.registry.find("abc"), client)
        self.assertIsNone(self.registry.find("nope"))
        self.assertEqual(list(self.registry), [client.conn])

    def test_users_sorted_with_counts(self):
        for sub, cid in (("bob", "1"), ("alice", "2"), ("bob", "3")):
            self.registry.add(make_client(sub, connection_id=cid))
        self.assertEqual(self.registry.users(),
                         [{"id": "alice", "connections": 1}, {"id": "bob", "connections": 2}])

    def test_connection_details_oldest_first(self):
        """Details list connections by when they connected, with who, where and how far."""
        late = make_client("bob", "operator", connection_id="b", connected_at=20.0)
        early = make_client("alice", connection_id="a", connected_at=10.0)
        early.acked_seq = 7
        self.registry.add(late)
        self.registry.add(early)
        early_details, late_details = self.registry.iter_connection_details()
        self.assertEqual(early_details, {
            "id": "a", "user": "alice", "role": "viewer", "client": None,
            "peer": "10.0.0.1:1", "connectedAt": "1970-01-01T00:00:10.000Z", "ackedSeq": 7,
            "bytesWaiting": 0, "replaying": True,
        })
        self.assertEqual((late_details["id"], late_details["role"]), ("b", "operator"))


class SubscriptionIndexTests(SynchronousTestCase):
    def setUp(self):
        self.registry = Registry()
        self.client = make_client()
        self.registry.add(self.client)

    def test_catching_up_hears_nothing(self):
        """A client that is not live yet is subscribed but in no channel's audience."""
        self.registry.subscribe(self.client, "agents")
        self.assertEqual(self.client.channels, {"agents"})
        self.assertEqual(tuple(self.registry.subscribers(["agents"])), ())
        self.assertEqual(self.registry.live(), ())

    def test_live_hears_its_channels(self):
        """Going live puts it in the audience of each of its channels, and in the live set."""
        self.registry.subscribe(self.client, "agents")
        self.registry.go_live(self.client)
        self.assertEqual(tuple(self.registry.subscribers(["agents", "sessions"])),
                         (self.client.conn,))
        self.assertEqual(tuple(self.registry.subscribers(["sessions"])), ())
        self.registry.subscribe(self.client, "sessions")
        self.assertEqual(tuple(self.registry.subscribers(["sessions"])), (self.client.conn,))
        self.assertEqual(self.registry.live(), (self.client.conn,))

    def test_each_connection_once(self):
        """A connection on two of the channels asked for is counted once."""
        other = make_client("bob", connection_id="c2")
        self.registry.add(other)
        for client in (self.client, other):
            self.registry.subscribe(client, "agents")
            self.registry.go_live(client)
        self.registry.subscribe(self.client, "agents:a1")
        self.assertEqual(set(self.registry.subscribers(["agents", "agents:a1"])),
                         {self.client.conn, other.conn})
        self.assertEqual(len(list(self.registry.subscribers(["agents", "agents:a1"]))), 2)

    def test_presence_while_catching_up(self):
        """Watching presence puts a catching-up client in the presence audience only."""
        self.registry.subscribe(self.client, "presence")
        self.registry.subscribe(self.client, "agents")
        self.registry.watch_presence(self.client)
        self.assertEqual(tuple(self.registry.subscribers(["presence"])), (self.client.conn,))
        self.assertEqual(tuple(self.registry.subscribers(["agents"])), ())

    def test_unsubscribe_and_remove_empty_the_index(self):
        """Unsubscribing and removing leave no empty channel behind."""
        self.registry.subscribe(self.client, "agents")
        self.registry.subscribe(self.client, "presence")
        self.registry.go_live(self.client)
        self.registry.unsubscribe(self.client, "agents")
        self.assertEqual(self.registry.channels_heard(), {"presence"})
        self.registry.remove(self.client.conn)
        self.assertEqual(self.registry.channels_heard(), set())
        self.assertEqual(self.registry.live(), ())

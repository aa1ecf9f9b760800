"""
Tests for L{mission_control.lru}: the bounded mapping behind the rate limiter's buckets and the
token verifier's cache.
"""

from twisted.trial.unittest import SynchronousTestCase

from mission_control.lru import BoundedLRU


class BoundedLRUTests(SynchronousTestCase):
    """At most max_size entries; the least recently used is forgotten first."""

    def test_forgets_the_least_recently_written(self):
        """Past the bound, the entry written longest ago goes; the others stay."""
        lru = BoundedLRU(2)
        lru.put("a", 1)
        lru.put("b", 2)
        lru.put("c", 3)
        self.assertEqual((len(lru), "a" in lru, lru.get("b"), lru.get("c")), (2, False, 2, 3))

    def test_a_read_makes_an_entry_recent(self):
        """get() moves its entry to the recent end, so the other one is forgotten next."""
        lru = BoundedLRU(2)
        lru.put("a", 1)
        lru.put("b", 2)
        self.assertEqual(lru.get("a"), 1)
        lru.put("c", 3)
        self.assertEqual(("a" in lru, "b" in lru, "c" in lru), (True, False, True))

    def test_rewriting_a_key_makes_it_recent_without_growing(self):
        """put() on a held key replaces its value, makes it recent, and adds no entry."""
        lru = BoundedLRU(2)
        lru.put("a", 1)
        lru.put("b", 2)
        lru.put("a", 10)
        lru.put("c", 3)
        self.assertEqual((len(lru), lru.get("a"), "b" in lru), (2, 10, False))

    def test_missing_and_membership(self):
        """get() of a missing key gives the default; `in` does not change the order."""
        lru = BoundedLRU(2)
        self.assertIsNone(lru.get("x"))
        self.assertEqual(lru.get("x", 7), 7)
        lru.put("a", 1)
        lru.put("b", 2)
        self.assertIn("a", lru)
        lru.put("c", 3)
        self.assertNotIn("a", lru)

    def test_a_stored_none_is_a_value(self):
        """A key set to None is held: get() gives None rather than the default."""
        lru = BoundedLRU(1)
        lru.put("a", None)
        self.assertIsNone(lru.get("a", 7))

    def test_bound_must_be_positive(self):
        """A bound below 1 is refused at once."""
        self.assertRaises(ValueError, BoundedLRU, 0)

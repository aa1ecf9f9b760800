# -*- test-case-name: tests.test_limits -*-
"""
Tests for L{mission_control.limits}: the token bucket and the per-key limiter, with the time
passed in.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.limits import RateLimits, TokenBucket


class TokenBucketTests(SynchronousTestCase):
    """One bucket: a rate, a burst, and strikes."""

    def test_burst_then_rate(self):
        """A full bucket passes C{burst} messages at once, then C{rate} a second."""
        bucket = TokenBucket(rate=2, burst=3, now=0)
        self.assertEqual([bucket.take(0) for _ in range(4)], [True, True, True, False])
        self.assertEqual(bucket.strikes, 1)
        self.assertEqual([bucket.take(0.5), bucket.take(0.5)], [True, False])
        self.assertTrue(bucket.take(1.0))
        self.assertEqual(bucket.strikes, 0)

    def test_cost_all_or_none(self):
        """A take of several tokens takes them all, or none when the bucket has fewer."""
        bucket = TokenBucket(rate=2, burst=10, now=0)
        self.assertTrue(bucket.take(0, 7))
        self.assertFalse(bucket.take(0, 4))
        self.assertEqual((bucket.tokens, bucket.strikes), (3, 1))
        self.assertTrue(bucket.take(0.5, 4))
        self.assertEqual(bucket.tokens, 0)

    def test_bad_parameters(self):
        """A rate of 0 or a burst below 1 is refused."""
        self.assertRaises(ValueError, TokenBucket, 0, 1, 0)
        self.assertRaises(ValueError, TokenBucket, 1, 0.5, 0)


class RateLimitsTests(SynchronousTestCase):
    """A bucket per key, bounded in how many keys it tracks."""

    def test_keys_apart(self):
        """Each key has its own bucket."""
        limits = RateLimits(rate=1, burst=1)
        self.assertEqual([limits.take("a", 0), limits.take("a", 0), limits.take("b", 0)],
                         [True, False, True])
        self.assertTrue(limits.take("a", 1.0))

    def test_bounded(self):
        """Past max_keys the least recently seen key is forgotten (and starts full again)."""
        limits = RateLimits(rate=1, burst=1, max_keys=2)
        limits.take("a", 0)
        limits.take("b", 0)
        limits.take("a", 0)  # a is now the most recently seen
        limits.take("c", 0)  # forgets b
        self.assertEqual(len(limits), 2)
        self.assertFalse(limits.take("a", 0))
        self.assertTrue(limits.take("b", 0))

    def test_bad_parameters(self):
        """Bad rates, bursts and key counts are refused when the limiter is made."""
        self.assertRaises(ValueError, RateLimits, 0, 1)
        self.assertRaises(ValueError, RateLimits, 1, 1, 0)

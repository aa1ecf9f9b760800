# -*- test-case-name: tests.test_limits -*-
"""
Rate limits, as pure objects that take the time as a parameter.
"""

from __future__ import annotations

from mission_control.lru import BoundedLRU


class TokenBucket:
    """
    A token bucket: C{rate} tokens a second, at most C{burst} saved up.  Each message takes one.

    L{take} says whether a message may pass; L{strikes} counts the messages refused since the
    bucket last had a token, so a caller can tell a client that overshot once from one that keeps
    going.  One per connection (and one per user for handshakes), so it keeps no instance dict.
    """

    __slots__ = ("rate", "burst", "tokens", "strikes", "_updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.strikes = 0
        self._updated = now

    def take(self, now: float, cost: int = 1) -> bool:
        """
        Take C{cost} tokens (one message, by default) at time C{now}, all or none; C{False} (and
        one more strike) when there are fewer.
        """
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= cost:
            self.tokens -= cost
            self.strikes = 0
            return True
        self.strikes += 1
        return False


class RateLimits:
    """
    One L{TokenBucket} per key (a user id): C{rate} a second, bursts of C{burst}.  Only the
    C{max_keys} most recently seen keys are tracked, so the limiter's memory is bounded whoever
    calls it; a forgotten key starts again with a full bucket.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: BoundedLRU[str, TokenBucket] = BoundedLRU(max_keys)
        TokenBucket(rate, burst, 0.0)  # refuse a bad rate or burst now, not at the first call

    def take(self, key: str, now: float, cost: int = 1) -> bool:
        """Take C{cost} tokens from C{key}'s bucket at time C{now}; C{False} when it has fewer."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets.put(key, bucket)
        return bucket.take(now, cost)

    def __len__(self) -> int:
        return len(self._buckets)

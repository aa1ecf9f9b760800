# -*- test-case-name: tests.test_limits -*-
"""
Rate limits, as pure objects that take the time as a parameter.
"""

from __future__ import annotations


class TokenBucket:
    """
    A token bucket: C{rate} tokens a second, at most C{burst} saved up.  Each message takes one.

    L{take} says whether a message may pass; L{strikes} counts the messages refused since the
    bucket last had a token, so a caller can tell a client that overshot once from one that keeps
    going.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.strikes = 0
        self._updated = now

    def take(self, now: float) -> bool:
        """Take one token at time C{now}; C{False} (and one more strike) when there is none."""
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= 1:
            self.tokens -= 1
            self.strikes = 0
            return True
        self.strikes += 1
        return False

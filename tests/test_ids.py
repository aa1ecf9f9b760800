"""
Tests for L{mission_control.ids}: the id rule of agents, sessions, client and channel names,
and the epoch rule.
"""

from twisted.trial.unittest import SynchronousTestCase

from mission_control import ids
from mission_control.ids import ID_RULE, is_valid_id
from mission_control.store.rules import new_epoch


class IdRuleTests(SynchronousTestCase):
    """1-128 characters of A-Z a-z 0-9 . _ : -, not . or .."""

    def test_valid(self):
        """Letters, digits and . _ : - from 1 to 128 characters."""
        for value in ("a", "agent-7", "sess_42.b:c", "A" * 128, "..."):
            self.assertTrue(is_valid_id(value), value)

    def test_invalid(self):
        """Empty, too long, other characters, . and .., and anything not a string."""
        for value in ("", "A" * 129, "a b", "a/b", "é", "a\n", ".", "..", None, 7, b"a"):
            self.assertFalse(is_valid_id(value), repr(value))

    def test_rule_in_words(self):
        """The message every refusal quotes names the length, the characters and . and .."""
        self.assertEqual(ID_RULE, "1-128 characters of A-Z a-z 0-9 . _ : - (not . or ..)")



class EpochRuleTests(SynchronousTestCase):
    """1-64 characters of A-Z a-z 0-9 _ -: what the hub takes back in ?epoch=."""

    def test_epoch(self):
        """An epoch is 1-64 of A-Z a-z 0-9 _ -; a fresh store's epoch follows the rule."""
        for good in ("ab12", "A_b-9", "x" * 64, new_epoch()):
            self.assertTrue(ids.is_valid_epoch(good), good)
        for bad in ("", "x" * 65, "a b", "a.b", "a:b", 12, None):
            self.assertFalse(ids.is_valid_epoch(bad), bad)

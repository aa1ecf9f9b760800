"""
Tests for L{mission_control.ids}: the id rule of agents, sessions, client and channel names.
"""

from twisted.trial.unittest import SynchronousTestCase

from mission_control.ids import ID_RULE, is_valid_id


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

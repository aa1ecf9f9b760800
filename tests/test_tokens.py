"""
Tests for L{mission_control.tokens}: tokens minted are the ones the hub's verifier accepts, with
the claims given and no others.
"""

from __future__ import annotations

import jwt
from twisted.trial.unittest import SynchronousTestCase

from mission_control import tokens
from mission_control.auth import Refusal, TokenVerifier

NOW = 1_800_000_000.0
SECRET = b"s" * 64
#: Decoding options that leave the time claims alone: tokens here are minted at NOW, not now.
UNTIMED = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}


class MintTests(SynchronousTestCase):
    """What a minted token carries."""

    def test_mint_round_trip(self):
        """mint_token makes tokens the verifier accepts, with the claims given."""
        token = tokens.mint_token(SECRET, "bob", NOW, ttl=60, role="agent", name="Bob")
        verifier = TokenVerifier(key=SECRET, algorithms=["HS256"])
        principal = verifier.verify(token, NOW)
        self.assertEqual((principal.sub, principal.role, principal.name, principal.expires_at),
                         ("bob", "agent", "Bob", NOW + 60))
        error = self.assertRaises(Refusal, verifier.verify, token, NOW + 66)
        self.assertEqual(error.reason, "token expired")

    def test_only_the_claims_given(self):
        """Without optional arguments a token holds sub, iat and exp (whole seconds) only."""
        token = tokens.mint_token(SECRET, "bob", NOW + 0.7, ttl=60.5)
        decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options=UNTIMED)
        self.assertEqual(decoded, {"sub": "bob", "iat": int(NOW), "exp": int(NOW + 61)})

    def test_optional_claims(self):
        """Issuer, audience and channels become iss, aud and channels, signed as asked."""
        token = tokens.mint_token(SECRET, "bob", NOW, issuer="hq", audience="hub",
                                  channels=["presence"], algorithm="HS512")
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS512")
        decoded = jwt.decode(token, SECRET, algorithms=["HS512"], audience="hub",
                             options=UNTIMED)
        self.assertEqual((decoded["iss"], decoded["aud"], decoded["channels"]),
                         ("hq", "hub", ["presence"]))

"""
Tests for L{mission_control.auth}: token verification, token extraction, Origins, roles.  The keys
tokens are checked with are tested in L{tests.test_keys}, minting in L{tests.test_tokens}.
"""

from __future__ import annotations

import json

import jwt
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from mission_control import auth
from mission_control.auth import OriginPolicy, Refusal, TokenVerifier
from mission_control.policy import Principal
from tests.helpers import b64url, forge_hs256, new_keypair, sign_raw

NOW = 1_800_000_000.0
SECRET = b"s" * 64


def claims(**overrides) -> dict:
    value = {"sub": "alice", "exp": int(NOW + 600), "iat": int(NOW)}
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


class TokenVerifierHMACTests(SynchronousTestCase):
    """HS256 tokens against a shared secret."""

    def setUp(self):
        self.verifier = TokenVerifier(key=SECRET, algorithms=["HS256"], leeway=5)

    def token(self, **overrides) -> str:
        return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")

    def refused(self, token) -> str:
        error = self.assertRaises(Refusal, self.verifier.verify, token, NOW)
        self.assertEqual(error.status, 401)
        return error.reason

    def test_valid_token(self):
        """A good token yields its sub, role, name and expiry."""
        principal = self.verifier.verify(self.token(role="operator", name="Alice A."), NOW)
        self.assertEqual(
            principal,
            Principal(sub="alice", role="operator", name="Alice A.", expires_at=NOW + 600),
        )

    def test_role_defaults_to_viewer(self):
        """A token without a role claim is a viewer's."""
        self.assertEqual(self.verifier.verify(self.token(), NOW).role, "viewer")

    def test_bytes_token(self):
        """A token given as bytes is verified like the same text."""
        self.assertEqual(self.verifier.verify(self.token().encode(), NOW).sub, "alice")

    def test_missing_token(self):
        """No token at all is refused as missing."""
        self.assertEqual(self.refused(None), "missing token")
        self.assertEqual(self.refused(""), "missing token")

    def test_garbage(self):
        """Text that is not a JWT is an invalid token."""
        for garbage in ("garbage", "a.b.c", "....", "\u00e9t\u00e9", b"\xff\xfe"):
            self.assertEqual(self.refused(garbage), "invalid token", garbage)

    def test_wrong_secret(self):
        """A token signed with another secret is refused."""
        token = jwt.encode(claims(), b"x" * 40, algorithm="HS256")
        self.assertEqual(self.refused(token), "invalid token")

    def test_alg_none(self):
        """An unsigned token (alg none) is refused whatever its claims."""
        token = b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(
            json.dumps(claims(role="admin")).encode()
        ) + "."
        self.assertEqual(self.refused(token), "invalid token")

    def test_algorithm_not_configured(self):
        """A token signed with a valid secret but an algorithm not in the list is refused."""
        token = jwt.encode(claims(), SECRET, algorithm="HS512")
        self.assertEqual(self.refused(token), "invalid token")

    def test_tampered_payload(self):
        """Changing the payload after signing (viewer -> admin) breaks the signature."""
        header, payload, signature = self.token(role="viewer").split(".")
        evil = b64url(json.dumps(claims(role="admin")).encode())
        self.assertEqual(self.refused(f"{header}.{evil}.{signature}"), "invalid token")

    def test_missing_exp(self):
        """exp is required."""
        self.assertEqual(self.refused(self.token(exp=None)), "invalid claims")

    def test_missing_sub(self):
        """sub is required."""
        self.assertEqual(self.refused(self.token(sub=None)), "invalid claims")

    def test_bad_sub(self):
        """sub must be a non-empty string of at most 256 characters without control characters."""
        for sub in ("", "a" * 257, "ali\nce", 42, ["alice"]):
            self.assertEqual(self.refused(self.token(sub=sub)), "invalid claims", sub)
        self.assertEqual(self.verifier.verify(self.token(sub="a" * 256), NOW).sub, "a" * 256)

    def test_unknown_role(self):
        """A role outside admin, operator, viewer, agent is refused, not downgraded."""
        for role in ("root", "", "Admin", 1):
            self.assertEqual(self.refused(self.token(role=role)), "invalid claims", role)

    def test_agent_sub_follows_id_rules(self):
        """An agent's sub is its agent id and must follow the id rules."""
        self.assertEqual(self.verifier.verify(self.token(sub="agent-1", role="agent"), NOW).sub,
                         "agent-1")
        self.assertEqual(self.refused(self.token(sub="agent 1", role="agent")), "invalid claims")

    def test_bad_name(self):
        """name, when present, is a string of at most 256 characters without control characters."""
        for name in (42, "x" * 257, "a\x00b"):
            self.assertEqual(self.refused(self.token(name=name)), "invalid claims")

    def test_expired(self):
        """A token past exp + leeway is expired; within the leeway it is still accepted."""
        self.assertEqual(self.refused(self.token(exp=int(NOW - 6))), "token expired")
        self.assertEqual(self.verifier.verify(self.token(exp=int(NOW - 4)), NOW).sub, "alice")

    def test_not_yet_valid(self):
        """nbf or iat in the future beyond the leeway is refused; within it, accepted."""
        self.assertEqual(self.refused(self.token(nbf=int(NOW + 60))), "token not yet valid")
        self.assertEqual(self.refused(self.token(iat=int(NOW + 60))), "token not yet valid")
        self.assertEqual(self.verifier.verify(self.token(nbf=int(NOW + 4)), NOW).sub, "alice")
        self.assertEqual(self.verifier.verify(self.token(iat=int(NOW + 4)), NOW).sub, "alice")

    def test_time_claims_must_be_numbers(self):
        """exp, nbf and iat that are not numbers are refused rather than ignored."""
        for name in ("exp", "nbf", "iat"):
            token = jwt.encode(claims(**{name: "tomorrow"}), SECRET, algorithm="HS256")
            self.assertIn(self.refused(token), ("invalid claims", "invalid token"), name)

    def test_time_claims_must_be_finite_and_in_range(self):
        """
        exp, nbf or iat of NaN, Infinity, a float beyond the double range (1e400 reads as
        infinity) or an integer past the year 9999 (10**400) is refused with 401, never accepted
        as "never expires" and never a crash.
        """
        exp = int(NOW + 600)
        for name, value in [("exp", "NaN"), ("exp", "Infinity"), ("exp", "1e400"),
                            ("exp", "1" + "0" * 400), ("exp", "253402300800"),
                            ("nbf", "NaN"), ("iat", "-Infinity"), ("iat", "1" + "0" * 400)]:
            fields = {"sub": '"alice"', "exp": str(exp)}
            fields[name] = value
            payload = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
            self.assertIn(self.refused(sign_raw(payload.encode(), SECRET)),
                          ("invalid claims", "invalid token"), (name, value))

    def test_duplicate_claims_refused(self):
        """A claim given twice is refused, whichever order: the last one does not win."""
        for payload in (b'{"sub":"alice","sub":"root","exp":%d}',
                        b'{"sub":"alice","exp":%d,"role":"viewer","role":"admin"}'):
            token = sign_raw(payload % int(NOW + 600), SECRET)
            self.assertEqual(self.refused(token), "invalid token")

    def test_sub_and_name_must_show_as_themselves(self):
        """
        sub and name holding a line or paragraph separator, a zero-width or right-to-left
        formatting character, or a lone surrogate are refused: they forge log lines and pass for
        other users.  Ordinary non-ASCII names are accepted.
        """
        for text in ("ali\u2028ce", "ali\u2029ce", "ali\u200bce", "\u202eecila", "ali\ufeffce",
                     "ali\x85ce"):
            self.assertEqual(self.refused(self.token(sub=text)), "invalid claims", repr(text))
            self.assertEqual(self.refused(self.token(name=text)), "invalid claims", repr(text))
        lone = sign_raw(b'{"sub":"\\ud800","exp":%d}' % int(NOW + 600), SECRET)
        self.assertEqual(self.refused(lone), "invalid token")
        principal = self.verifier.verify(self.token(sub="zoë", name="Zoë Ødegård 日本"), NOW)
        self.assertEqual((principal.sub, principal.name), ("zoë", "Zoë Ødegård 日本"))

    def test_oversized_token(self):
        """A token longer than MAX_TOKEN_LENGTH is refused without being parsed."""
        token = self.token(name="x" * 200) + "A" * auth.MAX_TOKEN_LENGTH
        self.assertEqual(self.refused(token), "invalid token")

    def test_issuer_and_audience(self):
        """With iss/aud configured, tokens must carry the same values."""
        verifier = TokenVerifier(key=SECRET, algorithms=["HS256"], issuer="mc", audience="dash")
        good = jwt.encode(claims(iss="mc", aud="dash"), SECRET, algorithm="HS256")
        self.assertEqual(verifier.verify(good, NOW).sub, "alice")
        cases = {
            "invalid issuer": claims(iss="evil", aud="dash"),
            "invalid audience": claims(iss="mc", aud="other"),
            "invalid claims": claims(aud="dash"),
        }
        for reason, value in cases.items():
            token = jwt.encode(value, SECRET, algorithm="HS256")
            error = self.assertRaises(Refusal, verifier.verify, token, NOW)
            self.assertEqual(error.reason, reason)

    def test_remembered_tokens_still_expire(self):
        """A token verified once is remembered, but its time claims are checked on every call."""
        token = self.token(exp=int(NOW + 60))
        self.assertEqual(self.verifier.verify(token, NOW).sub, "alice")
        self.assertEqual(self.verifier.verify(token, NOW + 30).sub, "alice")
        error = self.assertRaises(Refusal, self.verifier.verify, token, NOW + 66)
        self.assertEqual(error.reason, "token expired")

    def test_remembered_tokens_bounded(self):
        """The memory of verified tokens holds at most cache_size of them."""
        verifier = TokenVerifier(key=SECRET, algorithms=["HS256"], cache_size=3)
        for i in range(10):
            verifier.verify(self.token(sub=f"u{i}"), NOW)
        self.assertEqual(len(verifier._verified), 3)

    def test_refused_tokens_not_remembered(self):
        """A refused token is not remembered as verified."""
        bad = jwt.encode(claims(), b"x" * 64, algorithm="HS256")
        self.refused(bad)
        self.assertEqual(self.refused(bad), "invalid token")
        self.assertEqual(len(self.verifier._verified), 0)

    def test_reasons_never_contain_the_token(self):
        """No refusal reason quotes the token or its claims."""
        token = self.token(sub="secret-sub", exp=int(NOW - 100))
        error = self.assertRaises(Refusal, self.verifier.verify, token, NOW)
        self.assertNotIn("secret-sub", error.reason)
        self.assertNotIn(token[:20], str(error))


class DecoderOptionsTests(SynchronousTestCase):
    """
    The verifier's decoder holds its options merged once: the required claims, the signature
    check, the issuer and audience checks as configured, and PyJWT's own time checks off (ours
    use the injected clock).
    """

    def test_options_merged_once(self):
        """The decoder's options are the verifier's; a token without the issuer is refused."""
        verifier = TokenVerifier(key=b"k" * 32, algorithms=["HS256"], issuer="i")
        options = verifier._jwt.options
        self.assertEqual(options["require"], ["exp", "sub"])
        self.assertTrue(options["verify_signature"])
        self.assertEqual((options["verify_iss"], options["verify_aud"]), (True, False))
        self.assertEqual((options["verify_exp"], options["verify_nbf"], options["verify_iat"]),
                         (False, False, False))
        token = jwt.encode({"sub": "a", "exp": 2e9}, b"k" * 32, algorithm="HS256")
        self.assertEqual(self.assertRaises(Refusal, verifier.verify, token, 1e9).reason,
                         "invalid claims")


class TokenVerifierPublicKeyTests(SynchronousTestCase):
    """RS256 and ES256 tokens against a public key."""

    def test_rs256_and_es256(self):
        """Tokens signed with the private key verify against the public key."""
        for algorithm in ("RS256", "ES256"):
            private, pem = new_keypair(algorithm)
            verifier = TokenVerifier(
                key=serialization.load_pem_public_key(pem), algorithms=[algorithm]
            )
            token = jwt.encode(claims(role="admin"), private, algorithm=algorithm)
            self.assertEqual(verifier.verify(token, NOW).role, "admin", algorithm)

    def test_hs256_signed_with_public_key_is_refused(self):
        """The key-confusion attack (HS256 with the PEM public key as secret) is refused."""
        private, pem = new_keypair("RS256")
        verifier = TokenVerifier(key=serialization.load_pem_public_key(pem), algorithms=["RS256"])
        forged = forge_hs256(claims(role="admin"), pem)
        error = self.assertRaises(Refusal, verifier.verify, forged, NOW)
        self.assertEqual((error.status, error.reason), (401, "invalid token"))

class TokenFromRequestTests(SynchronousTestCase):
    """Where the token is taken from."""

    def test_header(self):
        """Authorization: Bearer is read, whatever the scheme's case."""
        self.assertEqual(auth.token_from_request({"authorization": "Bearer abc"}, {}), "abc")
        self.assertEqual(auth.token_from_request({"authorization": "bearer  abc "}, {}), "abc")

    def test_query(self):
        """Without the header, the token query parameter is used."""
        self.assertEqual(auth.token_from_request({}, {"token": ["q1", "q2"]}), "q1")

    def test_header_wins(self):
        """The header is preferred over the query parameter."""
        token = auth.token_from_request({"authorization": "Bearer h"}, {"token": ["q"]})
        self.assertEqual(token, "h")

    def test_none(self):
        """No header and no parameter: no token."""
        self.assertIsNone(auth.token_from_request({}, {}))

    def test_other_scheme(self):
        """An Authorization header that is not a bearer token is refused, not ignored."""
        error = self.assertRaises(
            Refusal, auth.token_from_request, {"authorization": "Basic YWxpY2U6cHc="}, {}
        )
        self.assertEqual((error.status, error.reason), (401, "invalid token"))


class OriginTests(SynchronousTestCase):
    """The Origin allow-list, written as browsers send Origins."""

    def test_normalize(self):
        """Default ports are dropped, scheme and host lower-cased; non-origins are None."""
        self.assertEqual(auth.normalize_origin("https://MC.example.com:443"), "https://mc.example.com")
        self.assertEqual(auth.normalize_origin("http://h:8080"), "http://h:8080")
        self.assertEqual(auth.normalize_origin("http://[::1]:80"), "http://[::1]")
        for bad in ("null", "file://x", "https://", "https://h/path", "ftp://h", "https://h:99999"):
            self.assertIsNone(auth.normalize_origin(bad), bad)

    def test_policy(self):
        """Only listed origins pass; a request without Origin (not a browser) passes."""
        policy = OriginPolicy(["https://mc.example.com"])
        self.assertTrue(policy.allows("https://mc.example.com"))
        self.assertTrue(policy.allows("https://mc.example.com:443"))
        self.assertTrue(policy.allows(None))
        self.assertFalse(policy.allows("https://evil.example.com"))
        self.assertFalse(policy.allows("http://mc.example.com"))
        self.assertFalse(policy.allows("null"))

    def test_no_list_allows_all(self):
        """Without a list every Origin is allowed."""
        self.assertTrue(OriginPolicy().allows("https://anything.example"))

    def test_bad_entry(self):
        """A list entry that is not an origin is a configuration error."""
        self.assertRaises(ValueError, OriginPolicy, ["mc.example.com"])

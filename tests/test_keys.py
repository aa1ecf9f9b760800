"""
Tests for L{mission_control.keys}: HMAC secrets read and generated, PEM public keys loaded, and
the JWT algorithms each key verifies.
"""

from __future__ import annotations

import os
import stat

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase

from mission_control import keys
from mission_control.auth import TokenVerifier
from tests.helpers import new_keypair, public_pem

NOW = 1_800_000_000.0


def claims(**overrides) -> dict:
    value = {"sub": "alice", "exp": int(NOW + 600), "iat": int(NOW)}
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


class PublicKeyTests(SynchronousTestCase):
    """A PEM public key loaded, and the algorithms it is settled with."""

    def test_load_public_key_checks_algorithms(self):
        """A key file must be PEM and fit every configured algorithm."""
        _, rsa_pem = new_keypair("RS256")
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(rsa_pem)
        key, algorithms = keys.load_public_key(path, ["RS256", "PS256"])
        self.assertIsInstance(key, rsa.RSAPublicKey)
        self.assertEqual(algorithms, ["RS256", "PS256"])
        self.assertRaises(ValueError, keys.load_public_key, path, ["ES256"])
        with open(path, "wb") as f:
            f.write(b"not a key")
        self.assertRaises(ValueError, keys.load_public_key, path, ["RS256"])
        self.assertRaises(ValueError, keys.load_public_key, path + ".missing", ["RS256"])

    def test_default_algorithm_follows_the_key(self):
        """Without algorithms, the key's own is used: RS256, ES256/384/512 by curve, EdDSA."""
        private_keys = {
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "ES384": ec.generate_private_key(ec.SECP384R1()),
            "ES512": ec.generate_private_key(ec.SECP521R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        }
        for expected, private in private_keys.items():
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(private.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            key, algorithms = keys.load_public_key(path)
            self.assertEqual(algorithms, [expected])
            token = jwt.encode(claims(), private, algorithm=expected)
            self.assertEqual(TokenVerifier(key=key, algorithms=algorithms).verify(token, NOW).sub,
                             "alice")

    def test_curve_must_match(self):
        """A P-384 key with ES256 is refused at load time, not with a 401 on every token."""
        private = ec.generate_private_key(ec.SECP384R1())
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        error = self.assertRaises(ValueError, keys.load_public_key, path, ["ES256"])
        self.assertIn("ES384", str(error))

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_unsupported_curve_refused(self):
        """An EC key on a curve no JWT algorithm uses (secp256k1) is refused as unsupported."""
        path = self.write(public_pem(ec.generate_private_key(ec.SECP256K1())))
        error = self.assertRaises(ValueError, keys.load_public_key, path)
        self.assertIn("unsupported key type or curve (EC secp256k1)", str(error))

    def test_private_key_is_not_a_public_key(self):
        """A PEM private key in place of the public one is refused, naming the file."""
        private = ec.generate_private_key(ec.SECP256R1())
        path = self.write(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        error = self.assertRaises(ValueError, keys.load_public_key, path)
        self.assertEqual(str(error), f"{path} is not a PEM public key")

    def test_mismatch_names_what_the_key_verifies(self):
        """An algorithm that does not fit is named in the message with the ones that do."""
        path = self.write(public_pem(ed25519.Ed25519PrivateKey.generate()))
        error = self.assertRaises(ValueError, keys.load_public_key, path, ["RS256"])
        self.assertIn("--jwt-algorithm RS256 does not fit the EdDSA key", str(error))
        self.assertIn("(it verifies EdDSA)", str(error))


class KeyAlgorithmsTests(SynchronousTestCase):
    """Which JWT algorithms each kind of public key verifies, its default first."""

    def test_rsa(self):
        """An RSA key verifies RS* and PS*, RS256 first."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        self.assertEqual(keys.key_algorithms(key),
                         ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"))

    def test_ec_by_curve(self):
        """An EC key verifies the one ES* of its curve, and nothing on another curve."""
        for curve, expected in ((ec.SECP256R1(), ("ES256",)), (ec.SECP384R1(), ("ES384",)),
                                (ec.SECP521R1(), ("ES512",)), (ec.SECP256K1(), ())):
            key = ec.generate_private_key(curve).public_key()
            self.assertEqual(keys.key_algorithms(key), expected, curve.name)

    def test_edwards(self):
        """Ed25519 and Ed448 keys verify EdDSA."""
        for private in (ed25519.Ed25519PrivateKey.generate(), ed448.Ed448PrivateKey.generate()):
            self.assertEqual(keys.key_algorithms(private.public_key()), ("EdDSA",))

    def test_not_a_public_key(self):
        """Anything else, an HMAC secret or a private key, verifies nothing."""
        self.assertEqual(keys.key_algorithms(b"s" * 64), ())
        self.assertEqual(keys.key_algorithms(ed25519.Ed25519PrivateKey.generate()), ())

    def test_public_key_and_hmac_algorithms_apart(self):
        """The ten algorithms public keys verify and the HMAC ones do not overlap."""
        self.assertEqual(set(keys.PUBLIC_KEY_ALGORITHMS) & set(keys.HMAC_ALGORITHMS), set())
        self.assertEqual(len(keys.PUBLIC_KEY_ALGORITHMS), 10)


class SecretTests(SynchronousTestCase):
    """The HMAC secret: read, generated, checked."""

    def test_generated_once_with_mode_0600(self):
        """The dev secret is created 0600 on first use and read back unchanged afterwards."""
        data_dir = self.mktemp()
        secret, path, created = keys.load_or_create_secret(data_dir)
        self.assertTrue(created)
        self.assertGreaterEqual(len(secret), keys.MIN_SECRET_BYTES)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again, _, created_again = keys.load_or_create_secret(data_dir)
        self.assertEqual((again, created_again), (secret, False))

    def test_short_secret_refused(self):
        """A secret under 32 bytes is refused with a message that says so."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"short\n")
        error = self.assertRaises(ValueError, keys.read_secret, path)
        self.assertIn("at least 32", str(error))

    def test_missing_secret_file(self):
        """A missing secret file is a clear error naming the file."""
        path = self.mktemp()
        error = self.assertRaises(ValueError, keys.read_secret, path)
        self.assertIn(path, str(error))

    def test_white_space_around_the_secret_is_not_part_of_it(self):
        """A secret file's trailing newline (and any surrounding blanks) is stripped."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"  " + b"k" * 32 + b"\n\n")
        self.assertEqual(keys.read_secret(path), b"k" * 32)

    def test_data_dir_created_private(self):
        """A data directory that does not exist is created, mode 0700, with the secret in it."""
        data_dir = os.path.join(self.mktemp(), "data")
        _, path, _ = keys.load_or_create_secret(data_dir)
        self.assertEqual(stat.S_IMODE(os.stat(data_dir).st_mode) & 0o077, 0)
        self.assertEqual(path, os.path.join(data_dir, keys.SECRET_FILE_NAME))

# -*- test-case-name: tests.test_keys -*-
"""
The keys tokens are checked with: HMAC secrets read from a file or generated for development,
PEM public keys and the JWT algorithms each of them verifies, and the types of both.

Kept apart from verification (L{mission_control.auth}) because it is configuration: it touches
the file system and runs once, at start, where a problem is a usage error (a C{ValueError} with a
message fit for a usage line), never a refused request.
"""

from __future__ import annotations

import os
import secrets
from typing import Sequence, Union

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key


#: An HMAC secret shorter than this is refused at start (RFC 7518 section 3.2 asks for at least
#: the hash size; 32 bytes covers HS256).
MIN_SECRET_BYTES = 32

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_KEY_ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
PUBLIC_KEY_ALGORITHMS = tuple(a for algs in _KEY_ALGORITHMS.values() for a in algs)

SECRET_FILE_NAME = "jwt-secret"

#: A public key that verifies tokens (L{load_public_key}).
PublicKey = Union[
    rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey
]
_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey
)
#: What L{mission_control.auth.TokenVerifier} checks signatures with: an HMAC secret, or a public
#: key.
VerifyingKey = Union[bytes, PublicKey]
#: What L{mission_control.tokens.mint_token} signs with: an HMAC secret, or a private key.
SigningKey = Union[
    bytes,
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
]


# The secret: generated for development, read from a file in production.


def read_secret(path: str) -> bytes:
    """
    Read an HMAC secret from C{path}, surrounding white space removed.

    @raise ValueError: with a message fit for a usage line when it is unreadable or too short.
    """
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read JWT secret file {path}: {e.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"JWT secret in {path} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required"
        )
    return secret


def load_or_create_secret(data_dir: str) -> tuple[bytes, str, bool]:
    """
    The development secret in C{data_dir}, generated (64 hex characters, mode 0600) on first use.

    @return: C{(secret, path, created)}.
    """
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, SECRET_FILE_NAME)
    created = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        created = True
    return read_secret(path), path, created


# Public keys, and the algorithms each verifies.


def key_algorithms(key: object) -> tuple[str, ...]:
    """
    The JWT algorithms a public key can verify, its default first: RSA keys RS*/PS* (RS256), EC
    keys the one ES* of their curve (P-256: ES256, P-384: ES384, P-521: ES512), Ed25519 and Ed448
    EdDSA.  An EC key on another curve verifies nothing.
    """
    if isinstance(key, rsa.RSAPublicKey):
        return _KEY_ALGORITHMS["RSA"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_CURVES.get(key.curve.name)
        return (algorithm,) if algorithm else ()
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return _KEY_ALGORITHMS["OKP"]
    return ()


_EC_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def load_public_key(path: str, algorithms: Sequence[str] = ()) -> tuple[PublicKey, list[str]]:
    """
    Load a PEM public key and settle the algorithms it verifies: C{algorithms} when given, each of
    which must fit the key, else the key's default (L{key_algorithms}).

    @return: C{(key, algorithms)}.
    @raise ValueError: with a message fit for a usage line.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read JWT public key {path}: {e.strerror}") from None
    try:
        key = load_pem_public_key(data)
    except Exception:
        raise ValueError(f"{path} is not a PEM public key") from None
    fitting = key_algorithms(key)
    kind = _key_kind(key)
    # A key that fits an algorithm is always one of the verifying key types.
    if not fitting or not isinstance(key, _PUBLIC_KEY_TYPES):
        raise ValueError(f"{path}: unsupported key type or curve ({kind})")
    for algorithm in algorithms:
        if algorithm not in fitting:
            raise ValueError(
                f"--jwt-algorithm {algorithm} does not fit the {kind} key in {path} "
                f"(it verifies {', '.join(fitting)})"
            )
    return key, list(algorithms) or [fitting[0]]


def _key_kind(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "EdDSA"
    return type(key).__name__

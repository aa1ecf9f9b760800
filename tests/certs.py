"""
Throwaway certificates for TLS tests: a private CA and a server certificate it signed for
C{localhost} and C{127.0.0.1}.

Keys are EC P-256 and generated once per process (L{functools.cache}); every test still gets its
own copy of the files in a directory of its own, from L{write_certificates}.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Authority:
    """A self-signed CA: its key and its certificate, and the certificate as PEM."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertificateFiles:
    """
    Where L{write_certificates} put the files.

    @ivar key: the server's private key (PEM, PKCS#8).
    @ivar cert: the server's certificate (PEM).
    @ivar ca: the CA certificate that signed it (PEM).
    @ivar ca_pem: the content of C{ca}.
    """

    directory: str
    key: str
    cert: str
    ca: str
    ca_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mission-control tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(
        now + datetime.timedelta(days=30)
    )


def _new_authority(common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Authority(key, _validity(builder).sign(key, hashes.SHA256()))


@cache
def certificate_authority() -> Authority:
    """The CA that signs the test server's certificate."""
    return _new_authority("mission-control test CA")


@cache
def other_certificate_authority() -> Authority:
    """An unrelated CA: a client that trusts only this one must refuse the test server."""
    return _new_authority("some other CA")


@cache
def server_key_and_certificate() -> tuple[bytes, bytes]:
    """The server's private key and certificate, PEM, for C{localhost} and C{127.0.0.1}."""
    ca = certificate_authority()
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    certificate = _validity(builder).sign(ca.key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def write_certificates(testcase) -> CertificateFiles:
    """Write C{key.pem}, C{cert.pem} and C{ca.pem} into a new directory of C{testcase}."""
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    key_pem, cert_pem = server_key_and_certificate()
    ca_pem = certificate_authority().pem
    paths = {}
    for name, content in (("key", key_pem), ("cert", cert_pem), ("ca", ca_pem)):
        paths[name] = os.path.join(directory, f"{name}.pem")
        with open(paths[name], "wb") as f:
            f.write(content)
    os.chmod(paths["key"], 0o600)
    return CertificateFiles(directory, paths["key"], paths["cert"], paths["ca"], ca_pem)


def endpoint_quote(path: str) -> str:
    """C{path} escaped for use as a value in a Twisted endpoint string (colons, backslashes)."""
    return path.replace("\\", "\\\\").replace(":", "\\:")


def ssl_listen(files: CertificateFiles, port: int = 0) -> str:
    """An C{ssl:} endpoint string on 127.0.0.1 that serves C{files}."""
    return (
        f"ssl:{port}:interface=127.0.0.1"
        f":privateKey={endpoint_quote(files.key)}:certKey={endpoint_quote(files.cert)}"
    )

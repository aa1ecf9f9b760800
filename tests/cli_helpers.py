"""
What the tests of L{mission_control.cli} share: running the command line in-process, publishing
on the test's reactor, secrets and certificates on disk, the hub's frames as C{watch} receives
them, and the check of a usage error.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import re
import socket
import time
from datetime import timezone

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.application.internet import backoffPolicy
from twisted.internet import reactor

from mission_control import auth, cli, events, keys
from mission_control.cli.publish import HTTP_TIMEOUT
from tests.helpers import tmp_path

FAST_RETRY = backoffPolicy(initialDelay=0.05, maxDelay=0.2, factor=2.0, jitter=lambda: 0.0)


def printed_seqs(lines):
    """The seq of every event line in C{lines}, in order."""
    return [int(match.group(1)) for match in map(re.compile(r"  seq=(\d+)$").search, lines)
            if match]


# Helpers


def run(argv, environ=None):
    """Run the CLI in-process: C{(exit code, stdout, stderr)}."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(argv), out, err, environ or {})
    return code, out.getvalue(), err.getvalue()


def publish(argv, environ=None, timeout=HTTP_TIMEOUT):
    """
    Parse a C{publish} command line and run it on the test's reactor, as the console script runs
    it under C{task.react}: fires with C{(exit code, stdout, stderr)}.
    """
    out, err = io.StringIO(), io.StringIO()
    leaf = cli.parse_command_line(list(argv), environ or {}).subOptions.subOptions
    d = cli.publish_command(reactor, leaf, out, err, timeout=timeout)
    return d.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))



def secret_dir(testcase):
    """A data dir holding a generated secret, as the server leaves it: C{(path, secret)}."""
    path = tmp_path(testcase)
    secret, _, _ = keys.load_or_create_secret(path)
    return path, secret


def secret_file(testcase, content=None):
    """A secret file of its own: C{(path, secret)}."""
    path = tmp_path(testcase, "secret")
    secret = content if content is not None else os.urandom(24).hex().encode()
    with open(path, "wb") as f:
        f.write(secret + b"\n")
    return path, secret


def verify(token, secret, now=None, **settings):
    """The hub's verdict on C{token}: its L{mission_control.policy.Principal}, or L{auth.Refusal} raised."""
    verifier = auth.TokenVerifier(secret, ["HS256"], **settings)
    return verifier.verify(token, time.time() if now is None else now)


def claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def free_port():
    """A loopback port nothing listens on (bound once by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(directory):
    """A CA and a server certificate for 127.0.0.1 signed by it: C{(ca.pem, key.pem, cert.pem)}."""
    now = datetime.datetime.now(timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1),
                 not_valid_after=now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mission-control test CA")])
    ca = (
        x509.CertificateBuilder(**valid)
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder(**valid)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = [os.path.join(directory, name) for name in ("ca.pem", "key.pem", "cert.pem")]
    contents = [
        ca.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    ]
    for path, content in zip(paths, contents):
        with open(path, "wb") as f:
            f.write(content)
    return tuple(paths)


def agent_status(agent_id, status, **fields):
    """A validated C{agent:status} payload, as the hub stores it."""
    return events.agent_status(dict(fields, status=status), reactor.seconds(), agent_id)


class UsageAssertions:
    """Checks shared by the tests of usage errors."""

    def assertUsageError(self, argv, *fragments, environ=None):
        """C{argv} is refused with exit code 2 and one line on stderr holding C{fragments}."""
        code, out, err = run(argv, environ)
        self.assertEqual((code, out), (2, ""), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.endswith("\n"))
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, err)
        return err


# The hub's frames


WELCOME = {"type": "welcome", "ts": "2026-11-27T16:04:05.123Z",
           "payload": {"connectionId": "c1", "user": {"id": "alice", "name": None,
                                                      "role": "viewer"},
                       "heartbeatInterval": 30, "lastSeq": 40, "epoch": "e"}}
SNAPSHOT = {"type": "snapshot", "ts": "2026-11-27T16:04:05.123Z",
            "payload": {"agents": [{}, {}], "sessions": [{}], "lastSeq": 40}}
STATUS = {"type": "agent:status", "ts": "2026-11-27T16:04:05.123Z", "seq": 12,
          "payload": {"agentId": "agent-atlas", "status": "busy", "message": "working on a task",
                      "timestamp": "2026-11-27T16:04:05.000Z"}}
ACTIVITY = {"type": "session:activity", "ts": "2026-11-27T16:04:06.000Z", "seq": 13,
            "payload": {"sessionId": "sess-00001", "activity": "tool_call",
                        "agentId": "agent-atlas", "summary": "called web.search",
                        "timestamp": "2026-11-27T16:04:06.000Z"}}
HEARTBEAT = {"type": "heartbeat", "ts": "2026-11-27T16:04:07.000Z",
             "payload": {"timestamp": "2026-11-27T16:04:07.000Z", "lastSeq": 13}}


AUTH_OK = {"type": "auth:ok", "ts": "2026-11-27T16:04:08.000Z",
           "payload": {"user": {"id": "alice", "name": None, "role": "viewer"},
                       "expiresAt": "2026-11-27T16:09:08.000Z"}}
EXPIRING = {"type": "auth:expiring", "ts": "2026-11-27T16:04:05.000Z",
            "payload": {"expiresAt": "2026-11-27T16:05:05.000Z", "secondsLeft": 60}}


def encode(frame):
    return json.dumps(frame).encode()


def event(seq, agent="agent-atlas"):
    """An agent:status frame with C{seq}."""
    return dict(STATUS, seq=seq, payload=dict(STATUS["payload"], agentId=agent))


def welcome(epoch="e", last_seq=40):
    """A welcome frame from a hub whose history is C{epoch}, at C{last_seq}."""
    return dict(WELCOME, payload=dict(WELCOME["payload"], epoch=epoch, lastSeq=last_seq))


def snapshot(last_seq=40):
    return dict(SNAPSHOT, payload=dict(SNAPSHOT["payload"], lastSeq=last_seq))


def heartbeat(last_seq):
    return dict(HEARTBEAT, payload=dict(HEARTBEAT["payload"], lastSeq=last_seq))


def resumed(first, last, epoch="e"):
    """The resumed frame after a replay of C{first} to C{last}."""
    return {"type": "resumed", "ts": "2026-11-27T16:04:08.000Z",
            "payload": {"recovered": True, "from": first, "to": last, "epoch": epoch}}


def history_lost(reason, last_seq, epoch="f"):
    """The resumed frame of a hub that cannot replay; a snapshot follows it."""
    return {"type": "resumed", "ts": "2026-11-27T16:04:08.000Z",
            "payload": {"recovered": False, "reason": reason, "lastSeq": last_seq,
                        "epoch": epoch}}

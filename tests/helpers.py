"""
Test support: a real server on a loopback port, Autobahn clients, raw HTTP.

Everything here talks over real sockets on 127.0.0.1; nothing is mocked.  Every helper registers
its own clean-up on the test case, and the server's clean-up waits for the hub to see every
connection gone before it stops listening, so the reactor is clean when a test ends.

It is also where helpers that several test modules share live (option parsing, hand-made tokens,
files, silent peers), so that test modules never import from one another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from mission_control import tokens
from mission_control.tap import Options, makeService

_scratch = tempfile.TemporaryDirectory(prefix="mc-test-")
_counter = itertools.count()


def parse_options(args=(), environ=None, data_dir=None) -> Options:
    """
    Parse tap options as twistd would, with an ephemeral port and C{data_dir} (by default a fresh
    temporary folder, removed at exit).
    """
    options = Options(environ=environ or {})
    argv = list(args)
    if data_dir is None:
        data_dir = _scratch.name + f"/data-{next(_counter)}"
    if "--data-dir" not in argv:
        argv = ["--data-dir", data_dir] + argv
    if "--listen" not in argv:
        argv = ["--listen", "tcp:0:interface=127.0.0.1"] + argv
    options.parseOptions(argv)
    return options


class OptionsMixin:
    """Parse options as twistd would, with an empty environment and a data dir of the test's own."""

    def data_dir(self) -> str:
        return os.path.abspath(self.mktemp())

    def parse(self, *args: str, environ: dict | None = None, data_dir: bool = True) -> Options:
        options = Options(environ=environ or {})
        argv = list(args)
        if data_dir and "--data-dir" not in argv and "MISSION_CONTROL_DATA_DIR" not in (
            environ or {}
        ):
            argv = ["--data-dir", self.data_dir()] + argv
        options.parseOptions(argv)
        return options

    def assertUsageError(self, args, *fragments, environ=None) -> str:
        """Parsing C{args} raises L{usage.UsageError}, one line that contains every fragment."""
        exc = self.assertRaises(usage.UsageError, self.parse, *args, environ=environ)
        message = str(exc)
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertNotIn("Traceback", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


def wait_until(predicate, timeout=5.0, interval=0.01):
    """A Deferred that fires when C{predicate()} is true, or fails after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll():
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {predicate!r}")
            yield task.deferLater(reactor, interval, lambda: None)

    return poll()


@dataclass
class RunningServer:
    service: object
    options: Options
    port: int
    scheme: str = "http"

    @property
    def hub(self):
        return self.service.hub

    @property
    def secret(self):
        return self.options["verifier"].key

    def token(self, sub="alice", role=None, ttl=3600.0, **claims) -> str:
        return tokens.mint_token(self.secret, sub, reactor.seconds(), ttl=ttl, role=role, **claims)

    def url(self, path="/ws", query="") -> str:
        ws = "wss" if self.scheme == "https" else "ws"
        return f"{ws}://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")


def start_server(testcase, args=(), environ=None, tls_context=None) -> RunningServer:
    """Start the whole service (as twistd would build it) on 127.0.0.1:0 and stop it afterwards."""
    options = parse_options(args, environ)
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    description, port = service.ports[0]
    scheme = "https" if description.startswith("ssl:") else "http"
    server = RunningServer(service, options, port.getHost().port, scheme)

    @defer.inlineCallbacks
    def stop():
        service.hub.close_all(1000, "test over")
        yield wait_until(lambda: service.hub.connection_count == 0)
        yield service.stopService()

    testcase.addCleanup(stop)
    return server


class RemoteServer:
    """Enough of L{tests.helpers.RunningServer} to connect to a hub in another process."""

    scheme = "http"

    def __init__(self, port, secret):
        self.port = port
        self.secret = secret

    def token(self, sub, ttl=600.0, **claims):
        return tokens.mint_token(self.secret, sub, reactor.seconds(), ttl=ttl, **claims)

    def url(self, path="/ws", query=""):
        return f"ws://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")


class RecordingClient(WebSocketClientProtocol):
    """An Autobahn client that queues every frame it receives, decoded."""

    def __init__(self):
        super().__init__()
        self.frames = defer.DeferredQueue()
        self.received = []
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.close_code = None

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        frame = json.loads(payload)
        self.received.append(frame)
        self.frames.put(frame)

    def onClose(self, wasClean, code, reason):
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {self.wasNotCleanReason}"))
        self.closed.callback((wasClean, code, reason))

    def send_json(self, value):
        self.sendMessage(json.dumps(value).encode())

    @defer.inlineCallbacks
    def next_of(self, *types):
        """The next frame whose type is one of C{types} (others are skipped)."""
        while True:
            frame = yield self.frames.get()
            if frame["type"] in types:
                return frame


def connect(testcase, server: RunningServer, token=None, query="", headers=None,
            in_header=True, tls_options=None, protocol=RecordingClient):
    """
    Open a WebSocket to C{server} with Autobahn's client; fires with the open client.  The token
    goes in the Authorization header (or the query when C{in_header} is false).
    """
    headers = dict(headers or {})
    if token is not None and in_header:
        headers["Authorization"] = f"Bearer {token}"
    if token is not None and not in_header:
        query = (query + "&" if query else "") + f"token={token}"
    factory = WebSocketClientFactory(server.url(query=query), headers=headers)
    factory.protocol = protocol
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=5)
    if tls_options is not None:
        from twisted.internet.endpoints import SSL4ClientEndpoint

        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", server.port, tls_options)
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)

    @defer.inlineCallbacks
    def go():
        client = yield endpoint.connect(factory)

        def close():
            if client.state == client.STATE_OPEN:
                client.sendClose(1000)
            return client.closed if client.opened.called else None

        testcase.addCleanup(close)
        yield client.opened
        return client

    return go()


class RawExchange(Protocol):
    """Writes one request, collects everything until the connection closes; C{done} fires with
    the bytes, and C{reason} says how the connection ended."""

    def __init__(self, request: bytes):
        self.request = request
        self.data = b""
        self.reason = None
        self.done = defer.Deferred()

    def connectionMade(self):
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(self.data)


class SilentPeer(Protocol):
    """Sends C{request} and then reads nothing and answers nothing (no pongs)."""

    def __init__(self, request):
        self.request = request
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def connectionLost(self, reason):
        self.lost.callback(None)


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""

    def json(self):
        return json.loads(self.body)


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2) if lines and lines[0] else ["", "0", ""]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawResponse(int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0,
                       parts[2] if len(parts) > 2 else "", headers, body, data)


def _dechunk(body: bytes) -> bytes:
    """The payload of a chunked body (as far as it arrived)."""
    out, rest = [], body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


@defer.inlineCallbacks
def raw_request(port: int, request: bytes, close_after=True):
    """Send C{request} bytes over a fresh TCP connection; fires with the L{RawResponse}."""
    if close_after and b"connection:" not in request.lower():
        request = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    proto = RawExchange(request)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    data = yield proto.done
    return parse_response(data)


def bearer(token) -> dict:
    """The Authorization header that carries C{token}."""
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    """C{data} in unpadded base64url, as JWTs encode their parts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge_hs256(claims: dict, key: bytes, header: dict | None = None) -> str:
    """
    An HS256 JWT signed by hand, as an attacker would, for keys PyJWT refuses to use as HMAC
    secrets (a PEM public key: the classic algorithm-confusion attack).  The header and claims
    are C{json.dumps} with its default separators.
    """
    header = header or {"alg": "HS256", "typ": "JWT"}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def sign_raw(payload: bytes, key: bytes) -> str:
    """An HS256 token around C{payload} exactly as given: JSON no encoder would write."""
    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(payload)
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def upgrade_request(path="/ws", headers=None, host="127.0.0.1") -> bytes:
    """A valid WebSocket upgrade request, with extra C{headers}."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_request(method, path, body=None, token=None, content_type="application/json",
                 headers=None) -> bytes:
    """An HTTP/1.1 request; C{body} is JSON-encoded unless it is bytes already."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def tmp_path(testcase, name="") -> str:
    path = testcase.mktemp()
    os.makedirs(path)
    return os.path.join(path, name) if name else path


def write_file(testcase, name: str, content: bytes, mode: int = 0o600) -> str:
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, mode)
    return path


class _HeadReader(Protocol):
    """Reads until the end of a response head, then hangs up."""

    def __init__(self, request: bytes):
        self.request = request
        self.data = b""
        self.head = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data += data
        if b"\r\n\r\n" in self.data and not self.head.called:
            self.head.callback(self.data)
            self.transport.abortConnection()

    def connectionLost(self, reason):
        if not self.head.called:
            self.head.callback(self.data)


@defer.inlineCallbacks
def raw_handshake(port: int, request: bytes):
    """Send C{request} and return the response head as soon as it is complete (101s included)."""
    proto = _HeadReader(request)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    data = yield proto.head
    return parse_response(data)


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess(ProcessProtocol):
    """
    A child process: its output so far, and C{ended}, which fires with its exit code (C{None}
    when a signal ended it: C{signal} says which).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()
        self.transport = None
        self.signal = None

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.signal = reason.value.signal
        self.ended.callback(self._result(reason))

    def _result(self, reason):
        return reason.value.exitCode

    @property
    def text(self) -> str:
        """What it wrote to stdout."""
        return self.out.decode("utf-8", "replace")

    @property
    def output(self) -> str:
        """What it wrote to stdout and stderr."""
        return (self.out + self.err).decode("utf-8", "replace")

    def describe(self) -> str:
        return (f"{self.name}: stdout {self.out.decode('utf-8', 'replace')!r}, "
                f"stderr {self.err.decode('utf-8', 'replace')!r}")


class TwistdProcess(ChildProcess):
    """
    A child C{twistd -n mission-control}: C{ended} fires with the reason it ended (a
    C{ProcessDone} or C{ProcessTerminated}); C{process} is the process transport (for
    C{signalProcess}).
    """

    process = None

    def _result(self, reason):
        return reason.value


def spawn_twistd(testcase, *args, cwd=None) -> TwistdProcess:
    """
    Start C{twistd -n --pidfile= --logfile=- mission-control ARGS} (the twistd next to this Python)
    as a child process, the checkout first on its path; it is killed when the test ends.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        raise SkipTest(f"no twistd next to {sys.executable}")
    if cwd is None:
        cwd = os.path.abspath(testcase.mktemp())
        os.makedirs(cwd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_CONTROL_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [PROJECT_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    proto = spawn_process(testcase, TwistdProcess(),
                          [twistd, "-n", "--pidfile=", "--logfile=-", "mission-control", *args],
                          env, cwd)
    proto.process = proto.transport
    return proto


def spawn_process(testcase, proto: ChildProcess, argv, env, cwd) -> ChildProcess:
    """Start C{argv} for C{proto}; it is killed at the end of the test if it still runs."""
    reactor.spawnProcess(proto, argv[0], argv, env=env, path=cwd)

    def kill():
        if not proto.ended.called:
            proto.transport.signalProcess("KILL")
            return proto.ended

    testcase.addCleanup(kill)
    return proto


def ws_frame(opcode: int, payload: bytes = b"", fin: bool = True,
             mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """
    One client-to-server WebSocket frame, masked as RFC 6455 requires: C{opcode} 0 continuation,
    1 text, 2 binary, 8 close, 9 ping, 10 pong.  Nothing is checked, so tests can send frames a
    well-behaved client library never would.
    """
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def parse_server_frames(data: bytes) -> tuple[list[tuple[int, bool, bytes]], bytes]:
    """
    Split unmasked server-to-client frames off the front of C{data}: a list of (opcode, fin,
    payload), and the bytes of an incomplete frame left over.
    """
    frames = []
    while len(data) >= 2:
        fin, opcode, length = bool(data[0] & 0x80), data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            if len(data) < 4:
                break
            length, offset = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            if len(data) < 10:
                break
            length, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + length:
            break
        frames.append((opcode, fin, data[offset:offset + length]))
        data = data[offset + length:]
    return frames, data


class RawWebSocket(Protocol):
    """
    A WebSocket client that speaks bytes: it sends C{request} (an upgrade), and once the 101 is
    in, C{opened} fires; after that L{send} writes whatever frames a test builds with L{ws_frame}.
    It never answers anything.  C{frames} collects what the server sent (opcode, fin, payload);
    C{close_code} is the code of the server's close frame; C{lost} fires when the connection ends.
    """

    def __init__(self, request: bytes):
        self.request = request
        self.head = b""
        self.status = None
        self.buffer = b""
        self.frames = []
        self.close_code = None
        self.opened = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        if self.status is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = parse_response(head + b"\r\n\r\n").status
            if self.status != 101:
                self.opened.errback(ConnectionError(f"handshake answered {self.status}"))
                return
            self.opened.callback(self)
        frames, self.buffer = parse_server_frames(self.buffer + data)
        for opcode, fin, payload in frames:
            self.frames.append((opcode, fin, payload))
            if opcode == 8 and self.close_code is None:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005

    def send(self, data: bytes):
        self.transport.write(data)

    def messages(self) -> list[dict]:
        """The server's text frames, decoded."""
        return [json.loads(payload) for opcode, _, payload in self.frames if opcode == 1]

    def connectionLost(self, reason):
        if not self.opened.called:
            self.opened.errback(ConnectionError("connection lost before the handshake ended"))
        self.lost.callback(None)


def raw_websocket(testcase, server: RunningServer, token: str | None, path="/ws"):
    """
    Open a L{RawWebSocket} to C{server} with C{token} in the Authorization header (none when
    C{token} is L{None}: put it in C{path}); fires with it once the 101 is in.  Its connection is
    aborted when the test ends, if it is still open.
    """
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    client = RawWebSocket(upgrade_request(path, headers))

    @defer.inlineCallbacks
    def go():
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), client)

        def close():
            if not client.lost.called:
                client.transport.abortConnection()
            return client.lost

        testcase.addCleanup(close)
        yield client.opened
        return client

    return go()


class LogCapture:
    """Every event of the global log publisher while a test runs; C{lines} formats them."""

    def __init__(self, testcase):
        from twisted.logger import globalLogPublisher

        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(event) for event in self.events]

    def matching(self, *fragments: str) -> list[str]:
        """The formatted lines that contain every one of C{fragments}."""
        return [line for line in self.lines() if all(f in line for f in fragments)]


def is_dashboard_link(event: dict) -> bool:
    """
    Whether a log event is the start-up log's C{dashboard:} link, the one line that holds a
    token (an admin token in the link's fragment, logged only with the development secret).
    """
    return str(event.get("log_format", "")).startswith("dashboard: ")


def fired(d):
    """
    What C{d} fired with: a Deferred that has fired already (a publish through a hub whose store
    answers at once), outside a test case's C{successResultOf}.  Its failure is raised.
    """
    results = []
    d.addBoth(results.append)
    if not results:
        raise AssertionError(f"{d!r} has not fired")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def fill_sessions(server: RunningServer, count: int, size: int = 8000) -> None:
    """Publish C{count} sessions (naming no agent) of about C{size} bytes each, through the hub."""
    from mission_control import events

    now = server.hub.clock.seconds()
    for i in range(count):
        payload = events.session_activity(
            {"activity": "tool_call", "detail": {"blob": "x" * size}}, now, f"s{i}")
        fired(server.hub.publish(events.SESSION_ACTIVITY, payload))


def node_version() -> tuple[str, tuple[int, int], str]:
    """
    The machine's C{node}: its path, its (major, minor) version and the version as it prints it;
    or skip the test, saying why it cannot run (.ci/run installs Node.js, so CI never skips).
    """
    found = shutil.which("node")
    if found is None:
        raise SkipTest("node is not installed (.ci/run installs it)")
    printed = subprocess.run([found, "--version"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", printed)
    if match is None:
        raise SkipTest(f"cannot tell the version of {found}: {printed!r}")
    return found, (int(match.group(1)), int(match.group(2))), printed


def public_pem(private) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of the public half of C{private}."""
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_keypair(algorithm: str):
    """A fresh private key for C{algorithm} (RS256, else ES256 on P-256) and its public PEM."""
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return private, public_pem(private)


_keys: dict = {}


def rsa_key():
    """An RSA private key, made once per process."""
    if "rsa" not in _keys:
        _keys["rsa"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _keys["rsa"]


def ec_key():
    """An EC P-256 private key, made once per process."""
    if "ec" not in _keys:
        _keys["ec"] = ec.generate_private_key(ec.SECP256R1())
    return _keys["ec"]


# Store payloads

#: A fixed "now" for store tests, and an envelope timestamp.
T0 = 1_800_000_000.0
TS = "2027-01-15T08:00:00.000Z"


def status(agent: str, state: str = "online", **extra: object) -> dict:
    """An C{agent:status} payload."""
    return {"agentId": agent, "status": state, "timestamp": TS, **extra}


def activity(session: str, word: str = "started", **extra: object) -> dict:
    """A C{session:activity} payload."""
    return {"sessionId": session, "activity": word, "timestamp": TS, **extra}


def alive(pid: int) -> bool:
    """Whether a process C{pid} exists (and is not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover (no /proc)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


# TLS clients

def client_tls(ca_pem: bytes):
    """Client TLS options that trust only C{ca_pem} and expect the name C{localhost}."""
    return optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(ca_pem))


@defer.inlineCallbacks
def tls_exchange(port: int, request: bytes, tls_options):
    """
    Send C{request} over a new TLS connection to 127.0.0.1:C{port}; fires with the bytes received
    and the reason the connection ended.
    """
    proto = RawExchange(request)
    yield connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port, tls_options), proto)
    data = yield proto.done
    return data, proto.reason

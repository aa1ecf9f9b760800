"""
The floor of benchmarks/fanout.py: what one raw ``send`` per delivered frame costs on this
machine's loopback, with nothing else around it.  It answers any WebSocket upgrade (no token
check), sends a ``welcome`` frame, and for every text frame it receives writes that same payload,
in one unmasked WebSocket frame, to every connection, one ``sendall`` each.  No JSON, no seq, no
buffering, no fairness: a server cannot deliver for less CPU in Python, whatever it does above.

    python benchmarks/peers/floor.py PORT SECRET_FILE [CERT KEY]

(SECRET_FILE is accepted for a command line like the other peers', and unused.)
"""

from __future__ import annotations

import base64
import hashlib
import selectors
import socket
import ssl
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.upgraded = False

    def frames(self):
        """Complete client frames in the buffer: (opcode, unmasked payload)."""
        buf = self.buffer
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < at + 4 + n:
                break
            mask = buf[at:at + 4] * (n // 4 + 1)
            data = buf[at + 4:at + 4 + n]
            payload = (int.from_bytes(data, "big") ^ int.from_bytes(mask[:n], "big")).to_bytes(
                n, "big")
            buf = buf[at + 4 + n:]
            yield opcode, payload
        self.buffer = buf


def main() -> None:
    port = int(sys.argv[1])
    context = None
    if len(sys.argv) > 4:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    peers: dict[socket.socket, Peer] = {}
    welcome = server_frame(b'{"type":"welcome","payload":{}}')
    print(f"listening on {port}", flush=True)

    def drop(peer: Peer) -> None:
        selector.unregister(peer.sock)
        peers.pop(peer.sock, None)
        peer.sock.close()

    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                sock, _ = listener.accept()
                if context is not None:
                    try:
                        sock = context.wrap_socket(sock, server_side=True)
                    except OSError:  # a probe that connected and left, say
                        sock.close()
                        continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peers[sock] = Peer(sock)
                selector.register(sock, selectors.EVENT_READ)
                continue
            peer = peers[key.fileobj]
            try:
                data = peer.sock.recv(65536)
                while context is not None and peer.sock.pending():
                    data += peer.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                drop(peer)
                continue
            peer.buffer += data
            if not peer.upgraded:
                head, sep, rest = peer.buffer.partition(b"\r\n\r\n")
                if not sep:
                    continue
                key_line = [line for line in head.split(b"\r\n")
                            if line.lower().startswith(b"sec-websocket-key:")]
                accept = base64.b64encode(
                    hashlib.sha1(key_line[0].split(b":", 1)[1].strip() + GUID).digest())
                peer.sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                                  + b"\r\n\r\n" + welcome)
                peer.upgraded, peer.buffer = True, rest
            for opcode, payload in list(peer.frames()):
                if opcode == 8:
                    drop(peer)
                    break
                if opcode == 1:
                    frame = server_frame(payload)
                    for other in list(peers.values()):
                        if other.upgraded:
                            try:
                                other.sock.sendall(frame)
                            except OSError:
                                drop(other)


if __name__ == "__main__":
    main()

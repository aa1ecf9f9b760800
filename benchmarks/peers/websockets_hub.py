"""
A peer of benchmarks/fanout.py: the least a Python hub on the ``websockets`` package does for the
same job.  The JWT (``Authorization: Bearer`` or ``?token=``) is checked with PyJWT during the
handshake; each connection then gets a ``welcome`` frame; each ``publish`` frame received is given
the next seq, encoded once, and broadcast to every connection (``websockets.broadcast``).  No
store, no channels, no limits: it shows what the asyncio stack costs per delivery.

    python benchmarks/peers/websockets_hub.py PORT SECRET_FILE [CERT KEY]
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import jwt
import websockets
from websockets.asyncio.server import serve

CLIENTS: set = set()


def main() -> None:
    port = int(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        secret = f.read().strip()
    context = None
    if len(sys.argv) > 4:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
    seq = 0

    def check(connection, request):
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        if token is None:
            token = (parse_qs(urlsplit(request.path).query).get("token") or [None])[0]
        try:
            connection.claims = jwt.decode(token or "", secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid token\n")
        return None

    async def handler(connection):
        nonlocal seq
        CLIENTS.add(connection)
        try:
            await connection.send(json.dumps(
                {"type": "welcome", "payload": {"user": {"id": connection.claims["sub"]}}}))
            async for message in connection:
                frame = json.loads(message)
                if frame.get("type") == "publish":
                    seq += 1
                    event = frame["event"]
                    websockets.broadcast(CLIENTS, json.dumps(
                        {"type": event["type"], "payload": event["payload"], "seq": seq}))
        finally:
            CLIENTS.discard(connection)

    async def run() -> None:
        async with serve(handler, "127.0.0.1", port, process_request=check, ssl=context,
                         compression=None, max_queue=None, ping_interval=None):
            print(f"listening on {port}", flush=True)
            await asyncio.Future()

    asyncio.run(run())


if __name__ == "__main__":
    main()

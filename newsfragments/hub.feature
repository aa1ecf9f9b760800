The first mission-control hub: `twistd mission-control` serves a JWT-authenticated WebSocket at
`/ws` (tokens checked before the upgrade; pinned algorithms; HS256 secrets or RS/ES/EdDSA public
keys; issuer, audience and leeway) that broadcasts `agent:status` and `session:activity` events with
a welcome, a snapshot of the latest state and heartbeats, and a JSON HTTP API on the same listener
to publish and read them. TLS through `ssl:` endpoint strings, an Origin allow-list, message-size,
handshake-size, handshake-time and connection limits, and `--demo`, a simulated fleet.

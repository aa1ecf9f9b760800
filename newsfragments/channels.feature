Channels: a WebSocket client chooses what it receives (`agents`, `agents:<id>`, `sessions`,
`sessions:<id>`, `presence`) with `channels=` at connect or `subscribe`/`unsubscribe` frames, within
what its role and an optional `channels` token claim allow, and its snapshot and resume follow that
choice. Clients whose role may publish can send events over their WebSocket with `publish` frames,
`presence:join`/`presence:leave` and `GET /api/presence` show who is connected, and the hub marks
an agent `offline` by itself when its last connection closes or stops answering pings.

`DELETE /api/connections/{connectionId}` lets an admin close one WebSocket: the client sees close
code 4009 (`closed by an administrator`) and the hub logs who closed what. The browser client of
websocket-api.md and `mission-control watch` do not reconnect after 4009 on their own.

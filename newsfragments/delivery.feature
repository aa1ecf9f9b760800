Delivery you can trust: events and latest state live in SQLite (`--store sqlite`, the default;
`--store memory` for tests) and survive `kill -9`; every event has a gap-free `seq` and the store
an `epoch`; a client reconnecting with `since` and `epoch` (or a `client` name whose acks are kept)
gets what it missed before any live event, then a `resumed` frame, or is told to redraw.
`GET /api/events` pages the history. Tokens expire with close 4001 after an `auth:expiring`
warning and can be renewed with an `auth` frame. Slow clients are closed with 4008 past
`--max-outbound-bytes`, chatty ones with 4029, and POSTs honour `Idempotency-Key`. SIGTERM closes
every client with 1001 and exits within seconds.

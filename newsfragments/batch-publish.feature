`POST /api/events` publishes a batch of up to 1,000 events in one request and one database
commit: each event is checked as its own POST would be, one bad event refuses the whole batch
(naming its place in the list), each event counts against the publish rate, and an
`Idempotency-Key` makes retrying the whole batch safe.

The groundwork for running several hub processes as one hub on a shared Redis (`redis://` or
`rediss://` URLs with a key prefix): one gap-free seq, history, latest state, idempotency keys
and session owners kept in Redis by atomic scripts, and every append announced to every node.

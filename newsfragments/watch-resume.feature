`mission-control watch` no longer loses events when it reconnects: it resumes from the last seq it
printed (a `resumed: replayed seq A-B` line), or says `history lost (REASON)` and shows a fresh
snapshot when the hub cannot replay. `--client NAME` acknowledges what was printed, so a later
`watch --client NAME` starts where the last one stopped (at-least-once delivery across restarts of
`watch`), and tokens that `watch` mints are renewed over the connection before they expire.

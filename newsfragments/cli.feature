The `mission-control` command: `token` mints a token with the hub's secret, `publish status|activity`
posts events through the HTTP API, and `watch` prints the live stream (or raw JSON with `--json`),
reconnecting with backoff and stopping on a 401/403. Next to a local server, `publish` and `watch`
need no token: they mint a five-minute one from the development secret in the data dir.

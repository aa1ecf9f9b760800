`--max-http-connections` (default 1000) sets the cap on HTTP connections open at once (503 past
it; WebSockets count against `--max-connections`). At start the hub raises its file limit to what
the two caps may use, as far as the system allows, and says so plainly when it cannot. The kernel's
unsent bytes are bounded for HTTP responses as they were for WebSockets, and an accepted WebSocket
handshake leaves one audit line instead of two.

`GET /api/events` takes a `channel` parameter (`agents`, `agents:<agentId>`, `sessions`,
`sessions:<sessionId>`) and returns only that channel's events, so a dashboard draws one session's
timeline without downloading the whole history; a page looks at no more than 10,000 events, and
`next` and `more` say where to go on.

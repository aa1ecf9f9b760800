WebSocket `publish` frames that arrive together are stored in one database commit, each still
answered `published` only once it is committed: one connection with many publishes in flight now
publishes about twice as many events a second.

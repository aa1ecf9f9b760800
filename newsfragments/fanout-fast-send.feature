After a quiet window, an event reaches each connection that is open, not paused and has nothing
buffered as one `send` of its framed bytes straight from the fan-out loop, one test per
connection: the hub's Python per delivery at low rates is smaller.

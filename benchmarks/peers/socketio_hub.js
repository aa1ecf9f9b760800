// A peer of benchmarks/fanout.py: the same job on Socket.IO 4.8, WebSocket transport only (no
// long-polling).  A middleware verifies the JWT given in the handshake's auth ({token}) with
// jsonwebtoken; each socket gets a "welcome" event; each "publish" event is given the next seq
// and emitted to every socket as "event" (Socket.IO encodes a broadcast once).
//
//   node benchmarks/peers/socketio_hub.js PORT SECRET_FILE [CERT KEY]
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");
const path = require("path");
const { createRequire } = require("module");

const load = createRequire(path.join(__dirname, "..", "node", "package.json"));
const { Server } = load("socket.io");
const jwt = load("jsonwebtoken");

const [port, secretFile, cert, key] = process.argv.slice(2);
const secret = fs.readFileSync(secretFile).toString().trim();
const server = cert
  ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) })
  : http.createServer();

const io = new Server(server, {
  transports: ["websocket"], serveClient: false, perMessageDeflate: false,
  pingInterval: 25000, pingTimeout: 20000, maxHttpBufferSize: 1e6,
});

io.use((socket, next) => {
  try {
    socket.data.claims = jwt.verify(socket.handshake.auth.token || "", secret, {
      algorithms: ["HS256"],
    });
    next();
  } catch (e) {
    next(new Error("invalid token"));
  }
});

let seq = 0;
io.on("connection", (socket) => {
  socket.emit("welcome", { user: { id: socket.data.claims.sub } });
  socket.on("publish", (frame) => {
    seq += 1;
    io.emit("event", { type: frame.event.type, payload: frame.event.payload, seq });
  });
});

server.listen(Number(port), "127.0.0.1", () => console.log(`listening on ${port}`));

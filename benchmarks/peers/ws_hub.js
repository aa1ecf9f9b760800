// A peer of benchmarks/fanout.py: the least a Node hub on "ws" and "jsonwebtoken" does for the
// same job.  The JWT (Authorization: Bearer, or ?token=) is verified during the handshake; each
// connection gets a "welcome" frame; each "publish" frame received is given the next seq, encoded
// once, and sent to every connection.  No store, no channels, no limits.
//
//   node benchmarks/peers/ws_hub.js PORT SECRET_FILE [CERT KEY]
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");
const path = require("path");
const { createRequire } = require("module");

const load = createRequire(path.join(__dirname, "..", "node", "package.json"));
const { WebSocketServer } = load("ws");
const jwt = load("jsonwebtoken");

const [port, secretFile, cert, key] = process.argv.slice(2);
const secret = fs.readFileSync(secretFile).toString().trim();
const server = cert
  ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) })
  : http.createServer();

function tokenOf(req) {
  const header = req.headers.authorization || "";
  if (header.startsWith("Bearer ")) return header.slice(7);
  return new URL(req.url, "http://x").searchParams.get("token") || "";
}

const wss = new WebSocketServer({
  server,
  perMessageDeflate: false,
  verifyClient: (info, done) => {
    try {
      info.req.claims = jwt.verify(tokenOf(info.req), secret, { algorithms: ["HS256"] });
      done(true);
    } catch (e) {
      done(false, 401, "invalid token");
    }
  },
});

let seq = 0;
wss.on("connection", (ws, req) => {
  ws.send(JSON.stringify({ type: "welcome", payload: { user: { id: req.claims.sub } } }));
  ws.on("message", (data) => {
    const frame = JSON.parse(data);
    if (frame.type !== "publish") return;
    seq += 1;
    const out = JSON.stringify({ type: frame.event.type, payload: frame.event.payload, seq });
    for (const client of wss.clients) client.send(out);
  });
});

server.listen(Number(port), "127.0.0.1", () => console.log(`listening on ${port}`));

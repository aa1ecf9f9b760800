// The load generator of benchmarks/fanout.py: subscribers that count, check and time every frame,
// and the publishers.  Written in Node so that a frame costs the load side little: the figures
// are about the server, and a Python client would need about as much CPU per frame as the hub.
//
//   node load.js subscribe CONFIG   K subscribers; JSON lines on stdout, commands on stdin
//   node load.js publish CONFIG     one paced publisher connection, R events/s for D seconds
//   node load.js flood CONFIG       one WebSocket publisher, as many as are answered, a window
//                                   of them in flight, for D seconds
//   node load.js http CONFIG        POST /api/agents/{id}/status (or /api/events batches) on
//                                   keep-alive connections, for D seconds
//
// CONFIG is a JSON file written by fanout.py (see there for the fields).  Every event the
// publishers send carries, in payload.metadata, its index "i" and "t", the send time in
// microseconds of CLOCK_MONOTONIC, which every process on the machine shares: a subscriber
// subtracts it from its own reading of the same clock when the frame arrives.
//
// Without node_modules (npm ci failed), the "ws" protocol falls back to Node's built-in
// WebSocket (started with --experimental-websocket), which sends the token as ?token=.
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");
const readline = require("readline");

const mode = process.argv[2];
const config = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));

function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

let WS = null;
try {
  WS = require("ws");
} catch (e) {
  WS = null;
}

// A connection with the same four callbacks whatever carries it: ws, the built-in WebSocket or
// Socket.IO.  onFrame gets the decoded frame (an object).
function connect(url, token, handlers) {
  const insecure = { rejectUnauthorized: false };
  if (config.protocol === "socketio") {
    const { io } = require("socket.io-client");
    const socket = io(url, {
      transports: ["websocket"], auth: { token }, reconnection: false, forceNew: true,
      timeout: 60000, ...insecure,
    });
    socket.on("connect", () => handlers.onOpen());
    socket.on("welcome", (p) => handlers.onFrame({ type: "welcome", payload: p }));
    socket.on("event", (f) => handlers.onFrame(f));
    socket.on("published", (f) => handlers.onFrame(f));
    socket.on("connect_error", (e) => handlers.onError(String(e && e.message)));
    socket.on("disconnect", (reason) => handlers.onClose(reason));
    return { send: (f) => socket.emit("publish", f), close: () => socket.close() };
  }
  if (WS) {
    const ws = new WS(url, {
      headers: { Authorization: `Bearer ${token}` }, perMessageDeflate: false,
      handshakeTimeout: 60000, ...insecure,
    });
    ws.on("open", () => handlers.onOpen());
    ws.on("message", (data) => {
      // Once ready, a subscriber reads only the metadata of each frame (see stamp): decoding
      // every frame of a fan-out would cost the load process more than the server its send.
      if (handlers.onStamp && handlers.live()) {
        const stamp = stampOf(data);
        if (stamp !== null) {
          handlers.onStamp(stamp.i, stamp.t);
          return;
        }
      }
      handlers.onFrame(JSON.parse(data));
    });
    ws.on("error", (e) => handlers.onError(String(e && e.message)));
    ws.on("close", (code) => handlers.onClose(code));
    return { send: (f) => ws.send(JSON.stringify(f)), close: () => ws.close() };
  }
  if (insecure && url.startsWith("wss:")) process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
  const ws = new WebSocket(url + (url.includes("?") ? "&" : "?") + "token=" + token);
  ws.onopen = () => handlers.onOpen();
  ws.onmessage = (m) => handlers.onFrame(JSON.parse(m.data));
  ws.onerror = (e) => handlers.onError(String(e && e.message));
  ws.onclose = (e) => handlers.onClose(e.code);
  return { send: (f) => ws.send(JSON.stringify(f)), close: () => ws.close() };
}

// The event a benchmark publishes: an agent:status, or the raw publish frame a floor echoes.
function eventPayload(frame) {
  if (frame.payload && frame.payload.metadata) return frame.payload;
  if (frame.event && frame.event.payload) return frame.event.payload;
  return null;
}

// The index and send time in a frame's "metadata":{"t":T,"i":I} (in either order), read from
// the bytes without decoding the frame: null when the frame has none.
const METADATA = Buffer.from('"metadata":{');
function numberAt(data, key, from, end) {
  let at = data.indexOf(key, from);
  if (at < 0 || at >= end) return null;
  at += key.length;
  let n = 0;
  let digits = 0;
  for (; at < end; at++) {
    const c = data[at];
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
    digits += 1;
  }
  return digits ? n : null;
}
const KEY_I = Buffer.from('"i":');
const KEY_T = Buffer.from('"t":');
function stampOf(data) {
  if (!Buffer.isBuffer(data)) return null;
  const start = data.indexOf(METADATA);
  if (start < 0) return null;
  const end = data.indexOf(125, start); // the metadata object's "}"
  if (end < 0) return null;
  const i = numberAt(data, KEY_I, start, end);
  const t = numberAt(data, KEY_T, start, end);
  return i === null || t === null ? null : { i, t };
}

// Latencies in a histogram of 1% buckets: a few kilobytes whatever the run's length, and
// histograms of several load processes add up.
const BUCKET = Math.log(1.01);
function bucketOf(us) {
  return us <= 1 ? 0 : Math.floor(Math.log(us) / BUCKET);
}

function subscribe() {
  const tokens = config.tokens;
  const conns = [];
  const started = nowUs();
  let ready = 0;
  let failed = 0;
  let lastReadyAt = started;
  let lastWelcomeAt = started;
  const errors = {};
  let from = 0;
  let to = -1;
  let hist = new Map();
  let maxLatency = 0;
  let frames = 0;

  function noteError(text) {
    errors[text] = (errors[text] || 0) + 1;
  }

  function maybeReady() {
    if (ready + failed === tokens.length) {
      emit({
        type: "ready", opened: ready, failed, errors,
        seconds: (lastReadyAt - started) / 1e6, welcomeSeconds: (lastWelcomeAt - started) / 1e6,
      });
    }
  }

  tokens.forEach((token, n) => {
    const c = { count: 0, last: null, disorder: 0, ready: false, closed: false };
    conns.push(c);
    c.conn = connect(config.url, token, {
      onOpen() {},
      onFrame(frame) {
        if (!c.ready) {
          if (frame.type === "welcome") lastWelcomeAt = nowUs();
          if (frame.type === config.ready) {
            c.ready = true;
            ready += 1;
            lastReadyAt = nowUs();
            maybeReady();
          }
          return;
        }
        const payload = eventPayload(frame);
        if (payload === null) return;
        count(payload.metadata.i, payload.metadata.t);
      },
      // Once ready, the ws client reads only the metadata of each frame (stampOf).
      live: () => c.ready,
      onStamp: (i, t) => count(i, t),
      onError(text) {
        noteError(text);
      },
      onClose(code) {
        c.closed = true;
        if (!c.ready) {
          failed += 1;
          noteError(`closed before ${config.ready}: ${code}`);
          maybeReady();
        }
      },
    });

    function count(i, t) {
      if (i < from || i >= to) return;
      const latency = nowUs() - t;
      frames += 1;
      if (c.last === null ? i !== from : i !== c.last + 1) c.disorder += 1;
      if (c.last === null || i > c.last) c.last = i;
      c.count += 1;
      const b = bucketOf(latency);
      hist.set(b, (hist.get(b) || 0) + 1);
      if (latency > maxLatency) maxLatency = latency;
    }
  });

  function report() {
    let complete = 0;
    let disorder = 0;
    let closed = 0;
    for (const c of conns) {
      const expected = to - from;
      if (c.count === expected && c.disorder === 0) complete += 1;
      disorder += c.disorder;
      if (c.closed) closed += 1;
    }
    emit({
      type: "report", connections: conns.length, complete, frames, disorder, closed,
      maxLatencyUs: maxLatency, histogram: Array.from(hist.entries()), bucket: 1.01, errors,
    });
  }

  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    const cmd = JSON.parse(line);
    if (cmd.cmd === "expect") {
      // Count the events [from, to) from now on; earlier counts are dropped.
      from = cmd.from;
      to = cmd.to;
      hist = new Map();
      maxLatency = 0;
      frames = 0;
      for (const c of conns) {
        c.count = 0;
        c.last = null;
        c.disorder = 0;
      }
      emit({ type: "expecting" });
    } else if (cmd.cmd === "drain") {
      // Report once every connection has its events, or nothing arrived for `quiet` seconds.
      const want = (to - from) * ready;
      let seen = frames;
      let quietSince = nowUs();
      const timer = setInterval(() => {
        if (frames !== seen) {
          seen = frames;
          quietSince = nowUs();
        }
        if (frames >= want || nowUs() - quietSince > cmd.quiet * 1e6) {
          clearInterval(timer);
          report();
        }
      }, 5);
    } else if (cmd.cmd === "close") {
      for (const c of conns) c.conn.close();
      setTimeout(() => process.exit(0), 200);
    }
  });
  rl.on("close", () => process.exit(0));
}

function publishFrame(i) {
  const t = nowUs();
  const payload = {
    agentId: `bench-${i % 4}`, status: "busy", message: `benchmark event ${i}`,
    metadata: { t, i },
  };
  return { type: "publish", id: `p${i}`, event: { type: "agent:status", payload } };
}

function publisher(onReady, onAck, onOwn) {
  const conn = connect(config.url, config.token, {
    onOpen() {},
    onFrame(frame) {
      if (frame.type === config.ready) onReady();
      else if (frame.type === "published" || frame.type === "error") onAck(frame);
      else if (onOwn) {
        const payload = eventPayload(frame);
        if (payload !== null) onOwn(payload.metadata.i);
      }
    },
    onError(text) {
      emit({ type: "error", error: text });
    },
    onClose(code) {
      emit({ type: "closed", code });
    },
  });
  return conn;
}

function publish() {
  // Paced: at each 1 ms tick, send what the rate owes since the start.  Every server sends the
  // publisher its own events too: it stays connected until its last event came back (and, with
  // acks, every publish was answered), since a server may drop what a closed connection sent.
  let sent = 0;
  let ownLast = false;
  let acked = 0;
  let refused = 0;
  let started = 0;
  const total = Math.round(config.rate * config.seconds);
  const first = config.from;
  let conn = null;
  let finished = false;
  function finish() {
    if (finished) return;
    finished = true;
    emit({ type: "published", sent, acked, refused, seconds: (nowUs() - started) / 1e6 });
    conn.close();
    setTimeout(() => process.exit(0), 200);
  }
  conn = publisher(() => {
    started = nowUs();
    const timer = setInterval(() => {
      const owed = Math.min(total, Math.floor(((nowUs() - started) / 1e6) * config.rate));
      while (sent < owed) {
        conn.send(publishFrame(first + sent));
        sent += 1;
      }
      if (sent >= total) {
        clearInterval(timer);
        emit({ type: "sent", sent, seconds: (nowUs() - started) / 1e6 });
        setTimeout(finish, 60000);
        done();
      }
    }, 1);
  }, (frame) => {
    if (frame.type === "published") acked += 1;
    else refused += 1;
    done();
  }, (i) => {
    if (i === first + total - 1) ownLast = true;
    done();
  });
  function done() {
    if (sent >= total && ownLast && (!config.acks || acked + refused >= total)) finish();
  }
}

function flood() {
  // As many publishes as are answered: a window of them in flight, for config.seconds.
  let sent = 0;
  let acked = 0;
  let refused = 0;
  let started = 0;
  let stopAt = 0;
  let counted = 0;
  const errors = {};
  const conn = publisher(() => {
    started = nowUs();
    stopAt = started + config.seconds * 1e6;
    for (let k = 0; k < config.window; k++) conn.send(publishFrame(1e9 + sent++));
  }, (frame) => {
    const t = nowUs();
    if (frame.type === "published") acked += 1;
    else {
      refused += 1;
      const code = frame.payload && frame.payload.code;
      errors[code] = (errors[code] || 0) + 1;
    }
    if (t < stopAt) {
      counted = acked;
      conn.send(publishFrame(1e9 + sent++));
    } else if (acked + refused === sent) {
      emit({ type: "flooded", acked: counted, refused, seconds: config.seconds, errors });
      conn.close();
      setTimeout(() => process.exit(0), 200);
    }
  });
}

function httpLoad() {
  // config.batch: POST /api/events with that many events per request; else one per request.
  const url = new URL(config.url);
  const lib = url.protocol === "https:" ? https : http;
  const agent = new lib.Agent({ keepAlive: true, maxSockets: config.connections });
  const started = nowUs();
  const stopAt = started + config.seconds * 1e6;
  let accepted = 0;
  const statuses = {};
  let running = 0;
  let n = 0;
  function body() {
    const payload = { status: "busy", message: "benchmark", metadata: { t: nowUs(), i: 2e9 + n } };
    n += 1;
    return payload;
  }
  function one() {
    let path;
    let data;
    let events = 1;
    if (config.batch) {
      events = config.batch;
      const list = [];
      for (let k = 0; k < events; k++) {
        list.push({ type: "agent:status", payload: { agentId: `bench-${n % 4}`, ...body() } });
      }
      path = "/api/events";
      data = JSON.stringify({ events: list });
    } else {
      path = `/api/agents/bench-${n % 4}/status`;
      data = JSON.stringify(body());
    }
    const req = lib.request({
      host: url.hostname, port: url.port, path, method: "POST", agent, rejectUnauthorized: false,
      headers: {
        Authorization: `Bearer ${config.token}`, "Content-Type": "application/json",
        "Content-Length": Buffer.byteLength(data),
      },
    }, (res) => {
      res.resume();
      res.on("end", () => {
        statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
        if (res.statusCode === 200 && nowUs() < stopAt) accepted += events;
        next();
      });
    });
    req.on("error", (e) => {
      statuses[String(e.message)] = (statuses[String(e.message)] || 0) + 1;
      next();
    });
    req.end(data);
  }
  function next() {
    if (nowUs() < stopAt) one();
    else if (--running === 0) {
      emit({ type: "posted", accepted, seconds: config.seconds, statuses });
      agent.destroy();
      process.exit(0);
    }
  }
  for (let k = 0; k < config.connections; k++) {
    running += 1;
    one();
  }
}

({ subscribe, publish, flood, http: httpLoad })[mode]();

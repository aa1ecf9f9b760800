// mission-control-client.js: a dependency-free browser client for the mission-control hub.
// The hub serves this very file at /assets/client.js: its own dashboard connects with it.

const BASE_DELAY_MS = 500; // the first retry waits up to 0.5 s, then up to 1 s, 2 s, ...
const MAX_DELAY_MS = 30_000; // ... never more than 30 s
const STABLE_MS = 10_000; // a connection that lasted this long resets the backoff
const WELCOME_TIMEOUT_MS = 15_000; // from new WebSocket() to the welcome frame
const ACK_EVERY_MS = 1000; // acks are batched: at most one a second
const NO_RECONNECT = new Set([1009, 4009]); // retrying cannot help; 4009: an administrator closed it

// Gets a short-lived hub token from YOUR dashboard backend (not from the hub).
export async function fetchToken(tokenUrl = "/api/mc-token") {
  const res = await fetch(tokenUrl, { credentials: "same-origin", cache: "no-store" });
  if (res.status === 401 || res.status === 403) {
    throw Object.assign(new Error("not signed in to the dashboard"), { fatal: true });
  }
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
  return (await res.json()).token;
}

export function connectMissionControl({
  url, // "wss://mc.example.com/ws"
  channels = [], // e.g. ["agents:agent-7", "sessions"]; empty: the hub's default (agents, sessions)
  getToken = () => fetchToken(), // called before every connect, and when the token is expiring
  onChange = () => {}, // (state) after a snapshot and after every event
  onEvent = () => {}, // (frame) every agent:status and session:activity frame applied
  onStatus = () => {}, // (status, detail): "connecting" | "open" | "retrying" | "stopped"
  onFrame = () => {}, // (frame) every frame, after the client has handled it
}) {
  // epoch + lastSeq: the position in the hub's history that state reflects (epoch null: none).
  const state = { user: null, agents: new Map(), sessions: new Map(), lastSeq: 0, epoch: null };
  let ws = null;
  let hubEpoch = null; // the epoch in this connection's welcome
  let stopped = false;
  let attempt = 0;
  let openedAt = 0;
  let silenceMs = 0;
  let acked = 0;
  let retryTimer;
  let watchdog;
  let ackTimer;

  // Any frame proves the stream is alive; silence for silenceMs means it is not.
  function arm() {
    clearTimeout(watchdog);
    if (silenceMs > 0) watchdog = setTimeout(() => drop("no frame from the hub in time"), silenceMs);
  }

  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  }

  async function connect() {
    onStatus("connecting");
    let token;
    try {
      token = await getToken();
    } catch (err) {
      if (stopped) return;
      if (err.fatal) stop(err);
      else retry(err);
      return;
    }
    if (stopped) return;
    let query = `token=${encodeURIComponent(token)}`;
    if (channels.length) query += `&channels=${channels.map(encodeURIComponent).join(",")}`;
    // Resume: the hub replays what we missed, or says we must redraw.
    if (state.epoch) query += `&since=${state.lastSeq}&epoch=${encodeURIComponent(state.epoch)}`;
    const sock = new WebSocket(`${url}?${query}`);
    ws = sock;
    silenceMs = WELCOME_TIMEOUT_MS;
    arm();
    sock.onmessage = (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return;
      }
      handle(frame);
    };
    sock.onclose = (ev) => {
      ws = null;
      clearTimeout(watchdog);
      clearInterval(ackTimer);
      if (NO_RECONNECT.has(ev.code)) {
        stop(Object.assign(new Error(`closed by the hub with ${ev.code}`), { code: ev.code }));
      }
      else retry(ev); // 1001, 4001, 4003, 4008, 4029, 1006: a fresh token, then resume
    };
  }

  function apply(frame) {
    if (frame.seq <= state.lastSeq) return; // already applied: in the snapshot, or seen before
    state.lastSeq = frame.seq;
    const p = frame.payload;
    // A Map keeps the order of first insertion: delete first, so the updated one comes last.
    const [map, key] =
      frame.type === "agent:status" ? [state.agents, p.agentId] : [state.sessions, p.sessionId];
    map.delete(key);
    map.set(key, p);
    onEvent(frame);
    onChange(state);
  }

  function handle(frame) {
    const p = frame.payload;
    switch (frame.type) {
      case "welcome":
        state.user = p.user;
        hubEpoch = p.epoch;
        silenceMs = 2000 * p.heartbeatInterval; // 0: the hub sends no heartbeats
        openedAt = Date.now();
        acked = 0;
        clearInterval(ackTimer);
        ackTimer = setInterval(ack, ACK_EVERY_MS);
        onStatus("open", p);
        break;
      case "snapshot": // a fresh start, or the redraw after resumed {recovered: false}
        state.agents = new Map(p.agents.map((a) => [a.agentId, a]));
        state.sessions = new Map(p.sessions.map((s) => [s.sessionId, s]));
        state.lastSeq = p.lastSeq;
        state.epoch = hubEpoch;
        onChange(state);
        break;
      case "agent:status":
      case "session:activity":
        apply(frame);
        break;
      case "resumed": // recovered: the replay is complete; otherwise a snapshot follows
        if (p.recovered) {
          state.epoch = p.epoch;
          // Up to `to`, we have every event of our channels (with a narrow subscription, the
          // seqs of the others were skipped): the next resume can start there.
          state.lastSeq = Math.max(state.lastSeq, p.to);
        }
        break;
      case "auth:expiring": // swap in a fresh token before the hub closes with 4001
        getToken().then((token) => send({ type: "auth", token }), () => {});
        break;
      case "error":
        console.warn(`mission-control: ${p.code}: ${p.message}`);
        break;
      // heartbeat, pong, ack, auth:ok: arriving was their whole job
    }
    onFrame(frame);
    arm();
  }

  // Tell the hub how far we got (it shows in GET /api/connections); batched, not per event.
  function ack() {
    if (state.epoch === hubEpoch && state.lastSeq > acked) {
      acked = state.lastSeq;
      send({ type: "ack", seq: acked });
    }
  }

  // The stream went silent: do not wait for a close handshake that may never come.
  function drop(reason) {
    if (!ws) return;
    ws.onclose = ws.onmessage = null;
    ws.close(4000, "stream timed out");
    ws = null;
    clearInterval(ackTimer);
    retry(new Error(reason));
  }

  function retry(detail) {
    if (stopped) return;
    if (openedAt && Date.now() - openedAt >= STABLE_MS) attempt = 0;
    openedAt = 0;
    // Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2^attempt)).
    const delay = Math.random() * Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** attempt);
    attempt = Math.min(attempt + 1, 16);
    onStatus("retrying", { delay, detail });
    retryTimer = setTimeout(connect, delay);
  }

  function stop(detail) {
    if (stopped) return;
    stopped = true;
    clearTimeout(retryTimer);
    clearTimeout(watchdog);
    clearInterval(ackTimer);
    if (ws) {
      ws.onclose = ws.onmessage = null;
      ws.close(1000);
      ws = null;
    }
    onStatus("stopped", detail);
  }

  connect();
  return { state, send, close: () => stop() };
}

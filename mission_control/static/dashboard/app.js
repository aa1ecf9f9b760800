// app.js: the dashboard's entry point. It signs in, connects with the same browser client the
// docs publish (client.js), and batches every redraw into one animation frame; the views (board,
// feed, timeline, analytics) only draw what it hands them.

import { connectMissionControl } from "./client.js";
import { Board, renderHealth } from "./board.js";
import { Feed } from "./feed.js";
import { Timeline } from "./timeline.js";
import { Analytics, RateCounter } from "./analytics.js";
import { formatDuration, formatTime, hubClock, prefs, readClaims } from "./util.js";

const TOKEN_KEY = "mission-control.token";
const EXPIRY_WARNING_MS = 5 * 60_000; // say so this long before the token ends
const BACKFILL = 300; // recent activity read once, so the feed does not start empty

const $ = (id) => document.getElementById(id);

const page = {
  token: null,
  claims: null,
  user: null,
  mc: null, // the client
  refused: null, // why the hub will not take this token: set, the client stops
  attemptFailed: false, // the last attempt ended before its welcome
  welcomed: false,
  everLive: false,
  conn: "connecting",
  retryAt: 0,
  heartbeatInterval: 0,
  heartbeatAt: 0,
  hubLastSeq: 0,
  backfilled: false,
  frame: false,
  errorsToAnnounce: [],
};

const rate = new RateCounter();
const board = new Board({ onOpenAgentFeed: (id) => feed.filterAgent(id) });
const timeline = new Timeline({ api });
const feed = new Feed({ onOpenSession: (id) => timeline.open(id) });
let analytics = null;

// --- the hub's HTTP API, with this page's token -------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET" } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method, cache: "no-store", credentials: "omit",
      headers: { Authorization: `Bearer ${page.token}` },
    });
  } catch {
    throw new ApiError(0, "the hub cannot be reached");
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: the status says enough */
  }
  if (!res.ok) throw new ApiError(res.status, body?.error?.message || `the hub answered ${res.status}`);
  return body;
}

// Asks the hub whether it takes the token: a browser cannot see why a WebSocket handshake was
// refused (it reports 1006 for a refusal and for a hub that is down alike).
async function checkToken() {
  try {
    return { user: (await api("/api/me")).user };
  } catch (err) {
    if (err.status === 401) return { refused: `The hub refused this token: ${err.message}.` };
    return { unreachable: true };
  }
}

function fatal(message) {
  return Object.assign(new Error(message), { fatal: true });
}

function tokenExpired() {
  const exp = Number(page.claims?.exp);
  return Number.isFinite(exp) && exp * 1000 <= (hubClock.known ? hubClock.now() : Date.now());
}

// The client calls this before every attempt (and on auth:expiring). The token is the one the
// user gave; a refused or expired one stops the client, which then shows the sign-in form.
async function getToken() {
  // Asked on auth:expiring, while connected: the hub already holds this token, and sending it
  // back would only have it warn again at once. A fresh one comes from the user, through the
  // expiry banner, which sends it itself.
  if (page.welcomed) throw new Error("no fresh token: the expiry banner asks the user for one");
  if (!page.token) throw fatal("You signed out.");
  if (page.refused) throw fatal(page.refused);
  if (tokenExpired()) throw fatal(expiredMessage());
  if (page.attemptFailed) {
    const check = await checkToken();
    if (check.refused) {
      page.refused = check.refused;
      throw fatal(check.refused);
    }
  }
  return page.token;
}

function expiredMessage() {
  const exp = Number(page.claims?.exp);
  return Number.isFinite(exp)
    ? `The token expired at ${formatTime(new Date(exp * 1000).toISOString())}. Sign in with a fresh one.`
    : "The token has expired. Sign in with a fresh one.";
}

// --- sign-in --------------------------------------------------------------------------------

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || window.missionControlFragmentToken || null;
  } catch {
    return window.missionControlFragmentToken || null;
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* this page only */
  }
  window.missionControlFragmentToken = token || undefined;
}

async function start() {
  page.token = storedToken();
  if (!page.token) return showSignIn("");
  page.claims = readClaims(page.token);
  if (!page.claims) {
    return signOut("That is not a token: a token is three parts separated by dots.", "refused");
  }
  if (tokenExpired()) return signOut(expiredMessage(), "refused");
  setConnection("connecting");
  const check = await checkToken();
  if (check.refused) return signOut(check.refused, "refused");
  page.user = check.user || {
    id: page.claims.sub, name: page.claims.name ?? null, role: page.claims.role || "viewer",
  };
  showBoard();
  connect();
}

function connect() {
  page.refused = null;
  page.attemptFailed = false;
  page.everLive = false;
  const watching = page.user.role === "admin" || page.user.role === "operator";
  page.mc = connectMissionControl({
    url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`,
    channels: watching ? ["agents", "sessions", "presence"] : [],
    getToken, onStatus, onFrame, onEvent,
    onChange: schedule,
  });
}

// The sign-in form, saying why. `state` is what the header shows: "signed-out" when nobody is
// signed in, "refused" when the hub would not take (or no longer takes) the token given.
function showSignIn(message, state = "signed-out") {
  $("board").hidden = true;
  $("expiry").hidden = true;
  $("stopped").hidden = true;
  $("sign-out").hidden = true;
  $("whoami").textContent = "";
  $("signin").hidden = false;
  $("signin-message").textContent = message;
  $("signin-message").hidden = !message;
  setConnection(state);
  $("token-input").focus();
}

function showBoard() {
  $("signin").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  const { id, name, role } = page.user;
  $("whoami").textContent = `${name || id} · ${role}`;
  if ((role === "admin" || role === "operator") && !analytics) {
    analytics = new Analytics({
      api, role, rate,
      hubNow: () => hubClock.now(),
      hubLastSeq: () => Math.max(page.hubLastSeq, page.mc?.state.lastSeq ?? 0),
    });
    analytics.start();
  }
}

function signOut(message, state = "signed-out") {
  page.mc?.close();
  page.mc = null;
  analytics?.stop();
  storeToken(null);
  page.token = page.claims = page.user = null;
  showSignIn(message, state);
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  $("token-input").value = "";
  storeToken(token);
  start();
});

$("sign-out").addEventListener("click", () => {
  signOut("You signed out. The token was forgotten by this tab.");
  location.reload(); // a clean page: nothing of the last user stays in memory
});

$("reconnect").addEventListener("click", () => {
  $("stopped").hidden = true;
  page.mc?.close();
  connect();
});

// --- the connection -------------------------------------------------------------------------

function setConnection(state, text) {
  page.conn = state;
  const node = $("connection");
  node.dataset.state = state;
  const words = {
    connecting: "Connecting", live: "Live", "signed-out": "Signed out",
    refused: "Refused", closed: "Closed",
  };
  node.textContent = text || words[state] || state;
  if (state === "reconnecting") updateCountdown();
}

function updateCountdown() {
  if (page.conn !== "reconnecting") return;
  const left = Math.max(0, page.retryAt - performance.now());
  $("connection").textContent = left > 0 ? `Reconnecting in ${Math.ceil(left / 1000)} s` : "Reconnecting";
}

function announce(text) {
  const node = $("announcer");
  node.textContent = "";
  setTimeout(() => { node.textContent = text; }, 50);
}

function onStatus(status, detail) {
  switch (status) {
    case "connecting":
      page.welcomed = false;
      if (page.conn !== "reconnecting") setConnection("connecting");
      break;
    case "open":
      page.welcomed = true;
      page.attemptFailed = false;
      if (page.everLive) announce("Connection restored");
      page.everLive = true;
      setConnection("live");
      $("stopped").hidden = true;
      analytics?.refreshPresence();
      analytics?.refreshConnections();
      break;
    case "retrying": {
      page.attemptFailed = !page.welcomed;
      const code = detail?.detail?.code;
      if (code === 4003) page.refused = "The hub no longer accepts this token. Sign in with a fresh one.";
      if (code === 4001) page.refused = expiredMessage();
      if (page.conn === "live") announce("Connection lost");
      page.retryAt = performance.now() + (detail?.delay ?? 0);
      setConnection("reconnecting");
      break;
    }
    case "stopped":
      if (detail?.fatal) {
        if (page.conn === "live") announce("Connection lost");
        signOut(detail.message, page.token ? "refused" : "signed-out");
      } else if (detail?.code === 4009) {
        setConnection("closed", "Disconnected by an administrator");
        announce("Disconnected by an administrator");
        showStopped("An administrator closed this connection. Reconnect when you are ready.");
      } else if (detail?.code) {
        setConnection("closed", `Closed by the hub (${detail.code})`);
        showStopped(`The hub closed the connection with code ${detail.code}.`);
      }
      break;
  }
}

function showStopped(text) {
  $("stopped-text").textContent = text;
  $("stopped").hidden = false;
}

function onFrame(frame) {
  const p = frame.payload || {};
  switch (frame.type) {
    case "welcome":
      hubClock.observe(frame.ts);
      rate.start(hubClock.now());
      page.hubLastSeq = p.lastSeq;
      page.heartbeatInterval = p.heartbeatInterval;
      page.heartbeatAt = 0;
      break;
    case "snapshot":
      hubClock.observe(frame.ts);
      board.replace(page.mc.state.agents);
      if (!page.backfilled) backfill(p.lastSeq);
      break;
    case "heartbeat":
      hubClock.observe(frame.ts);
      page.heartbeatAt = performance.now();
      page.hubLastSeq = Math.max(page.hubLastSeq, p.lastSeq);
      break;
    case "resumed":
      hubClock.observe(frame.ts);
      if (!p.recovered) {
        feed.gap(`Events published while this page was away could not be replayed (${p.reason}): `
          + "the board was redrawn from the hub's current state.");
      }
      break;
    case "presence:join":
    case "presence:leave":
      analytics?.onPresence(frame);
      break;
    case "auth:expiring":
      hubClock.observe(frame.ts);
      break;
    case "auth:ok":
      $("renew-message").textContent = "Renewed.";
      break;
    case "error":
      if (p.code === "invalid_token" || (p.code === "forbidden" && /token/.test(p.message))) {
        $("renew-message").textContent = p.message;
      }
      break;
  }
  schedule();
}

function onEvent(frame) {
  page.hubLastSeq = Math.max(page.hubLastSeq, frame.seq);
  rate.count(frame.ts);
  const p = frame.payload;
  if (frame.type === "agent:status") {
    const before = board.cards.get(p.agentId)?.payload?.status;
    if (p.status === "error" && before !== "error") page.errorsToAnnounce.push(p.name || p.agentId);
    board.changed(p.agentId);
  } else if (frame.type === "session:activity") {
    feed.add(frame);
    timeline.add(frame);
  }
}

// Recent activity, once, so that a newly opened board does not start with an empty feed.
async function backfill(lastSeq) {
  page.backfilled = true;
  try {
    const since = Math.max(0, lastSeq - BACKFILL);
    const body = await api(`/api/events?since=${since}&limit=${BACKFILL}&channel=sessions`);
    for (const frame of body.events) {
      if (frame.type === "session:activity" && frame.seq <= lastSeq) feed.add(frame);
    }
    schedule();
  } catch {
    /* a role that may not read sessions, or the hub went away: the live feed still fills */
  }
}

// --- drawing --------------------------------------------------------------------------------

function schedule() {
  if (page.frame || document.hidden) return;
  page.frame = true;
  requestAnimationFrame(draw);
}

// Everything that changed since the last frame, in one go: at 200 events a second this is a
// few DOM updates per frame, not one per event.
function draw() {
  page.frame = false;
  if (document.hidden) return; // a frame asked for before the tab was hidden: keep it all for later
  board.render();
  feed.render();
  timeline.render();
  renderHealth(board.counts(), rate.perMinute(hubClock.now()));
  $("last-seq").textContent = String(page.mc?.state.lastSeq ?? 0);
  if (page.errorsToAnnounce.length) {
    const names = page.errorsToAnnounce;
    page.errorsToAnnounce = [];
    announce(names.length === 1 ? `${names[0]} is in error` : `${names.length} agents are in error`);
  }
}

// Once a second: ticking ages, the heartbeat's age, the countdown, the expiry warning.
function tick() {
  if (document.hidden || !page.user) return;
  board.tick();
  rate.prune(hubClock.now());
  renderHealth(board.counts(), rate.perMinute(hubClock.now()));
  updateCountdown();
  $("heartbeat-age").textContent = page.heartbeatInterval === 0 && page.conn === "live"
    ? "off"
    : page.heartbeatAt ? `${formatDuration(performance.now() - page.heartbeatAt)} ago`
      : page.heartbeatInterval ? `none yet (every ${page.heartbeatInterval} s)` : "none yet";
  updateExpiry();
  analytics?.tick();
}

function updateExpiry() {
  const exp = Number(page.claims?.exp) * 1000;
  const left = exp - (hubClock.known ? hubClock.now() : Date.now());
  const warn = Number.isFinite(left) && left < EXPIRY_WARNING_MS;
  $("expiry").hidden = !warn;
  if (warn) {
    $("expiry-text").textContent = left > 0
      ? `Your sign-in expires in ${formatDuration(left)}. Paste a fresh token for the same user to stay connected.`
      : "Your sign-in has expired.";
  }
}

$("renew-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("renew-input");
  const token = input.value.trim();
  const claims = readClaims(token);
  const say = (text) => { $("renew-message").textContent = text; };
  if (!claims) return say("That is not a token.");
  if (claims.sub !== page.claims.sub) {
    return say(`That token is for ${claims.sub}, not ${page.claims.sub}: sign out and sign in with it instead.`);
  }
  if (Number(claims.exp) * 1000 <= hubClock.now()) return say("That token has expired too.");
  input.value = "";
  page.token = token;
  page.claims = claims;
  storeToken(token);
  page.mc?.send({ type: "auth", token });
  say("Sent to the hub...");
  updateExpiry();
});

document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  board.all = true; // nothing was drawn while hidden: catch up in one frame
  schedule();
  tick();
});

// "/" jumps to the agent search, unless the user is typing somewhere.
document.addEventListener("keydown", (ev) => {
  if (ev.key !== "/" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement || t.isContentEditable) return;
  if ($("board").hidden) return;
  ev.preventDefault();
  $("agent-search").focus();
});

// Theme: system (follows the OS), light or dark, remembered.
const themeSelect = $("theme");
themeSelect.value = prefs.get("theme", "system");
if (!["system", "light", "dark"].includes(themeSelect.value)) themeSelect.value = "system";
themeSelect.addEventListener("change", () => {
  const theme = themeSelect.value;
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  prefs.set("theme", theme);
  analytics?.restyle();
});

setInterval(tick, 1000);
start();

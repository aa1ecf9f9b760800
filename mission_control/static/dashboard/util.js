// util.js: small helpers shared by the dashboard's views. No framework: every string from the
// hub goes into the page through textContent (el() below), never through innerHTML.

// Builds an element. `text` is always set as text, so agent-supplied strings can never become
// markup; attributes are set one by one (data-*, aria-*, class, hidden, ...).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// The hub's clock, as seen from here. Ages and staleness are measured against the time the hub
// stamps on frames it emits now (welcome, snapshot, heartbeat, pong), so a browser whose clock is
// wrong still tells the truth about how long ago an agent spoke.
export const hubClock = {
  offset: 0, // hub time minus browser time, in ms
  known: false,
  observe(ts) {
    const t = Date.parse(ts);
    if (!Number.isNaN(t)) {
      this.offset = t - Date.now();
      this.known = true;
    }
  },
  now() {
    return Date.now() + this.offset;
  },
};

// "4 s", "3 min", "2 h 5 min", "3 d": short and steady enough to read on a wall screen.
export function formatDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  return `${Math.floor(h / 24)} d`;
}

export function formatAge(timestamp) {
  const t = Date.parse(timestamp);
  if (Number.isNaN(t)) return "unknown";
  return `${formatDuration(hubClock.now() - t)} ago`;
}

// "16:04:05" in the viewer's time zone; the full ISO time goes in a title/datetime attribute.
export function formatTime(timestamp) {
  const d = new Date(timestamp);
  if (Number.isNaN(d.getTime())) return "";
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

// Saves `text` as a file through the browser's download, without a server round trip.
export function download(filename, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// The columns every export of events has, in order.
const CSV_COLUMNS = ["seq", "ts", "type", "agentId", "sessionId", "status", "activity", "message", "summary"];

function csvCell(value) {
  let s = value === undefined || value === null ? "" : String(value);
  // A cell a spreadsheet would run as a formula (=, +, -, @, tab, CR) is quoted as text.
  if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

export function eventsToCsv(frames) {
  const rows = [CSV_COLUMNS.join(",")];
  for (const f of frames) {
    const p = f.payload || {};
    const row = { seq: f.seq, ts: f.ts, type: f.type, ...p };
    rows.push(CSV_COLUMNS.map((c) => csvCell(row[c])).join(","));
  }
  return rows.join("\r\n") + "\r\n";
}

export function exportEvents(basename, frames, format) {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  if (format === "csv") download(`${basename}-${stamp}.csv`, "text/csv", eventsToCsv(frames));
  else download(`${basename}-${stamp}.json`, "application/json", JSON.stringify(frames, null, 2) + "\n");
}

// The claims of a JWT, read without verifying it: only to show who is signed in and when the
// token ends. The hub verifies every token itself.
export function readClaims(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const claims = JSON.parse(json);
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

// Remembered preferences (theme, stale threshold): localStorage, which may be unavailable.
export const prefs = {
  get(name, fallback) {
    try {
      return localStorage.getItem(`mission-control.${name}`) ?? fallback;
    } catch {
      return fallback;
    }
  },
  set(name, value) {
    try {
      localStorage.setItem(`mission-control.${name}`, value);
    } catch {
      /* private mode: the choice lasts for this page */
    }
  },
};

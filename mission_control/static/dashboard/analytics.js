// analytics.js: who is watching and how the connections are doing; admins and operators only.
//
// Presence starts from GET /api/presence and follows the `presence` channel; the connection
// table polls GET /api/connections every few seconds while it is visible. The event-rate chart
// uses uPlot (vendored, loaded only for these roles), with a visually hidden table beside it.

import { el, formatAge, formatDuration } from "./util.js";

const POLL_MS = 5000;
const CHART_SECONDS = 300;
const TABLE_STEP = 30; // the hidden table sums the chart in 30-second steps
const MAX_ROWS = 500;

// Events per second, by the hub's `ts` of each event: what the hub stored when.
export class RateCounter {
  constructor() {
    this.buckets = new Map(); // whole second -> events
  }

  count(ts) {
    const t = Date.parse(ts);
    if (Number.isNaN(t)) return;
    const s = Math.floor(t / 1000);
    this.buckets.set(s, (this.buckets.get(s) || 0) + 1);
  }

  prune(nowMs) {
    const oldest = Math.floor(nowMs / 1000) - CHART_SECONDS - 1;
    for (const s of this.buckets.keys()) if (s < oldest) this.buckets.delete(s);
  }

  // Events in the last minute up to nowMs, and over how many seconds this page has watched
  // (less than 60 at first: the strip says so rather than show a rate it has not seen).
  perMinute(nowMs) {
    const now = Math.floor(nowMs / 1000);
    let n = 0;
    for (const [s, c] of this.buckets) if (s > now - 60 && s <= now) n += c;
    const watched = this.since === undefined ? 0 : Math.min(60, Math.max(1, now - this.since));
    return { events: n, seconds: watched };
  }

  // Counting starts now (the first welcome): earlier seconds are unknown, not quiet.
  start(nowMs) {
    if (this.since === undefined) this.since = Math.floor(nowMs / 1000);
  }

  // [seconds[], counts[]] for the whole seconds of the last CHART_SECONDS, oldest first; null
  // for the seconds before this page started counting (unknown, not quiet: the chart shows a gap).
  series(nowMs) {
    const now = Math.floor(nowMs / 1000) - 1; // the current second is not over yet
    const xs = [];
    const ys = [];
    for (let s = now - CHART_SECONDS + 1; s <= now; s++) {
      xs.push(s);
      ys.push(this.since === undefined || s < this.since ? null : this.buckets.get(s) || 0);
    }
    return [xs, ys];
  }
}

export class Analytics {
  constructor({ api, role, rate, hubNow, hubLastSeq }) {
    this.api = api;
    this.admin = role === "admin";
    this.rate = rate;
    this.hubNow = hubNow;
    this.hubLastSeq = hubLastSeq;
    this.section = document.getElementById("analytics");
    this.presenceList = document.getElementById("presence");
    this.count = document.getElementById("connection-count");
    this.tbody = document.querySelector("#connections tbody");
    this.message = document.getElementById("connections-message");
    this.tableBody = document.querySelector("#rate-table tbody");
    this.chartBox = document.getElementById("rate-chart");
    this.presence = new Map(); // user id -> presence entry
    this.rows = new Map(); // connection id -> { tr, cells, button }
    this.timer = null;
    this.chart = null;
    this.section.hidden = false;
    this.loadChart();
  }

  // Every (re)connection: presence from scratch, then the channel keeps it current.
  async refreshPresence() {
    try {
      const body = await this.api("/api/presence");
      this.presence = new Map(body.presence.map((p) => [p.id, p]));
      this.renderPresence();
    } catch (err) {
      this.presenceList.replaceChildren(el("li", { className: "empty", text: `Presence unavailable: ${err.message}` }));
    }
  }

  onPresence(frame) {
    const p = frame.payload;
    if (frame.type === "presence:join") {
      const known = this.presence.get(p.userId);
      this.presence.set(p.userId, { id: p.userId, name: p.name, role: p.role, connections: p.connections, since: known?.since ?? frame.ts });
    } else if (frame.type === "presence:leave") {
      if (p.connections > 0) {
        const known = this.presence.get(p.userId);
        if (known) known.connections = p.connections;
      } else {
        this.presence.delete(p.userId);
      }
    }
    this.renderPresence();
  }

  renderPresence() {
    const people = [...this.presence.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
    if (!people.length) {
      this.presenceList.replaceChildren(el("li", { className: "empty", text: "Nobody else is connected." }));
      return;
    }
    this.presenceList.replaceChildren(...people.map((p) => el(
      "li", { "data-user-id": p.id },
      el("span", { className: "presence-name", text: p.name || p.id }),
      el("span", { className: `role role-${p.role}`, text: p.role }),
      el("span", { className: "presence-detail", text: `${p.connections} connection${p.connections === 1 ? "" : "s"}${p.since ? `, since ${formatAge(p.since)}` : ""}` }),
    )));
  }

  start() {
    this.stop();
    const poll = async () => {
      if (!document.hidden) await this.refreshConnections();
      this.timer = setTimeout(poll, POLL_MS);
    };
    poll();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async refreshConnections() {
    let body;
    try {
      body = await this.api("/api/connections");
    } catch (err) {
      this.message.textContent = `Connections unavailable: ${err.message}`;
      return;
    }
    this.count.textContent = `${body.total} connection${body.total === 1 ? "" : "s"}`;
    const lastSeq = this.hubLastSeq();
    const now = this.hubNow();
    const seen = new Set();
    for (const c of body.connections.slice(0, MAX_ROWS)) {
      seen.add(c.id);
      let row = this.rows.get(c.id);
      if (!row) {
        row = this.createRow(c.id);
        this.rows.set(c.id, row);
        this.tbody.append(row.tr);
      }
      const lag = Math.max(0, lastSeq - (c.ackedSeq || 0));
      const values = [c.user, c.role, c.client ?? "", c.peer,
        `${formatDuration(now - Date.parse(c.connectedAt))}`, c.replaying ? "replaying" : String(lag),
        String(c.bytesWaiting)];
      values.forEach((v, i) => { row.cells[i].textContent = v; });
      row.cells[4].title = c.connectedAt;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    if (body.connections.length > MAX_ROWS) {
      this.message.textContent = `Showing the oldest ${MAX_ROWS} of ${body.connections.length} connections.`;
    }
  }

  createRow(id) {
    const cells = Array.from({ length: 7 }, () => el("td"));
    const actions = el("td");
    let button = null;
    if (this.admin) {
      button = el("button", { type: "button", className: "disconnect button-danger", text: "Disconnect" });
      let armed = null;
      button.addEventListener("click", async () => {
        if (!armed) {
          button.textContent = "Confirm";
          button.setAttribute("aria-label", `Confirm: disconnect connection ${id}`);
          armed = setTimeout(() => {
            armed = null;
            button.textContent = "Disconnect";
            button.removeAttribute("aria-label");
          }, 5000);
          return;
        }
        clearTimeout(armed);
        armed = null;
        button.disabled = true;
        try {
          await this.api(`/api/connections/${encodeURIComponent(id)}`, { method: "DELETE" });
          this.message.textContent = `Connection ${id} was closed.`;
          this.refreshConnections();
        } catch (err) {
          this.message.textContent = `Could not close connection ${id}: ${err.message}`;
          button.disabled = false;
          button.textContent = "Disconnect";
        }
      });
      actions.append(button);
    }
    const tr = el("tr", { "data-connection-id": id }, ...cells, actions);
    return { tr, cells, button };
  }

  // uPlot is loaded only for the roles that see this section (a classic script: the page's CSP
  // admits it as 'self').
  loadChart() {
    if (window.uPlot) return this.buildChart();
    const css = el("link", { rel: "stylesheet", href: "/assets/vendor/uplot.min.css" });
    const script = el("script", { src: "/assets/vendor/uplot.iife.min.js" });
    script.addEventListener("load", () => this.buildChart());
    document.head.append(css, script);
  }

  // A colour of the theme as the canvas needs it: the custom properties hold light-dark(...),
  // which only the browser's style engine resolves.
  themeColor(property) {
    const probe = el("span", { hidden: true });
    probe.style.color = `var(${property})`;
    this.chartBox.append(probe);
    const color = getComputedStyle(probe).color;
    probe.remove();
    return color;
  }

  buildChart() {
    const stroke = this.themeColor("--accent");
    const axis = this.themeColor("--muted");
    const grid = this.themeColor("--line");
    const width = Math.max(240, this.chartBox.clientWidth || 320);
    this.chart = new window.uPlot({
      width, height: 160, legend: { show: false }, cursor: { show: false },
      scales: { x: { time: true } },
      axes: [
        {
          stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, space: 80,
          incrs: [15, 30, 60, 120, 300],
          values: (u, ticks, axis, space, incr) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString(
            [], { hour: "2-digit", minute: "2-digit", second: incr < 60 ? "2-digit" : undefined, hour12: false })),
        },
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 40 },
      ],
      series: [{}, { label: "events/s", stroke, width: 2, fill: stroke.replace(/^rgb\((.*)\)$/, "rgb($1 / 13%)").replace(/,/g, ""), points: { show: false } }],
    }, this.rate.series(this.hubNow()), this.chartBox);
    if (!this.resizer) {
      this.resizer = new ResizeObserver(() => {
        const w = this.chartBox.clientWidth;
        if (w && this.chart) this.chart.setSize({ width: w, height: 160 });
      });
      this.resizer.observe(this.chartBox);
    }
  }

  // The theme changed: the chart's colours come from it.
  restyle() {
    if (!this.chart) return;
    this.chart.destroy();
    this.chart = null;
    this.buildChart();
  }

  // Once a second, while the page is visible.
  tick() {
    const [xs, ys] = this.rate.series(this.hubNow());
    if (this.chart) this.chart.setData([xs, ys]);
    const rows = [];
    for (let end = xs.length; end > 0 && rows.length < CHART_SECONDS / TABLE_STEP; end -= TABLE_STEP) {
      const start = Math.max(0, end - TABLE_STEP);
      const known = ys.slice(start, end).filter((y) => y !== null);
      if (!known.length) break; // before this page started counting
      const sum = known.reduce((a, b) => a + b, 0);
      const at = new Date(xs[end - 1] * 1000 + 1000).toLocaleTimeString([], { hour12: false });
      rows.push(el("tr", {}, el("td", { text: at }), el("td", { text: (sum / known.length).toFixed(1) })));
    }
    this.tableBody.replaceChildren(...rows);
  }
}

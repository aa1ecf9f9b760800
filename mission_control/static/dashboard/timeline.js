// timeline.js: one session's story, oldest first: its history from GET /api/events (paged, only
// that session's channel), then kept live from the WebSocket's session:activity events.

import { el, formatTime, exportEvents } from "./util.js";

const PAGE = 1000; // events per request (the hub's maximum)
const MAX_PAGES = 200; // a history is at most --history-size events: stop well before looping

export class Timeline {
  constructor({ api }) {
    this.api = api;
    this.section = document.getElementById("timeline");
    this.title = document.getElementById("timeline-title");
    this.status = document.getElementById("timeline-status");
    this.list = document.getElementById("timeline-events");
    this.sessionId = null;
    this.frames = new Map(); // seq -> frame
    this.pending = [];
    this.loading = 0; // a token per open(): a late page of an older session is dropped
    document.getElementById("timeline-close").addEventListener("click", () => this.close());
    document.getElementById("timeline-export-json").addEventListener("click", () => this.export("json"));
    document.getElementById("timeline-export-csv").addEventListener("click", () => this.export("csv"));
  }

  async open(sessionId) {
    const token = ++this.loading;
    this.sessionId = sessionId;
    this.frames = new Map();
    this.pending = [];
    this.list.replaceChildren();
    this.title.textContent = `Session ${sessionId}`;
    this.status.textContent = "Loading its history...";
    this.section.hidden = false;
    this.section.scrollIntoView({ block: "nearest" });
    this.title.tabIndex = -1;
    this.title.focus();
    let since = 0;
    let pages = 0;
    try {
      for (;;) {
        const channel = encodeURIComponent(`sessions:${sessionId}`);
        const page = await this.api(`/api/events?since=${since}&limit=${PAGE}&channel=${channel}`);
        if (token !== this.loading) return;
        for (const frame of page.events) {
          if (frame.type === "session:activity" && frame.payload.sessionId === sessionId) this.add(frame);
        }
        this.render();
        since = page.next;
        pages += 1;
        if (!page.more || pages >= MAX_PAGES) {
          this.status.textContent = page.more
            ? `Showing the first ${this.frames.size} events; the history goes on.`
            : `${this.frames.size} events from the history, then live.`;
          if (page.truncated || page.firstSeq > 1) {
            this.status.textContent += " Older events are no longer kept by the hub.";
          }
          break;
        }
        this.status.textContent = `Loading its history... ${this.frames.size} events so far`;
      }
    } catch (err) {
      if (token === this.loading) this.status.textContent = `The history could not be read: ${err.message}`;
    }
  }

  close() {
    this.loading += 1;
    this.sessionId = null;
    this.section.hidden = true;
  }

  // A live event; kept when it belongs to the open session.
  add(frame) {
    if (!this.sessionId || frame.payload.sessionId !== this.sessionId || this.frames.has(frame.seq)) return;
    this.frames.set(frame.seq, frame);
    this.pending.push(frame);
  }

  render() {
    if (!this.pending.length) return;
    const items = this.pending.sort((a, b) => a.seq - b.seq);
    this.pending = [];
    const last = this.list.lastElementChild;
    if (!last || Number(last.dataset.seq) < items[0].seq) {
      this.list.append(...items.map((f) => this.draw(f)));
    } else {
      const all = [...this.frames.values()].sort((a, b) => a.seq - b.seq);
      this.list.replaceChildren(...all.map((f) => this.draw(f)));
    }
  }

  draw(frame) {
    const p = frame.payload;
    const failed = /fail|error/i.test(p.activity);
    const d = p.detail && typeof p.detail === "object" ? p.detail : {};
    const tool = typeof d.tool === "string" ? d.tool : null;
    const ms = Number.isFinite(d.durationMs) ? `${d.durationMs} ms` : null;
    return el(
      "li",
      { className: failed ? "step step-failed" : "step", "data-seq": frame.seq, "data-activity": p.activity },
      el("time", { className: "step-time", datetime: p.timestamp, title: p.timestamp, text: formatTime(p.timestamp) }),
      el("span", { className: "step-kind", text: p.activity }),
      el("span", { className: "step-summary", text: p.summary || "" }),
      tool ? el("span", { className: "step-tool", text: ms ? `${tool} · ${ms}` : tool }) : null,
      p.agentId ? el("span", { className: "step-agent", text: p.agentId }) : null,
    );
  }

  export(format) {
    const frames = [...this.frames.values()].sort((a, b) => a.seq - b.seq);
    exportEvents(`mission-control-session-${this.sessionId}`, frames, format);
  }
}

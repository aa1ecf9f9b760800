// feed.js: the live activity feed, newest first, bounded, with pause / follow live.
//
// Scrolling away from the top pauses the feed: new events wait (and are counted) instead of
// pushing what the operator is reading out of view; "Jump to live" or scrolling back resumes.

import { el, formatTime, exportEvents } from "./util.js";

export const FEED_LIMIT = 500; // items kept and shown
const PAUSE_AT_PX = 24; // scrolled further down than this from the top: paused

export class Feed {
  constructor({ onOpenSession }) {
    this.list = document.getElementById("feed");
    this.scroller = document.getElementById("feed-log");
    this.liveButton = document.getElementById("feed-live");
    this.missedCount = document.getElementById("feed-missed");
    this.mode = document.getElementById("feed-mode");
    this.agentFilter = document.getElementById("feed-agent");
    this.sessionFilter = document.getElementById("feed-session");
    this.onOpenSession = onOpenSession;
    this.items = []; // newest first: frames, and { gap: text } markers
    this.incoming = []; // arrived since the last render, in any order
    this.held = []; // arrived while paused
    this.seen = new Set(); // seqs in items, incoming or held: each event shows once
    this.paused = false;
    this.rebuild = false;

    this.scroller.addEventListener("scroll", () => {
      const away = this.scroller.scrollTop > PAUSE_AT_PX;
      if (away && !this.paused) this.pause();
      else if (!away && this.paused) this.resume();
    }, { passive: true });
    this.liveButton.addEventListener("click", () => {
      this.scroller.scrollTop = 0;
      this.resume();
    });
    for (const input of [this.agentFilter, this.sessionFilter]) {
      input.addEventListener("input", () => {
        this.rebuild = true;
        this.render();
      });
    }
    document.getElementById("export-json").addEventListener("click", () => this.export("json"));
    document.getElementById("export-csv").addEventListener("click", () => this.export("csv"));
  }

  add(frame) {
    if (this.seen.has(frame.seq)) return;
    this.seen.add(frame.seq);
    (this.paused ? this.held : this.incoming).push(frame);
  }

  // Events the feed could not show (a resume that could not be served): said, not hidden.
  gap(text) {
    this.incoming.push({ gap: text, seq: Infinity });
  }

  filterAgent(agentId) {
    this.agentFilter.value = agentId;
    this.rebuild = true;
    this.agentFilter.focus();
  }

  pause() {
    this.paused = true;
    this.liveButton.hidden = false;
    this.mode.textContent = "Paused";
    this.missedCount.textContent = String(this.held.length);
  }

  resume() {
    this.paused = false;
    this.incoming.push(...this.held);
    this.held = [];
    this.liveButton.hidden = true;
    this.mode.textContent = "Following live";
    this.render();
  }

  matches(item) {
    if (item.gap) return true;
    const p = item.payload;
    const agent = this.agentFilter.value.trim().toLowerCase();
    const session = this.sessionFilter.value.trim().toLowerCase();
    return (!agent || (p.agentId || "").toLowerCase().includes(agent))
      && (!session || p.sessionId.toLowerCase().includes(session));
  }

  render() {
    if (this.paused) {
      this.missedCount.textContent = String(this.held.length);
      if (this.held.length > FEED_LIMIT) this.forget(this.held.splice(0, this.held.length - FEED_LIMIT));
    }
    if (!this.incoming.length && !this.rebuild) return;
    const fresh = this.incoming.sort((a, b) => b.seq - a.seq);
    this.incoming = [];
    const newest = this.items.length ? this.items[0].seq : -1;
    const inOrder = fresh.every((f) => f.seq > newest || f.gap);
    this.items = inOrder ? fresh.concat(this.items) : fresh.concat(this.items).sort((a, b) => b.seq - a.seq);
    if (this.items.length > FEED_LIMIT) this.forget(this.items.splice(FEED_LIMIT));
    if (inOrder && !this.rebuild) {
      const frag = document.createDocumentFragment();
      for (const item of fresh) if (this.matches(item)) frag.append(this.draw(item));
      this.list.prepend(frag);
      while (this.list.childElementCount > FEED_LIMIT) this.list.lastElementChild.remove();
    } else {
      this.list.replaceChildren(...this.items.filter((i) => this.matches(i)).map((i) => this.draw(i)));
      this.rebuild = false;
    }
  }

  forget(dropped) {
    for (const item of dropped) this.seen.delete(item.seq);
  }

  draw(item) {
    if (item.gap) return el("li", { className: "feed-gap", text: item.gap });
    const p = item.payload;
    const failed = /fail|error/i.test(p.activity);
    const link = el("button", {
      type: "button", className: "session-link", text: p.sessionId,
      "aria-label": `Open the timeline of session ${p.sessionId}`,
    });
    link.addEventListener("click", () => this.onOpenSession(p.sessionId));
    const tool = p.detail && typeof p.detail.tool === "string" ? p.detail.tool : null;
    return el(
      "li",
      {
        className: failed ? "activity activity-failed" : "activity",
        "data-seq": item.seq, "data-session-id": p.sessionId,
        "data-agent-id": p.agentId || "", "data-activity": p.activity,
      },
      el("time", { className: "activity-time", datetime: p.timestamp, title: p.timestamp, text: formatTime(p.timestamp) }),
      el("span", { className: "activity-kind", text: p.activity }),
      el("span", { className: "activity-agent", text: p.agentId || "" }),
      link,
      el("span", { className: "activity-summary", text: p.summary || "" }),
      tool ? el("span", { className: "activity-tool", text: tool }) : null,
    );
  }

  shown() {
    return this.items.filter((i) => !i.gap && this.matches(i)).slice().reverse();
  }

  export(format) {
    exportEvents("mission-control-activity", this.shown(), format);
  }
}

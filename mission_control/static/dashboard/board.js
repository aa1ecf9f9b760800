// board.js: the fleet board (one card per agent) and the health strip above it.
//
// Cards are keyed by agent id and updated in place, in batches: the app marks agents dirty as
// events arrive and calls render() once per animation frame. Ages tick once a second (tick()).
//
// The list is windowed: only the rows in view (and a few around them) are in the document, so a
// board of ten thousand agents costs the browser what a board of forty does. Every card has the
// same height, so the rows in view follow from the scroll position alone.

import { el, formatAge, hubClock, prefs } from "./util.js";

const STATUSES = ["online", "busy", "idle", "error", "offline"];
// Errors first, then what needs a look (stale), then the working fleet, offline last.
const RANK = { error: 0, stale: 1, busy: 2, online: 3, idle: 4, offline: 5 };
const OVERSCAN_ROWS = 2; // rows drawn above and below the visible ones
const CARD_REM = { width: 15, height: 8.6, gap: 0.6 }; // as in app.css (.agents, .agent)

export class Board {
  constructor({ onOpenAgentFeed } = {}) {
    this.scroller = document.getElementById("agents-scroll");
    this.list = document.getElementById("agents");
    this.empty = document.getElementById("agents-empty");
    this.count = document.getElementById("agent-count");
    this.search = document.getElementById("agent-search");
    this.filter = document.getElementById("status-filter");
    this.staleSelect = document.getElementById("stale-after");
    this.onOpenAgentFeed = onOpenAgentFeed;
    this.cards = new Map(); // agentId -> { node, parts, payload, stale, key, name, rankNow, shown }
    this.agents = new Map(); // agentId -> payload (the client's state)
    this.dirty = new Set();
    this.moved = new Set(); // cards whose place in the order changed
    this.all = true; // redraw every card on the next render
    this.order = []; // every agent id, in board order
    this.shown = null; // the ids that pass the filter, in board order (null: to recompute)
    this.window = []; // the ids whose cards are in the document now
    this.tally = null; // the counts by status, while no card changed
    this.staleAfterMs = Number(prefs.get("stale-after", "300")) * 1000;
    if (![60, 300, 900, 3600].includes(this.staleAfterMs / 1000)) this.staleAfterMs = 300_000;
    this.staleSelect.value = String(this.staleAfterMs / 1000);

    this.search.addEventListener("input", () => this.applyFilter());
    this.filter.addEventListener("change", () => this.applyFilter());
    this.staleSelect.addEventListener("change", () => {
      this.staleAfterMs = Number(this.staleSelect.value) * 1000;
      prefs.set("stale-after", this.staleSelect.value);
      this.all = true;
      this.render();
    });
    let pending = false;
    const relayout = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        this.layout();
      });
    };
    this.scroller.addEventListener("scroll", relayout, { passive: true });
    new ResizeObserver(relayout).observe(this.scroller);
  }

  // A snapshot replaced the state: everything is redrawn from it.
  replace(agents) {
    this.agents = agents;
    this.all = true;
  }

  changed(agentId) {
    this.dirty.add(agentId);
  }

  // Silent since staleAfterMs by the hub's clock, and not known to be offline.
  isStale(payload) {
    if (payload.status === "offline" || !hubClock.known) return false;
    const t = Date.parse(payload.timestamp);
    return !Number.isNaN(t) && hubClock.now() - t > this.staleAfterMs;
  }

  render() {
    if (this.all) {
      for (const id of this.cards.keys()) if (!this.agents.has(id)) this.cards.delete(id);
      for (const id of this.agents.keys()) this.draw(id);
      this.sort();
      this.moved.clear();
      this.all = false;
    } else {
      for (const id of this.dirty) if (this.draw(id)) this.moved.add(id);
      this.reorder();
    }
    this.dirty.clear();
    this.empty.hidden = this.agents.size > 0;
    this.count.textContent = `(${this.agents.size})`;
    this.layout();
  }

  // Puts the cards whose rank or name changed in their place: a few binary insertions, or one
  // sort when many changed at once.
  reorder() {
    if (!this.moved.size) return;
    if (this.moved.size > 64) {
      this.sort();
    } else {
      this.order = this.order.filter((id) => !this.moved.has(id));
      for (const id of this.moved) {
        const card = this.cards.get(id);
        if (!card?.payload) continue;
        let lo = 0;
        let hi = this.order.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (this.compare(id, card, this.order[mid], this.cards.get(this.order[mid])) > 0) lo = mid + 1;
          else hi = mid;
        }
        this.order.splice(lo, 0, id);
      }
    }
    this.moved.clear();
    this.shown = null;
  }

  sort() {
    const ids = [...this.cards.keys()].filter((id) => this.cards.get(id).payload);
    ids.sort((a, b) => this.compare(a, this.cards.get(a), b, this.cards.get(b)));
    this.order = ids;
    this.shown = null;
  }

  compare(aId, a, bId, b) {
    return a.rankNow - b.rankNow
      || (a.name < b.name ? -1 : a.name > b.name ? 1 : aId < bId ? -1 : aId > bId ? 1 : 0);
  }

  // Puts the cards of the rows in view into the list, with padding standing in for the rest.
  layout() {
    if (this.shown === null) {
      this.shown = this.order.filter((id) => this.cards.get(id).shown);
    }
    const rem = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
    const gap = CARD_REM.gap * rem;
    const pitch = CARD_REM.height * rem + gap;
    const width = this.list.clientWidth;
    const columns = Math.max(1, Math.floor((width + gap) / (CARD_REM.width * rem + gap)));
    const rows = Math.ceil(this.shown.length / columns);
    const top = this.scroller.scrollTop;
    const height = this.scroller.clientHeight || pitch * 4;
    const fromRow = Math.max(0, Math.floor(top / pitch) - OVERSCAN_ROWS);
    const toRow = Math.min(rows, Math.ceil((top + height) / pitch) + OVERSCAN_ROWS);
    const ids = this.shown.slice(fromRow * columns, toRow * columns);
    this.list.style.paddingTop = `${fromRow * pitch}px`;
    this.list.style.paddingBottom = `${Math.max(0, (rows - toRow) * pitch)}px`;
    if (ids.length !== this.window.length || ids.some((id, i) => id !== this.window[i])) {
      this.window = ids;
      this.list.replaceChildren(...ids.map((id) => this.cards.get(id).node));
      this.refreshAges();
    }
  }

  // Draws one card (in the document or not); true when its place in the order may have changed.
  draw(id) {
    const payload = this.agents.get(id);
    if (!payload) return false;
    let card = this.cards.get(id);
    if (!card) {
      card = this.create(id);
      this.cards.set(id, card);
    }
    this.tally = null;
    const stale = this.isStale(payload);
    const name = payload.name || id;
    const shown = this.matches(id, payload, stale);
    const key = `${payload.status}|${stale}|${name}|${shown}`;
    const moved = card.key !== key;
    card.payload = payload;
    card.stale = stale;
    card.key = key;
    card.name = name.toLowerCase();
    card.rankNow = this.rank(card);
    card.shown = shown;
    const { node, parts } = card;
    node.dataset.status = payload.status;
    node.dataset.stale = String(stale);
    parts.name.textContent = name;
    parts.id.textContent = payload.name ? id : "";
    parts.status.textContent = payload.status;
    parts.stale.hidden = !stale;
    parts.message.textContent = payload.message || "";
    parts.message.hidden = !payload.message;
    parts.time.dateTime = payload.timestamp;
    parts.time.title = payload.timestamp;
    parts.time.textContent = formatAge(payload.timestamp);
    return moved;
  }

  create(id) {
    const parts = {
      name: el("span", { className: "agent-name" }),
      id: el("span", { className: "agent-id" }),
      status: el("span", { className: "agent-status" }),
      stale: el("span", { className: "agent-stale", text: "stale", hidden: true }),
      message: el("p", { className: "agent-message" }),
      time: el("time", { className: "agent-age" }),
    };
    const feedButton = el("button", {
      type: "button", className: "agent-feed button-quiet", text: "Activity",
      "aria-label": `Show the activity of ${id}`,
    });
    feedButton.addEventListener("click", () => this.onOpenAgentFeed?.(id));
    const node = el(
      "li", { className: "agent", "data-agent-id": id },
      el("div", { className: "agent-head" },
        el("span", { className: "agent-dot", "aria-hidden": "true" }),
        el("div", { className: "agent-names" }, parts.name, parts.id),
        el("span", { className: "agent-badges" }, parts.status, parts.stale)),
      parts.message,
      el("div", { className: "agent-foot" },
        el("span", { className: "agent-changed" }, "changed ", parts.time), feedButton),
    );
    return { node, parts, payload: null, stale: false, key: "" };
  }

  rank(card) {
    return card.stale && card.payload.status !== "error" ? RANK.stale : RANK[card.payload.status] ?? 6;
  }

  matches(id, payload, stale) {
    const want = this.filter.value;
    if (want === "stale" ? !stale : want !== "all" && payload.status !== want) return false;
    const q = this.search.value.trim().toLowerCase();
    return !q || id.toLowerCase().includes(q) || (payload.name || "").toLowerCase().includes(q);
  }

  applyFilter() {
    for (const [id, card] of this.cards) {
      if (card.payload) card.shown = this.matches(id, card.payload, card.stale);
    }
    this.shown = null;
    this.scroller.scrollTop = 0;
    this.layout();
  }

  // Once a second: ages move on, and agents may turn stale without any event. Only the cards in
  // the document get their age rewritten.
  tick() {
    for (const [id, card] of this.cards) {
      if (card.payload && this.isStale(card.payload) !== card.stale && this.draw(id)) this.moved.add(id);
    }
    this.reorder();
    this.layout();
    this.refreshAges();
  }

  refreshAges() {
    for (const id of this.window) {
      const card = this.cards.get(id);
      const age = formatAge(card.payload.timestamp);
      if (card.parts.time.textContent !== age) card.parts.time.textContent = age;
    }
  }

  // The health strip's totals: counted again only after a card changed (draw() forgets them),
  // not in every animation frame.
  counts() {
    if (this.tally) return this.tally;
    const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    counts.stale = 0;
    for (const card of this.cards.values()) {
      if (!card.payload) continue;
      counts[card.payload.status] = (counts[card.payload.status] || 0) + 1;
      if (card.stale) counts.stale += 1;
    }
    this.tally = counts;
    return counts;
  }
}

// The strip of totals over the board; events per minute come from the app's rate counter.
export function renderHealth(counts, { events, seconds }) {
  for (const node of document.querySelectorAll("#health [data-count]")) {
    node.textContent = String(counts[node.dataset.count] ?? 0);
  }
  document.getElementById("events-per-minute").textContent = String(events);
  document.getElementById("events-per-minute-label").textContent =
    seconds >= 60 ? "events / min" : `events in the last ${seconds} s`;
}


// board.js: the fleet board (one card per agent) and the health strip above it.
//
// Cards are keyed by agent id and updated in place, in batches: the app marks agents dirty as
// events arrive and calls render() once per animation frame. Ages tick once a second (tick()).

import { el, formatAge, hubClock, prefs } from "./util.js";

const STATUSES = ["online", "busy", "idle", "error", "offline"];
// Errors first, then what needs a look (stale), then the working fleet, offline last.
const RANK = { error: 0, stale: 1, busy: 2, online: 3, idle: 4, offline: 5 };

export class Board {
  constructor({ onOpenAgentFeed } = {}) {
    this.list = document.getElementById("agents");
    this.empty = document.getElementById("agents-empty");
    this.count = document.getElementById("agent-count");
    this.search = document.getElementById("agent-search");
    this.filter = document.getElementById("status-filter");
    this.staleSelect = document.getElementById("stale-after");
    this.onOpenAgentFeed = onOpenAgentFeed;
    this.cards = new Map(); // agentId -> { node, parts, payload, stale, key }
    this.agents = new Map(); // agentId -> payload (the client's state)
    this.dirty = new Set();
    this.all = true; // redraw every card on the next render
    this.order = []; // agent ids in the order the list shows them
    this.staleAfterMs = Number(prefs.get("stale-after", "300")) * 1000;
    if (![60, 300, 900, 3600].includes(this.staleAfterMs / 1000)) this.staleAfterMs = 300_000;
    this.staleSelect.value = String(this.staleAfterMs / 1000);

    this.search.addEventListener("input", () => this.applyFilter());
    this.filter.addEventListener("change", () => this.applyFilter());
    this.staleSelect.addEventListener("change", () => {
      this.staleAfterMs = Number(this.staleSelect.value) * 1000;
      prefs.set("stale-after", this.staleSelect.value);
      this.all = true;
    });
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
      for (const [id, card] of this.cards) {
        if (!this.agents.has(id)) {
          card.node.remove();
          this.cards.delete(id);
        }
      }
      for (const id of this.agents.keys()) this.draw(id);
      this.sort();
      this.all = false;
    } else {
      const moved = [...this.dirty].filter((id) => this.draw(id));
      this.reorder(moved);
    }
    this.dirty.clear();
    this.empty.hidden = this.agents.size > 0;
    this.count.textContent = `(${this.agents.size})`;
  }

  // Puts the cards whose rank or name changed in their place. Moving a handful of nodes keeps
  // a busy board cheap: re-appending a thousand cards every frame costs the browser a full
  // style and layout pass each time.
  reorder(moved) {
    if (!moved.length) return;
    if (moved.length > 64) {
      this.sort();
      return;
    }
    for (const id of moved) {
      const card = this.cards.get(id);
      const at = this.order.indexOf(id);
      if (at >= 0) this.order.splice(at, 1);
      let lo = 0;
      let hi = this.order.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.compare(id, card, this.order[mid], this.cards.get(this.order[mid])) > 0) lo = mid + 1;
        else hi = mid;
      }
      this.order.splice(lo, 0, id);
      const next = lo + 1 < this.order.length ? this.cards.get(this.order[lo + 1]).node : null;
      if (card.node.nextSibling !== next || card.node.parentNode !== this.list) {
        this.list.insertBefore(card.node, next);
      }
    }
  }

  compare(aId, a, bId, b) {
    return a.rankNow - b.rankNow
      || (a.name < b.name ? -1 : a.name > b.name ? 1 : aId < bId ? -1 : aId > bId ? 1 : 0);
  }

  // Draws one card; true when its place in the order may have changed.
  draw(id) {
    const payload = this.agents.get(id);
    if (!payload) return false;
    let card = this.cards.get(id);
    if (!card) {
      card = this.create(id);
      this.cards.set(id, card);
    }
    const stale = this.isStale(payload);
    const name = payload.name || id;
    const key = `${payload.status}|${stale}|${name}`;
    const moved = card.key !== key;
    card.payload = payload;
    card.stale = stale;
    card.key = key;
    card.name = name.toLowerCase();
    card.rankNow = this.rank(card);
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
    const hidden = !this.matches(id, payload, stale);
    if (node.hidden !== hidden) node.hidden = hidden;
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

  sort() {
    const cards = [...this.cards.entries()].filter(([, card]) => card.payload);
    cards.sort(([aId, a], [bId, b]) => this.compare(aId, a, bId, b));
    const order = cards.map(([id]) => id);
    if (order.length === this.order.length && order.every((id, i) => id === this.order[i])) return;
    this.order = order;
    const frag = document.createDocumentFragment();
    for (const [, card] of cards) frag.append(card.node);
    this.list.append(frag); // moves the existing nodes; nothing is rebuilt
  }

  matches(id, payload, stale) {
    const want = this.filter.value;
    if (want === "stale" ? !stale : want !== "all" && payload.status !== want) return false;
    const q = this.search.value.trim().toLowerCase();
    return !q || id.toLowerCase().includes(q) || (payload.name || "").toLowerCase().includes(q);
  }

  applyFilter() {
    for (const [id, card] of this.cards) {
      if (card.payload) card.node.hidden = !this.matches(id, card.payload, card.stale);
    }
  }

  // Once a second: ages move on, and agents may turn stale without any event.
  tick() {
    const moved = [];
    for (const [id, card] of this.cards) {
      if (!card.payload) continue;
      const age = formatAge(card.payload.timestamp);
      if (card.parts.time.textContent !== age) card.parts.time.textContent = age;
      if (this.isStale(card.payload) !== card.stale && this.draw(id)) moved.push(id);
    }
    this.reorder(moved);
  }

  counts() {
    const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    counts.stale = 0;
    for (const card of this.cards.values()) {
      if (!card.payload) continue;
      counts[card.payload.status] = (counts[card.payload.status] || 0) + 1;
      if (card.stale) counts.stale += 1;
    }
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


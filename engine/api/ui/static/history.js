// The event history, paged from the API (1000 events a request) and virtualised:
// only the rows in view are in the DOM, so 100,000 events scroll like 100.
// Compact rows or one-line raw JSON; a click shows the whole event. The
// failures filter keeps the events that record a failure, loading pages as needed.

import { enc, get } from "./api.js";
import { clear, h, json, oneLine, when } from "./dom.js";

const ROW = 24, PAGE = 1000, OVERSCAN = 20;
const FAILURE = /failed|timed_out|timeout|rejected|dead|error|compensat/;

export function isFailure(e) {
  return FAILURE.test(e.type) || Boolean(e.data && (e.data.error || e.data.reason && /fail|error/i.test(e.data.reason)));
}

function summary(e) {
  const d = e.data || {};
  const bits = [];
  if (d.step) bits.push(d.step);
  if (d.attempt) bits.push(`#${d.attempt}`);
  if (d.error) bits.push(typeof d.error === "object" ? d.error.message || oneLine(d.error, 120) : String(d.error));
  else if (d.reason) bits.push(String(d.reason));
  else if (d.name && e.type.includes("signal")) bits.push(`${d.name} = ${oneLine(d.payload, 80)}`);
  else if (d.event_type) bits.push(d.event_type);
  if (d.from_step) bits.push(`from ${d.from_step}${d.input !== undefined && d.input !== null ? ` with input ${oneLine(d.input, 80)}` : ""}`);
  return bits.join(" · ");
}

export class HistoryView {
  constructor(executionId, { total = 0, onShow } = {}) {
    this.id = executionId;
    this.events = [];
    this.total = total;
    this.nextAfter = undefined; // undefined: nothing loaded yet; null: loaded to the end
    this.loading = null;
    this.mode = "compact";
    this.failuresOnly = false;
    this.matches = null; // indexes of failure events when filtering
    this.onShow = onShow;
    this.viewport = h("div", { class: "history-viewport", id: "history", tabindex: 0 });
    this.spacer = h("div", { class: "history-spacer" });
    this.rows = h("div", { class: "history-rows" });
    this.viewport.append(this.spacer, this.rows);
    this.status = h("span", { class: "muted", id: "history-status" });
    this.viewport.addEventListener("scroll", () => this.schedule());
    const modes = h("select", { id: "history-mode", onchange: (e) => { this.mode = e.target.value; this.draw(); } },
      h("option", { value: "compact" }, "compact"), h("option", { value: "raw" }, "raw JSON"));
    const failures = h("input", { type: "checkbox", id: "history-failures",
      onchange: (e) => { this.failuresOnly = e.target.checked; this.refilter(); } });
    this.element = h("section", { class: "history" },
      h("div", { class: "bar-row" }, h("h2", {}, "History"), modes,
        h("label", {}, failures, " failures only"), this.status),
      this.viewport);
  }

  get length() { return this.failuresOnly ? this.matches.length : Math.max(this.total, this.events.length); }

  // The execution grew (live): more events exist past what is loaded.
  grow(total) {
    if (total > this.total) this.total = total;
    if (this.nextAfter === null && total > this.events.length) {
      this.nextAfter = this.events.length ? this.events[this.events.length - 1].entry_id : undefined;
    }
    this.schedule();
  }

  async fetchPage() {
    if (this.loading) return this.loading;
    if (this.nextAfter === null) return;
    const after = this.nextAfter ? `&after=${enc(this.nextAfter)}` : "";
    this.loading = (async () => {
      try {
        const page = await get(`/executions/${enc(this.id)}/history?limit=${PAGE}${after}`);
        const from = this.events.length;
        this.events.push(...page.events);
        const last = this.events[this.events.length - 1];
        this.nextAfter = page.next_after ?? null;
        if (this.nextAfter === null) this.total = this.events.length;
        else this.total = Math.max(this.total, this.events.length + 1);
        if (this.failuresOnly) for (let i = from; i < this.events.length; i++) if (isFailure(this.events[i])) this.matches.push(i);
        if (!page.events.length && last) this.nextAfter = null;
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); this.fill(); });
  }

  // Load pages until what is in view (or, filtering, enough matches) is loaded.
  async fill() {
    const need = this.failuresOnly ? Infinity : this.lastVisible() + OVERSCAN;
    try {
      while (this.nextAfter !== null && (this.events.length < need || this.nextAfter === undefined)) {
        await this.fetchPage();
        this.draw();
        if (this.failuresOnly && this.matches.length > this.lastVisible() + OVERSCAN) break;
      }
    } catch (err) {
      this.status.textContent = `history: ${err.message}`;
      this.status.className = "error";
    }
  }

  refilter() {
    this.matches = this.failuresOnly ? this.events.flatMap((e, i) => (isFailure(e) ? [i] : [])) : null;
    this.viewport.scrollTop = 0;
    this.draw();
    this.fill();
  }

  lastVisible() {
    return Math.ceil((this.viewport.scrollTop + (this.viewport.clientHeight || 480)) / ROW);
  }

  draw() {
    const count = this.length;
    this.spacer.style.height = `${count * ROW}px`;
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / ROW) - OVERSCAN);
    const last = Math.min(count, this.lastVisible() + OVERSCAN);
    const out = [];
    for (let i = first; i < last; i++) {
      const index = this.failuresOnly ? this.matches[i] : i;
      const e = this.events[index];
      out.push(e ? this.row(e, i) : h("div", { class: "hrow loading", style: null }, "loading…"));
      out[out.length - 1].style.top = `${i * ROW}px`;
    }
    clear(this.rows, out);
    const loaded = this.events.length, where = this.nextAfter === null ? "all loaded" : "loading on scroll";
    this.status.textContent = this.failuresOnly
      ? `${this.matches.length} failure event(s) in ${loaded} loaded${this.nextAfter === null ? "" : " (loading…)"}`
      : `${count} events · ${loaded} loaded · ${where}`;
  }

  row(e, i) {
    const cls = `hrow${isFailure(e) ? " failure" : ""}${i % 2 ? " odd" : ""}`;
    const el = this.mode === "raw"
      ? h("div", { class: `${cls} raw`, dataset: { version: e.version } }, oneLine(e, 400))
      : h("div", { class: cls, dataset: { version: e.version } },
        h("span", { class: "v" }, e.version), h("span", { class: "t" }, when(e.ts).slice(11)),
        h("span", { class: "ty" }, e.type), h("span", { class: "sm" }, summary(e)));
    el.addEventListener("click", () => this.onShow?.(e));
    return el;
  }

  start() {
    this.draw();
    return this.fill();
  }
}

export function eventDetail(e) {
  return h("div", { class: "event-detail" }, h("h3", {}, `#${e.version} ${e.type}`),
    h("p", { class: "muted" }, `${e.at} · entry ${e.entry_id}`), h("pre", { class: "json" }, json(e)));
}

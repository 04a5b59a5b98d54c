// The executions list: filters, cursor paging, and live: the lifecycle feed
// (/events/stream, with the same filters) makes the page reload what it shows.

import { follow, get, query } from "./api.js";
import { badge, clear, debounce, duration, h, link, when } from "./dom.js";

const STATUSES = ["", "created", "running", "paused", "failed", "completed", "cancelled", "compensating", "compensated"];
const FILTERS = ["status", "workflow", "correlation_id", "since", "until"];

export async function mount(root, _params, search) {
  const filters = Object.fromEntries(FILTERS.map((k) => [k, search.get(k) || ""]));
  const cursors = [search.get("cursor") || null]; // the cursor of each page seen: Newer goes back one
  const liveState = h("span", { class: "live", id: "live-state" }, "connecting…");
  const count = h("span", { class: "muted", id: "exec-count" });
  const body = h("tbody", { id: "executions-body" });
  const pager = h("div", { class: "pager" });
  const error = h("p", { class: "error", role: "alert" });

  const inputs = {
    status: h("select", { name: "status" }, STATUSES.map((s) => h("option", { value: s }, s || "any status"))),
    workflow: h("input", { name: "workflow", placeholder: "workflow (name or id)" }),
    correlation_id: h("input", { name: "correlation_id", placeholder: "correlation id" }),
    since: h("input", { name: "since", placeholder: "since (15m, 2d, ISO)" }),
    until: h("input", { name: "until", placeholder: "until" }),
  };
  for (const k of FILTERS) inputs[k].value = filters[k];
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
    Object.values(inputs), h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", onclick: () => { for (const k of FILTERS) inputs[k].value = ""; apply(); } }, "Clear"));

  clear(root, h("div", { class: "title" }, h("h1", {}, "Executions"), count, liveState), form, error,
    h("table", { class: "grid", id: "executions" },
      h("thead", {}, h("tr", {}, ["Status", "Workflow", "Version", "Correlation id", "Started", "Duration",
        "Current step", "Execution"].map((c) => h("th", {}, c)))), body), pager);

  async function load() {
    const cursor = cursors[cursors.length - 1];
    try {
      const page = await get(`/executions${query({ ...filters, limit: 50, cursor })}`);
      error.textContent = "";
      count.textContent = `${page.count} matching`;
      clear(body, page.items.length ? page.items.map(row) : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No executions.")));
      clear(pager,
        h("button", { type: "button", disabled: cursors.length === 1, onclick: () => { cursors.pop(); load(); } }, "‹ Newer"),
        h("span", { class: "muted" }, ` page ${cursors.length} `),
        h("button", { type: "button", disabled: !page.next_cursor, onclick: () => { cursors.push(page.next_cursor); load(); } }, "Older ›"));
    } catch (err) {
      error.textContent = err.message;
    }
  }

  function apply() {
    for (const k of FILTERS) filters[k] = inputs[k].value.trim();
    cursors.splice(0, cursors.length, null);
    history.replaceState(null, "", `/ui${query(filters)}`);
    restartLive();
    load();
  }

  const refresh = debounce(load, 250);
  let live = null;
  function restartLive() {
    live?.stop();
    const params = { correlation_id: filters.correlation_id, workflow: filters.workflow };
    live = follow((after) => `/events/stream${query({ ...params, after })}`, {
      onMessage: () => refresh(),
      onState: (state, detail) => {
        liveState.textContent = state === "live" ? "● live" : state === "error" ? `live: ${detail?.message || "error"}` : "live ended";
        liveState.dataset.state = state;
      },
    });
  }
  restartLive();
  await load();
  return () => live?.stop();
}

function row(e) {
  const started = e.started_ms ?? e.created_ms;
  const end = e.finished_ms ?? (["completed", "failed", "cancelled", "compensated"].includes(e.status) ? e.updated_ms : Date.now());
  return h("tr", { dataset: { id: e.execution_id } },
    h("td", {}, badge(e.status)),
    h("td", {}, e.workflow ? link(`/ui/definitions/${encodeURIComponent(e.workflow)}`, {}, e.workflow) : ""),
    h("td", {}, e.version || ""),
    h("td", {}, e.correlation_id ? link(`/ui?correlation_id=${encodeURIComponent(e.correlation_id)}`, {}, e.correlation_id) : ""),
    h("td", { title: e.started_at || "" }, when(started)),
    h("td", {}, started ? duration(end - started) : ""),
    h("td", {}, (e.current_steps || []).join(", ") || (e.failed_step ? `failed at ${e.failed_step}` : "")),
    h("td", {}, link(`/ui/executions/${encodeURIComponent(e.execution_id)}`, { class: "mono" }, e.execution_id)));
}

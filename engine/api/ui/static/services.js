// The service registry: each service, its instances and their last health
// checks; "Check now" runs the checks (GET /services/{id}/health).

import { enc, get, query } from "./api.js";
import { badge, clear, h } from "./dom.js";

export async function mount(root) {
  const body = h("div", { id: "services" });
  const error = h("p", { class: "error", role: "alert" });
  clear(root, h("h1", {}, "Services"), error, body);
  const items = [];
  let cursor = null;
  do {
    const page = await get(`/services${query({ limit: 200, cursor })}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  if (!items.length) body.append(h("p", { class: "muted" }, "No services registered (steps with a handler need none)."));
  for (const svc of items) body.append(card(svc, error));
}

function card(svc, error) {
  const instances = h("tbody", {}, svc.instances.map((i) => h("tr", {},
    h("td", { class: "mono" }, i.url), h("td", {}, String(i.weight)), h("td", {}, badge(i.status)),
    h("td", {}, i.checked_at || "never"), h("td", {}, i.output), h("td", {}, String(i.consecutive_failures)))));
  const check = async () => {
    try {
      const result = await get(`/services/${enc(svc.id)}/health`);
      const byUrl = new Map(result.checks.map((c) => [c.url, c]));
      svc.status = result.status;
      for (const i of svc.instances) Object.assign(i, byUrl.get(i.url) || {});
      el.replaceWith(card(svc, error));
    } catch (err) {
      error.textContent = err.message;
    }
  };
  const el = h("section", { class: "card", dataset: { service: svc.name } },
    h("h2", {}, svc.name, " ", badge(svc.status), " ", h("button", { type: "button", class: "small", onclick: check }, "Check now")),
    h("p", { class: "muted" }, `health ${svc.health.path} every ${svc.health.interval_ms} ms · timeout ${svc.timeout_ms ?? "default"} ms`,
      svc.tags.length ? ` · tags ${svc.tags.join(", ")}` : ""),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Instance", "Weight", "Status", "Checked", "Output", "Failures"].map((c) => h("th", {}, c)))), instances));
  return el;
}

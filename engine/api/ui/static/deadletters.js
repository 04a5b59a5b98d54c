// Dead letters: what the workers could not process, with the reason; inspect the
// original fields, replay it to its source stream, or drop it (admin scope).

import { del, enc, get, post, query, session } from "./api.js";
import { clear, h, json, oneLine, when } from "./dom.js";

export async function mount(root) {
  const reason = h("input", { placeholder: "reason contains", id: "dlq-reason" });
  const partition = h("input", { placeholder: "partition (0.. or events)", id: "dlq-partition", size: 18 });
  const body = h("tbody", { id: "dlq-body" });
  const detail = h("aside", { class: "event-box", id: "dlq-detail" }, h("p", { class: "muted" }, "Click a dead letter to inspect it."));
  const result = h("p", { class: "result", role: "status" });
  const count = h("span", { class: "muted", id: "dlq-count" });
  const load = async () => {
    try {
      const page = await get(`/dead-letters${query({ reason_contains: reason.value.trim(), partition: partition.value.trim(), limit: 500 })}`);
      count.textContent = `${page.items.length} dead letter(s)`;
      clear(body, page.items.length ? page.items.map((d) => h("tr", { onclick: () => show(d.ref), class: "clickable" },
        h("td", { class: "mono" }, d.ref), h("td", {}, when(d.ts)), h("td", {}, d.reason), h("td", { class: "mono" }, d.source),
        h("td", {}, d.deliveries ?? ""), h("td", { class: "mono" }, oneLine(d.fields, 80))))
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No dead letters.")));
    } catch (err) {
      result.className = "result error"; result.textContent = err.message;
    }
  };
  const act = async (label, fn) => {
    try {
      const answer = await fn();
      result.className = "result";
      result.textContent = `${label}: done${answer?.new_id ? ` (new entry ${answer.new_id} on ${answer.source})` : ""}`;
      clear(detail, h("p", { class: "muted" }, "Click a dead letter to inspect it."));
      load();
    } catch (err) {
      result.className = "result error"; result.textContent = `${label} refused: ${err.message}`;
    }
  };
  const show = async (ref) => {
    const [p, id] = ref.split("/");
    const path = `/dead-letters/${enc(p)}/${enc(id)}`;
    const d = await get(path);
    const admin = session.can("admin");
    clear(detail, h("h3", {}, d.ref), h("p", {}, d.reason), h("p", { class: "muted" }, `from ${d.source} entry ${d.entry_id}`,
      d.group ? ` · group ${d.group}` : ""),
    admin ? h("div", { class: "buttons" },
      h("button", { type: "button", id: "dlq-replay", disabled: !d.replayable, title: d.refusal || "",
        onclick: () => act(`Replay ${d.ref}`, () => post(`${path}/replay`)) }, "Replay"),
      h("button", { type: "button", id: "dlq-drop", class: "danger",
        onclick: () => { if (confirm(`Drop ${d.ref} for good?`)) act(`Drop ${d.ref}`, () => del(path)); } }, "Drop"))
      : h("p", { class: "muted" }, "Replay and drop need the admin scope."),
    d.refusal ? h("p", { class: "error" }, d.refusal) : null,
    h("pre", { class: "json" }, json(d.fields)));
  };
  clear(root, h("div", { class: "title" }, h("h1", {}, "Dead letters"), count),
    h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); load(); } }, reason, partition, h("button", { type: "submit" }, "Filter")),
    result,
    h("div", { class: "two" }, h("table", { class: "grid", id: "dlq" },
      h("thead", {}, h("tr", {}, ["Ref", "When", "Reason", "Source", "Deliveries", "Fields"].map((c) => h("th", {}, c)))), body), detail));
  await load();
}

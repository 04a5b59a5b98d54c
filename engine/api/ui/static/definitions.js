// Definitions: every workflow; one workflow's versions, its graph and its source.

import { enc, get, query } from "./api.js";
import { badge, clear, h, json, link, when } from "./dom.js";
import { graphSvg } from "./graph.js";

export async function mount(root, { name }, search) {
  return name ? one(root, name, search.get("version")) : list(root);
}

async function list(root) {
  const body = h("tbody", { id: "definitions-body" });
  const pager = h("div", { class: "pager" });
  clear(root, h("h1", {}, "Definitions"), h("table", { class: "grid", id: "definitions" },
    h("thead", {}, h("tr", {}, ["Name", "Latest version", "Versions", "Active", "Updated", "Description"].map((c) => h("th", {}, c)))), body), pager);
  const load = async (cursor) => {
    const page = await get(`/workflows${query({ limit: 100, cursor })}`);
    clear(body, page.items.length ? page.items.map((w) => h("tr", {},
      h("td", {}, link(`/ui/definitions/${enc(w.name)}`, {}, w.name)), h("td", {}, w.version), h("td", {}, String(w.versions)),
      h("td", {}, w.active ? "yes" : badge("inactive")), h("td", {}, w.updated_at || ""), h("td", {}, w.description)))
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No definitions registered.")));
    clear(pager, page.next_cursor ? h("button", { type: "button", onclick: () => load(page.next_cursor) }, "More ›") : null);
  };
  await load(null);
}

async function one(root, name, version) {
  const [versions, workflow, steps] = await Promise.all([
    get(`/workflows/${enc(name)}/versions`),
    get(`/workflows/${enc(name)}${query({ version })}`),
    get(`/workflows/${enc(name)}/steps${query({ version })}`),
  ]);
  const picker = h("ul", { class: "versions", id: "versions" }, versions.versions.map((v) => h("li", {},
    v.version === workflow.version ? h("strong", {}, v.version) : link(`/ui/definitions/${enc(name)}?version=${enc(v.version)}`, {}, v.version),
    v.latest ? " (latest)" : "", ` ${v.created_at || ""}`)));
  clear(root,
    h("div", { class: "title" }, h("h1", {}, workflow.name, " ", h("span", { class: "muted" }, `v${workflow.version}`)),
      workflow.active ? null : badge("inactive")),
    h("p", {}, workflow.description),
    h("p", {}, link(`/ui?workflow=${enc(workflow.name)}`, {}, "Its executions ›")),
    h("div", { class: "two" }, h("section", {}, h("h2", {}, "Versions"), picker),
      h("section", {}, h("h2", {}, "Graph"), h("div", { class: "graph-box", id: "graph" }, graphSvg(steps)))),
    h("section", {}, h("h2", {}, "Steps"), h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, ["Step", "Type", "Depends on", "Service / event", "Retries", "Timeout"].map((c) => h("th", {}, c)))),
      h("tbody", {}, steps.map((st) => h("tr", {}, h("td", {}, st.name, st.compensation ? h("span", { class: "tag" }, "compensation") : null),
        h("td", {}, st.type), h("td", {}, st.depends_on.join(", ")),
        h("td", {}, st.service ? `${st.service} ${st.endpoint || ""}` : st.event_type || ""),
        h("td", {}, String(st.retry_policy.max_attempts)), h("td", {}, st.timeout_ms ? `${st.timeout_ms} ms` : "")))))),
    h("section", {}, h("h2", {}, "Source"), h("pre", { class: "json source", id: "definition-source" }, json(workflow.definition))),
    h("p", { class: "muted" }, `registered ${when(Date.parse(workflow.version_created_at || "")) || "?"}`));
}

// Each step with its attempts: kind, status, times, the service's response status,
// and per attempt its input, output and error (shown on demand).

import { badge, duration, h, json, link, when } from "./dom.js";

function detail(label, value) {
  if (value === null || value === undefined) return null;
  return h("details", { class: "value" }, h("summary", {}, label), h("pre", { class: "json" }, json(value)));
}

function attemptRow(a) {
  const code = a.call?.status;
  return h("tr", { class: `attempt st-${a.status.replace(/[^a-z_]/g, "")}`, dataset: { attempt: a.attempt } },
    h("td", {}, `#${a.attempt}`),
    h("td", {}, a.kind, a.event_type ? ` (${a.event_type})` : "",
      a.child_id ? [" ", link(`/ui/executions/${encodeURIComponent(a.child_id)}`, {}, a.child_id)] : ""),
    h("td", {}, badge(a.status)),
    h("td", {}, when(a.started_ms)),
    h("td", {}, duration(a.duration_ms)),
    h("td", { class: code >= 400 ? "error" : "" }, code ? `HTTP ${code}` : ""),
    h("td", { class: "values" }, detail("input", a.input), detail("output", a.output), detail("error", a.error),
      detail("call", a.call), a.retry_ms ? h("div", { class: "muted" }, `retry due ${when(a.retry_ms)}`) : null,
      a.reason ? h("div", { class: "muted" }, a.reason) : null));
}

export function stepsPanel(steps, { selected, compensation = new Set() } = {}) {
  return h("div", { class: "steps", id: "steps" }, steps.map((st) =>
    h("section", { class: `step${selected === st.name ? " selected" : ""}`, id: `step-${st.name}`, dataset: { step: st.name } },
      h("h3", {}, st.name, " ", badge(st.status), compensation.has(st.name) ? h("span", { class: "tag" }, "compensation") : null,
        h("span", { class: "muted" }, ` ${st.attempts.length} attempt(s)`)),
      st.attempts.length
        ? h("table", { class: "grid attempts" },
          h("thead", {}, h("tr", {}, ["", "Kind", "Status", "Started", "Took", "Response", "Values"].map((c) => h("th", {}, c)))),
          h("tbody", {}, st.attempts.map(attemptRow)))
        : h("p", { class: "muted" }, "Not run yet."))));
}

// One execution: its header, the definition's graph coloured by step status, the
// timeline of attempts, each step's attempts with their values, the history, and
// the actions. Live over the execution's SSE stream: every event it sends makes
// the page re-read the execution and its steps (debounced) and grow the history.

import { enc, follow, get } from "./api.js";
import { actionsPanel } from "./actions.js";
import { badge, clear, debounce, duration, h, json, link, when } from "./dom.js";
import { graphSvg } from "./graph.js";
import { eventDetail, HistoryView } from "./history.js";
import { stepsPanel } from "./steps.js";
import { timelineSvg } from "./timeline.js";

const FINAL = new Set(["completed", "cancelled", "compensated"]);

export async function mount(root, { id }) {
  const base = `/executions/${enc(id)}`;
  const header = h("section", { class: "header", id: "execution-header" });
  const graph = h("div", { class: "graph-box", id: "graph" });
  const timeline = h("div", { class: "timeline-box", id: "timeline" });
  const steps = h("div", { id: "steps-box" });
  const actions = h("div", { id: "actions-box" });
  const detail = h("aside", { class: "event-box", id: "event-detail" }, h("p", { class: "muted" }, "Click an event to see it whole."));
  const liveState = h("span", { class: "live", id: "live-state" }, "connecting…");
  const error = h("p", { class: "error", role: "alert" });
  const state = { execution: null, steps: [], definition: [], selected: null, live: null };

  // The history's first page is asked for at once, beside the execution: it does not wait for it.
  const history = new HistoryView(id, { onShow: (e) => clear(detail, eventDetail(e)) });
  const historyDone = history.start();
  const execution = await get(base);
  state.execution = execution;
  history.grow(execution.events);

  clear(root,
    h("div", { class: "title" }, h("h1", {}, "Execution ", h("span", { class: "mono" }, id)), liveState),
    error, header,
    h("section", {}, h("h2", {}, "Graph"), graph),
    h("section", {}, h("h2", {}, "Actions"), actions),
    h("section", {}, h("h2", {}, "Timeline"), timeline),
    h("section", {}, h("h2", {}, "Steps and attempts"), steps),
    h("div", { class: "two history-two" }, history.element, detail));

  const compensation = () => new Set(state.definition.filter((st) => st.compensation).map((st) => st.name));
  const select = (name) => {
    state.selected = name;
    draw();
    document.getElementById(`step-${name}`)?.scrollIntoView({ block: "nearest" });
  };

  function draw() {
    const e = state.execution;
    const statusOf = new Map(state.steps.map((st) => [st.name, st.status]));
    for (const st of e.steps) if (!statusOf.has(st.name) || statusOf.get(st.name) === "pending") statusOf.set(st.name, st.status);
    clear(header, headerOf(e));
    const defined = state.definition.length ? state.definition
      : state.steps.map((st) => ({ name: st.name, type: "step", depends_on: [], compensation: false }));
    clear(graph, graphSvg(defined, (n) => statusOf.get(n), { onSelect: select, selected: state.selected }));
    clear(timeline, timelineSvg(state.steps, { start: e.created_ms, end: e.finished_ms ?? Date.now(),
      compensation: compensation(), onSelect: select, openChild: (child) => { location.href = `/ui/executions/${enc(child)}`; } }));
    clear(steps, stepsPanel(state.steps, { selected: state.selected, compensation: compensation() }));
    clear(actions, actionsPanel(e, state.steps, { selected: state.selected, compensation: compensation(), onDone: () => { refresh(); restartLive(); } }));
  }

  async function reload() {
    try {
      const [e, st] = await Promise.all([get(base), get(`${base}/steps`)]);
      state.execution = e;
      state.steps = st.steps;
      error.textContent = "";
      history.grow(e.events);
      draw();
    } catch (err) {
      error.textContent = err.message;
    }
  }
  const refresh = debounce(reload, 150);

  const version = execution.version ? `?version=${enc(execution.version)}` : "";
  const [definition, first, lastId] = await Promise.all([
    execution.workflow ? get(`/workflows/${enc(execution.workflow)}/steps${version}`).catch(() => []) : [],
    get(`${base}/steps`),
    get(`${base}/state`).then((s) => s.last_entry_id).catch(() => null),
  ]);
  state.definition = definition;
  state.steps = first.steps;
  draw();
  await historyDone;

  // The stream begins after what was just read, so a long history is not sent again.
  function restartLive() {
    const from = state.live?.last || lastId;
    state.live?.stop();
    state.live = follow((after) => `${base}/stream${after ? `?after=${enc(after)}` : ""}`, {
      lastId: from,
      onMessage: () => refresh(),
      onState: (s, d) => {
        liveState.dataset.state = s;
        liveState.textContent = s === "live" ? "● live" : s === "closed" ? `stream closed: ${d?.reason || "final"}` : `live: ${d?.message || s}`;
      },
    });
  }
  restartLive();
  return () => state.live?.stop();
}

function headerOf(e) {
  const end = e.finished_ms ?? (FINAL.has(e.status) ? e.updated_ms : null);
  const rows = [
    ["Status", badge(e.status)],
    ["Workflow", e.workflow ? link(`/ui/definitions/${enc(e.workflow)}`, {}, e.workflow) : "", e.version ? ` v${e.version}` : ""],
    ["Correlation id", e.correlation_id ? link(`/ui?correlation_id=${enc(e.correlation_id)}`, {}, e.correlation_id) : "—"],
    ["Created", when(e.created_ms)],
    ["Updated", when(e.updated_ms)],
    ["Finished", end ? `${when(end)} (took ${duration(end - e.created_ms)})` : "—"],
    ["Current", (e.current_steps || []).join(", ") || "—"],
    ["Events", String(e.events), e.source === "read_model" ? " (stream retired: read model)" : ""],
  ];
  return h("div", { class: "header-grid" },
    h("dl", {}, rows.map(([k, ...v]) => [h("dt", {}, k), h("dd", {}, ...v)])),
    h("div", { class: "values" },
      h("details", { open: true }, h("summary", {}, "Input (context)"), h("pre", { class: "json", id: "execution-input" }, json(e.context))),
      e.error ? h("details", { open: true }, h("summary", {}, `Error${e.failed_step ? ` at ${e.failed_step}` : ""}`),
        h("pre", { class: "json error", id: "execution-error" }, json(e.error))) : null,
      e.output !== null && e.output !== undefined
        ? h("details", { open: true }, h("summary", {}, "Output"), h("pre", { class: "json", id: "execution-output" }, json(e.output))) : null));
}

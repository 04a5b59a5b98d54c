// The execution's actions, offered when the token's scope allows them and the
// execution's status accepts them: cancel, pause, resume, retry from a step with
// edited input, signal, publish an event. JSON fields are parsed as they are
// typed; an invalid one names its error and keeps its button disabled.

import { enc, post, put, session } from "./api.js";
import { h, json } from "./dom.js";

const ACCEPTS = {
  cancel: ["created", "running", "paused", "failed", "compensating"],
  pause: ["running"], resume: ["paused"], retry: ["failed"], signal: ["running", "paused"],
};

export function jsonEditor(id, initial, { allowEmpty = true } = {}) {
  const area = h("textarea", { id, class: "json-editor", rows: 6, spellcheck: "false" });
  area.value = initial === undefined ? "" : json(initial);
  const message = h("div", { class: "json-status", id: `${id}-status`, role: "status" });
  const editor = { element: h("div", { class: "editor" }, area, message), area, valid: true, value: undefined, listeners: [] };
  const check = () => {
    const text = area.value.trim();
    if (!text) {
      editor.valid = allowEmpty; editor.value = undefined;
      message.textContent = allowEmpty ? "empty: unchanged" : "a JSON value is needed";
    } else {
      try {
        editor.value = JSON.parse(text); editor.valid = true; message.textContent = "valid JSON";
      } catch (err) {
        editor.valid = false; message.textContent = `invalid JSON: ${err.message}`;
      }
    }
    message.classList.toggle("error", !editor.valid);
    area.setAttribute("aria-invalid", String(!editor.valid));
    for (const fn of editor.listeners) fn(editor.valid);
  };
  area.addEventListener("input", check);
  check();
  return editor;
}

function guarded(button, ...editors) {
  const update = () => { button.disabled = editors.some((e) => !e.valid); };
  for (const e of editors) e.listeners.push(update);
  update();
  return button;
}

export function actionsPanel(execution, steps, { onDone, selected, compensation = new Set() }) {
  const id = execution.execution_id, status = execution.status;
  const out = h("div", { class: "actions", id: "actions" });
  const result = h("p", { class: "result", id: "action-result", role: "status" });
  const run = async (label, fn) => {
    result.className = "result"; result.textContent = `${label}…`;
    try {
      const answer = await fn();
      result.textContent = `${label}: ${answer?.applied === false ? "sent (not applied yet)" : "done"}${answer?.status ? `, now ${answer.status}` : ""}`;
      onDone?.();
    } catch (err) {
      result.className = "result error"; result.textContent = `${label} refused: ${err.message}`;
    }
  };
  if (!session.can("write")) {
    out.append(h("p", { class: "muted" }, "Actions need a token with the write scope."));
    return out;
  }
  const buttons = h("div", { class: "buttons" });
  for (const [verb, label] of [["cancel", "Cancel"], ["pause", "Pause"], ["resume", "Resume"]]) {
    if (ACCEPTS[verb].includes(status)) {
      buttons.append(h("button", { type: "button", id: `action-${verb}`, class: verb === "cancel" ? "danger" : "",
        onclick: () => run(label, () => put(`/executions/${enc(id)}/${verb}`, {})) }, label));
    }
  }
  out.append(buttons);

  if (ACCEPTS.retry.includes(status)) {
    const names = steps.map((st) => st.name).filter((n) => !compensation.has(n)); // the API refuses those
    const start = selected && names.includes(selected) ? selected : execution.failed_step || names[0];
    const inputOf = (name) => {
      const st = steps.find((x) => x.name === name);
      const last = st?.attempts?.filter((a) => a.kind !== "notification").at(-1);
      return last?.input;
    };
    const picker = h("select", { id: "retry-step" }, names.map((n) => h("option", { value: n }, n)));
    picker.value = start;
    const editor = jsonEditor("retry-input", inputOf(start));
    picker.addEventListener("change", () => { editor.area.value = json(inputOf(picker.value)); editor.area.dispatchEvent(new Event("input")); });
    const send = guarded(h("button", { type: "button", id: "retry-send", onclick: () => run(`Retry from ${picker.value}`,
      () => post(`/executions/${enc(id)}/steps/${enc(picker.value)}/retry`, editor.value === undefined ? {} : { input: editor.value })) },
    "Retry from step"), editor);
    out.append(h("fieldset", { class: "retry" }, h("legend", {}, "Retry from a step (input: edit, or leave empty to keep it)"),
      h("label", {}, "Step ", picker), editor.element, send));
  }
  if (ACCEPTS.signal.includes(status)) {
    const name = h("input", { id: "signal-name", placeholder: "signal name", required: true });
    const editor = jsonEditor("signal-payload", undefined);
    const send = guarded(h("button", { type: "button", id: "signal-send", onclick: () => {
      if (!name.value.trim()) { result.className = "result error"; result.textContent = "a signal needs a name"; return; }
      run(`Signal ${name.value}`, () => post(`/executions/${enc(id)}/signal`, { name: name.value.trim(), payload: editor.value ?? null }));
    } }, "Send signal"), editor);
    out.append(h("fieldset", {}, h("legend", {}, "Signal"), name, editor.element, send));
  }
  const type = h("input", { id: "event-type", placeholder: "event type, e.g. agent.task_completed" });
  const correlation = h("input", { id: "event-correlation", placeholder: "correlation id" });
  correlation.value = execution.correlation_id || "";
  const data = jsonEditor("event-data", {}, { allowEmpty: false });
  const publish = guarded(h("button", { type: "button", id: "event-send", onclick: () => {
    if (!type.value.trim()) { result.className = "result error"; result.textContent = "an event needs a type"; return; }
    run(`Publish ${type.value}`, () => post("/events", { type: type.value.trim(), data: data.value,
      ...(correlation.value.trim() ? { correlation_id: correlation.value.trim() } : {}) }));
  } }, "Publish event"), data);
  out.append(h("fieldset", {}, h("legend", {}, "Publish an event"), type, correlation, data.element, publish), result);
  return out;
}

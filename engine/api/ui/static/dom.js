// DOM helpers. Every piece of data reaches the page as a text node or an
// attribute value set through the DOM, never as markup: nothing an execution
// carries can become HTML or script.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.setAttribute("class", value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value" && "value" in el) el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el, ...children) {
  el.replaceChildren();
  return fill(el, {}, children);
}

export function link(href, attrs, ...children) {
  return h("a", { href, "data-link": "", ...attrs }, ...children);
}

export function json(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

export function oneLine(value, max = 200) {
  const text = value === undefined ? "" : JSON.stringify(value);
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

export function when(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").replace("Z", "");
}

export function ago(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return "";
  return duration(Math.max(0, now - ms)) + " ago";
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.round(s - m * 60)} s`;
  const hours = Math.floor(m / 60);
  return `${hours} h ${m - hours * 60} m`;
}

export function badge(status) {
  return h("span", { class: `badge st-${String(status || "none").replace(/[^a-z_]/g, "")}` }, status || "none");
}

export function pre(value, cls = "json") {
  return h("pre", { class: cls }, typeof value === "string" ? value : json(value));
}

// A debounced caller: many live messages in a burst cost one refresh.
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

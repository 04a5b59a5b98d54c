// The UI's entry: the router (History API paths under /ui), the navigation and
// the token prompt. Each page module exports mount(root, params) and may return
// a function that stops what it started (live streams, timers).

import { onTokenNeeded, probe, session } from "./api.js";
import { clear, h } from "./dom.js";

const ROUTES = [
  [/^\/ui\/?$/, "executions", () => import("./executions.js")],
  [/^\/ui\/executions\/(?<id>[^/]+)$/, "executions", () => import("./execution.js")],
  [/^\/ui\/definitions\/?$/, "definitions", () => import("./definitions.js")],
  [/^\/ui\/definitions\/(?<name>[^/]+)$/, "definitions", () => import("./definitions.js")],
  [/^\/ui\/services\/?$/, "services", () => import("./services.js")],
  [/^\/ui\/dead-letters\/?$/, "dead-letters", () => import("./deadletters.js")],
  [/^\/ui\/workers\/?$/, "workers", () => import("./workers.js")],
];

const root = document.getElementById("app");
let stopPage = null;

async function render() {
  stopPage?.();
  stopPage = null;
  const path = location.pathname;
  const found = ROUTES.map(([re, nav, load]) => [path.match(re), nav, load]).find(([m]) => m);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", found?.[1] === a.dataset.nav);
  if (!found) {
    clear(root, h("h1", {}, "Not found"), h("p", {}, `No page at ${path}.`));
    return;
  }
  const [match, , load] = found;
  const params = Object.fromEntries(Object.entries(match.groups || {}).map(([k, v]) => [k, decodeURIComponent(v)]));
  const page = await load();
  clear(root);
  try {
    stopPage = (await page.mount(root, params, new URLSearchParams(location.search))) || null;
  } catch (err) {
    clear(root, h("h1", {}, "Could not load this page"), h("p", { class: "error" }, err.message));
  }
}

export function navigate(href, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", href);
  else history.pushState(null, "", href);
  render();
}

document.addEventListener("click", (event) => {
  const a = event.target.closest?.("a[data-link]");
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", render);

// The token prompt: one at a time; resolves true once a new token was given.
const dialog = document.getElementById("token-dialog");
let pending = null;
function promptToken(problem) {
  if (pending) return pending;
  document.getElementById("token-why").textContent = session.token ? problem.detail || "" : "";
  const input = document.getElementById("token-input");
  input.value = "";
  pending = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      pending = null;
      const value = input.value.trim();
      if (value) session.token = value;
      resolve(Boolean(value));
    }, { once: true });
  });
  dialog.showModal();
  return pending;
}
onTokenNeeded(promptToken);

function who() {
  const el = document.getElementById("who");
  if (session.mode === "open") {
    clear(el, h("span", { class: "muted" }, "no auth (loopback)"));
    return;
  }
  const scopes = [...session.scopes()];
  if (!session.token) {
    clear(el, "not signed in ", h("button", { type: "button", class: "small",
      onclick: async () => { if (await promptToken({})) render(); } }, "Sign in"));
    return;
  }
  clear(el, `scopes: ${scopes.join(" ") || "none"} `,
    h("button", { type: "button", class: "small", id: "sign-out", onclick: () => { session.token = null; render(); } }, "Sign out"));
}
session.onChange(who);

probe().catch(() => "open").then(() => { who(); render(); });

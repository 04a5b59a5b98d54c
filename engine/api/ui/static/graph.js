// A definition's graph as SVG: steps in columns by dependency depth, edges from
// each dependency, each step coloured by its status in the execution (if any).
// Compensation steps sit in a band of their own below the main flow.

import { s } from "./dom.js";

const W = 168, H = 40, GX = 56, GY = 18, PAD = 12;

function depths(steps) {
  const byName = new Map(steps.map((st) => [st.name, st]));
  const memo = new Map();
  const depth = (name, seen = new Set()) => {
    if (memo.has(name)) return memo.get(name);
    if (seen.has(name)) return 0; // a cycle cannot be registered; stay safe anyway
    seen.add(name);
    const st = byName.get(name);
    const deps = (st?.depends_on || []).filter((d) => byName.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map((x) => depth(x, seen))) : 0;
    memo.set(name, d);
    return d;
  };
  for (const st of steps) depth(st.name);
  return memo;
}

export function graphSvg(steps, statusOf = () => null, { onSelect, selected } = {}) {
  const depth = depths(steps);
  const place = new Map();
  const bands = [steps.filter((st) => !st.compensation), steps.filter((st) => st.compensation)];
  let top = PAD;
  let width = 0;
  for (const band of bands) {
    if (!band.length) continue;
    const columns = new Map();
    for (const st of band) {
      const d = depth.get(st.name) || 0;
      if (!columns.has(d)) columns.set(d, []);
      columns.get(d).push(st);
    }
    const ds = [...columns.keys()].sort((a, b) => a - b);
    let rows = 0;
    ds.forEach((d, col) => {
      columns.get(d).forEach((st, row) => place.set(st.name, { x: PAD + col * (W + GX), y: top + row * (H + GY), st }));
      rows = Math.max(rows, columns.get(d).length);
    });
    width = Math.max(width, PAD * 2 + ds.length * (W + GX) - GX);
    top += rows * (H + GY) + GY;
  }
  const height = top + PAD - GY;
  const svg = s("svg", { class: "graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": "workflow graph" });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
  for (const { x, y, st } of place.values()) {
    for (const dep of st.depends_on || []) {
      const from = place.get(dep);
      if (!from) continue;
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = x, y2 = y + H / 2, mx = (x1 + x2) / 2;
      svg.append(s("path", { class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)" }));
    }
  }
  for (const { x, y, st } of place.values()) {
    const status = statusOf(st.name) || "pending";
    const node = s("g", { class: `node st-${status.replace(/[^a-z_]/g, "")}${st.compensation ? " compensation" : ""}${selected === st.name ? " selected" : ""}`,
      transform: `translate(${x} ${y})`, tabindex: 0, "data-step": st.name, role: "button" },
    s("title", {}, `${st.name} (${st.type}): ${status}`),
    s("rect", { width: W, height: H, rx: 6 }),
    s("text", { x: 10, y: 17, class: "name" }, st.name.length > 22 ? st.name.slice(0, 21) + "…" : st.name),
    s("text", { x: 10, y: 32, class: "sub" }, `${st.type}${st.compensation ? " · compensation" : ""} · ${status}`));
    if (onSelect) {
      node.addEventListener("click", () => onSelect(st.name));
      node.addEventListener("keydown", (e) => { if (e.key === "Enter") onSelect(st.name); });
    }
    svg.append(node);
  }
  return svg;
}

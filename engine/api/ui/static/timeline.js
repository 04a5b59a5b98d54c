// The execution's timeline as SVG: a row per step, a bar per attempt from its
// start to its end (or now), its kind shown by its style: a task, a wait for an
// event, a timer (delay), a sub-workflow (linked), a skip; the backoff before a
// retry as a dashed line to the time it is due; compensation steps marked.

import { duration, s, when } from "./dom.js";

const ROW = 26, LABEL = 190, PAD = 8, WIDTH = 1100;

export function timelineSvg(steps, { start, end, compensation = new Set(), onSelect, openChild }) {
  const rows = steps.filter((st) => st.attempts.length);
  const times = rows.flatMap((st) => st.attempts.flatMap((a) => [a.started_ms, a.completed_ms, a.retry_ms])).filter(Boolean);
  const t0 = Math.min(start ?? Infinity, ...times);
  const t1 = Math.max(end ?? 0, ...times, t0 + 1);
  const span = t1 - t0;
  const x = (t) => LABEL + ((t - t0) / span) * (WIDTH - LABEL - PAD);
  const height = PAD * 2 + Math.max(1, rows.length) * ROW + 18;
  const svg = s("svg", { class: "timeline", viewBox: `0 0 ${WIDTH} ${height}`, width: "100%", height,
    preserveAspectRatio: "none", role: "img", "aria-label": "timeline" });
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (span * i) / 4, gx = x(t);
    svg.append(s("line", { class: "tick", x1: gx, x2: gx, y1: PAD, y2: height - 18 }),
      s("text", { class: "tick-label", x: gx, y: height - 4, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
        i === 0 ? when(t0).slice(11) : `+${duration(t - t0)}`));
  }
  if (!rows.length) svg.append(s("text", { x: LABEL, y: PAD + 16, class: "muted" }, "No attempts yet."));
  rows.forEach((st, i) => {
    const y = PAD + i * ROW;
    const label = s("text", { x: 4, y: y + 17, class: `row-label${compensation.has(st.name) ? " compensation" : ""}` },
      (compensation.has(st.name) ? "↺ " : "") + st.name);
    if (onSelect) label.addEventListener("click", () => onSelect(st.name));
    svg.append(label);
    for (const a of st.attempts) {
      const from = a.started_ms ?? a.completed_ms ?? t0;
      const to = a.completed_ms ?? (a.status === "running" || a.status === "waiting" || a.status === "scheduled" ? t1 : from);
      const bx = x(from), bw = Math.max(3, x(to) - bx);
      const cls = `bar kind-${a.kind} st-${a.status.replace(/[^a-z_]/g, "")}${compensation.has(st.name) ? " compensation" : ""}`;
      const code = a.call?.status ? ` · HTTP ${a.call.status}` : "";
      const what = { task: "task", event_wait: "waits for " + (a.event_type || "an event"), delay: "timer",
        child: "sub-workflow " + (a.child_id || ""), skipped: "skipped", notification: "notification" }[a.kind] || a.kind;
      const bar = s("rect", { class: cls, x: bx, y: y + 4, width: bw, height: ROW - 8, rx: 3,
        "data-step": st.name, "data-attempt": a.attempt },
      s("title", {}, `${st.name} #${a.attempt}: ${what}, ${a.status}${code} (${duration(a.duration_ms ?? (to - from))})`));
      bar.addEventListener("click", () => (a.kind === "child" && a.child_id && openChild ? openChild(a.child_id) : onSelect?.(st.name, a.attempt)));
      svg.append(bar);
      if (a.attempt > 1 || st.attempts.length > 1) {
        svg.append(s("text", { class: "bar-label", x: bx + 3, y: y + 16 }, `#${a.attempt}`));
      }
      if (a.retry_ms && a.completed_ms) {
        svg.append(s("line", { class: "backoff", x1: x(a.completed_ms), x2: x(a.retry_ms), y1: y + ROW / 2, y2: y + ROW / 2 },
          s("title", {}, `retry due ${when(a.retry_ms)}`)));
      }
    }
  });
  return svg;
}

// Workers: the live processes (heartbeats, partitions held, queues served,
// counters), consumer-group lag and the dead-letter counts, refreshed every 2 s
// (heartbeats are a hash per worker, not a stream: there is nothing to follow).

import { get } from "./api.js";
import { clear, duration, h, link, when } from "./dom.js";

export async function mount(root) {
  const workers = h("tbody", { id: "workers-body" });
  const lag = h("tbody", { id: "lag-body" });
  const dlq = h("p", { id: "dlq-counts" });
  const error = h("p", { class: "error", role: "alert" });
  const stamp = h("span", { class: "muted" });
  clear(root, h("div", { class: "title" }, h("h1", {}, "Workers"), stamp), error,
    h("table", { class: "grid", id: "workers" }, h("thead", {}, h("tr", {}, ["Consumer", "Role", "Host / pid", "Version", "Up",
      "Last beat", "Partitions", "Services", "Counters"].map((c) => h("th", {}, c)))), workers),
    h("div", { class: "two" },
      h("section", {}, h("h2", {}, "Consumer groups"), h("table", { class: "grid", id: "lag" },
        h("thead", {}, h("tr", {}, ["Group", "Partition", "Queue", "Lag", "Pending"].map((c) => h("th", {}, c)))), lag)),
      h("section", {}, h("h2", {}, "Dead letters"), dlq)));
  const load = async () => {
    try {
      const view = await get("/workers");
      error.textContent = "";
      stamp.textContent = `${view.partitions} partitions · as of ${when(view.now_ms).slice(11)}`;
      clear(workers, view.workers.length ? view.workers.map((w) => h("tr", {},
        h("td", { class: "mono" }, w.consumer), h("td", {}, w.role), h("td", {}, `${w.host} / ${w.pid}`), h("td", {}, w.version),
        h("td", {}, duration(view.now_ms - w.started_ms)), h("td", {}, `${duration(w.age_ms)} ago`),
        h("td", {}, w.partitions.join(", ")), h("td", {}, w.services.map((q) => (w.http.includes(q) ? `${q} (http)` : q)).join(", ")),
        h("td", { class: "mono small" }, Object.entries(w.counters).filter(([, v]) => v).map(([k, v]) => `${k}=${v}`).join(" "))))
        : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No live workers.")));
      clear(lag, view.lag.map((g) => h("tr", { class: g.lag > 0 || g.pending > 0 ? "busy" : "" },
        h("td", {}, g.group), h("td", {}, g.partition ?? ""), h("td", {}, g.queue ?? ""),
        h("td", {}, g.lag < 0 ? "unknown" : String(g.lag)), h("td", {}, String(g.pending)))));
      const total = Object.values(view.dead_letters).reduce((a, b) => a + b, 0);
      clear(dlq, `${total} in all: `, Object.entries(view.dead_letters).map(([p, n]) => `${p}: ${n}`).join(" · "), " ",
        link("/ui/dead-letters", {}, "Inspect ›"));
    } catch (err) {
      error.textContent = err.message;
    }
  };
  await load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}

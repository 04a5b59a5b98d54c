"""The "HTTP service calls" section of bench/RESULTS.md from http_results.json,
between two marker comments, so `python -m bench.http_calls` replaces only its own
section (after `python -m bench report` rewrites the whole file,
`python -m bench.http_calls report` puts it back)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .harness import replace_section, summary, table_row

BEGIN = "<!-- bench.http_calls: begin (python -m bench.http_calls writes this section) -->"
END = "<!-- bench.http_calls: end -->"
WHO = ("service", "engine", "activities", "redis", "load_generator", "other")

# Read from the full run of 2026-12-03 14:25 UTC and the quiet one of 14:05; edit after a new full run
# (shown only under a full run's figures).
NOTES: list[str] = [
    "What limits the HTTP path here (run of 2026-12-03 15:05 UTC on a quiet box; an earlier run at 14:25 with about "
    "one core taken by other work gave 39% and 20%):",
    "",
    "- **Neither goal is met: HTTP is 46% of the Python-handler path (goal 50%) and 23% of the bare client loop "
    "(goal 60%).** The box is CPU-bound, not slot-bound (FOLDFLOW_CONCURRENCY=32 gave the same HTTP steps/s as 64). "
    "The throughput ratio follows the CPU per step of the whole pipeline: 0.83 ms with HTTP (activity worker 0.36, "
    "engine 0.22, Redis 0.10, the service 0.10, load generator 0.05) against 0.34 ms with handlers (0.09, 0.16, "
    "0.07, none, 0.02).",
    "- **The 60%-of-ceiling goal is out of reach on this box whatever the executor does**: the Python-handler path, "
    "which makes no HTTP call at all, is itself only 51% of the ceiling, because the bare loop costs 0.18 ms of CPU "
    "per request (client 0.11, service 0.07) and the engine worker and Redis alone cost 0.23 ms per step.",
    "- **The executor's own time is small before the request** (p50 0.02 ms, p99 0.4 ms: the event loop's turns "
    "under load) **and all but ~0.1 ms of `after` is the result script awaited** (4a): the same batched report "
    "(engine/store/batching.py) the handler path makes, waiting for the batch in flight. It sets the p99, not the "
    "throughput.",
    "- **Where the activity worker's time goes** (py-spy, `--profile`, a separate run at 2,267 steps/s): aiohttp's "
    "request machinery (`ClientSession._request` 25% inclusive: writes, timeout handles, the connector) and the event "
    "loop itself (7% own) dominate; the executor's own functions are 2-3% each (`build` 2.4%, `call` 2.3%, `_hops` "
    "2.6%), the result reports 8%. Changed after the first run (43% -> 46% on a quiet box): the address policy "
    "caches its verdict per host, the two Prometheus children are bound once, a request that follows no redirect "
    "uses aiohttp's own total timeout instead of a second `asyncio.timeout`, and hop-by-hop, `Date` and `Server` "
    "headers are no longer recorded in the step's `call`.",
    "- **What is left**: the engine's extra 0.05 ms per step folds and writes the `call` record (status, headers, "
    "the start of the body: the step history the issue asks for); aiohttp's per-request CPU (0.11 ms in the bare "
    "loop) is the floor of any executor built on it. A second executor process would add throughput only on a box "
    "with cores to spare.",
]


def _median(runs: list[dict[str, Any]], field: str) -> float | None:
    s = summary([r[field] for r in runs])
    return s["median"] if s else None


def figures(res: dict[str, Any]) -> dict[str, float | None]:
    """Every figure the section reports, by name (the smoke test checks each is there)."""
    ceiling, handlers, http = res.get("ceiling") or [], res.get("handlers") or [], res.get("http") or []
    out: dict[str, float | None] = {
        "ceiling_requests_per_s": _median(ceiling, "per_s") if ceiling else None,
        "handler_steps_per_s": _median(handlers, "steps_per_s") if handlers else None,
        "http_steps_per_s": _median(http, "steps_per_s") if http else None,
    }
    for phase in ("before", "after", "total", "report", "call"):
        for q in (50, 99):
            key = f"{phase}_p{q}_ms"
            vals = [r["overhead"][key] for r in http if r["overhead"].get(key) is not None]
            out[f"overhead_{key}"] = summary(vals)["median"] if vals else None
    h, c, x = out["handler_steps_per_s"], out["ceiling_requests_per_s"], out["http_steps_per_s"]
    out["http_over_handler"] = x / h if x and h else None
    out["http_over_ceiling"] = x / c if x and c else None
    return out


def _statuses(r: dict[str, Any]) -> str:
    text = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
    if r.get("errors"):
        text += "; errors " + ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
    return text


def _rows(res: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    ceiling, handlers, http = res.get("ceiling") or [], res.get("handlers") or [], res.get("http") or []
    n, c = cfg["instances"], cfg["concurrency"]
    out = [
        table_row(f"1. ceiling: bare aiohttp client loop, {n * 5:,} requests, {c} in flight, one keep-alive session",
             [r["per_s"] for r in ceiling], "requests/s", note=_statuses(ceiling[-1]) if ceiling else ""),
        table_row(f"2. Python handlers: {n:,} x 5 steps, 1 engine + 1 `activities --module bench.handlers`",
             [r["steps_per_s"] for r in handlers], "steps/s"),
        table_row(f"3. HTTP service calls: {n:,} x 5 steps, 1 engine + 1 `activities --http`",
             [r["steps_per_s"] for r in http], "steps/s"),
        table_row("3. same, instances", [r["instances_per_s"] for r in http], "instances/s"),
    ]
    labels = {"before": "4. executor's own overhead, task read → request sent",
              "after": "4. executor's own overhead, answer read → result reported",
              "total": "4. executor's own overhead, both, per call",
              "report": "4a. of `after`: the result script awaited (Redis round trip + joining a batch)",
              "call": "4b. the executor's call, task read → result built (wire and service included)"}
    for phase, label in labels.items():
        for q in (50, 99):
            key = f"{phase}_p{q}_ms"
            vals = [r["overhead"].get(key) for r in http]
            count = "call_samples" if phase == "call" else "samples"
            samples = sum(r["overhead"].get(count, 0) for r in http)
            note = f"{samples:,} calls" if q == 50 and phase in ("before", "call") else ""
            out.append(table_row(f"{label}, p{q}", vals, "ms", 3, note))
    return out


def _ratios(f: dict[str, float | None]) -> list[str]:
    out = ["", "| ratio (medians of this run) | value | goal | met |", "|---|---:|---:|---|"]
    for key, label, goal in (("http_over_handler", "HTTP steps/s / Python-handler steps/s", 0.5),
                             ("http_over_ceiling", "HTTP steps/s / ceiling requests/s", 0.6)):
        v = f[key]
        met = "not measured" if v is None else "yes" if v >= goal else "no"
        out.append(f"| {label} | {'–' if v is None else f'{v:.0%}'} | ≥ {goal:.0%} | {met} |")
    return out


def _cpu(res: dict[str, Any]) -> list[str]:
    rows = [(label, runs) for label, runs in (("1. ceiling", res.get("ceiling")), ("2. handlers", res.get("handlers")),
                                              ("3. HTTP", res.get("http"))) if runs]
    if not rows:
        return []
    out = ["", "CPU cores busy during each measurement (CPU seconds / wall seconds, median of the runs; `other`: "
           "everything else on the machine, from /proc/stat):", "",
           "| case | " + " | ".join(WHO) + " |", "|---|" + "---:|" * len(WHO)]
    for label, runs in rows:
        cells = [summary([r["cores_busy"].get(w, 0.0) for r in runs])["median"] for w in WHO]
        out.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    out += ["", "CPU per step (per request for the ceiling), ms, median of the runs:", "",
            "| case | " + " | ".join(w for w in WHO if w != "other") + " |",
            "|---|" + "---:|" * (len(WHO) - 1)]
    for label, runs in rows:
        key = "cpu_ms_per_request" if label.startswith("1.") else "cpu_ms_per_step"
        cells = [summary([r[key].get(w, 0.0) for r in runs])["median"] for w in WHO if w != "other"]
        out.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return out


def _profile(res: dict[str, Any]) -> list[str]:
    prof = (res.get("profile") or {})
    if "skipped" in prof:
        return ["", f"Profile: skipped: {prof['skipped']}"]
    top = prof.get("profile")
    if not top or "error" in top:
        return ["", f"Profile: {top['error']}"] if top else []
    out = ["", f"Where the executor process's busy time goes (py-spy, {top['samples']:,} samples over one extra "
           f"HTTP run at {prof['steps_per_s']:,.0f} steps/s; idle left out; % of busy samples):", "",
           "| function (inclusive) | % | function (own time) | % |", "|---|---:|---|---:|"]
    for (a, pa), (b, pb) in zip(top["inclusive_pct"][:15], top["own_pct"][:15]):
        out.append(f"| `{a}` | {pa:.1f} | `{b}` | {pb:.1f} |")
    return out


def section(doc: dict[str, Any]) -> str:
    res, m, cfg = doc["results"], doc["machine"], doc["config"]
    out = [BEGIN, "", "## HTTP service calls (`python -m bench.http_calls`)", "",
           f"`python -m bench.http_calls{' --quick' if doc['mode'] == 'quick' else ''}`, "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(doc['started']))}, {doc['duration_s']:.0f} s. "
           f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), load average at start "
           f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}, at end "
           f"{', '.join(f'{x:.1f}' for x in doc.get('loadavg_at_end', ()))} (other work on the box counts in both)."
           " Raw figures: `http_results.json`.", ""]
    if "failed" in res:
        out += [f"**The run FAILED**: {res['failed']}", ""]
    out += ["| case | median | min | max | unit | runs | note |", "|---|---:|---:|---:|---|---:|---|"]
    out += _rows(res, cfg)
    out += _ratios(figures(res))
    out += _cpu(res)
    out += _profile(res)
    out += ["", "What was measured, exactly:", "", *METHOD.format(**cfg).split("\n")]
    if NOTES and doc["mode"] == "full":
        out += ["", *NOTES]
    out += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v), "", END]
    return "\n".join(out) + "\n"


def update_results_md(path: Path, doc: dict[str, Any]) -> None:
    replace_section(path, BEGIN, END, section(doc))


METHOD = """\
- **Processes**, nothing pinned, all sharing the cores: the service (`bench/http_service.py`: aiohttp on uvloop, \
its own process, answers every `/step` with 200 `{{"ok": true}}` at once), one `foldflow worker`, one activity \
worker, `redis-server` (no persistence) and the load generator (this process). Each workflow run has a fresh \
prefix and fresh worker processes; partitions taken and task groups created before the clock starts.
- **1** the ceiling: {concurrency} requests in flight from one aiohttp ClientSession (connection cap per host \
{concurrency}, keep-alive, as the executor's pool), POST `/step` with a small JSON body, the JSON answer parsed, \
as many requests as 3 makes calls (instances x 5).
- **2** {instances} instances of a 5-step linear workflow on queue `bench`, `foldflow activities --module \
bench.handlers` (async handler returning a timestamp), as case 2 of `python -m bench run`. All starts XADDed \
pipelined at once; the clock stops when every `workflow.completed` is seen in the partition feeds.
- **3** the same workflow with every step a `service_call` on service `bench-svc`, endpoint `/step`, resolved \
through `BENCH_SVC_URL`; the activity worker is `bench/http_executor_proc.py`, which builds what `foldflow \
activities --http` builds (HttpServing in an ActivityWorker under engine.runtime.lifecycle.serve, uvloop, \
FOLDFLOW_CONCURRENCY={concurrency}, FOLDFLOW_HTTP_REFRESH_MS={refresh_ms}) and, after its SIGTERM drain, writes \
HttpServing's `before_s`/`after_s` samples.
- **4** from those samples, exact (nearest-rank) percentiles of every call of each run, median over the runs: \
`before` = the worker took the task (after decoding it) → the request went out; `after` = the answer was read → \
the result script (ack + result XADD) returned. The time on the wire and in the service is in neither. \
**4a** (bench-only timing around the worker's `report()` in the launcher) is the part of `after` spent awaiting \
the result script; **4b** is the `call.duration_ms` each step's history records, from up to 400 instances per run.
- Rounds: ceiling, handlers, HTTP, repeated {runs} times (interleaved, so drift on a shared box hits each alike).\
"""

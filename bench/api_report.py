"""The "HTTP API" section of bench/RESULTS.md from api_results.json. It sits
between two marker comments, so `python -m bench.api` replaces only its own
section; `python -m bench report` rewrites the whole file from results.json,
after which `python -m bench.api report` puts this section back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .harness import replace_section, summary, table_row

BEGIN = "<!-- bench.api: begin (python -m bench.api writes this section) -->"
END = "<!-- bench.api: end -->"

# Read from the full run of 2026-12-02 18:40 UTC; edit after a new full run.
NOTES: list[str] = [
    "What limits the API here (run of 2026-12-02 18:40 UTC; about one of the two cores was taken by other work "
    "on the box throughout, the `other` column):",
    "",
    "- **Starts: 30% of the ceiling (39% with `?wait_ms=0`), against a goal of 50%.** The API spends about "
    "1.7 ms of CPU per start (0.64 cores at 380/s) against 0.46 ms for the bare endpoint (0.58 cores at "
    "1,274/s). A start makes about seven Redis round trips from the API (a MONITOR trace of one start: "
    "SISMEMBER of the definitions index, HGETs of the definition hash, the inbox XADD, the blocking XREAD of "
    "the instance stream, a read of the stream to build the answer) against the ceiling's one; the table of "
    "commands above also counts the engine worker's append (8 XADDs per start are mostly the engine's). "
    "Caching the definition lookups per process (they change only by a new version) and answering from the "
    "XREAD's entries instead of reading the stream again are the obvious next steps.",
    "- **1,000 starts/s is beyond this box with the other work on it**: even the ceiling reached 944/s of the "
    "1,000 offered (p99 378 ms); the API reached 337/s, so its p99 at 1,000/s offered (9.8 s) is queueing. "
    "At 100/s the API answers a start (the engine's apply included) in p50 5.5 ms, p99 11.8 ms.",
    "- **GET /executions/{execution_id}**: 739/s closed loop; at 1,000/s offered it reached 523/s; at 100/s "
    "p50 3.7 ms, p99 11.1 ms, against a goal of p99 < 5 ms at 1,000/s. Each read folds the whole instance "
    "stream (XRANGE) and reads the definition (HMGET): 0.9 ms of API CPU per read.",
    "- **SSE**: every event reached every subscriber (10,000 of 10,000 deliveries at 1,000). One blocking read "
    "per instance is shared by its subscribers (engine/api/live/tail.py), so the cost that grows with N is "
    "the API process writing N frames: p99 21.6 ms at 100 subscribers (goal < 20; 1.8 cores of other work "
    "during that case), 210 ms at 1,000. An idle subscription costs about 33 KB of API RSS.",
    "- The load generator shares the cores too (0.15-0.34 cores); it takes the most in the ceiling's runs, which "
    "have the most requests, so the ratios above are, if anything, flattering to the API.",
]


def _result(res: dict[str, Any], key: str, notes: list[str]) -> Any:
    item = res.get(key) or {}
    if "result" in item:
        return item["result"]
    why = f"skipped: {item['skipped']}" if "skipped" in item else f"FAILED: {item['failed']}" if "failed" in item \
        else "not run"
    notes.append(f"- **{key}**: {why}")
    return None


def _statuses(r: dict[str, Any]) -> str:
    text = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
    if r.get("errors"):
        text += "; errors " + ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
    return text


def _throughput_rows(t: dict[str, Any]) -> list[str]:
    c = t["ceiling"][0]["concurrency"]
    rows = [("ceiling: bare endpoint, one XADD", "ceiling"),
            ("POST /executions (answers once the engine applied the start)", "api"),
            ("POST /executions?wait_ms=0 (answers once the command is queued)", "api_wait0")]
    return [table_row(f"1. {label}, closed loop, {c} keep-alive connections", [r["per_s"] for r in t[key]],
                 "requests/s", note=_statuses(t[key][-1])) for label, key in rows if key in t]


def _latency_rows(res: dict[str, Any], skipped: list[str]) -> list[str]:
    out = []
    labels = {"api": "POST /executions", "ceiling": "ceiling"}
    for r in _result(res, "start_latency", skipped) or []:
        out += _open_rows(f"2. {labels[r['target']]}", r)
    if (rd := _result(res, "read_latency", skipped)):
        t = rd["throughput"]
        out.append(table_row(f"3. GET /executions/{{execution_id}}, closed loop, {t['concurrency']} connections",
                        [t["per_s"]], "requests/s", note=f"{rd['distinct_executions']:,} executions; {_statuses(t)}"))
        for r in rd["open"]:
            out += _open_rows("3. GET /executions/{execution_id}", r)
    if (fan := _result(res, "fanout", skipped)):
        for n, r in fan.items():
            got = f"{r['deliveries']:,}/{r['expected_deliveries']:,} deliveries of {r['events_appended']} events"
            if r.get("refused"):
                got += f"; {r['connected']:,} of {int(n):,} connected, refused: " + "; ".join(
                    f"{v} × {k}" for k, v in r["refused"].items())
            if r.get("cut_off_while_measured"):
                got += "; cut off while measured: " + "; ".join(
                    f"{v} × {k}" for k, v in r["cut_off_while_measured"].items())
            out += [table_row(f"4. SSE append → received, {int(n):,} subscribers, p50", [r["p50_ms"]], "ms", 2, got),
                    table_row(f"4. SSE append → received, {int(n):,} subscribers, p99", [r["p99_ms"]], "ms", 2)]
        big = max((n for n in fan if fan[n].get("connected", 1)), key=int, default=None)
        if big is None:
            return out
        r = fan[big]
        out.append(table_row(f"4. API RSS per idle SSE subscription ({r.get('connected', int(big)):,} open)",
                        [r["rss_per_idle_subscription_bytes"]], "bytes",
                        note=f"RSS {r['rss_before_bytes'] / 2**20:,.1f} → {r['rss_idle_bytes'] / 2**20:,.1f} MiB"))
    return out


def _open_rows(label: str, r: dict[str, Any]) -> list[str]:
    at = f"offered {r['offered_per_s']:,.0f}/s, achieved {r['achieved_per_s']:,.0f}/s"
    return [table_row(f"{label} p50 ({at})", [r["p50_ms"]], "ms", 2, _statuses(r)),
            table_row(f"{label} p99 ({at})", [r["p99_ms"]], "ms", 2)]


def _at_goal_rate(items: list[dict[str, Any]], rate: float) -> float | None:
    return next((r["p99_ms"] for r in items if r["offered_per_s"] == rate), None)


def _ratios(res: dict[str, Any]) -> list[str]:
    out = ["", "| ratio or goal | value | goal | met |", "|---|---:|---:|---|"]

    def line(label: str, value: float | None, goal: str, met: bool | None, fmt: str) -> None:
        shown = "–" if value is None else fmt.format(value)
        out.append(f"| {label} | {shown} | {goal} | {'not measured' if met is None else 'yes' if met else 'no'} |")

    t = (res.get("throughput") or {}).get("result")
    med = {k: summary([r["per_s"] for r in v])["median"] for k, v in t.items()} if t else {}
    for key, label in (("api", "POST /executions / ceiling"), ("api_wait0", "POST /executions?wait_ms=0 / ceiling")):
        v = med[key] / med["ceiling"] if key in med else None
        line(label, v, "≥ 50%", None if v is None else v >= 0.5, "{:.0%}")
    lat = (res.get("start_latency") or {}).get("result") or []
    p99 = _at_goal_rate([r for r in lat if r["target"] == "api"], 1000.0)
    line("POST /executions p99 at 1,000/s offered (ms)", p99, "< 10", None if p99 is None else p99 < 10, "{:.2f}")
    rd = (res.get("read_latency") or {}).get("result")
    p99 = _at_goal_rate(rd["open"], 1000.0) if rd else None
    line("GET /executions/{execution_id} p99 at 1,000/s (ms)", p99, "< 5", None if p99 is None else p99 < 5, "{:.2f}")
    fan = (res.get("fanout") or {}).get("result") or {}
    p99 = fan["100"]["p99_ms"] if "100" in fan else None
    line("SSE append → received p99, 100 subscribers (ms)", p99, "< 20", None if p99 is None else p99 < 20, "{:.2f}")
    return out


def _cores(res: dict[str, Any]) -> list[str]:
    rows = []
    t = (res.get("throughput") or {}).get("result") or {}
    for key, runs in t.items():
        rows.append((f"1. {key}", runs[-1]["cores_busy"]))
    for r in (res.get("start_latency") or {}).get("result") or []:
        rows.append((f"2. {r['target']} at {r['offered_per_s']:,.0f}/s", r["cores_busy"]))
    rd = (res.get("read_latency") or {}).get("result")
    for r in [rd["throughput"], *rd["open"]] if rd else []:
        rows.append((f"3. GET at {r.get('offered_per_s', 0):,.0f}/s" if "offered_per_s" in r else "3. GET closed loop",
                     r["cores_busy"]))
    for n, r in ((res.get("fanout") or {}).get("result") or {}).items():
        rows.append((f"4. SSE {n}", r["cores_busy"]))
    if not rows:
        return []
    who = ["api", "worker", "ceiling", "redis", "load_generator", "other"]
    out = ["", "CPU cores busy during each measurement (CPU seconds / wall seconds; last run of each; `other`: "
           "everything else on the machine, from /proc/stat, out of 2 cores):", "",
           "| case | " + " | ".join(who) + " |", "|---|" + "---:|" * len(who)]
    out += [f"| {label} | " + " | ".join(f"{c.get(w, 0):.2f}" for w in who) + " |" for label, c in rows]
    return out


def _commands(res: dict[str, Any]) -> list[str]:
    t = (res.get("throughput") or {}).get("result") or {}
    rows = [(key, runs[-1]["redis_commands_per_request"]) for key, runs in t.items()
            if "redis_commands_per_request" in runs[-1]]
    rd = (res.get("read_latency") or {}).get("result")
    if rd and "redis_commands_per_request" in rd["throughput"]:
        rows.append(("GET /executions/{execution_id}", rd["throughput"]["redis_commands_per_request"]))
    if not rows:
        return []
    out = ["", "Redis commands per answered request in the closed-loop runs (INFO commandstats delta, every client: "
           "the API's, the engine worker's, and those run inside Lua scripts):", "",
           "| target | total | commands |", "|---|---:|---|"]
    for key, calls in rows:
        top = ", ".join(f"{k} {v:g}" for k, v in list(calls.items())[:8])
        out.append(f"| {key} | {sum(calls.values()):.1f} | {top} |")
    return out


def section(doc: dict[str, Any]) -> str:
    res, m, cfg = doc["results"], doc["machine"], doc["config"]
    skipped: list[str] = []
    out = [BEGIN, "", "## HTTP API (`python -m bench.api`)", "",
           f"`python -m bench.api{' --quick' if doc['mode'] == 'quick' else ''}`, "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(doc['started']))}, {doc['duration_s']:.0f} s. "
           f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), load average at start "
           f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}, at end "
           f"{', '.join(f'{x:.1f}' for x in doc.get('loadavg_at_end', ()))} (other work on the box counts in both)."
           " Raw figures: `api_results.json`.", "",
           "| case | median | min | max | unit | runs | note |", "|---|---:|---:|---:|---|---:|---|"]
    if (t := _result(res, "throughput", skipped)):
        out += _throughput_rows(t)
    out += _latency_rows(res, skipped)
    out += _ratios(res)
    out += _cores(res)
    out += _commands(res)
    if skipped:
        out += ["", "Not measured in this run:", "", *skipped]
    out += ["", "What was measured, exactly:", "", *METHOD.format(**cfg).split("\n")]
    if NOTES and doc["mode"] == "full":
        out += ["", *NOTES]
    out += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v), "", END]
    return "\n".join(out) + "\n"


def update_results_md(path: Path, doc: dict[str, Any]) -> None:
    replace_section(path, BEGIN, END, section(doc))


METHOD = """\
- **Processes** (one each, the CLI as users run it): `foldflow api` (uvicorn, uvloop, httptools), `foldflow \
worker`, the ceiling (`bench/api_ceiling.py`), `redis-server` (no persistence), and the load generator (this process: \
aiohttp on uvloop, keep-alive connections, one ClientSession). Nothing is pinned: all five share the 2 cores, and \
the table above says how busy each was. No activity worker: the benched workflow has one `service_call` step whose \
service nothing serves, so each start schedules one task that waits in its stream.
- **1** closed loop: {concurrency} connections, each sending its next request when the last is answered, \
{throughput_s:g} s per target, targets interleaved, {runs} rounds. Body `{{"workflow_id": ..., "context": {{"n": i}}}}`. \
The ceiling is Litestar on the same uvicorn settings with a msgspec body and one XADD by the same redis-py client; \
no guard, no metrics middleware, no definition lookup, no wait. POST /executions by default waits (blocking read on \
the instance stream) until the engine worker has applied the start and answers 200; with `?wait_ms=0` it answers \
202 once the command is in the inbox.
- **2** open loop: request i is due at t0 + i / rate for {rate_s:g} s, sent on up to 64 keep-alive connections; \
latency from when it was due to its answer, so queueing anywhere counts. Rates: the goal's {rate:g}/s; half the \
closed-loop peak of 1 when that is lower (what the stack can carry); a tenth of the goal's rate (the latency floor). \
Offered and achieved rates are both given.
- **3** GET /executions/{{execution_id}} over the executions started in 2 (the route folds the instance stream): \
closed loop as in 1 (one round), then open loop at the same rates as in 2 (half of this closed-loop peak).
- **4** N subscribers on one execution's GET /executions/{{execution_id}}/stream (one connection each, all in the \
load generator, connected 100 at a time, each wave once it has the history; the API runs with \
FOLDFLOW_API_MAX_SUBSCRIPTIONS = the largest N + 50); 1 s after the last wave, {sse_rounds} pause/resume commands, 0.2 s apart, \
make the engine append events; latency = receive time minus the ms of the event's stream entry id (Redis's clock: \
up to 1 ms high). RSS of the API process (VmRSS) before the N connect and once they are idle, / N.\
"""

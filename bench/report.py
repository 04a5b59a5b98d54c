"""RESULTS.md from the raw figures of one `python -m bench run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .harness import summary


def _f(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _row(label: str, runs: list[dict[str, Any]], field: str, unit: str, digits: int = 0, note: str = "") -> str:
    s = summary([r[field] for r in runs])
    return (f"| {label} | {_f(s['median'], digits)} | {_f(s['min'], digits)} | {_f(s['max'], digits)} | "
            f"{unit} | {len(runs)} | {note} |")


def _med(res: dict[str, Any], key: str, field: str) -> float | None:
    item = res.get(key) or {}
    runs = item.get("runs") or []
    if not runs or "failed" in item:
        return None
    return summary([r[field] for r in runs])["median"]


def write_markdown(doc: dict[str, Any]) -> str:
    res = doc["results"]
    m = doc["machine"]
    out = [
        "# foldflow benchmark results",
        "",
        f"`python -m bench run{' --quick' if doc['mode'] == 'quick' else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(doc['started']))}, {doc['duration_s']:.0f} s. "
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, Python {m['python']}; "
        f"{doc['versions']['redis-server'].split(' sha')[0]}. Everything (Redis, PostgreSQL, workers and the "
        "load generator) shares these cores. Raw figures, versions and settings: `results.json`. "
        "Figures are wall-clock throughput on a shared 2-core box: compare ratios within one run, not across runs.",
        "",
        "| case | median | min | max | unit | runs | note |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    skipped: list[str] = []

    def runs_of(key: str) -> list[dict[str, Any]] | None:
        item = res.get(key)
        if item is None:
            return None
        if "skipped" in item:
            skipped.append(f"- **{key}** (case {item['case']}): skipped: {item['skipped']}")
            return None
        if "failed" in item:
            skipped.append(f"- **{key}** (case {item['case']}): FAILED: {item['failed']}")
            return None
        return item["runs"]

    if (c := runs_of("ceiling")):
        out.append(_row("1. append.lua EVALSHA, awaited one by one", c, "awaited_per_s", "calls/s"))
        out.append(_row(f"1. append.lua EVALSHA, pipelined ({c[0]['pipeline_batch']}/batch)", c, "pipelined_per_s",
                        "calls/s"))
    ff1 = runs_of("foldflow_1e1a")
    ff2 = runs_of("foldflow_2e1a")
    if ff1:
        out.append(_row(f"2. foldflow 1 engine + 1 activity worker, {ff1[0]['instances']} x 5 steps", ff1,
                        "steps_per_s", "steps/s"))
        out.append(_row("2. same, instances", ff1, "instances_per_s", "instances/s"))
    if ff2:
        out.append(_row(f"2. foldflow 2 engines + 1 activity worker, {ff2[0]['instances']} x 5 steps", ff2,
                        "steps_per_s", "steps/s"))
    if (cel := runs_of("celery")):
        out.append(_row(f"3. Celery {cel[0]['celery']}, {cel[0]['chains']} chains of 5, concurrency "
                        f"{cel[0]['concurrency']}", cel, "steps_per_s", "steps/s"))
    if (db := runs_of("dbos")):
        out.append(_row(f"3. DBOS, {db[0]['workflows']} workflows of 5 steps", db, "steps_per_s", "steps/s"))
    if (lat := runs_of("latency")):
        rate = summary([r["achieved_rate"] for r in lat])["median"]
        for name, label in (("start_to_first_task", "start → first task at its worker"),
                            ("result_to_next_task", "step result → next task at its worker"),
                            ("start_to_completed", "start → completed seen")):
            for q in (50, 99):
                out.append(_row(f"4. {label}, p{q} (at {rate:,.0f} instances/s)", lat, f"{name}_{q}_ms", "ms", 2))
    hist = {k: runs_of(k) for k in sorted((k for k in res if k.startswith("history_")), key=lambda k: int(k[8:]))}
    for key, h in hist.items():
        if not h:
            continue
        ev = h[0]["events_at_measure"]
        note = "" if h[0].get("reached_target", True) else f"target {h[0]['target_events']:,} NOT reached"
        out.append(_row(f"5. per command, warm cache, history {ev:,} events", h, "warm_ms_per_command", "ms", 3, note))
        out.append(_row(f"5. first command, cold cache (full replay), {ev:,} events", h, "cold_first_command_ms",
                        "ms", 1))
    if (fan := runs_of("fanout")):
        b = fan[0]["branches"]
        out.append(_row(f"6. fan-out {b:,}: parent result → all {b:,} tasks written", fan, "dispatch_all_ms", "ms"))
        out.append(_row(f"6. fan-out {b:,}: last branch ran → join step dispatched", fan, "join_ms", "ms"))
        out.append(_row(f"6. fan-out {b:,}: start → completed", fan, "start_to_completed_ms", "ms"))
    if ff1:
        cost = [r["cost"] for r in ff1]
        rows = [
            ("7. Redis commands per step, all (incl. inside scripts)", "redis_calls_per_step_total", "calls", 1),
            ("7. Redis round trips per step from the workers", "redis_calls_per_step_client", "calls", 2),
            ("7. Redis memory per finished instance (streams untrimmed)", "memory_bytes_per_instance", "bytes", 0),
        ]
        for label, field, unit, d in rows:
            out.append(_row(label, cost, field, unit, d))
        for who in ("redis", "engine", "activities", "load_generator"):
            out.append(_row(f"7. CPU cores busy: {who}", [c["cpu_cores_busy"] for c in cost], who, "cores", 2))
        for who in ("redis", "engine", "activities"):
            out.append(_row(f"7. CPU per step: {who}", [c["cpu_ms_per_step"] for c in cost], who, "ms", 3))
    if (pr := runs_of("projections")):
        out.append(_row("8. projector events/s during case-2 load", pr, "events_per_s", "events/s"))
        out.append(_row("8. projection lag p50", pr, "lag_p50_ms", "ms", 1))
        out.append(_row("8. projection lag p99", pr, "lag_p99_ms", "ms", 1))

    out += ["", "## Ratios (medians of this run) and targets", "",
            "| ratio | value | target | met |", "|---|---:|---:|---|"]
    ff = _med(res, "foldflow_1e1a", "steps_per_s")
    ff2m = _med(res, "foldflow_2e1a", "steps_per_s")
    best = max(x for x in (ff, ff2m, 0.0) if x is not None) or None
    cel_m = _med(res, "celery", "steps_per_s")
    dbos_m = _med(res, "dbos", "steps_per_s")
    pipe = _med(res, "ceiling", "pipelined_per_s")

    def ratio(label: str, a: float | None, b: float | None, target: float | None, fmt: str = "{:.1f}x") -> None:
        if a is None or b is None or not b:
            out.append(f"| {label} | – | {fmt.format(target) if target else ''} | not measured |")
            return
        v = a / b
        met = "" if target is None else ("yes" if v >= target else "no")
        out.append(f"| {label} | {fmt.format(v)} | {'≥ ' + fmt.format(target) if target else ''} | {met} |")

    ratio("foldflow (1E+1A) / Celery", ff, cel_m, 10)
    ratio("foldflow (1E+1A) / DBOS", ff, dbos_m, 15)
    ratio("foldflow (2E+1A) / foldflow (1E+1A)", ff2m, ff, None, "{:.2f}x")
    ratio("best foldflow steps/s / pipelined append.lua calls/s", best, pipe, 0.15, "{:.0%}")
    lat_p99 = _med(res, "latency", "result_to_next_task_99_ms")
    if lat_p99 is not None:
        out.append(f"| p99 step result → next task (ms) at 50% load | {lat_p99:.2f} | < 5 | "
                   f"{'yes' if lat_p99 < 5 else 'no'} |")
    small = _med(res, "history_10", "warm_ms_per_command")
    big_key = max((k for k in res if k.startswith("history_") and res[k].get("runs")), key=lambda k: int(k[8:]),
                  default=None)
    if small and big_key and big_key != "history_10":
        bigv = _med(res, big_key, "warm_ms_per_command")
        ev = res[big_key]["runs"][0]["events_at_measure"]
        if bigv:
            out.append(f"| per-command cost at {ev:,} events / at 10 events (warm) | {bigv / small:.2f}x | ≤ 1.5x "
                       f"(at 100,000) | {'yes' if bigv / small <= 1.5 else 'no'} |")
    pr_p99 = _med(res, "projections", "lag_p99_ms")
    out.append(f"| projection lag p99 at full load (ms) | {_f(pr_p99, 1)} | < 1000 | "
               f"{'not measured' if pr_p99 is None else ('yes' if pr_p99 < 1000 else 'no')} |")

    if skipped:
        out += ["", "## Skipped or failed", ""] + skipped
    out += ["", "## What was measured, exactly", "", *METHOD, "", "## Settings", ""]
    for who, settings in doc["settings"].items():
        if isinstance(settings, dict):
            out.append(f"- **{who}**: " + "; ".join(f"`{k}` = {v}" for k, v in settings.items()))
        else:
            out.append(f"- **{who}**: `{settings}`")
    out += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v), ""]
    limits = Path(__file__).with_name("limits.md")
    if limits.exists():
        out += [limits.read_text().rstrip(), ""]
    return "\n".join(out) + "\n"


METHOD = [
    "- **1** foldflow's own `append.lua` by EVALSHA from one redis-py (hiredis) client: one event per call on a "
    "new instance (lease unchecked, no inbox ack), awaited one at a time, then pipelined. The denominator for "
    "\"how close to the limit\".",
    "- **2** N instances of a 5-step linear workflow (`bench/handlers.py`: async handler, returns a timestamp); "
    "worker processes started with the `foldflow` CLI (uvloop), partitions taken before the clock starts; all "
    "starts XADDed pipelined at once; the clock stops when the load generator has seen every "
    "`workflow.completed` in the partition feeds.",
    "- **3** Celery: chains of 5 tasks, worker concurrency 2 (= foldflow's 2 worker processes); DBOS: 1 process. "
    "Both include sending the load in the measured time, as foldflow does.",
    "- **4** open-loop starts at half of case 2's median instance rate for a fixed time; the handlers' wall-clock "
    "stamps (same host clock) give start → first task and result → next task; the load generator's XREAD of the "
    "feeds gives start → completed.",
    "- **5** one instance's history is grown fast by retries (a loop step would need a task per item) "
    "(one step, max_attempts 10^9, zero backoff): `step.failed` + retry `timer` command pairs fed to the real "
    "`EngineWorker.process` in this process (2 events per pair), 256 commands per batch; then single commands are "
    "timed end to end (XREADGROUP, decide, append.lua) with the state cached (warm) and after dropping it (cold: "
    "the snapshot, written every FOLDFLOW_SNAPSHOT_EVERY events, plus the events after it are read and folded). "
    "Growth stops at the time budget: a row "
    "says when the target length was not reached.",
    "- **6** one instance: step `a`, then 1,000 branches depending on `a`, then `z` depending on all; times from "
    "the instance stream's entry ids (Redis clock) and the handlers' stamps.",
    "- **7** from case 2 (1E+1A): `INFO commandstats` deltas / steps (commands run inside Lua scripts are counted "
    "by Redis too; the load generator's start XADDs and feed XREADs are included), `used_memory` delta / "
    "instances (instance stream + feed + inbox entries are kept; tasks are XDELed), `INFO cpu` delta for Redis, "
    "`/proc/<pid>/stat` utime+stime for each worker, `getrusage` for the load generator; \"cores busy\" = CPU "
    "seconds / wall seconds.",
    "- **8** `foldflow projector` as a process during a case-2 load; progress read from Redis (XINFO GROUPS on "
    "the feeds), lag = age of the oldest feed entry a projection group has not finished, sampled every 50 ms.",
]

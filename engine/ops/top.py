"""`foldflow top`: a live terminal view of a deployment, redrawn in place with
plain ANSI escapes (no curses), so it works over SSH and in any terminal.

Sources, all read-only: the partition feeds (tailed from the beginning, so
instance counts per workflow and step durations are exact for what the feeds
hold), the worker heartbeats, and the consumer groups' lag and pending counts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from typing import Any, TextIO

import orjson

from engine.config import Settings
from engine.runtime.heartbeat import read_heartbeats
from engine.store.connection import Redis, connect
from engine.store.inventory import dead_letters, partition_lag
from engine.store.replies import text

FINAL = {"workflow.completed": "completed", "workflow.failed": "failed", "workflow.cancelled": "cancelled"}
STATUS_OF = {"workflow.created": "created", "workflow.started": "running", "workflow.paused": "paused",
             "workflow.resumed": "running", "workflow.retried": "running", **FINAL}
COLUMNS = ("running", "waiting", "paused", "failed", "completed", "cancelled")


class Instance:
    __slots__ = ("started", "status", "waiting", "workflow")

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        self.status = "created"
        self.waiting: set[str] = set()
        self.started: dict[str, int] = {}  # step -> ts of its first dispatch


class TopModel:
    """Folds the feeds into counts per workflow and per-step durations."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.step_stats: dict[tuple[str, str], list[float]] = {}  # (workflow, step) -> [n, total_s, max_s]
        self.events = 0
        self.completed = 0

    def apply(self, iid: str, etype: str, ts: int, data: dict[str, Any]) -> None:
        self.events += 1
        inst = self.instances.get(iid)
        if etype == "workflow.created":
            inst = self.instances[iid] = Instance(str(data.get("workflow", "?")))
        if inst is None:
            return
        status = STATUS_OF.get(etype)
        if status is not None:
            inst.status = status
            if etype in FINAL:
                inst.waiting.clear()
                inst.started.clear()
                self.completed += etype == "workflow.completed"
        step = data.get("step")
        if not isinstance(step, str):
            return
        if etype in ("workflow.step_scheduled", "workflow.step_waiting"):
            inst.started.setdefault(step, ts)
            if etype == "workflow.step_waiting":
                inst.waiting.add(step)
        elif etype == "workflow.step_completed" or (etype == "workflow.step_failed" and data.get("retry_at") is None):
            inst.waiting.discard(step)
            began = inst.started.pop(step, None)
            if began is not None:
                agg = self.step_stats.setdefault((inst.workflow, step), [0, 0.0, 0.0])
                took = max(0, ts - began) / 1000
                agg[0] += 1
                agg[1] += took
                agg[2] = max(agg[2], took)
        elif etype == "workflow.step_failed":
            inst.waiting.discard(step)

    def per_workflow(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for inst in self.instances.values():
            row = out.setdefault(inst.workflow, dict.fromkeys(COLUMNS, 0))
            key = "waiting" if inst.status == "running" and inst.waiting else inst.status
            if key in row:
                row[key] += 1
        return out

    def slowest(self, n: int) -> list[tuple[str, str, int, float, float]]:
        rows = [(w, s, int(a[0]), a[1] / a[0], a[2]) for (w, s), a in self.step_stats.items() if a[0]]
        rows.sort(key=lambda r: -r[3])
        return rows[:n]


class Feeds:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        from engine.store.keys import Keys

        self.redis = redis
        self.keys = Keys(settings.prefix, settings.partitions)
        self.cursors = {self.keys.feed(p): "0-0" for p in range(settings.partitions)}

    async def pull(self, model: TopModel, max_entries: int = 200_000) -> int:
        """Everything new in the feeds (up to max_entries per call), applied in order."""
        got = 0
        while got < max_entries:
            streams: Any = self.cursors
            reply: Any = await self.redis.xread(streams, count=5_000)
            if not reply:
                break
            for stream, entries in reply:
                name = text(stream)
                for entry_id, fields in entries:
                    self.cursors[name] = text(entry_id)
                    try:
                        data = orjson.loads(fields.get(b"data", b"{}"))
                        model.apply(fields[b"id"].decode(), fields[b"type"].decode(), int(fields.get(b"ts", 0)),
                                    data if isinstance(data, dict) else {})
                    except (KeyError, ValueError):
                        continue
                    got += 1
        return got


def _fit(text: str, width: int) -> str:
    return text[:width].ljust(width)


def _rate(n: float) -> str:
    return f"{n:,.1f}" if n < 1000 else f"{n:,.0f}"


def render(snap: dict[str, Any], width: int, height: int) -> list[str]:
    """One frame as exactly ``height`` lines of ``width`` characters."""
    lines = [
        f"foldflow top  prefix {snap['prefix']}  partitions {snap['partitions']}  "
        f"{time.strftime('%H:%M:%S', time.localtime(snap['now']))}  (q quits)",
        f"throughput  {_rate(snap['events_s'])} events/s  {_rate(snap['completed_s'])} completed/s  "
        f"{_rate(snap['commands_s'])} commands/s   redis {'up' if snap['redis_up'] else 'DOWN'}",
        "",
        *_workflow_lines(snap["workflows"]),
        "",
        *_lag_lines(snap),
        "",
        *_worker_lines(snap["workers"]),
        "",
        f"SLOWEST STEPS  {'workflow / step':<48}{'n':>7}{'mean s':>10}{'max s':>10}",
    ]
    room = max(0, height - len(lines))
    for w, s, n, mean, mx in snap["slowest"][:room]:
        lines.append(f"               {(w + ' / ' + s)[:47]:<48}{n:>7}{mean:>10.3f}{mx:>10.3f}")
    lines = lines[:height]
    lines += [""] * (height - len(lines))
    return [_fit(line, width) for line in lines]


def _workflow_lines(wf: dict[str, Any]) -> list[str]:
    out = [f"{'WORKFLOW':<34}" + "".join(f"{c:>10}" for c in COLUMNS)]
    rows = sorted(wf.items())
    budget = max(1, min(len(rows), 6))
    out += [f"{name[:33]:<34}" + "".join(f"{row[c]:>10}" for c in COLUMNS) for name, row in rows[:budget]]
    if len(rows) > budget:
        out.append(f"  ... {len(rows) - budget} more workflows")
    if not rows:
        out.append("  (no instances in the feeds yet)")
    return out


def _lag_lines(snap: dict[str, Any]) -> list[str]:
    lag = snap["lag"]
    cells = [f"p{p}:{lag.get(p, (0, 0))[0]}/{lag.get(p, (0, 0))[1]}" for p in range(snap["partitions"])]
    return [f"INBOX LAG/PENDING  {'  '.join(cells)}",
            f"router lag {snap['router'][0]} pending {snap['router'][1]}   tasks lag {snap['tasks'][0]} "
            f"pending {snap['tasks'][1]}   dead letters {snap['dlq']}"]


def _worker_lines(workers: list[dict[str, Any]]) -> list[str]:
    out = [f"WORKERS ({len(workers)} alive)  {'role':<11}{'pid':>8}  {'age':>6}  counters"]
    for w in workers[:5]:
        counters = w["counters"]
        shown = " ".join(f"{k}={counters[k]}" for k in ("commands", "events", "conflicts", "completed", "failed",
                                                        "router_routed", "timers_fired") if k in counters)
        parts = f" p{','.join(map(str, w['partitions']))}" if w["partitions"] else ""
        out.append(f"  {w['consumer'][:22]:<22}{w['role']:<11}{w['pid']:>8}  {w['age']:>5}s  {shown}{parts}")
    if len(workers) > 5:
        out.append(f"  ... {len(workers) - 5} more")
    return out


class Top:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        from engine.store.keys import Keys

        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.model = TopModel()
        self.feeds = Feeds(redis, settings)
        self._last: tuple[float, int, int, int] | None = None

    async def snapshot(self) -> dict[str, Any]:
        now = time.time()
        snap: dict[str, Any] = {"prefix": self.settings.prefix, "partitions": self.settings.partitions, "now": now,
                                "redis_up": True, "events_s": 0.0, "completed_s": 0.0, "commands_s": 0.0,
                                "workflows": {}, "lag": {}, "router": (0, 0), "tasks": (0, 0), "dlq": 0,
                                "workers": [], "slowest": []}
        try:
            await self.feeds.pull(self.model)
            lag = await partition_lag(self.redis, self.keys)
            dlq = await dead_letters(self.redis, self.keys)
            workers = await read_heartbeats(self.redis, self.keys)
        except Exception:
            snap["redis_up"] = False
            return snap
        commands = sum(int(w["counters"].get("commands", 0)) for w in workers if w["role"] == "engine")
        if self._last is not None:
            dt = max(1e-6, now - self._last[0])
            snap["events_s"] = max(0, self.model.events - self._last[1]) / dt
            snap["completed_s"] = max(0, self.model.completed - self._last[2]) / dt
            snap["commands_s"] = max(0, commands - self._last[3]) / dt
        self._last = (now, self.model.events, self.model.completed, commands)
        snap["workflows"] = self.model.per_workflow()
        snap["lag"] = {int(p): v for (g, p, q), v in lag.items() if g == "engine"}
        snap["router"] = lag.get(("router", "", ""), (0, 0))
        tasks = [v for (g, _, _), v in lag.items() if g == "activities"]
        snap["tasks"] = (sum(max(0, t[0]) for t in tasks), sum(t[1] for t in tasks))
        snap["dlq"] = sum(dlq.values())
        for w in workers:
            w["age"] = max(0, int(now - w["started_ms"] / 1000))
        snap["workers"] = sorted(workers, key=lambda w: (w["role"], w["consumer"]))
        snap["slowest"] = self.model.slowest(20)
        return snap


def _size(out: TextIO) -> tuple[int, int]:
    # The terminal's own size first: a stale COLUMNS/LINES in the environment must not win.
    try:
        size = os.get_terminal_size(out.fileno())
    except (AttributeError, ValueError, OSError):
        size = shutil.get_terminal_size((100, 30))
    return size.columns, size.lines


def draw(out: TextIO, lines: list[str]) -> None:
    # Home, each line then clear-to-end-of-line, then clear below: no flicker, no scroll.
    out.write("\x1b[H" + "\n".join(line + "\x1b[K" for line in lines) + "\x1b[J")
    out.flush()


async def run_top(settings: Settings, *, interval: float = 1.0, once: bool = False, iterations: int = 0,
                  out: TextIO | None = None) -> int:
    out = out or sys.stdout
    redis = connect(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    top = Top(redis, settings)
    interactive = out.isatty() and not once
    quit_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    restore: Any = None
    try:
        if interactive:
            restore = _raw_stdin(loop, quit_event)
            out.write("\x1b[?25l\x1b[2J")
        frames = 0
        while True:
            snap = await top.snapshot()
            width, height = _size(out)
            lines = render(snap, width, height - (0 if interactive else 1))
            if interactive:
                draw(out, lines)
            else:
                out.write("\n".join(line.rstrip() for line in lines).rstrip("\n") + "\n")
                out.flush()
            frames += 1
            if once or (iterations and frames >= iterations):
                return 0
            try:
                await asyncio.wait_for(quit_event.wait(), interval)
                return 0
            except TimeoutError:
                pass
    finally:
        if restore is not None:
            restore()
        if interactive:
            out.write("\x1b[?25h\n")
            out.flush()
        await redis.aclose()


def _raw_stdin(loop: asyncio.AbstractEventLoop, quit_event: asyncio.Event) -> Any:
    """Read single keys (q quits) without echo; returns the function that restores the terminal."""
    if not sys.stdin.isatty():
        return None
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def on_key() -> None:
        if os.read(fd, 32).lower().startswith(b"q"):
            quit_event.set()

    loop.add_reader(fd, on_key)

    def restore() -> None:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore

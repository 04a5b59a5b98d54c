"""Schedules, the pure part: what a schedule is, when it fires, and what a tick does.

No I/O and no clock: every function takes the time it reasons about as data (ms since
the epoch, judged by the Redis server's clock in engine/store/schedules.py). The
execution id of a fire derives from the schedule's name and the fire time, so two
workers that handle the same fire start the same instance, and a start is idempotent
per instance id (streams.md, "Schedules").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import croniter

from engine.core.definition.model import parse_duration_ms
from engine.core.ids import INSTANCE_ID_RE
from engine.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
OVERLAPS = ("skip", "buffer_one", "allow", "cancel_previous")
Overlap = Literal["skip", "buffer_one", "allow", "cancel_previous"]
MIN_EVERY_MS = 1_000  # ids have second resolution: two fires of one schedule never share a second
DEFAULT_CATCHUP = "1m"
MAX_CATCHUP_MS = 7 * 86_400_000
MAX_BACKFILL = 1_000  # fire times one backfill request may start
MAX_FIRES_PER_TICK = 100  # fire times inside the catch-up window one tick starts at most
MAX_MISSED_COUNTED = 100_000  # cron fire times counted for one missed record


class Schedule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A schedule's definition, as stored (JSON) and as the API takes it."""

    name: str
    workflow: str
    context: dict[str, Any] = {}
    version: str | None = None
    cron: str | None = None
    every: str | None = None
    timezone: str = "UTC"
    overlap: Overlap = "skip"
    catchup_window: str = DEFAULT_CATCHUP
    paused: bool = False
    correlation_id: str | None = None
    note: str = ""


class InvalidSchedule(InvalidInput):
    """Every problem of a schedule at once, as (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


def _duration_problem(value: str, minimum: int) -> str | None:
    try:
        ms = parse_duration_ms(value)
    except ValueError as exc:
        return str(exc)
    return None if ms >= minimum else f"must be at least {minimum} ms, got {value!r}"


def _when_problems(s: Schedule) -> list[tuple[str, str]]:
    if (s.cron is None) == (s.every is None):
        return [("cron", "give exactly one of cron and every")]
    if s.every is not None:
        found = _duration_problem(s.every, MIN_EVERY_MS)
        return [("every", found)] if found else []
    assert s.cron is not None
    fields = s.cron.split()
    if not (s.cron.startswith("@") or len(fields) == 5) or not croniter.is_valid(s.cron):
        return [("cron", f"not a 5-field cron expression (minute hour day month weekday): {s.cron[:200]!r}")]
    try:
        croniter(s.cron, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
    except Exception:  # croniter's CroniterBadDateError and kin: a valid expression that never matches
        return [("cron", f"{s.cron[:200]!r} never fires (no date matches it)")]
    return []


def problems(s: Schedule) -> list[tuple[str, str]]:
    """Every problem of a schedule's definition; empty when it is valid."""
    found: list[tuple[str, str]] = []
    if not NAME_RE.match(s.name):
        found.append(("name", f"{s.name[:120]!r}: 1-100 of A-Z a-z 0-9 _ . -, starting with a letter or digit"))
    if not s.workflow or len(s.workflow) > 200:
        found.append(("workflow", "a registered workflow's name (1-200 characters)"))
    found += _when_problems(s)
    try:
        ZoneInfo(s.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        found.append(("timezone", f"not an IANA time zone: {s.timezone[:100]!r}"))
    if (catchup := _duration_problem(s.catchup_window, 0)) is not None:
        found.append(("catchup_window", catchup))
    elif parse_duration_ms(s.catchup_window) > MAX_CATCHUP_MS:
        found.append(("catchup_window", f"at most 7d, got {s.catchup_window!r}"))
    if s.correlation_id is not None and not 0 < len(s.correlation_id) <= 200:
        found.append(("correlation_id", "1-200 characters"))
    if len(s.note) > 1000:
        found.append(("note", "at most 1000 characters"))
    return found


def validated(s: Schedule) -> Schedule:
    if found := problems(s):
        raise InvalidSchedule(found)
    return s


def catchup_ms(s: Schedule) -> int:
    return parse_duration_ms(s.catchup_window)


# -- fire times ------------------------------------------------------------------
def _every_times(every: int, after_ms: int) -> Iterator[int]:
    t = (after_ms // every + 1) * every  # aligned to the epoch: k * every
    while True:
        yield t
        t += every


def _cron_times(s: Schedule, after_ms: int) -> Iterator[int]:
    assert s.cron is not None
    start = datetime.fromtimestamp(after_ms / 1000, tz=ZoneInfo(s.timezone))
    it = croniter(s.cron, start)
    last = after_ms
    while True:
        t = int(it.get_next(datetime).timestamp() * 1000)
        if t > last:  # croniter may repeat a wall time across a DST fall-back: once is enough
            last = t
            yield t


def iter_fires(s: Schedule, after_ms: int) -> Iterator[int]:
    """Every fire time strictly after ``after_ms``, in increasing order (unbounded)."""
    if s.every is not None:
        return _every_times(parse_duration_ms(s.every), after_ms)
    return _cron_times(s, after_ms)


def fire_times(s: Schedule, after_ms: int, until_ms: int, limit: int) -> list[int]:
    """Fire times in (after_ms, until_ms], at most ``limit`` of them, increasing."""
    out: list[int] = []
    for t in iter_fires(s, after_ms):
        if t > until_ms or len(out) >= limit:
            break
        out.append(t)
    return out


def next_fire(s: Schedule, after_ms: int) -> int:
    return next(iter_fires(s, after_ms))


def count_fires(s: Schedule, after_ms: int, until_ms: int, cap: int = 100_000) -> int:
    """How many fire times lie in (after_ms, until_ms]; intervals by arithmetic, cron up to ``cap``."""
    if until_ms <= after_ms:
        return 0
    if s.every is not None:
        every = parse_duration_ms(s.every)
        return until_ms // every - after_ms // every
    return len(fire_times(s, after_ms, until_ms, cap))


def execution_id(name: str, fire_ms: int) -> str:
    """``<name>@<UTC yyyymmddThhmmssZ>``: the same fire, the same instance."""
    stamp = datetime.fromtimestamp(fire_ms // 1000, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    iid = f"{name}@{stamp}"
    assert INSTANCE_ID_RE.match(iid), iid
    return iid


def trigger_id(name: str, at_ms: int) -> str:
    return f"{name}@trigger-{at_ms}"


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- what a tick does ------------------------------------------------------------
class Run(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One record of a schedule's recent runs (newest first in the store)."""

    action: str
    """started | skipped | buffered | cancelled_previous | missed | triggered | backfilled | error"""
    at_ms: int
    fire_ms: int | None = None
    execution_id: str | None = None
    count: int = 0
    """missed: how many fire times were missed, from first_ms to last_ms."""
    first_ms: int | None = None
    last_ms: int | None = None
    detail: str = ""


class Start(msgspec.Struct, frozen=True):
    fire_ms: int
    execution_id: str
    action: str  # the record a successful start leaves: started | triggered | backfilled


class Tick(msgspec.Struct, frozen=True, kw_only=True):
    """What one tick decided: cancel the previous run first, then the starts, in order."""

    starts: list[Start]
    runs: list[Run]
    """Records of what was not started (skipped, buffered, missed); starts record themselves."""
    cancel_previous: bool = False
    buffered_ms: int | None = None
    cursor_ms: int = 0
    next_ms: int = -1
    """The due score to set: -1 leaves the due set (paused)."""


class Overlapped(msgspec.Struct, frozen=True, kw_only=True):
    starts: list[Start]
    runs: list[Run]
    cancel_previous: bool
    buffered_ms: int | None
    running: bool


def apply_overlap(policy: str, fires: list[Start], *, running: bool, buffered_ms: int | None,
                  now_ms: int) -> Overlapped:
    """The overlap policy over fires in order, given whether the previous run still runs."""
    starts: list[Start] = []
    runs: list[Run] = []
    cancel = False
    for i, fire in enumerate(fires):
        if policy == "allow" or not running:
            starts.append(fire)
        elif policy == "cancel_previous":
            if i < len(fires) - 1:  # a later fire of this tick would cancel it at once
                runs.append(Run(action="skipped", at_ms=now_ms, fire_ms=fire.fire_ms, execution_id=fire.execution_id,
                                detail="cancel_previous: superseded by a later fire time"))
                continue
            cancel = cancel or not starts
            runs.append(Run(action="cancelled_previous", at_ms=now_ms, fire_ms=fire.fire_ms,
                            execution_id=fire.execution_id))
            starts.append(fire)
        elif policy == "buffer_one" and buffered_ms is None and fire.action == "started":
            buffered_ms = fire.fire_ms
            runs.append(Run(action="buffered", at_ms=now_ms, fire_ms=fire.fire_ms, execution_id=fire.execution_id))
        else:
            runs.append(Run(action="skipped", at_ms=now_ms, fire_ms=fire.fire_ms, execution_id=fire.execution_id,
                            detail=f"{policy}: the previous run is still running"))
        running = True
    return Overlapped(starts=starts, runs=runs, cancel_previous=cancel, buffered_ms=buffered_ms, running=running)


def missed_run(s: Schedule, after_ms: int, until_ms: int, now_ms: int) -> Run | None:
    """One summary record of the fire times in (after_ms, until_ms], or None when there are none."""
    if s.every is not None:
        every = parse_duration_ms(s.every)
        count, first, last = count_fires(s, after_ms, until_ms), next_fire(s, after_ms), until_ms // every * every
    else:  # counted up to 100,000 (a 1-minute cron over 69 days): the record says "at least" then
        times = fire_times(s, after_ms, until_ms, MAX_MISSED_COUNTED)
        count, first, last = len(times), times[0] if times else 0, times[-1] if times else 0
    if count == 0:
        return None
    return Run(action="missed", at_ms=now_ms, count=count, first_ms=first, last_ms=last,
               detail=f"{count}{'+' if count >= MAX_MISSED_COUNTED else ''} fire time(s) older than the catch-up "
                      f"window {s.catchup_window}")


def plan_tick(s: Schedule, *, cursor_ms: int, now_ms: int, running: bool, buffered_ms: int | None,
              recheck_ms: int = 1_000) -> Tick:
    """A tick at ``now_ms``: fire times in (cursor_ms, now_ms] newer than now - catchup_window start
    (under the overlap policy); older ones are one ``missed`` record; a buffered fire starts once the
    previous run is done."""
    if s.paused:
        return Tick(starts=[], runs=[], buffered_ms=buffered_ms, cursor_ms=cursor_ms, next_ms=-1)
    runs: list[Run] = []
    oldest = now_ms - catchup_ms(s)  # the oldest fire time still started
    if cursor_ms < oldest - 1 and (missed := missed_run(s, cursor_ms, oldest - 1, now_ms)) is not None:
        runs.append(missed)
    after = max(cursor_ms, oldest - 1)
    due = fire_times(s, after, now_ms, MAX_FIRES_PER_TICK)
    fires = [Start(t, execution_id(s.name, t), "started") for t in due]
    if buffered_ms is not None and not running:
        fires.insert(0, Start(buffered_ms, execution_id(s.name, buffered_ms), "started"))
        buffered_ms = None
    done = apply_overlap(s.overlap, fires, running=running, buffered_ms=buffered_ms, now_ms=now_ms)
    if len(due) >= MAX_FIRES_PER_TICK:
        cursor, nxt = due[-1], now_ms  # more are due: the next tick goes on at once
    else:
        cursor = max(cursor_ms, now_ms)
        nxt = next_fire(s, cursor)
        if done.buffered_ms is not None:
            nxt = min(nxt, now_ms + recheck_ms)
    return Tick(starts=done.starts, runs=runs + done.runs, cancel_previous=done.cancel_previous,
                buffered_ms=done.buffered_ms, cursor_ms=cursor, next_ms=nxt)

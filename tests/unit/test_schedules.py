"""Schedules, the pure core: validation, fire times (cron with time zones, DST, intervals),
execution ids and what a tick plans under each overlap policy; then the store's scripts
(claim, advance, put, request) on fakeredis."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import fakeredis
import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.ids import INSTANCE_ID_RE
from engine.core.schedules import (
    MAX_FIRES_PER_TICK,
    Schedule,
    Start,
    apply_overlap,
    count_fires,
    execution_id,
    fire_times,
    next_fire,
    plan_tick,
    problems,
)
from engine.errors import NotFound, Refused
from engine.store.keys import Keys
from engine.store.schedules import Request, ScheduleStore

T0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
S, MIN = 1000, 60_000


def every(n: str = "1s", **kw: object) -> Schedule:
    return Schedule(name="tick", workflow="wf", every=n, **kw)  # type: ignore[arg-type]


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


# -- validation -----------------------------------------------------------------------
def test_a_valid_schedule_has_no_problems() -> None:
    assert problems(Schedule(name="nightly.report-1", workflow="wf", cron="0 3 * * *", timezone="Europe/Berlin")) == []


def test_every_problem_is_reported_at_once_naming_its_field() -> None:
    bad = Schedule(name="has space", workflow="", cron="61 * * * *", timezone="Mars/Olympus",
                   catchup_window="soon", overlap="skip")
    fields = [f for f, _ in problems(bad)]
    assert fields == ["name", "workflow", "cron", "timezone", "catchup_window"]


@pytest.mark.parametrize("kw, field", [
    ({"cron": "* * * *"}, "cron"), ({"cron": "*/5 * * * * *"}, "cron"), ({"every": "500ms"}, "every"),
    ({"every": "1 fortnight"}, "every"), ({"cron": "* * * * *", "every": "1s"}, "cron"), ({}, "cron"),
])
def test_when_problems(kw: dict[str, str], field: str) -> None:
    found = problems(Schedule(name="x", workflow="wf", **kw))  # type: ignore[arg-type]
    assert [f for f, _ in found] == [field]


def test_execution_ids_derive_from_name_and_fire_time_and_are_valid_instance_ids() -> None:
    iid = execution_id("nightly.report-1", T0 + 5 * S + 999)
    assert iid == "nightly.report-1@20260301T000005Z"
    assert INSTANCE_ID_RE.match(iid) and INSTANCE_ID_RE.match("x" * 100 + "@20260301T000005Z")


# -- fire times -------------------------------------------------------------------------
def test_intervals_align_to_the_epoch() -> None:
    assert fire_times(every("15m"), T0 + 1, T0 + 46 * MIN, 10) == [T0 + 15 * MIN, T0 + 30 * MIN, T0 + 45 * MIN]
    assert next_fire(every("1s"), T0) == T0 + S
    assert count_fires(every("1s"), T0, T0 + 60 * S) == 60


def test_cron_follows_the_schedules_time_zone_across_dst() -> None:
    s = Schedule(name="x", workflow="wf", cron="0 9 * * *", timezone="Europe/Berlin")
    start = ms(datetime(2026, 3, 27, 12, tzinfo=UTC))
    got = [datetime.fromtimestamp(t / 1000, tz=ZoneInfo("Europe/Berlin")) for t in fire_times(s, start, start + 4 * 86_400_000, 10)]
    assert [d.hour for d in got] == [9, 9, 9, 9]  # 09:00 local before and after the clocks moved (29 March)
    assert [d.utcoffset() for d in got] == [timedelta(hours=1)] + [timedelta(hours=2)] * 3


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
CRONS = ["*/7 * * * *", "30 2 * * *", "0 */3 * * 1-5", "15 1,2,3 * * *", "0 0 1 * *", "@hourly"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CRONS), st.sampled_from(ZONES),
       st.integers(ms(datetime(2025, 1, 1, tzinfo=UTC)), ms(datetime(2028, 1, 1, tzinfo=UTC))))
def test_cron_fire_times_increase_follow_after_and_match(expr: str, zone: str, after: int) -> None:
    s = Schedule(name="x", workflow="wf", cron=expr, timezone=zone)
    times = fire_times(s, after, after + 40 * 86_400_000, 50)
    assert times and times[0] > after
    assert all(a < b for a, b in itertools.pairwise(times))
    tz = ZoneInfo(zone)
    for t in times:
        local = datetime.fromtimestamp(t / 1000, tz=tz)
        steady = (local - timedelta(hours=3)).utcoffset() == (local + timedelta(hours=3)).utcoffset()
        if steady:  # at a DST change a wall time that does not exist fires at the first one that does
            assert croniter.match(expr, local.replace(tzinfo=None)), (expr, zone, local)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["1s", "7s", "1m", "15m", "1h", "1d"]), st.integers(0, 4_000_000_000_000))
def test_interval_fire_times_are_multiples_strictly_after(n: str, after: int) -> None:
    s = every(n)
    times = fire_times(s, after, after + 10**9, 20)
    step = times[1] - times[0]
    assert times[0] > after and times[0] - after <= step and all(t % step == 0 for t in times)
    assert all(b - a == step for a, b in itertools.pairwise(times))


# -- planning a tick ------------------------------------------------------------------
def test_a_tick_starts_the_fire_times_due_since_the_cursor() -> None:
    tick = plan_tick(every("1s", overlap="allow"), cursor_ms=T0, now_ms=T0 + 3 * S + 400, running=False,
                     buffered_ms=None)
    assert [s.fire_ms for s in tick.starts] == [T0 + S, T0 + 2 * S, T0 + 3 * S]
    assert tick.cursor_ms == T0 + 3 * S + 400 and tick.next_ms == T0 + 4 * S


def test_catch_up_starts_the_window_and_records_older_fires_as_one_missed_record() -> None:
    s = every("1s", catchup_window="10s", overlap="allow")
    now = T0 + 3600 * S
    tick = plan_tick(s, cursor_ms=T0, now_ms=now, running=False, buffered_ms=None)
    assert [x.fire_ms for x in tick.starts] == [now - 10 * S + i * S for i in range(11)]
    [missed] = [r for r in tick.runs if r.action == "missed"]
    assert (missed.count, missed.first_ms, missed.last_ms) == (3600 - 11, T0 + S, now - 11 * S)


def test_skip_starts_nothing_while_the_previous_runs_and_one_of_a_catch_up() -> None:
    s = every("1s", overlap="skip")
    busy = plan_tick(s, cursor_ms=T0, now_ms=T0 + 2 * S, running=True, buffered_ms=None)
    assert busy.starts == [] and [r.action for r in busy.runs] == ["skipped", "skipped"]
    free = plan_tick(s, cursor_ms=T0, now_ms=T0 + 2 * S, running=False, buffered_ms=None)
    assert [x.fire_ms for x in free.starts] == [T0 + S] and [r.action for r in free.runs] == ["skipped"]


def test_buffer_one_keeps_one_fire_and_starts_it_when_the_previous_is_done() -> None:
    s = every("1s", overlap="buffer_one")
    busy = plan_tick(s, cursor_ms=T0, now_ms=T0 + 2 * S, running=True, buffered_ms=None)
    assert busy.starts == [] and busy.buffered_ms == T0 + S and [r.action for r in busy.runs] == ["buffered", "skipped"]
    assert busy.next_ms == T0 + 3 * S  # the re-check (now + 1 s) and the next fire coincide
    still = plan_tick(s, cursor_ms=T0 + 2 * S, now_ms=T0 + 2 * S + 500, running=True, buffered_ms=T0 + S)
    assert still.starts == [] and still.buffered_ms == T0 + S and still.next_ms == T0 + 3 * S
    done = plan_tick(s, cursor_ms=T0 + 2 * S, now_ms=T0 + 2 * S + 600, running=False, buffered_ms=T0 + S)
    assert [x.execution_id for x in done.starts] == [execution_id("tick", T0 + S)] and done.buffered_ms is None


def test_cancel_previous_cancels_then_starts_the_latest() -> None:
    s = every("1s", overlap="cancel_previous")
    tick = plan_tick(s, cursor_ms=T0, now_ms=T0 + 2 * S, running=True, buffered_ms=None)
    assert tick.cancel_previous and [x.fire_ms for x in tick.starts] == [T0 + 2 * S]
    assert [r.action for r in tick.runs] == ["skipped", "cancelled_previous"]
    idle = plan_tick(s, cursor_ms=T0, now_ms=T0 + S, running=False, buffered_ms=None)
    assert not idle.cancel_previous and len(idle.starts) == 1


def test_a_paused_schedule_plans_nothing_and_leaves_the_due_set() -> None:
    tick = plan_tick(every("1s", paused=True), cursor_ms=T0, now_ms=T0 + 5 * S, running=False, buffered_ms=None)
    assert tick.starts == [] and tick.next_ms == -1 and tick.cursor_ms == T0


def test_a_long_catch_up_is_bounded_per_tick_and_goes_on_at_once() -> None:
    s = every("1s", catchup_window="1h", overlap="allow")
    tick = plan_tick(s, cursor_ms=T0, now_ms=T0 + 3600 * S, running=False, buffered_ms=None)
    assert len(tick.starts) == MAX_FIRES_PER_TICK and tick.next_ms == T0 + 3600 * S
    assert tick.cursor_ms == tick.starts[-1].fire_ms


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=30), st.sampled_from(["allow", "skip", "buffer_one"]))
def test_ticks_at_any_times_start_each_fire_at_most_once_and_allow_starts_all(gaps: list[int], policy: str) -> None:
    s = every("1s", overlap=policy, catchup_window="1h")
    cursor, now, started, buffered = T0, T0, [], None
    for gap in gaps:
        now += gap
        tick = plan_tick(s, cursor_ms=cursor, now_ms=now, running=policy != "allow", buffered_ms=buffered)
        started += [x.fire_ms for x in tick.starts]
        cursor, buffered = tick.cursor_ms, tick.buffered_ms
    assert len(started) == len(set(started))
    if policy == "allow":
        assert started == fire_times(s, T0, now, 10**6)


def test_apply_overlap_never_buffers_a_trigger() -> None:
    done = apply_overlap("buffer_one", [Start(T0, "x@trigger-1", "triggered")], running=True, buffered_ms=None,
                         now_ms=T0)
    assert done.starts == [] and done.buffered_ms is None and done.runs[0].action == "skipped"


# -- the store's scripts on fakeredis ------------------------------------------------------
def test_claim_advance_and_put_on_fakeredis() -> None:
    async def main() -> None:
        redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
        store = ScheduleStore(redis, Keys("t", 2))
        s = every("1s")
        await store.put(s, "create")
        with pytest.raises(Refused):
            await store.put(s, "create")
        now, claimed = await store.claim(10, 10_000, "w1")
        assert [n for n, _ in claimed] == ["tick"]
        assert (await store.claim(10, 10_000, "w2"))[1] == []  # held by w1 for the lease
        token = claimed[0][1]
        assert not await store.advance("tick", "w2:forged", now + S, {"cursor_ms": now}, {}, [], 0)
        await store.put(s, "replace")  # drops w1's claim: its late advance is refused
        assert not await store.advance("tick", token, now + S, {"cursor_ms": now}, {"started": 1}, [], 0)
        _, again = await store.claim(10, 10_000, "w2")
        assert await store.advance("tick", again[0][1], now + 60_000, {"cursor_ms": now}, {"started": 1}, [], 0)
        state = await store.found("tick")
        assert state.counters["started"] == 1 and state.next_ms == now + 60_000 and not state.claimed
        await store.request("tick", Request(kind="trigger", execution_id="tick@trigger-1"))
        assert (await store.found("tick")).next_ms is not None
        assert [n for n, _ in (await store.claim(10, 10_000, "w3"))[1]] == ["tick"]  # a request makes it due
        await store.put(every("1s", paused=True), "pause")
        assert (await store.found("tick")).next_ms is None
        assert await store.delete("tick") and await store.get("tick") is None
        with pytest.raises(NotFound):
            await store.request("tick", Request(kind="trigger", execution_id="tick@trigger-2"))
    asyncio.run(main())


def test_a_cron_catch_up_after_days_is_one_missed_record() -> None:
    s = Schedule(name="x", workflow="wf", cron="*/10 * * * *", catchup_window="30m", overlap="allow")
    now = T0 + 3 * 86_400_000 + 5 * MIN
    tick = plan_tick(s, cursor_ms=T0, now_ms=now, running=False, buffered_ms=None)
    [missed] = [r for r in tick.runs if r.action == "missed"]
    assert (missed.count, missed.first_ms, missed.last_ms) == (3 * 144 - 3, T0 + 10 * MIN, now - 35 * MIN)
    assert [x.fire_ms for x in tick.starts] == [now - 25 * MIN, now - 15 * MIN, now - 5 * MIN]

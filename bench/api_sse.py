"""SSE fan-out and idle-subscription memory for `python -m bench.api`.

N subscribers (aiohttp, one connection each, in the load generator's process)
open GET /executions/{execution_id}/stream on one execution and read its
history so far; once every one has it and the API has settled, the engine is
made to append events to that instance's stream (pause and resume commands,
alternately, through engine.client). Each subscriber stamps every event it
receives (time.time_ns); append -> receive is that stamp minus the millisecond
in the event's stream entry id (Redis's clock, same host), so a figure is high
by up to 1 ms of that rounding. The API process's RSS is read before the
subscribers connect and once they are idle: the difference / N is the memory
of one idle subscription.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from engine.client import Client

from .harness import Skip, percentile


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Subscriber:
    received: dict[str, int] = field(default_factory=dict)
    """stream entry id -> time.time_ns() when its event was read."""
    closed: str = ""

    async def run(self, http: aiohttp.ClientSession, path: str) -> None:
        try:
            async with http.get(path, headers={"Accept": "text/event-stream"}) as resp:
                if resp.status != 200:
                    self.closed = f"HTTP {resp.status}: {(await resp.read())[:200]!r}"
                    return
                last = b""
                async for raw in resp.content:
                    if raw.startswith(b"id:"):
                        self.received[raw[3:].strip().decode()] = time.time_ns()
                    elif raw.startswith((b"event:", b"data:")):
                        last = raw
            self.closed = f"closed by the server after {last[:100].decode(errors='replace').strip()!r}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.closed = f"{type(exc).__name__}: {exc}"


def entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def _settle(subs: list[Subscriber], backlog: int, timeout: float) -> None:
    """Until every subscriber holds the history written before it connected (or was refused)."""
    deadline = time.monotonic() + timeout
    while any(len(s.received) < backlog and not s.closed for s in subs):
        if time.monotonic() > deadline:
            short = sum(len(s.received) < backlog for s in subs)
            raise TimeoutError(f"{short}/{len(subs)} subscribers did not get the history within {timeout}s")
        await asyncio.sleep(0.05)
    failed = [s.closed for s in subs if s.closed]
    if failed and all(f.startswith(("HTTP 404", "HTTP 405")) for f in failed) and len(failed) == len(subs):
        raise Skip(f"GET /executions/{{execution_id}}/stream: {failed[0]}")


async def _connect(http: aiohttp.ClientSession, path: str, n: int, backlog: int,
                   wave: int) -> tuple[list[Subscriber], list[asyncio.Task[None]]]:
    """n subscribers, `wave` at a time: the figure is the fan-out, not a storm of connects."""
    subs: list[Subscriber] = []
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, n, wave):
        batch = [Subscriber() for _ in range(min(wave, n - start))]
        tasks += [asyncio.create_task(s.run(http, path)) for s in batch]
        subs += batch
        await _settle(batch, backlog, 60.0)
    return subs, tasks


async def _append(client: Client, iid: str, rounds: int, gap_s: float) -> None:
    for k in range(rounds):
        if k % 2 == 0:
            await client.pause(iid, "bench")
        else:
            await client.resume(iid)
        await asyncio.sleep(gap_s)


async def fan_out(base: str, client: Client, iid: str, subscribers: int, api_pid: int, *, rounds: int = 10,
                  gap_s: float = 0.2, settle_s: float = 1.0, wave: int = 100) -> dict[str, Any]:
    """append -> receive at each of `subscribers`; RSS per idle subscription."""
    backlog = len(await client.history(iid))
    rss0 = rss_bytes(api_pid)
    connector = aiohttp.TCPConnector(limit=subscribers + 10)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:
        subs, tasks = await _connect(http, f"/executions/{iid}/stream", subscribers, backlog, wave)
        try:
            await asyncio.sleep(settle_s)  # why: each subscription moves from its catch-up read to a blocking one
            rss1 = rss_bytes(api_pid)
            refused = Counter(s.closed[:160] for s in subs if s.closed)
            live = [s for s in subs if not s.closed]
            before = {e for s in subs for e in s.received}
            await _append(client, iid, rounds, gap_s)
            await asyncio.sleep(max(1.0, gap_s * 2))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    lat = [(ns / 1e6) - entry_ms(e) for s in live for e, ns in s.received.items() if e not in before]
    fresh = {e for s in live for e in s.received if e not in before}
    return {"subscribers": subscribers, "connected": len(live), "refused": dict(refused),
            "cut_off_while_measured": dict(Counter(s.closed[:160] for s in live if s.closed)),
            "events_appended": len(fresh), "deliveries": len(lat), "expected_deliveries": len(fresh) * len(live),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else float("nan"),
            "rss_before_bytes": rss0, "rss_idle_bytes": rss1,
            "rss_per_idle_subscription_bytes": (rss1 - rss0) / len(live) if live else None}

"""HTTP load for `python -m bench.api`: keep-alive aiohttp clients (one
ClientSession, a connector limited to the connections asked for).

- closed loop: `concurrency` clients each send their next request as soon as
  the previous one is answered, for a fixed time: the throughput.
- open loop: request i is due at t0 + i/rate whether or not earlier ones were
  answered; its latency is counted from when it was due, not from when it was
  sent, so queueing in the client, the connection pool or the server is in the
  figure (coordinated omission does not hide it).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .harness import percentile

# (method, path, JSON body or None) of request number i
Plan = Callable[[int], tuple[str, str, bytes | None]]
HEADERS = {"Content-Type": "application/json"}


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    def record(self, status: int, body: bytes, keep: bool) -> None:
        self.statuses[status] += 1
        if keep:
            self.bodies.append(body)


def session(base: str, connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False, enable_cleanup_closed=False)
    return aiohttp.ClientSession(base, connector=connector, timeout=aiohttp.ClientTimeout(total=30),
                                 skip_auto_headers=("User-Agent",))


async def _one(http: aiohttp.ClientSession, plan: Plan, i: int, out: Outcome, keep: bool) -> None:
    method, path, body = plan(i)
    try:
        async with http.request(method, path, data=body, headers=HEADERS if body is not None else None) as resp:
            out.record(resp.status, await resp.read(), keep)
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.errors[type(exc).__name__] += 1


async def closed_loop(base: str, plan: Plan, concurrency: int, seconds: float) -> dict[str, Any]:
    """Requests/s with `concurrency` keep-alive clients, each waiting for its answer."""
    out = Outcome()
    counter = iter(range(10**12))
    async with session(base, concurrency) as http:
        await asyncio.gather(*(_one(http, plan, next(counter), out, False) for _ in range(concurrency)))  # warm
        out = Outcome()
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await _one(http, plan, next(counter), out, False)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    done = sum(out.statuses.values())
    return {"requests": done, "seconds": round(elapsed, 3), "per_s": done / elapsed, "concurrency": concurrency,
            "statuses": dict(out.statuses), "errors": dict(out.errors)}


async def open_loop(base: str, plan: Plan, rate: float, seconds: float, connections: int = 64,
                    keep_bodies: int = 0) -> dict[str, Any]:
    """p50/p99 latency at a fixed offered rate; also the rate achieved."""
    out = Outcome()
    n = max(1, int(rate * seconds))
    async with session(base, connections) as http:
        await asyncio.gather(*(_one(http, plan, -1 - k, Outcome(), False) for k in range(min(connections, 16))))
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_timed(http, plan, i, due, out, i < keep_bodies)))
        sent_s = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    lat = out.latencies_ms
    done = sum(out.statuses.values())
    return {"offered_per_s": rate, "requests": n, "answered": done, "seconds": round(elapsed, 3),
            "send_seconds": round(sent_s, 3), "achieved_per_s": done / elapsed, "statuses": dict(out.statuses),
            "errors": dict(out.errors), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else float("nan"), "connections": connections, "bodies": out.bodies}


async def _timed(http: aiohttp.ClientSession, plan: Plan, i: int, due: float, out: Outcome, keep: bool) -> None:
    await _one(http, plan, i, out, keep)
    out.latencies_ms.append((time.perf_counter() - due) * 1000)

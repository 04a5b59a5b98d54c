"""The ceiling of `python -m bench.http_calls`: a bare aiohttp client loop against
the same service, with what the executor has and nothing else: one session, a
connection cap per host equal to the executor's (keep-alive), `concurrency`
requests in flight (the activity worker's FOLDFLOW_CONCURRENCY), a small JSON body
out and the JSON answer parsed. No Redis, no task, no result."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson


async def client_loop(base_url: str, requests: int, concurrency: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency, keepalive_timeout=30)
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    sent = 0
    url = base_url + "/step"
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def one_lane() -> None:
            nonlocal sent
            while sent < requests:
                i = sent
                sent += 1
                try:
                    async with http.post(url, data=orjson.dumps({"input": {}, "context": {"n": i}}),
                                         headers=headers) as resp:
                        orjson.loads(await resp.read())
                        statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one_lane() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    answered = sum(statuses.values())
    return {"requests": requests, "concurrency": concurrency, "seconds": seconds, "per_s": answered / seconds,
            "statuses": statuses, "errors": errors}

"""Real HTTP services for the executor's tests: aiohttp apps on loopback ports,
served from a thread of the test process so a test can script their answers and
read back every request they received.

    with ServiceFarm() as farm:
        users = farm.add("user-service")
        users.route("POST", "/api/users", lambda seen: (201, {"id": "u-1"}))
        ...  users.url, users.seen
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from engine.dev.embedded import free_port


class Seen(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, the text, or None
    at: float


Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Route = Callable[[Seen], Answer | Awaitable[Answer]]


class FakeService:
    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.seen: list[Seen] = []
        self.routes: list[tuple[str, re.Pattern[str], Route]] = []
        self.health: Route = lambda seen: (200, {"status": "ok"})
        self.runner: web.AppRunner | None = None

    def route(self, method: str, path: str, answer: Route) -> FakeService:
        """``path`` is a regex matched against the whole path; later routes win."""
        self.routes.insert(0, (method.upper(), re.compile(path), answer))
        return self

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        return [s for s in self.seen if (method is None or s.method == method)
                and (path is None or re.fullmatch(path, s.path))]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        seen = Seen(request.method, request.raw_path.split("?", 1)[0], dict(request.headers), body, time.time())
        if seen.path == "/health":
            answer = self.health(seen)
        else:
            self.seen.append(seen)
            for method, pattern, route in self.routes:
                if method == request.method and pattern.fullmatch(seen.path):
                    answer = route(seen)
                    break
            else:
                answer = (404, {"error": f"no route {request.method} {seen.path}"})
        if asyncio.iscoroutine(answer):
            answer = await answer
        status, payload, *rest = answer  # type: ignore[misc]
        headers = rest[0] if rest else {}
        if isinstance(payload, (bytes, str)):
            return web.Response(status=status, body=payload if isinstance(payload, bytes) else payload.encode(),
                                headers=headers)
        return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                            headers=headers)


class ServiceFarm:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.services: dict[str, FakeService] = {}

    def __enter__(self) -> ServiceFarm:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for service in self.services.values():
            if service.runner is not None:
                self._run(service.runner.cleanup())
        # Handlers a test left hanging (a held or slow answer): cancelled and awaited here, or the
        # loop's garbage collection logs "Task was destroyed" into whatever test runs next.
        self._run(_cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def add(self, name: str, port: int | None = None, tls: ssl.SSLContext | None = None) -> FakeService:
        """A service on a loopback port: HTTPS with ``tls`` (its server context), else HTTP."""
        service = FakeService(name, port or free_port())
        if tls is not None:
            service.url = service.url.replace("http://", "https://")

        async def start() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", service._handle)
            # A handler a test holds (a hung service) must not hold the farm's shutdown.
            service.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await service.runner.setup()
            await web.TCPSite(service.runner, "127.0.0.1", service.port, ssl_context=tls).start()

        self._run(start())
        self.services[name] = service
        return service

    def stop(self, name: str) -> None:
        """Take a service down (its port refuses connections from now on)."""
        service = self.services[name]
        if service.runner is not None:
            self._run(service.runner.cleanup())
            service.runner = None


async def _cancel_the_rest() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)

"""`foldflow demo --api`: after the demo has run, its workflows stay visible over
HTTP. The API is served from this process on the demo's own backend (REDIS_URL,
the embedded redis-server, or the in-process fake: the app is handed the same
client factory the workers use, so all three work), with a projector folding
the read models and the demo's workers still running, so executions started
with curl run too. It serves until Ctrl-C (or `stop`, for tests)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from engine.api.app import create_app
from engine.api.settings import ApiSettings
from engine.config import Settings
from engine.store.connection import Redis
from projections.runner import Projector

HOST = "127.0.0.1"


def banner(url: str, execution_id: str | None) -> list[str]:
    lines = [f"\nfoldflow API on {url} (docs at {url}/docs, web UI at {url}/ui); Ctrl-C to stop. Try:",
             f"  curl -s {url}/workflows"]
    target = f"{url}/executions/{execution_id}" if execution_id else f"{url}/executions"
    lines.append(f"  curl -s {target}")
    return lines


async def serve_demo_api(client: Callable[[], Redis], settings: Settings, port: int, *, say: Any = print,
                         execution_id: str | None = None, stop: asyncio.Event | None = None) -> int:
    """Serve the API over the demo's backend until Ctrl-C or `stop`; 0 when it served and stopped."""
    projector = Projector(client(), settings)
    projecting = asyncio.create_task(projector.run())
    app = create_app(settings, ApiSettings(host=HOST, port=port), redis_factory=client)
    server = _Server(uvicorn.Config(app, host=HOST, port=port, loop="none", http="httptools",
                                           lifespan="on", access_log=False, log_config=None,
                                           server_header=False, timeout_graceful_shutdown=2))
    watcher = asyncio.create_task(_stop_when(stop, server)) if stop is not None else None
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.wait([serving, asyncio.create_task(server.up.wait())], return_when=asyncio.FIRST_COMPLETED)
        if server.started:
            for line in banner(f"http://{HOST}:{port}", execution_id):
                say(line)
        await serving
        return 0 if server.started else 1
    finally:
        projector.stop()
        for task in (watcher, projecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await projector.redis.aclose()


class _Server(uvicorn.Server):
    """Ctrl-C is how the demo's serving ends, not an error: it stops the server and the demo
    cleans up and exits 0 (uvicorn would re-raise the signal after shutting down)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.up.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def _stop_when(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True

"""`foldflow api`: the app on uvicorn (uvloop, httptools), bound as the settings say.

With no auth configured it binds loopback only: a non-loopback address is
refused (exit 2, saying why) unless --insecure-no-auth is given, so an open API
is always a decision someone wrote down."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

import uvicorn

from engine.api.app import create_app
from engine.api.settings import ApiSettings, bind_refusal
from engine.config import Settings

log = logging.getLogger("foldflow.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM/SIGINT once it has shut down, so the process would die
        # of the signal (-15) with its last log lines unflushed; every foldflow role exits 0
        # after a graceful shutdown, and a supervisor reads anything else as a crash.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def uvicorn_config(settings: Settings, api: ApiSettings) -> uvicorn.Config:
    return uvicorn.Config(create_app(settings, api), host=api.host, port=api.port, loop="none", http="httptools",
                          ws="websockets-sansio", lifespan="on", access_log=False, log_config=None,
                          server_header=False, timeout_graceful_shutdown=5)


async def serve_api(settings: Settings, api: ApiSettings) -> int:
    refusal = bind_refusal(api)
    if refusal:
        print(f"foldflow api: {refusal}", file=sys.stderr)
        return 2
    if not api.auth_configured:
        log.warning("serving with no auth on %s: every route is open to whoever reaches it", api.host)
    server = _Server(uvicorn_config(settings, api))
    await server.serve()
    return 0 if server.started else 1

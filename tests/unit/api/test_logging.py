"""The API logs the way every role does (engine.ops.logs, --log-format): building and
serving the app leaves the root logger as foldflow configured it. Litestar's default
logging config would install its own handler and text format there, so `foldflow api
--log-format json` printed uvicorn's and httpx's lines as text."""

from __future__ import annotations

import io
import logging

import fakeredis
import orjson
from litestar.testing import TestClient

from engine.api.app import create_app
from engine.api.settings import ApiSettings
from engine.config import Settings
from engine.ops.logs import configure_logging


def test_the_app_keeps_the_root_logger_as_configured() -> None:
    buf = io.StringIO()
    configure_logging("INFO", "json", stream=buf)
    try:
        handlers = list(logging.getLogger().handlers)
        app = create_app(Settings(), ApiSettings(), redis_factory=fakeredis.FakeAsyncRedis)
        with TestClient(app) as http:
            assert http.get("/ping").status_code == 200
        assert logging.getLogger().handlers == handlers
        logging.getLogger("uvicorn.error").info("a line from the server")
        lines = [orjson.loads(line) for line in buf.getvalue().splitlines()]
        assert lines and all(set(line) >= {"ts", "level", "logger", "msg"} for line in lines)
        assert any(line["msg"] == "a line from the server" for line in lines)
    finally:
        configure_logging("WARNING", "text")

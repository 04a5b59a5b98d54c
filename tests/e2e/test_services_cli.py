"""`foldflow services` against a real Redis, checking a loopback HTTP service."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine.config import Settings
from engine.dev.embedded import free_port
from tests.support.tools import ROOT, foldflow_env

pytestmark = pytest.mark.redis


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"up")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.ops.cli", "services", *args], env=foldflow_env(settings),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def ok(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_register_list_show_check_remove(settings: Settings, healthy: str) -> None:
    made = ok(cli(settings, "register", "user-service", healthy, "--health", "/healthz", "--interval", "15s",
                  "--timeout", "5s", "--header", "Authorization=Bearer {{ secrets.TOKEN }}", "--tag", "seed-004",
                  "--weight", "3"))
    assert made["action"] == "registered"
    service = made["service"]
    assert service["instances"] == [{"url": healthy, "weight": 3}]
    assert (service["health"]["interval_ms"], service["timeout_ms"]) == (15_000, 5_000)
    assert service["headers"] == {"Authorization": "Bearer {{ secrets.TOKEN }}"}

    again = ok(cli(settings, "register", "user-service", healthy, "--health", "/healthz"))
    assert again["action"].startswith("updated") and again["service"]["id"] == service["id"]

    checked = ok(cli(settings, "check", "user-service"))
    assert checked["status"] == "passing" and checked["checks"][0]["output"] == "HTTP 200: up"
    listed = ok(cli(settings, "list"))
    assert [(s["name"], s["status"]) for s in listed] == [("user-service", "passing")]
    shown = ok(cli(settings, "show", service["id"]))
    assert shown["checks"][healthy]["status"] == "passing"

    ok(cli(settings, "register", "user-service", healthy, "--health", "/missing", "--failures", "1"))
    failing = cli(settings, "check", "user-service")
    assert failing.returncode == 1 and "HTTP 404" in failing.stdout  # none passing

    assert ok(cli(settings, "remove", "user-service")) == {"removed": "user-service"}
    gone = cli(settings, "show", "user-service")
    assert gone.returncode == 1 and "user-service" in gone.stderr


def test_bad_input_exits_2_naming_the_field(settings: Settings) -> None:
    bad = cli(settings, "register", "svc", "ftp://nowhere", f"http://127.0.0.1:{free_port()}?x=1")
    assert bad.returncode == 2
    assert "instances[0].url" in bad.stderr and "instances[1].url" in bad.stderr
    header = cli(settings, "register", "svc", "http://127.0.0.1:1", "--header", "novalue")
    assert header.returncode == 2 and "NAME=VALUE" in header.stderr

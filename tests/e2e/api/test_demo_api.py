"""`foldflow demo --api` as a process on the embedded default (a redis-server it
starts itself: no REDIS_URL): it runs the demo, prints the URL and two curl
commands, serves the demo's workflows over HTTP, and stops on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from engine.dev.embedded import free_port
from tests.support.tools import ROOT, foldflow_env, require_redis_server


def test_demo_api_on_the_embedded_redis_server() -> None:
    require_redis_server("the demo embeds a redis-server when REDIS_URL is unset")
    port = free_port()
    env = foldflow_env(None, drop=("REDIS_URL", "FOLDFLOW_EMBEDDED", "FOLDFLOW_PREFIX"))
    proc = subprocess.Popen([sys.executable, "-m", "engine.ops.cli", "demo", "--instances", "2", "--api",
                             "--api-port", str(port)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        items: list[dict[str, object]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(url + "/executions", timeout=2)
                items = r.json()["items"] if r.status_code == 200 else []
                if len([e for e in items if e["status"] == "completed"]) == 2:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert proc.poll() is None, "the demo exited instead of serving"
        assert len([e for e in items if e["status"] == "completed"]) == 2, items
        workflows = httpx.get(url + "/workflows").json()["items"]
        assert [w["name"] for w in workflows] == ["Agent Task Execution"]
        assert httpx.get(f"{url}/workflows/{workflows[0]['id']}").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "embedded redis-server" in out
    assert f"foldflow API on {url}" in out and out.count("curl -s ") == 2
    assert proc.returncode == 0, out[-3000:]

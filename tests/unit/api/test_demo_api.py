"""`foldflow demo --api` on the in-process fake (no redis-server): the demo runs,
then its workflows and executions are served over loopback HTTP until stopped
(tests/e2e/api/test_demo_api.py runs the real verb on an embedded redis-server
and stops it with Ctrl-C)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from engine.dev.demo import run_demo
from engine.dev.demo_api import banner
from engine.dev.embedded import free_port


async def _until(client: httpx.AsyncClient, path: str, ok: object, timeout: float = 30.0) -> httpx.Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while loop.time() < deadline:
        try:
            r = await client.get(path)
            if callable(ok) and ok(r):
                return r
            last = (r.status_code, r.text[:300])
        except httpx.TransportError as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never as wanted: {last}")


def test_demo_serves_its_workflows_on_the_fake(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FOLDFLOW_EMBEDDED", "fake")
    monkeypatch.delenv("REDIS_URL", raising=False)
    port = free_port()

    async def go() -> int:
        stop = asyncio.Event()
        demo = asyncio.create_task(run_demo(instances=2, verbose=False, api_port=port, api_stop=stop))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            listed = await _until(c, "/workflows", lambda r: r.status_code == 200 and r.json()["items"])
            names = [w["name"] for w in listed.json()["items"]]
            assert "Agent Task Execution" in names
            done = await _until(c, "/executions", lambda r: r.status_code == 200 and len(
                [e for e in r.json()["items"] if e["status"] == "completed"]) == 2)
            first = done.json()["items"][0]["execution_id"]
            one = await c.get(f"/executions/{first}")
            assert one.status_code == 200 and one.json()["status"] == "completed"
            assert (await c.get(f"/executions/{first}/history")).status_code == 200
            assert (await c.get("/health/readiness")).status_code == 200
        stop.set()
        return await asyncio.wait_for(demo, 30)

    assert asyncio.run(go()) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}" in out and out.count("curl -s") == 2


def test_banner_names_the_url_and_two_curls() -> None:
    lines = banner("http://127.0.0.1:9", "abc")
    assert any("http://127.0.0.1:9/docs" in line for line in lines)
    assert [line.strip() for line in lines if "curl" in line] == [
        "curl -s http://127.0.0.1:9/workflows", "curl -s http://127.0.0.1:9/executions/abc"]

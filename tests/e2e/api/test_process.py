"""`foldflow api` as a process: it serves, answers health without a token, and
refuses to bind a non-loopback address with no auth."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.support.api_stack import ApiStack
from tests.support.tools import ROOT, foldflow_env


def test_serves_health_and_spec(stack: ApiStack) -> None:
    assert httpx.get(stack.url + "/health/liveness").json()["status"] == "ok"
    spec = httpx.get(stack.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert httpx.get(stack.url + "/docs").status_code == 200


def test_refuses_open_non_loopback_bind(redis_url: str) -> None:
    env = foldflow_env(None, url=redis_url, drop=("FOLDFLOW_JWT_SECRET", "JWT_SECRET", "FOLDFLOW_JWT_JWKS_URL"))
    done = subprocess.run([sys.executable, "-m", "engine.ops.cli", "api", "--host", "0.0.0.0", "--port", "0"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0 with no auth" in done.stderr

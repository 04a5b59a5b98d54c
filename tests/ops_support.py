"""Process helpers for the operations tests: workers as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from engine.config import Settings
from engine.dev.embedded import free_port

from .conftest import ROOT

SLOW_FLOW = {"name": "ops-slow", "version": "1", "definition": {"steps": [
    {"name": "slow", "step_type": "service_call", "service": "ops-slow", "endpoint": "/slow"}]}}


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": settings.redis_url, "FOLDFLOW_PREFIX": settings.prefix,
        "FOLDFLOW_PARTITIONS": str(settings.partitions), "FOLDFLOW_LEASE_MS": "1000", "FOLDFLOW_BLOCK_MS": "100",
        "FOLDFLOW_TIMER_POLL_MS": "50", "FOLDFLOW_CLAIM_IDLE_MS": "1000", "FOLDFLOW_HEARTBEAT_MS": "300", **extra,
    }


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "engine.ops.cli", *args], env=env, stdout=out, stderr=out, cwd=ROOT)


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, timeout: float = 20.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(url)
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


__all__ = ["SLOW_FLOW", "env_for", "free_port", "get", "spawn", "stop", "wait_http"]

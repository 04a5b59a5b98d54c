"""Helpers for the operations tests: HTTP probes of the workers' metrics and health
endpoints, and a slow flow to have work in flight. Processes start through
``tests.support.tools`` (``foldflow_env``, ``spawn``)."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request

from engine.dev.embedded import free_port

from .poll import wait_for

SLOW_FLOW = {"name": "ops-slow", "version": "1", "definition": {"steps": [
    {"name": "slow", "step_type": "service_call", "service": "ops-slow", "endpoint": "/slow"}]}}


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, timeout: float = 20.0) -> tuple[int, bytes]:
    """The first answer of ``url`` (any status), once something listens there."""
    return wait_for(lambda: get(url), timeout, f"{url} answers", ok=lambda _: True,
                    retry_on=(urllib.error.URLError, OSError))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


__all__ = ["SLOW_FLOW", "free_port", "get", "stop", "wait_http"]

"""One deployment per module with the HTTP executor (`foldflow activities --http`)
and no Python handler at all, and a farm of real HTTP services on loopback ports
that the tests script. Seed 000's services resolve through the environment
(``PLANNING_SYSTEM_URL``, as the seed configures them); the rest through the registry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api_stack import ApiStack
from tests.support.http_services import ServiceFarm
from tests.support.tools import ROOT

SECRET = "tok-7f3a9c1e55d2b8e4"  # searched for everywhere after the run: it must be nowhere
HTTP_KNOBS = {
    "FOLDFLOW_TASK_CLAIM_IDLE_MS": "1500",  # a killed executor's call is taken over quickly
    "FOLDFLOW_BREAKER_THRESHOLD": "0",  # the failure tests fail on purpose
    "FOLDFLOW_HTTP_REFRESH_MS": "200",
    "FOLDFLOW_HTTP_TIMEOUT_MS": "5000",
    "FOLDFLOW_SECRET_API_TOKEN": SECRET,
}


@pytest.fixture(scope="module")
def farm() -> Iterator[ServiceFarm]:
    with ServiceFarm() as running:
        running.add("planning-system")
        running.add("agent-orchestrator")
        running.add("project-coordinator")
        yield running


@pytest.fixture(scope="module")
def stack(redis_url: str, farm: ServiceFarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    logs: Path = tmp_path_factory.mktemp("http-stack")
    env = {**HTTP_KNOBS, **{f"{n.upper().replace('-', '_')}_URL": farm.services[n].url
                            for n in ("planning-system", "agent-orchestrator", "project-coordinator")}}
    with ApiStack(redis_url, logs, activities=None, http=True, env=env) as running:
        yield running


def cli(stack: ApiStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`foldflow ...` against the stack's deployment, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "engine.ops.cli", *args], env=stack.env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)

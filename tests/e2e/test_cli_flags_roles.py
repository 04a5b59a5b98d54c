"""Each role as a process with its settings given after the verb
(`foldflow worker --metrics-port N`): it serves /metrics on that port, the value
after the verb wins over one before it, and the Redis URL and prefix after the
verb are the ones it works in. (tests/unit/test_cli_flags.py has the parsing.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from engine.config import Settings
from tests.support.ops_support import free_port, get, stop, wait_http
from tests.support.poll import wait_for
from tests.support.tools import OPS_KNOBS, foldflow_env, spawn

pytestmark = pytest.mark.redis

ROLES = {"engine": ["worker"], "activities": ["activities", "--module", "engine.dev.demo_handlers"],
         "projector": ["projector"]}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_role_serves_metrics_on_the_port_given_after_its_verb(role: str, settings: Settings, tmp_path: Path) -> None:
    port, before = free_port(), free_port()
    # Nothing in the environment says where Redis is or which prefix: only the flags after the verb do.
    env = foldflow_env(None, OPS_KNOBS, drop=("REDIS_URL", "FOLDFLOW_REDIS_URL", "FOLDFLOW_PREFIX",
                                              "FOLDFLOW_PARTITIONS", "FOLDFLOW_METRICS_PORT"))
    args = ["--metrics-port", str(before), *ROLES[role], "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
            "--redis-url", settings.redis_url, "--prefix", settings.prefix, "--partitions", str(settings.partitions)]
    log = tmp_path / f"{role}.log"
    proc = spawn(args, env, log)
    try:
        status, body = wait_http(f"http://127.0.0.1:{port}/metrics")
        assert status == 200, log.read_text()[-3000:]
        assert re.search(rf'(?m)^foldflow_worker_info\{{[^}}]*role="{role}"[^}}]*\}} 1\.0$', body.decode()), body
        wait_for(lambda: get(f"http://127.0.0.1:{port}/health/readiness"), 20, f"{role} ready",
                 ok=lambda r: r[0] == 200)
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{before}/metrics", timeout=1)
        r = redis.Redis.from_url(settings.redis_url)
        try:
            assert r.keys(f"{settings.prefix}:*"), f"{role} wrote nothing under the prefix given after the verb"
        finally:
            r.close()
    finally:
        stop(proc)

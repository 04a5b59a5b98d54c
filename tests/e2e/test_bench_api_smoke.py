"""`python -m bench.api --quick` as a smoke test, so the API benchmarks cannot rot:
it starts its own redis-server, `foldflow api`, engine worker and ceiling, runs
every case at a tiny size and writes its report. Timings are never asserted
(the machines are shared); a case the API cannot serve yet is reported as
skipped, never as failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import ROOT, foldflow_env

# slow: the suite has a 12-minute budget on two cores; tests/e2e/test_bench_smoke.py keeps `bench quick` in the default run
pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.usefixtures("redis_server_bin")]  # the bench starts its own


def test_bench_api_quick_writes_its_section(tmp_path: Path) -> None:
    (tmp_path / "RESULTS.md").write_text("# foldflow benchmark results\n\nthe other cases\n")
    env = foldflow_env(drop=("REDIS_URL",))
    proc = subprocess.run([sys.executable, "-m", "bench.api", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = json.loads((tmp_path / "api_results.json").read_text())
    assert raw["mode"] == "quick"
    results = raw["results"]
    assert not [k for k, v in results.items() if isinstance(v, dict) and "failed" in v], results
    ceiling = results["throughput"]["result"]["ceiling"]
    assert ceiling[0]["requests"] > 0 and ceiling[0]["statuses"] == {"200": ceiling[0]["requests"]}
    report = (tmp_path / "RESULTS.md").read_text()
    assert report.startswith("# foldflow benchmark results\n\nthe other cases\n")  # only its own section
    assert report.count("## HTTP API") == 1 and "| ratio or goal |" in report and "ceiling" in report
    again = subprocess.run([sys.executable, "-m", "bench.api", "report", "--out", str(tmp_path)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "RESULTS.md").read_text() == report

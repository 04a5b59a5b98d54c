"""`python -m bench run --quick` as a smoke test: it runs every case end to end
and writes its report. Timings are never asserted (the machines are shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import ROOT, foldflow_env

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("redis_server_bin")]  # the bench starts its own


def test_bench_quick_writes_its_report(tmp_path: Path) -> None:
    env = foldflow_env(drop=("REDIS_URL",))  # the bench starts its own servers
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| case | median |" in report and "steps/s" in report
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["mode"] == "quick" and raw["results"]

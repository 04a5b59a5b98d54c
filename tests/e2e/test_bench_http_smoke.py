"""`python -m bench.http_calls --quick` as a smoke test, so the HTTP service-call
bench cannot rot: on the tests' redis-server it starts the aiohttp service, the
engine workers, a Python-handler activity worker and the HTTP executor, runs each
case once at a tiny size and writes its report. Timings are never asserted (the
machines are shared); that every figure is there, is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.http_report import figures
from tests.support.tools import ROOT, foldflow_env


def test_bench_http_quick_reports_every_figure(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "RESULTS.md").write_text("# foldflow benchmark results\n\nthe other cases\n")
    env = foldflow_env(url=redis_url)
    proc = subprocess.run([sys.executable, "-m", "bench.http_calls", "--quick", "--instances", "10", "--redis-url",
                           redis_url, "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = json.loads((tmp_path / "http_results.json").read_text())
    results = raw["results"]
    assert "failed" not in results, results
    assert results["ceiling"][0]["statuses"] == {"200": 50}
    http = results["http"][0]
    assert http["overhead"]["samples"] == 50  # one sample per call: every step went over HTTP
    assert http["overhead"]["counters"]["http_calls"] == 50
    missing = [k for k, v in figures(results).items() if v is None]
    assert not missing, missing
    report = (tmp_path / "RESULTS.md").read_text()
    assert report.startswith("# foldflow benchmark results\n\nthe other cases\n")  # only its own section
    assert report.count("## HTTP service calls") == 1
    for row in ("1. ceiling", "2. Python handlers", "3. HTTP service calls", "task read → request sent, p99",
                "answer read → result reported, p99", "HTTP steps/s / Python-handler steps/s",
                "HTTP steps/s / ceiling requests/s", "| 3. HTTP |"):
        assert row in report, row
    again = subprocess.run([sys.executable, "-m", "bench.http_calls", "report", "--out", str(tmp_path)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "RESULTS.md").read_text() == report

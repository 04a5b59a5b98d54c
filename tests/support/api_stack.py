"""A running deployment for the API tests: an engine worker, a projector, an
activity worker serving the demo handlers, and one or more `foldflow api`
processes, all real processes on a real redis-server under one fresh prefix.
Tests talk to it over loopback HTTP, as any service would.

    with ApiStack(redis_url, tmp_path, apis=2) as stack:
        httpx.get(stack.url + "/executions")
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from engine.dev.embedded import free_port

from .tools import WORKER_KNOBS, foldflow_env, spawn

API_KNOBS: dict[str, str] = {**WORKER_KNOBS, "FOLDFLOW_HEARTBEAT_MS": "300", "FOLDFLOW_API_HEARTBEAT_S": "1"}


class ApiStack:
    def __init__(self, redis_url: str, logs: Path, *, apis: int = 1, prefix: str | None = None,
                 workers: bool = True, activities: str | None = "engine.dev.demo_handlers",
                 env: Mapping[str, str] | None = None, partitions: int = 4,
                 ready: str = "/health/readiness", api_args: tuple[str, ...] = (), http: bool = False) -> None:
        """``ready``: the path that must answer 200 before the stack counts as started
        (``/health/liveness`` for an API pointed at a Redis that is down)."""
        self.redis_url, self.logs, self.apis = redis_url, logs, apis
        self.ready, self.api_args = ready, api_args
        self.prefix = prefix or f"t{uuid.uuid4().hex[:8]}"
        self.workers, self.activities, self.partitions = workers, activities, partitions
        self.http = http  # also run `foldflow activities --http` (the HTTP executor) as process "http"
        self.extra = dict(env or {})
        self.ports = [free_port() for _ in range(apis)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def env(self, **extra: str) -> dict[str, str]:
        return foldflow_env(None, API_KNOBS, self.extra, url=self.redis_url, prefix=self.prefix,
                            partitions=self.partitions, drop=("FOLDFLOW_REDIS_URL",), **extra)

    def start(self) -> ApiStack:
        # A `with` block whose start fails never reaches __exit__: stop what did start.
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> ApiStack:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.workers:
            self.procs["worker"] = spawn(["worker"], self.env(), self.logs / "worker.log")
            self.procs["projector"] = spawn(["projector"], self.env(), self.logs / "projector.log")
        if self.activities:
            self.procs["activities"] = spawn(["activities", "--module", self.activities], self.env(),
                                             self.logs / "activities.log")
        if self.http:
            self.start_http()
        for i, port in enumerate(self.ports):
            self.procs[f"api{i}"] = spawn(["api", "--port", str(port), *self.api_args], self.env(),
                                          self.logs / f"api{i}.log")
        for i, url in enumerate(self.urls):
            self._wait_ready(f"api{i}", url)
        return self

    def start_http(self, name: str = "http") -> subprocess.Popen[bytes]:
        self.procs[name] = spawn(["activities", "--http"], self.env(), self.logs / f"{name}.log")
        return self.procs[name]

    def _wait_ready(self, name: str, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited {self.procs[name].returncode}:\n{self.log(name)}")
            try:
                if httpx.get(url + self.ready, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready at {url} after {timeout}s:\n{self.log(name)}")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> ApiStack:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

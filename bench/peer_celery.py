"""Peer: Celery 5 on the bench's redis-server (broker and result backend),
chains of 5 trivial tasks. The worker runs as `celery -A bench.peer_celery
worker` in its own process tree; this module is also its app.

Settings follow Celery's "Optimizing" guide for many short tasks (a high
prefetch multiplier, rate limits off) and the usual flags for a throughput run
(no gossip, mingle or heartbeat events). SETTINGS lists every one for RESULTS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from .harness import ROOT, Skip, proc_cpu_seconds, tree_cpu_seconds

CHAIN = 5
CONFIG = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "worker_prefetch_multiplier": 64,
    "worker_disable_rate_limits": True,
    "task_acks_late": False,
    "task_ignore_result": False,
    "result_expires": 3600,
    "broker_connection_retry_on_startup": True,
    "worker_send_task_events": False,
    "task_send_sent_event": False,
}
WORKER_ARGS = ["--pool", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--loglevel", "WARNING"]
SETTINGS = {**{k: v for k, v in CONFIG.items() if k != "accept_content"},
            "broker": "redis (same redis-server, db 1)", "result_backend": "redis (same redis-server, db 2)",
            "worker": "celery worker " + " ".join(WORKER_ARGS) + " --concurrency N",
            "workflow": f"chain of {CHAIN} tasks, each returns its argument + 1",
            "load": "every chain sent with apply_async from the load generator, then completion polled "
                    "(MGET of the last tasks' result keys every 20 ms)"}


def make_app(url: str) -> Any:
    from celery import Celery

    base = url.rsplit("/", 1)[0]
    app = Celery("bench_peer", broker=f"{base}/1", backend=f"{base}/2")
    app.conf.update(CONFIG)

    @app.task(name="bench.step")
    def step(x: int) -> int:
        return x + 1

    return app


# The worker process imports this module with BENCH_CELERY_URL set.
if os.environ.get("BENCH_CELERY_URL"):
    app = make_app(os.environ["BENCH_CELERY_URL"])


def run(url: str, chains: int, concurrency: int, timeout: float = 600.0) -> dict[str, Any]:
    try:
        import celery
        from celery import chain
    except ImportError as exc:
        raise Skip(f"celery is not installed ({exc}); pip install 'celery[redis]>=5'") from exc
    import redis as syncredis

    client = make_app(url)
    step = client.tasks["bench.step"]
    base = url.rsplit("/", 1)[0]
    backend = syncredis.Redis.from_url(f"{base}/2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_CELERY_URL": url}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.peer_celery", "worker",
                               "--concurrency", str(concurrency), *WORKER_ARGS], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        warm = chain(step.s(0), *[step.s() for _ in range(CHAIN - 1)]).apply_async()
        if warm.get(timeout=60) != CHAIN:
            raise RuntimeError("celery warm-up chain returned a wrong value")
        cpu0 = tree_cpu_seconds(worker.pid)
        me0 = proc_cpu_seconds(os.getpid())
        t0 = time.perf_counter()
        last = [chain(step.s(0), *[step.s() for _ in range(CHAIN - 1)]).apply_async().id for _ in range(chains)]
        sent_s = time.perf_counter() - t0
        keys = [f"celery-task-meta-{i}" for i in last]
        while True:
            done = sum(1 for v in backend.mget(keys) if v is not None and b'"SUCCESS"' in v)
            if done == chains:
                break
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"celery: {done}/{chains} chains after {timeout}s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu_seconds(worker.pid) - cpu0
        gen = proc_cpu_seconds(os.getpid()) - me0
        return {"chains": chains, "concurrency": concurrency, "seconds": elapsed, "send_seconds": sent_s,
                "steps_per_s": chains * CHAIN / elapsed, "chains_per_s": chains / elapsed,
                "cpu_seconds": {"celery_worker_tree": cpu, "load_generator": gen},
                "celery": celery.__version__}
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        for db in (1, 2):
            syncredis.Redis.from_url(f"{base}/{db}").flushdb()

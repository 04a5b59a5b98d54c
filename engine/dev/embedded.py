"""The embedded default: a real redis-server on a free loopback port when one
is installed, otherwise an in-process fake. Used by the demo and the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from engine.store.connection import connect


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server process on loopback (nothing kept on disk by default).

    ``username``/``password``: the user the readiness check logs in as (a server
    started with ``--aclfile`` or ``--requirepass`` in ``extra``); none by default.
    """

    def __init__(self, port: int | None = None, *extra: str, binary: str | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.binary = binary or shutil.which("redis-server") or ""
        if not self.binary:
            raise FileNotFoundError("redis-server is not on PATH")
        self.port = port or free_port()
        self.extra = list(extra)
        self.username = username
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="foldflow-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--protected-mode", "yes", *self.extra]
        log = open(os.path.join(self.dir, "redis.log"), "wb")  # redis logs to stdout; keep it for errors  # noqa: SIM115 - open for the server process's lifetime
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        client = self.sync_client(socket_connect_timeout=0.2)
        try:
            while True:
                if self.proc.poll() is not None:
                    with open(os.path.join(self.dir, "redis.log"), "rb") as fh:
                        err = fh.read()[-1500:].decode(errors="replace")
                    raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}: {err}")
                try:
                    if client.ping():
                        return self
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def sync_client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client of this server, logged in as ``username`` when given."""
        return redis.Redis(port=self.port, username=self.username, password=self.password, **kwargs)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Backend:
    """Where a process-local run talks to: a URL (real Redis) or a shared fake server."""

    def __init__(self, kind: str, url: str | None = None, fake_server: Any = None,
                 server: RedisServer | None = None) -> None:
        self.kind = kind
        self.url = url
        self._fake_server = fake_server
        self._server = server

    def client(self) -> aioredis.Redis:
        if self._fake_server is not None:
            import fakeredis

            return fakeredis.FakeAsyncRedis(server=self._fake_server)
        assert self.url is not None
        return connect(self.url)

    def describe(self) -> str:
        if self.kind == "url":
            return f"Redis at {self.url}"
        if self.kind == "embedded":
            return f"embedded redis-server on {self.url} (stopped at exit)"
        return "in-process fake Redis (no redis-server installed)"

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()


def open_backend(url: str | None = None, prefer: str | None = None) -> Backend:
    """REDIS_URL when given; else a redis-server we start; else the in-process fake.

    FOLDFLOW_EMBEDDED=fake forces the fake (to try the no-Redis path on a machine that has one).
    """
    if url:
        return Backend("url", url=url)
    prefer = prefer or os.environ.get("FOLDFLOW_EMBEDDED", "")
    if prefer != "fake" and shutil.which("redis-server"):
        server = RedisServer().start()
        return Backend("embedded", url=server.url, server=server)
    import fakeredis

    return Backend("fake", fake_server=fakeredis.FakeServer())


ClientFactory = Callable[[], aioredis.Redis]


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and below 65536 too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServer:
    """A throwaway Redis Cluster on loopback: ``masters`` primaries with ``replicas`` each.

    ``extra_args`` go to every node (e.g. ``--aclfile``: ACLs are per node);
    ``username``/``password`` are the user that creates the cluster (redis-cli
    ``--cluster create``), checks its readiness and that replicas replicate as
    (``--masteruser``/``--masterauth``). Without them nothing logs in.
    """

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000, *,
                 extra_args: Sequence[str] = (), username: str | None = None,
                 password: str | None = None) -> None:
        # No diskless-sync delay: a replica must hold a copy before a test kills its master.
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-config-file", "nodes.conf", "--repl-diskless-sync-delay", "0", *extra_args]
        if password is not None:
            args += [*(["--masteruser", username] if username else []), "--masterauth", password]
        self.nodes = [RedisServer(_cluster_port(), *args, username=username, password=password)
                      for _ in range(masters * (1 + replicas))]
        self.masters = masters
        self.replicas = replicas
        self.username = username
        self.password = password

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 30.0) -> RedisClusterServer:
        cli = shutil.which("redis-cli")
        if not cli:
            raise FileNotFoundError("redis-cli is not on PATH")
        for i, node in enumerate(self.nodes):
            for _ in range(5):  # the port was free when chosen; another process may take it first
                try:
                    node.start()
                    break
                except RuntimeError:
                    node.stop()
                    node = self.nodes[i] = RedisServer(_cluster_port(), *node.extra, username=self.username,
                                                       password=self.password)
            else:
                raise RuntimeError("could not start a cluster node")
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        login = ["--user", self.username] if self.username else []
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password is not None else None
        subprocess.run([cli, *login, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                        "--cluster-yes"], check=True, capture_output=True, timeout=timeout, env=env)
        deadline = time.monotonic() + timeout
        while True:  # every node must agree the cluster is up before clients connect
            states = []
            for node in self.nodes:
                client = node.sync_client()
                try:
                    info = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
                    states.append(str(info.get("cluster_state") if isinstance(info, dict) else info))
                finally:
                    client.close()
            if all(s == "ok" or "cluster_state:ok" in s for s in states) and self._replicas_synced():
                return self
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _replicas_synced(self) -> bool:
        for node in self.nodes:
            client = node.sync_client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Security on Redis Cluster: every role runs as its own ACL user of
deploy/acl/users.acl, loaded by every node (ACLs are per node), through
``redis+cluster://`` URLs (streams.md, "Security: ACL users per role"). The
single-server twin of this test is tests/e2e/test_security.py, whose helpers this
file uses."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.dev.embedded import RedisClusterServer
from engine.store.connection import connect
from tests.e2e.test_security import ROLES, ROOT_USER, _acl_entry, every_role_end_to_end, redis_binary, render_acl, server_version
from tests.support.poll import run
from tests.support.tools import require_tool

pytestmark = pytest.mark.redis


class AclCluster:
    def __init__(self, cluster: RedisClusterServer, passwords: dict[str, str]) -> None:
        self.cluster = cluster
        self.passwords = passwords

    def url(self, role: str) -> str:
        return f"redis+cluster://ff-{role}:{self.passwords[role]}@127.0.0.1:{self.cluster.nodes[0].port}/0"

    def roots(self) -> list[redis.Redis]:
        """The test superuser on each node (ACL LOG, FLUSHALL and DBSIZE are per node)."""
        return [node.sync_client() for node in self.cluster.nodes]

    def refusals(self) -> dict[int, list[dict[str, Any]]]:
        out = {}
        for node, r in zip(self.cluster.nodes, self.roots()):
            with r:
                out[node.port] = [_acl_entry(e) for e in r.execute_command("ACL", "LOG", "128")]
        return out


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclCluster]:
    binary = redis_binary()
    require_tool("redis-cli", "a Redis Cluster is created with redis-cli --cluster")
    passwords = {role: secrets.token_hex(12) for role in ROLES}
    root_password = secrets.token_hex(12)
    acl = tmp_path_factory.mktemp("acl-cluster") / "users.acl"
    acl.write_text(render_acl(passwords, root_password, server_version(binary)))
    cluster = RedisClusterServer(masters=3, replicas=0, extra_args=["--aclfile", str(acl)],
                                 username=ROOT_USER, password=root_password).start()
    try:
        yield AclCluster(cluster, passwords)
    finally:
        cluster.stop()


def test_every_role_runs_as_its_own_acl_user_on_a_cluster(acl_cluster: AclCluster, agent_example: bytes,
                                                         tmp_path: Path) -> None:
    """As tests/e2e/test_security.py's end-to-end test, on 3 masters: the admin registers, the engine,
    activity and projector processes run as their users, the test is the client and the reader;
    no node refuses anything but the preflight's CONFIG GET."""
    for r in acl_cluster.roots():
        with r:
            r.flushall()
            r.execute_command("ACL", "LOG", "RESET")
    every_role_end_to_end(acl_cluster.url, agent_example, tmp_path, instances=6, tag="csec",
                          refusals=acl_cluster.refusals)
    # The work really spread over the cluster: every master holds some of foldflow's keys.
    sizes = []
    for r in acl_cluster.roots():
        with r:
            sizes.append(r.dbsize())
    assert all(n > 0 for n in sizes), sizes
    # No node refused anything a role did, except the preflight's CONFIG GET (it reads INFO instead).
    refusals = acl_cluster.refusals()
    unexpected = {port: [e for e in entries if not str(e.get("object", "")).startswith("config")]
                  for port, entries in refusals.items()}
    assert not any(unexpected.values()), f"refused under the role users: {unexpected}"


def test_ask_redirects_of_a_slot_in_migration_are_followed_by_every_role(acl_cluster: AclCluster) -> None:
    """While a slot moves between masters (resharding), a key already moved is answered by an ASK
    redirect: the client follows it with ASKING on the target node, which every user may send."""
    probes = {  # a read each role may do, on keys that exist nowhere (so the source node redirects)
        "client": ("XRANGE", "{ff:0}:i:ask-probe", "-", "+"), "engine": ("XRANGE", "{ff:0}:i:ask-probe", "-", "+"),
        "activities": ("XLEN", "{ff:0}:tasks:ask-probe"), "projector": ("XRANGE", "{ff:0}:i:ask-probe", "-", "+"),
        "reader": ("HGET", "{ff:0}:x:ask-probe", "f"), "api": ("XRANGE", "{ff:0}:i:ask-probe", "-", "+"),
        "admin": ("XRANGE", "{ff:0}:i:ask-probe", "-", "+"), "bridge": ("XRANGE", "{ff:0}:i:ask-probe", "-", "+"),
        "batches": ("XRANGE", "{ff:0}:i:ask-probe", "-", "+"),
    }
    assert set(probes) == set(ROLES)
    nodes = acl_cluster.cluster.nodes
    with nodes[0].sync_client() as r:
        slot = int(r.execute_command("CLUSTER KEYSLOT", "{ff:0}"))  # type: ignore[no-untyped-call]
        owner = next(str(s[2][1]) for s in r.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                     if int(s[0]) <= slot <= int(s[1]))
    source = next(n for n in nodes if str(n.port) == owner)
    target = next(n for n in nodes if n is not source)
    ids = {}
    for node in nodes:
        with node.sync_client() as r:
            ids[node.port] = r.execute_command("CLUSTER MYID").decode()  # type: ignore[no-untyped-call]
            r.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
    try:
        with target.sync_client() as r:
            r.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.port])  # type: ignore[no-untyped-call]
        with source.sync_client() as r:
            r.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.port])  # type: ignore[no-untyped-call]
            with pytest.raises(redis.exceptions.AskError):
                r.xrange("{ff:0}:i:ask-probe")  # the source sends readers of a missing key to the target

        async def probe_all() -> None:
            for role, command in probes.items():
                client = connect(acl_cluster.url(role))
                try:
                    assert await client.execute_command(*command) in ([], 0, None), role
                finally:
                    await client.aclose()

        run(probe_all())
    finally:
        for node in (source, target):
            with node.sync_client() as r:
                r.execute_command("CLUSTER SETSLOT", slot, "STABLE")  # type: ignore[no-untyped-call]
    refused = {port: entries for port, entries in acl_cluster.refusals().items() if entries}
    assert not refused, refused

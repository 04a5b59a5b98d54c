"""Before ``foldflow activities --code`` serves anything: code nodes must be enabled
(FOLDFLOW_CODE_NODES=sandbox), a trivial call must work in the sandbox, and the
sandbox must be isolated: no network (not even the host's loopback), none of the
host's files (the project, /etc/passwd, home directories, site-packages), no
environment, nowhere to write but its own /tmp. Any failure is a ConfigError
naming what failed, so the worker exits 2 instead of running user code in a
sandbox that does not hold.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from engine.config import Settings
from engine.errors import ConfigError
from engine.workers.code.interpreter import readable_by
from engine.workers.code.sandbox import Sandbox
from engine.workers.code.verdict import reply
from engine.workers.handler_errors import StepError

ENABLE = "FOLDFLOW_CODE_NODES=sandbox"
_ECHO = "def process(input_data):\n    return {'doubled': input_data * 2}\n"
_PROBE = """
import os, socket

def process(input_data):
    reached = []
    for host, port in input_data["addresses"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect((host, port))
            reached.append(f"{host}:{port}")
        except OSError:
            pass
        finally:
            s.close()
    try:
        with open("/written-by-preflight", "w") as fh:
            fh.write("x")
        writable = True
    except OSError:
        writable = False
    return {"reached": reached, "visible": [p for p in input_data["paths"] if os.path.exists(p)],
            "environment": sorted(k for k in os.environ if k not in ("HOME", "PWD")), "root_writable": writable}
"""


def require_enabled(settings: Settings, env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    mode = getattr(settings, "code_nodes", None) or env.get("FOLDFLOW_CODE_NODES", "off")
    if mode != "sandbox":
        raise ConfigError(f"code nodes are off (FOLDFLOW_CODE_NODES={mode}): set {ENABLE} to run "
                          "`foldflow activities --code` (user code then runs in a bubblewrap sandbox)")


async def check_sandbox(sandbox: Sandbox) -> None:
    """A trivial call, then the isolation probe; ConfigError naming every failure."""
    problems = []
    try:
        echoed = reply(await sandbox.run(_ECHO, 21), sandbox.limits)["output"]
        if echoed != {"doubled": 42}:
            problems.append(f"a trivial call answered {echoed!r} instead of {{'doubled': 42}}")
        problems += await _isolation(sandbox)
    except StepError as exc:
        problems.append(f"a trivial call failed: {exc.message}")
    if problems and sandbox.run_as is not None and not readable_by(sandbox.interpreter.executable, sandbox.run_as):
        problems.append(f"the worker runs as root, so the sandbox runs as uid {sandbox.run_as} "
                        f"(FOLDFLOW_CODE_UID), which cannot read {sandbox.interpreter.executable}: set "
                        "FOLDFLOW_CODE_PYTHON to an interpreter it can read (e.g. /usr/bin/python3)")
    if problems:
        raise ConfigError(f"code sandbox preflight failed ({sandbox.bwrap or sandbox.limits.bwrap}, "
                          f"python {sandbox.interpreter.executable}): " + "; ".join(problems))


async def _isolation(sandbox: Sandbox) -> list[str]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        request = {"addresses": [["127.0.0.1", listener.getsockname()[1]], ["1.1.1.1", 53]], "paths": host_paths(sandbox.bound())}
        found: dict[str, Any] = reply(await sandbox.run(_PROBE, request), sandbox.limits)["output"]
    finally:
        await asyncio.to_thread(listener.close)
    problems = []
    if found["reached"]:
        problems.append(f"the sandbox reached the network ({', '.join(found['reached'])})")
    if found["visible"]:
        problems.append(f"host files are visible in the sandbox ({', '.join(found['visible'])})")
    if found["environment"]:
        problems.append(f"the sandbox has environment variables ({', '.join(found['environment'])})")
    if found["root_writable"]:
        problems.append("the sandbox can write outside /tmp")
    return problems


def host_paths(bound: list[str]) -> list[str]:
    """Files that exist here and must not exist in the sandbox (the directories above what
    it binds exist there, empty but for the bound path)."""
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    candidates = [project, "/etc/passwd", "/etc/hostname", "/root", os.path.expanduser("~"), os.getcwd(),
                  *(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))]
    above = {os.sep}
    for path in bound:
        while (path := os.path.dirname(path)) != os.sep:
            above.add(path)
    return sorted({p for p in candidates if p and p not in above and os.path.exists(p)})

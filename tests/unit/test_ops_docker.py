"""The container files, without Docker (the image cannot be built here):
every path the Dockerfile copies exists; a lint of the rules that matter
(hadolint is not packaged for this machine); the final stage's commands run on
a plain Debian/Python outside Docker (wheel built, installed into a fresh venv,
`foldflow` run as a non-root user); the compose file and Prometheus config hang
together."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.tools import ROOT, in_ci, missing, require_tool

DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "python3-dev", "git", "curl", "wget")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def test_every_copied_path_exists() -> None:
    copies = [args for word, args in instructions() if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_lint() -> None:
    """The rules that matter (hadolint's DL3006/DL3007, DL3002, DL3020, DL3025, plus ours)."""
    all_stages = stages()
    assert len(all_stages) >= 2, "multi-stage: build tools stay in the build stage"
    for stage in all_stages:
        image = stage[0][1].split()[0]
        assert ":" in image and not image.endswith(":latest"), f"pin the base image: {image}"
        assert re.search(r":\d+\.\d+\.\d+", image), f"pin the base image to a patch release: {image}"
    final = all_stages[-1]
    words = [w for w, _ in final]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage runs as a non-root user"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "USER after the last RUN"
    for word, args in instructions():
        assert word != "ADD", "use COPY (ADD fetches URLs and unpacks archives implicitly)"
        assert not (word == "RUN" and re.search(r"\bsudo\b", args)), "no sudo in RUN"
    for word, args in final:
        if word == "RUN":
            assert not any(re.search(rf"\b{re.escape(t)}\b", args) for t in BUILD_TOOLS), f"build tool in final: {args}"
            assert "apt-get install" not in args or "--no-install-recommends" in args
        if word == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args
    entry = [a for w, a in final if w == "ENTRYPOINT"]
    assert entry and entry[-1].startswith("["), "exec-form ENTRYPOINT, so signals reach foldflow"
    assert __import__("json").loads(entry[-1]) == ["foldflow"]
    assert any(w == "HEALTHCHECK" and "foldflow" in a for w, a in final)


def test_compose_and_prometheus_config_hang_together() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "noeviction" in redis_cmd
    assert services["engine"]["command"] == ["worker"] and services["engine"]["deploy"]["replicas"] > 1
    assert services["activities"]["command"][:3] == ["activities", "--module", "engine.dev.demo_handlers"]
    assert services["projector"]["command"] == ["projector"]
    for name in ("engine", "activities", "projector"):
        assert services[name]["environment"]["FOLDFLOW_METRICS_PORT"] == "9100"
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for name in ("engine", "activities", "projector"):
        sd = jobs[f"foldflow-{name}"]["dns_sd_configs"][0]
        assert sd["names"] == [name] and sd["port"] == 9100
    assert any(v.startswith("./deploy/prometheus.yml:") for v in services["prometheus"]["volumes"])
    promtool = shutil.which("promtool") or (require_tool("promtool", "it checks deploy/prometheus.yml") if in_ci() else None)
    if promtool:  # locally the rest of this test is worth running without it
        out = subprocess.run([promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    from engine.ops.cli import build_parser

    verbs = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for name in ("engine", "activities"):
        assert services[name]["command"][0] in verbs


def _non_root() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    if runuser is None:
        return None
    return [runuser, "-u", "nobody", "--"] if runuser.endswith("runuser") else [
        runuser, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def test_final_stage_commands_work_outside_docker(tmp_path: Path) -> None:
    """The build stage's `pip wheel` (of foldflow alone: its dependencies come from
    this machine, offline) and the final stage's `pip install --no-index
    --find-links`, into a fresh venv; then `foldflow` from the installed wheel,
    outside the source tree, as a non-root user."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and re.search(r"(?i)connection|resolve|network|no matching distribution", build.stderr):
        missing("building the wheel needs setuptools/wheel from the package index, which is unreachable")
    assert build.returncode == 0, build.stdout + build.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-cache-dir", "--no-index", "--no-deps", "--ignore-installed",
                              "--find-links", str(wheels), "foldflow"], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(wheels)  # as the final stage does: the wheel must not be needed after install
    foldflow = venv / "bin" / "foldflow"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": "/tmp", "FOLDFLOW_EMBEDDED": "fake"}
    prefix = _non_root()
    if prefix:
        # Let the unprivileged user reach the venv; if it still cannot run this
        # machine's Python (installed under a private home), run as ourselves.
        for d in [tmp_path, *tmp_path.parents]:
            if d == Path("/"):
                break
            if not os.access(d, os.X_OK) or (d.stat().st_mode & 0o001) == 0:
                d.chmod(d.stat().st_mode | 0o011) if str(d).startswith("/tmp/") else None
        subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
        # Import what foldflow needs, not just start: setpriv (unlike runuser) can start a
        # Python under a private home yet fail to read its site-packages.
        probe = subprocess.run([*prefix, str(py), "-c", "import orjson, msgspec, redis"], capture_output=True, cwd="/",
                               env=env)
        if probe.returncode != 0:
            prefix = []
    prefix = prefix or []
    for args in (["--help"], ["health", "--help"], ["top", "--help"], ["stuck", "--help"]):
        out = subprocess.run([*prefix, str(foldflow), *args], capture_output=True, text=True, cwd="/", env=env,
                             timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    # The wheel carries the Lua scripts and examples: the demo runs from it alone.
    demo = subprocess.run([*prefix, str(foldflow), "demo", "--quiet", "--instances", "1"], capture_output=True,
                          text=True, cwd="/", env=env, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    where = subprocess.run([*prefix, str(py), "-c", "import engine; print(engine.__file__)"], capture_output=True,
                           text=True, cwd="/", env=env)
    assert str(venv) in where.stdout or "site-packages" in where.stdout

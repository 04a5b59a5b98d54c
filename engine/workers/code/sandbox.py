"""One sandboxed call of user code: the bubblewrap command line, its limits, and the
exchange with the runner inside (engine.workers.code.runner).

Each call is a fresh ``bwrap`` process: every namespace unshared (network, pid, ipc,
uts, user, cgroup), no nested user namespaces, no capabilities, an empty root of
which only the interpreter (engine.workers.code.interpreter) is bound read-only, a
private size-capped tmpfs at /tmp (the only writable place), minimal /dev, no
/proc, an empty environment, ``--die-with-parent`` and ``--new-session`` (no
TIOCSTI into the worker's terminal). The worker, when root, starts it as
``FOLDFLOW_CODE_UID`` through ``setpriv`` so that the process limit holds (uid 0 is
exempt from RLIMIT_NPROC, even without capabilities).

Input goes in on stdin; the result comes back on a pipe of its own, never
stdout. The worker reads at most ``output_bytes`` of what the code prints (stdout
and stderr together) and ``result_bytes`` of the result, and kills the process
group past either, or past the wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from engine.errors import ConfigError
from engine.workers.code import runner
from engine.workers.code.interpreter import Interpreter, default_python, describe

RESULT_FD = 3  # the default in command(); a call passes its pipe's own number
READY = b"ready\n"
STDOUT_KEPT = 4096  # what of the printed output the reply carries
_CHUNK = 65536
_MIB = 1024 * 1024


class CodeLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits of one sandboxed call, from FOLDFLOW_CODE_* (docs/code-nodes.md)."""

    cpu_s: int = 5
    """FOLDFLOW_CODE_CPU_S: CPU seconds (RLIMIT_CPU)."""
    wall_s: float = 10.0
    """FOLDFLOW_CODE_WALL_S: wall-clock seconds before the process group is killed."""
    memory_mb: int = 256
    """FOLDFLOW_CODE_MEMORY_MB: address space in MiB (RLIMIT_AS; the interpreter takes ~30)."""
    processes: int = 16
    """FOLDFLOW_CODE_PROCESSES: processes and threads of the sandbox's user (RLIMIT_NPROC)."""
    open_files: int = 64
    """FOLDFLOW_CODE_OPEN_FILES: open file descriptors (RLIMIT_NOFILE)."""
    output_bytes: int = _MIB
    """FOLDFLOW_CODE_OUTPUT_BYTES: printed output (stdout+stderr) read before the call is killed."""
    result_bytes: int = _MIB
    """FOLDFLOW_CODE_RESULT_BYTES: the JSON of process's return value."""
    tmp_mb: int = 16
    """FOLDFLOW_CODE_TMP_MB: size of the private /tmp (and the largest file, RLIMIT_FSIZE)."""
    uid: int = 65534
    """FOLDFLOW_CODE_UID: the user (and group) the sandbox runs as when the worker is root."""
    python: str = ""
    """FOLDFLOW_CODE_PYTHON: the interpreter inside (default: the worker's, see interpreter.py)."""
    bwrap: str = "bwrap"
    """FOLDFLOW_CODE_BWRAP: the bubblewrap binary (Debian package bubblewrap)."""


ENV_NAMES = {name: f"FOLDFLOW_CODE_{name.upper()}" for name in CodeLimits.__struct_fields__}


def limits_from_env(env: Mapping[str, str] | None = None) -> CodeLimits:
    """CodeLimits from FOLDFLOW_CODE_*; every bad value reported at once."""
    env = os.environ if env is None else env
    defaults, values, problems = CodeLimits(), {}, []
    for name, var in ENV_NAMES.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        kind = type(getattr(defaults, name))
        try:
            value = kind(raw)
        except ValueError:
            problems.append(f"{var}: expected {'a number' if kind is not str else 'text'}, got {raw!r}")
            continue
        if kind is not str and value <= 0:
            why = " (uid 0 is exempt from the process limit)" if name == "uid" else ""
            problems.append(f"{var}: must be positive{why}, got {raw!r}")
        values[name] = value
    if problems:
        raise ConfigError("invalid code sandbox settings: " + "; ".join(problems))
    return msgspec.structs.replace(defaults, **values)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one call came to, before it becomes a step result (engine.workers.code.verdict)."""

    answer: dict[str, Any] | None = None
    """The runner's JSON: {"output", "duration_ms"} or {"error": {...}}."""
    started: bool = True
    """False: the sandbox itself did not start (retryable)."""
    stdout: str = ""
    output_over: bool = False
    result_over: bool = False
    timed_out: bool = False
    returncode: int | None = None
    corrupt: bool = False
    """Something other than the runner's one JSON document came on the result channel."""
    elapsed_ms: int = 0


class Sandbox:
    """Runs user code, one fresh bwrap process per call; safe to call concurrently."""

    def __init__(self, limits: CodeLimits, interpreter: Interpreter | None = None) -> None:
        self.limits = limits
        root = os.geteuid() == 0
        self.run_as = limits.uid if root else None
        self.bwrap = shutil.which(limits.bwrap) or ""
        self._interpreter = interpreter
        self._source = _runner_source()

    @property
    def interpreter(self) -> Interpreter:
        if self._interpreter is None:
            self._interpreter = describe(self.limits.python or default_python(self.run_as))
        return self._interpreter

    def bound(self) -> list[str]:
        """The host paths the sandbox sees (read-only)."""
        py = self.interpreter
        return [py.executable, *py.libraries, *py.stdlib]

    def _as_user(self) -> list[str]:
        """setpriv (util-linux) in front of bwrap when the worker is root: uvloop's
        subprocesses take no user=, and a preexec_fn is unsafe beside threads."""
        if self.run_as is None:
            return []
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise ConfigError("the worker runs as root and setpriv (util-linux) is not on PATH: it is needed to "
                              f"run the sandbox as uid {self.run_as} (FOLDFLOW_CODE_UID)")
        return [setpriv, f"--reuid={self.run_as}", f"--regid={self.run_as}", "--clear-groups", "--no-new-privs"]

    def command(self, result_fd: int = RESULT_FD) -> list[str]:
        """The bwrap command line of one call whose result comes back on ``result_fd``."""
        if not self.bwrap:
            raise ConfigError(f"{self.limits.bwrap} not found on PATH: install bubblewrap (apt-get install "
                              "bubblewrap) or set FOLDFLOW_CODE_BWRAP")
        py, lim = self.interpreter, self.limits
        args = [*self._as_user(), self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
                "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
        for path in self.bound():
            args += ["--ro-bind", os.path.realpath(path), path]
        for path in py.hidden:
            args += ["--tmpfs", path]
        args += ["--dev", "/dev", "--size", str(lim.tmp_mb * _MIB), "--tmpfs", "/tmp", "--remount-ro", "/",
                 "--chdir", "/tmp", "--setenv", "HOME", "/tmp", "--"]
        limits = [result_fd, lim.cpu_s, lim.memory_mb * _MIB, lim.processes, lim.open_files, lim.tmp_mb * _MIB]
        return args + [py.executable, "-I", "-S", "-B", "-X", "utf8", "-c", self._source, *map(str, limits)]

    async def run(self, code: str, data: Any) -> Outcome:
        """One call of ``process(data)`` defined by ``code``."""
        request = orjson.dumps({"code": code, "input": data})
        started = time.perf_counter()
        read_fd, write_fd = os.pipe()
        try:
            command = self.command(write_fd)  # pass_fds keeps the number: the runner is told it
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True)
        except (OSError, ConfigError) as exc:  # bwrap gone since the preflight, fds or processes exhausted
            os.close(read_fd)
            return Outcome(started=False, stdout=f"could not start the sandbox: {exc}")
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        exchange = _Exchange(proc, self.limits)
        try:
            async with asyncio.timeout(self.limits.wall_s):
                await exchange.run(read_fd, request)
        except TimeoutError:
            exchange.timed_out = True
        finally:
            await exchange.finish()
        return exchange.outcome(int((time.perf_counter() - started) * 1000))


class _Exchange:
    """Feeding one sandboxed process and reading it, within the byte limits."""

    def __init__(self, proc: asyncio.subprocess.Process, limits: CodeLimits) -> None:
        self.proc, self.limits = proc, limits
        self.head = bytearray()
        self.printed = 0
        self.result = bytearray()
        self.output_over = self.result_over = self.timed_out = False
        self._transport: asyncio.ReadTransport | None = None

    async def run(self, read_fd: int, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_CHUNK)
        pipe = os.fdopen(read_fd, "rb", buffering=0)  # the transport owns and closes it
        self._transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        await asyncio.gather(self._feed(request), self._read_output(), self._read_result(reader))
        await self.proc.wait()

    async def _feed(self, request: bytes) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        # The code may exit (or be killed) before it has read all of its input.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(request)
            await stdin.drain()
            stdin.close()

    async def _read_output(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while chunk := await stdout.read(_CHUNK):
            self.printed += len(chunk)
            if len(self.head) < STDOUT_KEPT:
                self.head += chunk[: STDOUT_KEPT - len(self.head)]
            if self.printed > self.limits.output_bytes:
                self.output_over = True
                self.kill()
                return

    async def _read_result(self, reader: asyncio.StreamReader) -> None:
        cap = self.limits.result_bytes + len(READY)
        while chunk := await reader.read(_CHUNK):
            self.result += chunk
            if len(self.result) > cap:
                self.result_over = True
                self.kill()
                return

    def kill(self) -> None:
        """The whole sandbox: bwrap leads its process group, and its pid namespace dies with it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def finish(self) -> None:
        if self.proc.returncode is None:
            self.kill()
        await self.proc.wait()
        # The subprocess transport closes once its pipes reach EOF: drain what a killed
        # sandbox left in the pipe (at most a pipe buffer) so that it does.
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                while await self.proc.stdout.read(_CHUNK):
                    pass
        if self._transport is not None:
            self._transport.close()

    def outcome(self, elapsed_ms: int) -> Outcome:
        data = bytes(self.result)
        started = data.startswith(READY)
        body = data[len(READY):] if started else b""
        answer: dict[str, Any] | None = None
        corrupt = False
        if body and not self.result_over:
            try:
                decoded = orjson.loads(body)
            except orjson.JSONDecodeError:
                decoded = None
            corrupt = not isinstance(decoded, dict)
            answer = None if corrupt else decoded
        return Outcome(answer=answer, started=started, stdout=self.head.decode(errors="replace"),
                       output_over=self.output_over, result_over=self.result_over, timed_out=self.timed_out,
                       returncode=self.proc.returncode, corrupt=corrupt, elapsed_ms=elapsed_ms)


def _runner_source() -> str:
    path = runner.__file__
    with open(path, encoding="utf-8") as fh:
        return fh.read()


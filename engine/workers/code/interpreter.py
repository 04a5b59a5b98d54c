"""Which Python runs inside the sandbox, and exactly which host files it needs.

The sandbox sees the interpreter's executable, its standard library (without
site-packages) and the shared libraries those load, each bound read-only at its
own path (a pyenv build finds libpython through an absolute RUNPATH), and nothing
else of the host. The list comes from asking the interpreter where its standard
library is and ``ldd`` which libraries its executable and extension modules load,
once per worker.

When the worker runs as root the sandbox does not (root is exempt from the process
limit), so the interpreter must be readable by the sandbox's user: a pyenv build
under ``/root`` is not, and then the default is the system's ``/usr/bin/python3``.
The runner is stdlib-only, so any Python 3.9+ serves.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
import subprocess
import sys

import msgspec

from engine.errors import ConfigError

SYSTEM_PYTHON = "/usr/bin/python3"
_PROBE = ("import json, sys, sysconfig; print(json.dumps({'version': sys.version.split()[0], "
          "'stdlib': sysconfig.get_path('stdlib'), 'platstdlib': sysconfig.get_path('platstdlib'), "
          "'executable': sys.executable}))")
_LIB = re.compile(r"(/\S+\.so[.\d]*)\b")


class Interpreter(msgspec.Struct, frozen=True, kw_only=True):
    executable: str
    """The real path of the binary the sandbox runs."""
    version: str
    stdlib: list[str]
    """Directories of the standard library, bound read-only."""
    libraries: list[str]
    """Shared objects the executable and the extension modules load (ldd), bound read-only."""
    hidden: list[str]
    """site-packages/dist-packages inside the bound directories, covered by an empty tmpfs."""


def default_python(sandbox_uid: int | None) -> str:
    """The worker's own interpreter (its base install, not a venv's), unless the sandbox's
    user cannot read it; then the system's Python when there is one."""
    own = _base_executable()
    if sandbox_uid is None or readable_by(own, sandbox_uid) or not os.path.exists(SYSTEM_PYTHON):
        return own
    return SYSTEM_PYTHON


def _base_executable() -> str:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = os.path.join(sys.base_prefix, "bin", version)
    return candidate if os.path.exists(candidate) else os.path.realpath(sys.executable)


def readable_by(path: str, uid: int) -> bool:
    """Could ``uid`` (in no group of the files') read ``path``, judging by mode bits: every
    directory above it searchable, the file itself readable."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        if not _allows(os.path.join(os.sep, *parts[1:i]), uid, stat.S_IXOTH, stat.S_IXUSR):
            return False
    return _allows(path, uid, stat.S_IROTH, stat.S_IRUSR)


def _allows(path: str, uid: int, other_bit: int, owner_bit: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return bool(st.st_mode & (owner_bit if st.st_uid == uid else other_bit))


def describe(python: str) -> Interpreter:
    """Ask ``python`` where its standard library is, and ``ldd`` what it loads."""
    if not os.path.isabs(python):
        raise ConfigError(f"FOLDFLOW_CODE_PYTHON must be an absolute path, got {python!r}")
    try:
        done = subprocess.run([python, "-I", "-S", "-c", _PROBE], capture_output=True, timeout=30, check=True,
                              env={})
        found = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ConfigError(f"the sandbox's interpreter {python} does not run: {exc}") from None
    executable = os.path.realpath(found["executable"] or python)
    stdlib = sorted({os.path.realpath(found["stdlib"]), os.path.realpath(found["platstdlib"])})
    modules = [m for d in stdlib for m in glob.glob(os.path.join(d, "lib-dynload", "*.so"))]
    hidden = [p for d in stdlib for p in (os.path.join(d, "site-packages"), os.path.join(d, "dist-packages"))
              if os.path.isdir(p)]
    return Interpreter(executable=executable, version=found["version"], stdlib=stdlib,
                       libraries=_libraries([executable, *modules], stdlib), hidden=hidden)


def _libraries(objects: list[str], inside: list[str]) -> list[str]:
    """What the dynamic loader maps for these objects (the loader itself included),
    except files already under the bound standard library."""
    try:
        done = subprocess.run(["ldd", *objects], capture_output=True, timeout=60, env={"LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"ldd (Debian package libc-bin) is needed to list the sandbox's libraries: {exc}") from None
    found = {m.group(1) for line in done.stdout.decode(errors="replace").splitlines()
             if (m := _LIB.search(line.split("=>")[-1]))}
    return sorted(p for p in found if os.path.exists(p) and not any(p.startswith(d + os.sep) for d in inside))

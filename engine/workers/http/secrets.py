"""``{{ secrets.NAME }}``: resolved here, at call time, and nowhere else.

The core leaves the marker in the rendered endpoint, headers and payload, so what
is stored (the task, the events, the read models) holds the marker, never the
value. Values come from ``FOLDFLOW_SECRET_<NAME>`` or a file ``NAME`` in the mounted
secrets directory (read at each call, so a rotated secret is used at once).
Anything the executor records or logs passes through ``redact`` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MARKER = re.compile(r"\{\{\s*secrets\.([A-Za-z0-9_]+)\s*\}\}")
_MAX_SECRET_BYTES = 64 * 1024


class MissingSecret(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} is not set (FOLDFLOW_SECRET_{name.upper()} or a file {name!r} "
                         "in FOLDFLOW_SECRETS_DIR)")
        self.name = name


class Secrets:
    def __init__(self, env: Mapping[str, str] | None = None, directory: str | None = None) -> None:
        self._env = os.environ if env is None else env
        self._dir = Path(directory) if directory else None
        self._seen: dict[str, str] = {}  # value -> name, for redaction

    def value(self, name: str) -> str:
        found = self._env.get(f"FOLDFLOW_SECRET_{name.upper()}")
        if found is None and self._dir is not None:
            path = self._dir / name
            # Only a plain file directly in the directory: a name cannot walk out of it.
            if path.parent == self._dir and path.is_file():
                with path.open("rb") as fh:
                    found = fh.read(_MAX_SECRET_BYTES).decode("utf-8", "replace").rstrip("\r\n")
        if found is None:
            raise MissingSecret(name)
        if len(found) >= 4:  # a shorter value would be found inside ordinary text everywhere
            self._seen[found] = name
        return found

    def fill(self, text: str, encode: Callable[[str], str] | None = None) -> str:
        if "secrets" not in text:
            return text
        return MARKER.sub(lambda m: (encode or _same)(self.value(m.group(1))), text)

    def fill_json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.fill(value)
        if isinstance(value, dict):
            return {k: self.fill_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill_json(v) for v in value]
        return value

    def redact(self, text: str) -> str:
        """Every secret value this process has resolved, replaced by its marker."""
        for value, name in self._seen.items():
            if value in text:
                text = text.replace(value, "{{ secrets.%s }}" % name)
        return text

    def redact_json(self, value: Any) -> Any:
        if not self._seen:
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact(k): self.redact_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_json(v) for v in value]
        return value


def _same(text: str) -> str:
    return text

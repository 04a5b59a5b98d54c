"""The services other formats' built-in node types run on (reserved names).

A service name resolves like any other (a Python handler, then the service
registry, then ``<SERVICE>_URL``), so ``model-service`` is found through
``MODEL_SERVICE_URL`` as seed 001 configures it.
"""

from __future__ import annotations

from typing import Final

LLM_SERVICE: Final = "model-service"  # llm nodes: an OpenAI-compatible /v1/chat/completions
HTTP_SERVICE: Final = "foldflow.http"  # http nodes: the call goes to the node's absolute url
CODE_SERVICE: Final = "foldflow.code"  # code nodes: `foldflow activities --code` runs them in a sandbox

"""Workflow definitions: the front door.

The data (Step, Definition, ...) is in model.py; parsing and validation of
JSON and YAML documents in parser.py, which names the modules it is split into.
"""

from engine.core.definition.model import (
    Definition,
    DefinitionError,
    ErrorHandler,
    Problem,
    RetryPolicy,
    Step,
    canonical_json,
    parse_duration_ms,
    version_sort_key,
)
from engine.core.definition.parser import (
    ERROR_ACTIONS,
    MAX_DOCUMENT_BYTES,
    STEP_TYPES,
    document_of,
    load_definition_file,
    parse_definition,
)

__all__ = [
    "ERROR_ACTIONS",
    "MAX_DOCUMENT_BYTES",
    "STEP_TYPES",
    "Definition",
    "DefinitionError",
    "ErrorHandler",
    "Problem",
    "RetryPolicy",
    "Step",
    "canonical_json",
    "document_of",
    "load_definition_file",
    "parse_definition",
    "parse_duration_ms",
    "version_sort_key",
]

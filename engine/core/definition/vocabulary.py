"""The words a definition document may use: step types, actions, and the closed key sets.

Every mapping of the document whose keys are a closed set has its set here, so
a misspelt key is reported with the nearest known one instead of being dropped
(``backof`` would silently leave the default backoff). Maps whose keys belong
to the author (payloads, output mappings, filters, ``metadata.tags`` and
``labels``, JSON Schemas) are never checked.

A key the platform teams' documents use is a supported key even when foldflow
ignores it (``parallel``, ``metadata.tags``, ``on_timeout.compensation_workflow``).
"""

from __future__ import annotations

import re
from typing import Final

STEP_TYPES: Final = ("service_call", "event_wait", "conditional", "loop", "validation", "delay", "sub_workflow")
ERROR_ACTIONS: Final = ("retry", "notify", "terminate", "continue", "compensate")
TIMEOUT_ACTIONS: Final = ("fail", "continue", "compensate", "notify")
UNSUPPORTED_ACTIONS: Final = ()
TYPE_ALIASES: Final = {"wait_for_event": "event_wait", "sleep": "delay", "foreach": "loop", "for_each": "loop",
                       "subworkflow": "sub_workflow", "workflow": "sub_workflow"}
REQUIRED: Final = (("service", "service_call"), ("event_type", "event_wait"), ("condition", "conditional"),
                   ("items", "loop"), ("service", "loop"), ("validation_rules", "validation"),
                   ("duration", "delay"), ("workflow", "sub_workflow"))
BACKOFF_BASES: Final = {"exponential": 2.0, "fixed": 1.0, "constant": 1.0}
STEP_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")
VERSION: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
MAX_NESTING: Final = 64
DEFAULT_JITTER: Final = 0.1

# Closed key sets, by where they sit in the document.
YAML_FIELDS: Final = ("apiVersion", "kind", "metadata", "spec")
METADATA_FIELDS: Final = ("name", "version", "description", "tags", "labels")
ENVELOPE_FIELDS: Final = ("name", "version", "description", "definition")
BODY_FIELDS: Final = ("steps", "error_handlers", "config", "timeout", "timeout_ms", "retry_policy", "input", "output",
                      "compensation", "concurrency")
CONCURRENCY_FIELDS: Final = ("key", "limit", "on_limit")
ON_LIMIT: Final = ("queue", "cancel_newest", "cancel_oldest")
BARE_FIELDS: Final = ("name", "version", "description", *BODY_FIELDS)  # a bare body may name itself
CONFIG_FIELDS: Final = ("timeout", "timeout_ms", "retry_policy")
INPUT_FIELDS: Final = ("schema",)
OUTPUT_FIELDS: Final = ("values", "schema")
COMPENSATION_FIELDS: Final = ("steps",)
STEP_FIELDS: Final = (
    "name", "type", "step_type", "description", "depends_on", "sequence", "parallel", "config", "service",
    "endpoint", "method", "payload", "input", "output", "event_type", "event_filter", "filter", "timeout",
    "timeout_ms", "retry_policy", "on_failure", "on_timeout", "condition", "true_edge", "false_edge", "items",
    "max_iterations", "validation_rules", "duration", "workflow", "workflow_version", "compensates", "tags",
    "labels", "metadata", "headers", "url", "retry_on_status", "success_on_status", "follow_redirects",
)
RETRY_FIELDS: Final = ("max_attempts", "backoff", "backoff_base", "backoff_multiplier", "initial_delay",
                       "max_delay_ms", "max_delay", "jitter")
HANDLER_FIELDS: Final = ("action", "max_retries", "backoff_seconds", "backoff_ms", "backoff", "target", "endpoint",
                         "message")
ON_FAILURE_RETRY_FIELDS: Final = ("action", "max_attempts", "message")  # this retry is only an attempt budget
HANDLER_ENTRY_FIELDS: Final = ("step", "on_error")
TIMEOUT_FIELDS: Final = ("action", "target", "endpoint", "message", "compensation_workflow")
RULE_FIELDS: Final = ("field", "rule", "service", "endpoint")

"""Parse a workflow definition document and validate it into a Definition.

Three document shapes are accepted:

- JSON envelope ``{"name", "version", "description"?, "definition": {"steps", "error_handlers"?}}``;
- bare ``{"steps", "error_handlers"?}``, named by the ``name``/``version`` arguments;
- ``apiVersion/kind/metadata/spec``, with ``spec.config`` holding the workflow
  timeout and default retry policy.

Two more, of other seeds, are translated into the bare shape first
(engine.core.formats): nodes and edges, and execution plans.

Keyword arguments override the document's name and version. Problem paths
follow the document: ``definition.steps[1].depends_on[0]``, ``steps[1]...`` or
``spec.steps[1]...``.

The work is split by section: document.py turns text into a mapping,
fields.py reads typed values, steps.py and handlers.py read steps and error
handling, linking.py builds the step graph, references.py checks what needs
the whole graph; vocabulary.py holds every closed set of words and keys.
Validation collects every problem before raising, so an author fixes a file in
one round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.core.definition.concurrency import read_concurrency
from engine.core.definition.document import MAX_DOCUMENT_BYTES, document_of
from engine.core.definition.fields import FLOW, Owner, Reader, at, join
from engine.core.definition.handlers import error_handlers, retry_policy
from engine.core.definition.linking import attach, link_edges, resolve
from engine.core.definition.model import Definition, DefinitionError, RetryPolicy, _is_number
from engine.core.definition.references import check_reads, check_references
from engine.core.definition.steps import read_compensation, read_steps
from engine.core.definition.vocabulary import (
    BARE_FIELDS,
    BODY_FIELDS,
    CONFIG_FIELDS,
    ENVELOPE_FIELDS,
    ERROR_ACTIONS,
    INPUT_FIELDS,
    METADATA_FIELDS,
    OUTPUT_FIELDS,
    STEP_FIELDS,
    STEP_TYPES,
    TIMEOUT_ACTIONS,
    UNSUPPORTED_ACTIONS,
    VERSION,
    YAML_FIELDS,
)
from engine.core.formats import translate
from engine.core.language.schema import schema_problems

__all__ = [
    "ERROR_ACTIONS",
    "MAX_DOCUMENT_BYTES",
    "STEP_FIELDS",
    "STEP_TYPES",
    "TIMEOUT_ACTIONS",
    "UNSUPPORTED_ACTIONS",
    "document_of",
    "load_definition_file",
    "parse_definition",
]


def load_definition_file(
    path: str | os.PathLike[str], *, name: str | None = None, version: str | None = None
) -> Definition:
    file = Path(path)
    with file.open("rb") as handle:
        data = handle.read(MAX_DOCUMENT_BYTES + 1)  # enough to see it is too big, no more
    suffix = file.suffix.lower()
    fmt = "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else None
    return parse_definition(data, fmt=fmt, name=name, version=version)


def parse_definition(
    source: str | bytes | Mapping[str, Any],
    *,
    fmt: str | None = None,
    name: str | None = None,
    version: str | None = None,
    strict: bool = True,
) -> Definition:
    """A validated Definition, or DefinitionError listing every problem found.

    ``strict=False`` is for a definition already stored: it skips the unknown-key and
    step-read checks, which registration applies, so a definition stored before a
    check existed still loads.

    A document in another seed's format (nodes and edges, or an execution plan) is
    translated into a native one first (engine.core.formats), and its problems are
    reported at the paths of the document as written."""
    doc = document_of(source, fmt=fmt)
    translation = translate(doc, strict=strict)
    if translation is None:
        return _build(Reader(strict=strict), doc, name, version)
    return translation.build(lambda native: _build(Reader(strict=strict), native, name, version))


def _build(r: Reader, doc: dict[str, Any], name: str | None, version: str | None) -> Definition:
    meta, meta_path, body, body_path = _shape(r, doc)
    name, version = _identity(r, meta, meta_path, body is meta, name, version)
    if body is None:  # without a body, every further problem would be noise
        raise DefinitionError(r.problems)
    description = r.text(at(meta, "description", meta_path)) or ""
    timeout_ms, default_retry = _settings(r, body, body_path)
    drafts = read_steps(r, body, body_path, default_retry)
    handlers = error_handlers(r, body, body_path)
    steps, handler_list = attach(r, resolve(r, drafts), drafts, handlers)
    compensation = read_compensation(r, body, body_path, default_retry)
    steps = link_edges(r, steps, drafts)
    check_references(r, steps, compensation, drafts)
    input_schema = _input_schema(r, body, body_path)
    output = _output(r, body, body_path)
    concurrency = read_concurrency(r, body, body_path)
    if r.strict:
        check_reads(r, steps, compensation)
    if r.problems:
        raise DefinitionError(r.problems)
    return Definition(name=name, version=version, description=description, steps=tuple(steps),
                      error_handlers=handler_list, timeout_ms=timeout_ms, compensation=tuple(compensation),
                      input_schema=input_schema, output=output, concurrency=concurrency)


def _shape(r: Reader, doc: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any] | None, str]:
    if "apiVersion" in doc or "spec" in doc:
        r.closed(doc, "", YAML_FIELDS)
        meta = r.mapping(at(doc, "metadata", "")) or {}
        r.closed(meta, "metadata", METADATA_FIELDS)
        return meta, "metadata", _section(r, doc, "spec"), "spec"
    if "definition" in doc:
        r.closed(doc, "", ENVELOPE_FIELDS)
        return doc, "", _section(r, doc, "definition"), "definition"
    r.closed(doc, "", BARE_FIELDS)
    return doc, "", doc, ""


def _section(r: Reader, doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    found = at(doc, key, "")
    if found is None:
        r.add(key, "required")
    body = r.mapping(found)
    if body is not None:
        r.closed(body, key, BODY_FIELDS)
    return body


def _identity(r: Reader, meta: dict[str, Any], base: str, bare: bool,
              name: str | None, version: str | None) -> tuple[str, str]:
    hint = " (pass --name/--version for a bare definition)" if bare else ""
    found_name = (name, "name") if name is not None else at(meta, "name", base)
    found_version = (version, "version") if version is not None else at(meta, "version", base)
    if found_version and _is_number(found_version[0]):
        found_version = (str(found_version[0]), found_version[1])  # YAML reads `version: 1.2` as a number
    text_name, text_version = r.text(found_name), r.text(found_version)
    for key, found in (("name", found_name), ("version", found_version)):
        if found is None:
            r.add(join(base, key), "required" + hint)
    if found_name and text_name is not None and not 0 < len(text_name.strip()) <= 200:
        r.add(found_name[1], "must be 1 to 200 characters, not blank")
    if found_version and text_version is not None and not VERSION.fullmatch(text_version):
        r.add(found_version[1], "must be up to 64 letters, digits, '.', '_', '+', '-', starting with a letter or digit")
    return text_name or "", text_version or ""


def _settings(r: Reader, body: dict[str, Any], base: str) -> tuple[int | None, RetryPolicy]:
    config = r.mapping(at(body, "config", base)) or {}
    r.closed(config, join(base, "config"), CONFIG_FIELDS)

    def find(key: str) -> tuple[Any, str] | None:
        return at(config, key, join(base, "config")) or at(body, key, base)

    timeout_ms = r.duration(find("timeout") or find("timeout_ms"))
    return timeout_ms, retry_policy(r, find("retry_policy"), RetryPolicy())


def _input_schema(r: Reader, body: dict[str, Any], base: str) -> dict[str, Any] | None:
    found = at(body, "input", base)
    spec = r.mapping(found)
    if spec is None or found is None:
        return None
    r.closed(spec, found[1], INPUT_FIELDS)
    schema = r.mapping(at(spec, "schema", found[1]))
    if schema is None:
        return None
    for message in schema_problems(schema):
        r.add(f"{found[1]}.schema", message)
    return schema


def _output(r: Reader, body: dict[str, Any], base: str) -> Any:
    found = at(body, "output", base)
    spec = r.mapping(found)
    if spec is None or found is None:
        return None
    r.closed(spec, found[1], OUTPUT_FIELDS)
    if (values := at(spec, "values", found[1])) is not None:
        r.templates(*values, Owner(None, FLOW))  # rendered once every step is done
    if (schema := r.mapping(at(spec, "schema", found[1]))) is not None:
        for message in schema_problems(schema):
            r.add(f"{found[1]}.schema", message)
    return spec

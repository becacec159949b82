"""One immutable snapshot of what the server serves: registry, plugin configs, validators.

:meth:`McpServer.set_registry` swaps whole snapshots, so a request sees one registry
from start to end. JSON-Schema validators are compiled lazily per tool and cached in
the snapshot (with a fast acceptor, ``_fastcheck``, in front of jsonschema for plain
schemas: a valid call skips jsonschema's generic walk); opaque pagination cursors
carry the snapshot's generation so a cursor from an older registry is refused
instead of silently skipping entries.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from tunneld.mcp._fastcheck import Acceptor, compile_acceptor
from tunneld.mcp._jsonrpc import INVALID_PARAMS, McpError
from tunneld.mcp._registry import Registry, ResourceTemplate, Tool

__all__ = ["Catalog", "SchemaViolation", "decode_cursor", "paginate"]

T = TypeVar("T")

# JSON Schema 2020-12 is MCP's default dialect (2025-11-25, SEP-1613); a schema
# naming another dialect in "$schema" gets that dialect's validator.
_DEFAULT_DIALECT = jsonschema.Draft202012Validator


class SchemaViolation(Exception):
    """Arguments or structured output do not match a schema; the message says where."""


class _Checker:
    """One schema's validators, compiled once: the fast acceptor (when the schema is
    plain enough for it) and jsonschema's, which decides whatever the acceptor does not
    accept and words the error."""

    __slots__ = ("accept", "validator")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        cls = jsonschema.validators.validator_for(schema, default=_DEFAULT_DIALECT)
        cls.check_schema(dict(schema))
        self.validator: Any = cls(schema, format_checker=cls.FORMAT_CHECKER)
        self.accept: Acceptor | None = compile_acceptor(schema)

    def first_error(self, instance: object) -> jsonschema.exceptions.ValidationError | None:
        if self.accept is not None and self.accept(instance):
            return None
        error: jsonschema.exceptions.ValidationError | None = jsonschema.exceptions.best_match(
            self.validator.iter_errors(instance)
        )
        return error


def _where(path: Sequence[object]) -> str:
    if not path:
        return "(the arguments object)"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_violation(error: jsonschema.exceptions.ValidationError, what: str) -> str:
    """``"argument 'path': 3 is not of type 'string' (expected schema: {...})"``."""
    schema = json.dumps(error.schema, separators=(",", ":"), sort_keys=True, default=str)
    if len(schema) > 400:
        schema = schema[:400] + "…"
    where = _where(list(error.absolute_path))
    if error.validator == "required" and isinstance(error.instance, dict):
        # The path of a missing property is its parent; name the property itself.
        wanted = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [n for n in wanted if n not in error.instance]
        if missing:
            prefix = "" if not error.absolute_path else where + "."
            where = prefix + str(missing[0])
    return f"{what} '{where}': {error.message} (expected schema: {schema})"


class Catalog:
    """Registry snapshot + per-plugin config + cached validators."""

    def __init__(
        self,
        registry: Registry,
        plugin_configs: Mapping[str, Mapping[str, Any]] | None,
        generation: int,
    ) -> None:
        self.registry = registry
        self.plugin_configs: Mapping[str, Mapping[str, Any]] = dict(plugin_configs or {})
        self.generation = generation
        self._input_validators: dict[str, _Checker] = {}
        self._output_validators: dict[str, _Checker] = {}
        self._templates = [
            (_template_regex(t.uri_template), t) for t in registry.templates.values()
        ]

    def config_for(self, plugin: str) -> Mapping[str, Any]:
        return self.plugin_configs.get(plugin, {})

    def validate_arguments(self, tool: Tool, arguments: Mapping[str, Any]) -> None:
        """Raises :class:`SchemaViolation` naming the first bad field and its schema."""
        validator = self._input_validators.get(tool.name)
        if validator is None:
            validator = self._input_validators[tool.name] = _Checker(tool.input_schema)
        error = validator.first_error(arguments)
        if error is not None:
            raise SchemaViolation(
                f"Invalid arguments for tool {tool.name}: " + describe_violation(error, "argument")
            )

    def validate_output(self, tool: Tool, structured: Mapping[str, Any]) -> None:
        """Raises :class:`SchemaViolation` when ``structured`` breaks the output schema."""
        assert tool.output_schema is not None
        validator = self._output_validators.get(tool.name)
        if validator is None:
            validator = self._output_validators[tool.name] = _Checker(tool.output_schema)
        error = validator.first_error(structured)
        if error is not None:
            raise SchemaViolation(
                f"Tool {tool.name} returned output that breaks its output schema: "
                + describe_violation(error, "field")
            )

    def match_template(self, uri: str) -> tuple[ResourceTemplate, dict[str, str]] | None:
        for regex, template in self._templates:
            found = regex.fullmatch(uri)
            if found is not None:
                return template, found.groupdict()
        return None

    @property
    def has_completions(self) -> bool:
        return any(p.complete for p in self.registry.prompts.values()) or any(
            t.complete for t in self.registry.templates.values()
        )


def _template_regex(template: str) -> re.Pattern[str]:
    # RFC 6570 level 1: "{name}" expands to one unreserved-ish segment (no "/").
    pattern = ""
    pos = 0
    names: set[str] = set()
    for found in re.finditer(r"\{([A-Za-z0-9_]+)\}", template):
        pattern += re.escape(template[pos : found.start()])
        name = found.group(1)
        pattern += f"(?P<{name}>[^/]+)" if name not in names else f"(?P={name})"
        names.add(name)
        pos = found.end()
    pattern += re.escape(template[pos:])
    return re.compile(pattern)


def encode_cursor(generation: int, offset: int) -> str:
    raw = json.dumps([generation, offset]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object, generation: int) -> int:
    """The offset an opaque cursor stands for; raises ``McpError`` (-32602) if invalid."""
    if not isinstance(cursor, str):
        raise McpError(INVALID_PARAMS, "Invalid params: cursor must be a string")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise McpError(INVALID_PARAMS, "Invalid params: unknown cursor") from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or value[1] < 0
    ):
        raise McpError(INVALID_PARAMS, "Invalid params: unknown cursor")
    if value[0] != generation:
        raise McpError(
            INVALID_PARAMS, "Invalid params: cursor is stale (the list changed); list again"
        )
    return int(value[1])


def paginate(
    items: Sequence[T], params: Mapping[str, Any], generation: int, page_size: int
) -> tuple[Sequence[T], str | None]:
    """One page of ``items`` for ``params["cursor"]`` and the next cursor (or ``None``)."""
    cursor = params.get("cursor")
    offset = 0 if cursor is None else decode_cursor(cursor, generation)
    page = items[offset : offset + page_size]
    end = offset + len(page)
    return page, (encode_cursor(generation, end) if end < len(items) else None)

"""A fast acceptor for the plain JSON Schemas tools declare: "surely valid" or "ask jsonschema".

Validating a tool's arguments with ``jsonschema`` (``best_match(iter_errors(...))``)
walks the schema through a generic validator — a good share of a small tool call.
Most tool schemas are plain: ``type``, ``properties``, ``required``,
``additionalProperties``, bounds, ``enum``. :func:`compile_acceptor` turns such a
schema, once per tool, into a closure of direct checks.

The closure only *accepts*: ``True`` means the instance is valid under the schema;
``False`` means "not sure" and the caller runs ``jsonschema`` as before, which decides
and writes the error message (so messages are jsonschema's, unchanged). Every check
is therefore written as a condition that is at least as strict as jsonschema's (an
integral float such as ``1.0`` is an integer to jsonschema but not here: it just takes
the slow path). A schema using any keyword not listed in :data:`_SUPPORTED` (``$ref``,
``oneOf``, ``format``, ``patternProperties``…) or another dialect gets no acceptor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["Acceptor", "compile_acceptor"]

Acceptor = Callable[[object], bool]

# Keywords that only annotate: they never make an instance invalid.
_ANNOTATIONS: Final = frozenset(
    {"title", "description", "default", "examples", "$comment", "readOnly", "writeOnly",
     "deprecated"}
)  # fmt: skip
_SUPPORTED: Final = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "pattern",
    "items",
    "minItems",
    "maxItems",
}
# The only "$schema" values whose semantics the checks below follow (2020-12, MCP's
# default dialect); any other dialect goes to jsonschema.
_DIALECTS: Final = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    }
)


class _Unsupported(Exception):
    pass


def _is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


_TYPES: Final[dict[str, Callable[[object], bool]]] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,  # 1.0 too for jsonschema: slow path decides
    "number": _is_number,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}
_SCALARS: Final = (str, int, bool, type(None))


def _scalar(value: object) -> bool:
    # float is left out: 1 == 1.0 to jsonschema's enum/const, not to a type-strict check.
    return type(value) in _SCALARS


def compile_acceptor(schema: object) -> Acceptor | None:
    """A closure that returns ``True`` only for instances valid under ``schema``, or
    ``None`` when ``schema`` uses something the fast checks do not cover."""
    if isinstance(schema, Mapping) and "$schema" in schema:
        if schema["$schema"] not in _DIALECTS:
            return None
        schema = {k: v for k, v in schema.items() if k != "$schema"}
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _compile(schema: object) -> Acceptor:
    if schema is True:
        return lambda value: True
    if not isinstance(schema, Mapping):  # includes the schema False
        raise _Unsupported
    unknown = set(schema) - _SUPPORTED
    if unknown:
        raise _Unsupported
    checks: list[Acceptor] = []

    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
            raise _Unsupported
        tests = tuple(_TYPES[n] for n in names)
        checks.append(lambda v: any(test(v) for test in tests))

    if "enum" in schema:
        options = schema["enum"]
        if not isinstance(options, list) or not all(_scalar(o) for o in options):
            raise _Unsupported
        allowed = frozenset((type(o), o) for o in options)
        checks.append(lambda v: _scalar(v) and (type(v), v) in allowed)
    if "const" in schema:
        const = schema["const"]
        if not _scalar(const):
            raise _Unsupported
        checks.append(lambda v: type(v) is type(const) and v == const)

    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            checks.append(_bound(key, schema[key]))

    for key, longer in (("minLength", True), ("maxLength", False)):
        if key in schema:
            size = schema[key]
            if type(size) is not int:
                raise _Unsupported
            checks.append(_length(str, size, at_least=longer))
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            raise _Unsupported
        try:
            search = re.compile(schema["pattern"]).search
        except re.error:
            raise _Unsupported from None
        checks.append(lambda v: type(v) is not str or search(v) is not None)

    if "items" in schema:
        item = _compile(schema["items"])
        checks.append(lambda v: type(v) is not list or all(item(e) for e in v))
    for key, at_least in (("minItems", True), ("maxItems", False)):
        if key in schema:
            count = schema[key]
            if type(count) is not int:
                raise _Unsupported
            checks.append(_length(list, count, at_least=at_least))

    _object_checks(schema, checks)

    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    every = tuple(checks)
    return lambda value: all(check(value) for check in every)


def _length(kind: type, n: int, *, at_least: bool) -> Acceptor:
    # Length bounds apply to ``kind`` (str: code points, as jsonschema counts; list).
    if at_least:
        return lambda v: type(v) is not kind or len(v) >= n  # type: ignore[arg-type]
    return lambda v: type(v) is not kind or len(v) <= n  # type: ignore[arg-type]


def _bound(key: str, bound: object) -> Acceptor:
    # Bounds apply to numbers only (not booleans); anything else passes them.
    if not _is_number(bound):
        raise _Unsupported
    limit: float = bound  # type: ignore[assignment]
    if key == "minimum":
        return lambda v: not _is_number(v) or v >= limit  # type: ignore[operator]
    if key == "maximum":
        return lambda v: not _is_number(v) or v <= limit  # type: ignore[operator]
    if key == "exclusiveMinimum":
        return lambda v: not _is_number(v) or v > limit  # type: ignore[operator]
    return lambda v: not _is_number(v) or v < limit  # type: ignore[operator]


def _object_checks(schema: Mapping[str, Any], checks: list[Acceptor]) -> None:
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping) or not all(isinstance(k, str) for k in properties):
        raise _Unsupported
    compiled = {name: _compile(sub) for name, sub in properties.items()}
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
        raise _Unsupported
    needed = tuple(required)
    extra = schema.get("additionalProperties", True)
    closed = extra is False
    other = None if extra is True or closed else _compile(extra)
    if not compiled and not needed and extra is True:
        return

    def accept(value: object) -> bool:
        if type(value) is not dict:
            return True  # object keywords apply to objects only
        for name in needed:
            if name not in value:
                return False
        for name, item in value.items():
            sub = compiled.get(name)
            if sub is not None:
                if not sub(item):
                    return False
            elif closed or (other is not None and not other(item)):
                return False
        return True

    checks.append(accept)

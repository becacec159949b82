"""The fast schema acceptor never accepts what jsonschema rejects, and covers real tools.

The acceptor (``tunneld.mcp._fastcheck``) is a speed path in front of jsonschema: when
it says "valid" jsonschema is skipped. So the property that matters is one-sided —
``accept(x)`` implies jsonschema finds no error — checked here by hypothesis against
the installed plugins' tool schemas and schemas written to hit every keyword's edges.
Error messages stay jsonschema's (tests/test_mcp_server.py pins them).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import jsonschema.validators
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.config import PluginsConfig
from tunneld.mcp._catalog import Catalog, SchemaViolation
from tunneld.mcp._fastcheck import compile_acceptor
from tunneld.mcp._registry import READ_ONLY, Registry, Tool
from tunneld.plugins import PluginManager

EDGE_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0, "maximum": 10},
            "x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5},
            "s": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[a-c]+$"},
            "e": {"enum": ["a", 1, True, None]},
            "c": {"const": 1},
            "b": {"type": "boolean"},
            "l": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
            "u": {"type": ["string", "null"]},
            "o": {
                "type": "object",
                "properties": {"k": {"type": "string"}},
                "additionalProperties": {"type": "integer"},
            },
        },
        "required": ["n"],
        "additionalProperties": False,
    },
    {"type": "object", "additionalProperties": True, "required": ["a", "b"]},
    {"minimum": 2, "maxLength": 2, "minItems": 1},
    {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "integer"},
]

KEYS = st.sampled_from(["n", "x", "s", "e", "c", "b", "l", "u", "o", "k", "a", "zz", ""])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.sampled_from([0.0, 1.0, 0.5, 1.5, -0.0, 2.0, 1e300, float("inf"), float("nan")]),
    st.sampled_from(["", "a", "abc", "abcd", "d", "é", "ab\n", "fast", "text"]),
    st.text(max_size=5),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(KEYS | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


def _installed_schemas() -> list[dict[str, Any]]:
    registry = PluginManager(PluginsConfig()).load()
    schemas: list[dict[str, Any]] = []
    for tool in registry.tools.values():
        schemas.append(dict(tool.input_schema))
        if tool.output_schema is not None:
            schemas.append(dict(tool.output_schema))
    return schemas


ALL_SCHEMAS = EDGE_SCHEMAS + _installed_schemas()


def _instances(schema: dict[str, Any]) -> st.SearchStrategy[object]:
    # Objects built from the schema's own property names reach the property checks
    # far more often than random dicts do.
    names = [*schema.get("properties", {}), "zz"]
    shaped = st.dictionaries(st.sampled_from(names), JSON, max_size=len(names))
    return st.one_of(JSON, shaped)


@pytest.mark.parametrize("index", range(len(ALL_SCHEMAS)))
@settings(derandomize=True, max_examples=150, deadline=None)
@given(data=st.data())
def test_accept_implies_jsonschema_valid(index: int, data: st.DataObject) -> None:
    schema = ALL_SCHEMAS[index]
    accept = compile_acceptor(schema)
    if accept is None:
        return
    validator_cls = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    instance = data.draw(_instances(schema))
    if accept(instance):
        assert validator.is_valid(instance), (schema, instance)


def test_plain_schemas_compile_and_accept_valid_instances() -> None:
    accept = compile_acceptor(EDGE_SCHEMAS[0])
    assert accept is not None
    good = {"n": 3, "x": 0.5, "s": "ab", "e": None, "c": 1, "l": [1], "o": {"k": "v", "z": 2}}
    assert accept(good)
    for bad in ({"n": True}, {"n": 11}, {"n": 1, "zz": 0}, {"n": 1, "s": "abcd"}, {}):
        assert not accept(bad)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}},
        {"oneOf": [{"type": "string"}]},
        {"type": "string", "format": "uri"},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        {"enum": [[1]]},
        {"type": "object", "patternProperties": {"^a": {}}},
    ],
)
def test_schemas_beyond_the_fast_checks_get_no_acceptor(schema: dict[str, Any]) -> None:
    assert compile_acceptor(schema) is None


def test_workspace_read_file_takes_the_fast_path() -> None:
    registry = PluginManager(PluginsConfig()).load()
    tool = registry.tools.get("read_file")
    if tool is None:
        pytest.skip("the workspace plugin is not installed")
    accept = compile_acceptor(tool.input_schema)
    assert accept is not None
    assert accept({"agent": "a", "path": "/etc/hostname"})
    assert tool.output_schema is not None
    assert compile_acceptor(tool.output_schema) is not None


def test_catalog_errors_are_jsonschemas_wording() -> None:
    # The fast path only accepts; a rejection is worded from jsonschema's best match.
    registry = Registry()

    async def handler(ctx: object, args: dict[str, Any]) -> str:
        return ""

    schema = EDGE_SCHEMAS[0]
    registry.add_tool(Tool("t", "t", schema, handler, READ_ONLY))  # type: ignore[arg-type]
    catalog = Catalog(registry, None, 0)
    catalog.validate_arguments(registry.tools["t"], {"n": 1})
    with pytest.raises(SchemaViolation) as caught:
        catalog.validate_arguments(registry.tools["t"], {"n": 1, "s": "abcd"})
    assert str(caught.value).startswith("Invalid arguments for tool t: argument 's': ")
    assert '"maxLength":3' in str(caught.value)

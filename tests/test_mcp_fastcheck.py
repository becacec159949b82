"""The fast validity check (jsonschema-rs) agrees with jsonschema, and covers real tools.

``tunneld.mcp._fastcheck`` puts ``jsonschema-rs``'s ``is_valid`` in front of
jsonschema: when it says "valid", jsonschema is skipped. What must hold is that it
never accepts what jsonschema rejects; hypothesis checks more — the same accept/reject
as jsonschema — on random schemas built from the keywords tools use and random
instances, and on the installed plugins' tool schemas. Error messages stay jsonschema's
(tests/test_mcp_server.py pins them).
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


_LEAF_SCHEMAS = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["string", "integer", "number", "boolean", "null", "object", "array"]
            )
        }
    ),
    st.fixed_dictionaries({"type": st.just(["string", "null"])}),
    st.fixed_dictionaries(
        {"minimum": st.integers(-2, 5)}, optional={"maximum": st.integers(0, 12)}
    ),
    st.fixed_dictionaries(
        {"exclusiveMinimum": st.sampled_from([0, 0.5])},
        optional={"exclusiveMaximum": st.sampled_from([1.5, 10])},
    ),
    st.fixed_dictionaries(
        {"minLength": st.integers(0, 3)}, optional={"maxLength": st.integers(1, 4)}
    ),
    st.fixed_dictionaries({"pattern": st.sampled_from(["^[a-c]+$", "b", "^$", "^a"])}),
    st.fixed_dictionaries({"enum": st.lists(SCALARS, min_size=1, max_size=4)}),
    st.fixed_dictionaries({"const": SCALARS}),
    st.fixed_dictionaries(
        {"minItems": st.integers(0, 2)}, optional={"maxItems": st.integers(1, 3)}
    ),
    st.booleans(),
)


def _extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    names = st.sampled_from(["n", "s", "o", "l", "zz"])
    return st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(names, inner, max_size=3)},
            optional={
                "required": st.lists(names, max_size=2, unique=True),
                "additionalProperties": st.one_of(st.booleans(), inner),
            },
        ),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=2)}),
        st.fixed_dictionaries({"oneOf": st.lists(inner, min_size=1, max_size=2)}),
        st.fixed_dictionaries({"not": inner}),
        st.fixed_dictionaries({"allOf": st.lists(inner, min_size=1, max_size=2)}),
    )


RANDOM_SCHEMAS = st.recursive(_LEAF_SCHEMAS, _extend, max_leaves=6)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(schema=RANDOM_SCHEMAS, data=st.data())
def test_same_accept_and_reject_as_jsonschema_on_random_schemas(
    schema: Any, data: st.DataObject
) -> None:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    accept = compile_acceptor(schema)
    assert accept is not None, schema
    names = [*schema.get("properties", {}), "zz"] if isinstance(schema, dict) else ["zz"]
    shaped = st.dictionaries(st.sampled_from(names), JSON, max_size=len(names))
    for instance in data.draw(st.lists(st.one_of(JSON, shaped), min_size=1, max_size=5)):
        assert accept(instance) == validator.is_valid(instance), (schema, instance)


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
    assert accept is not None
    validator_cls = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    instance = data.draw(_instances(schema))
    assert accept(instance) == validator.is_valid(instance), (schema, instance)


def test_plain_schemas_compile_and_accept_valid_instances() -> None:
    accept = compile_acceptor(EDGE_SCHEMAS[0])
    assert accept is not None
    good = {"n": 3, "x": 0.5, "s": "ab", "e": None, "c": 1, "l": [1], "o": {"k": "v", "z": 2}}
    assert accept(good)
    for bad in ({"n": True}, {"n": 11}, {"n": 1, "zz": 0}, {"n": 1, "s": "abcd"}, {}):
        assert not accept(bad)


def test_a_schema_it_cannot_compile_is_left_to_jsonschema() -> None:
    # A remote $ref is never fetched (offline): no fast check; jsonschema handles it.
    remote = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    assert compile_acceptor(remote) is None
    local = {"$defs": {"a": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/a"}}}
    accept = compile_acceptor(local)
    assert accept is not None
    assert accept({"a": "x"})
    assert not accept({"a": 1})


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

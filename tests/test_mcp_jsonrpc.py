"""The MCP message parser and the small parsers next to it, by example and fuzzed.

Whatever the bytes, :func:`parse_message` returns a message or raises JsonRpcError
(never anything else); the media-type, event-id and cursor parsers never raise
anything but their documented errors.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.mcp._catalog import decode_cursor, encode_cursor
from tunneld.mcp._events import parse_event_id
from tunneld.mcp._jsonrpc import (
    JsonRpcError,
    McpError,
    Notification,
    Request,
    Response,
    encode,
    parse_message,
)
from tunneld.mcp._media import accepts, parse_accept, parse_media_type

CI_SETTINGS = settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW_SETTINGS = settings(max_examples=20_000, deadline=None)

VALID = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}',
    b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}',
    b'{"jsonrpc":"2.0","id":"srv-1","result":{"action":"accept"}}',
    b'{"jsonrpc":"2.0","id":"srv-2","error":{"code":-1,"message":"no"}}',
]


def test_examples() -> None:
    assert parse_message(VALID[0]) == Request(1, "tools/call", {"name": "x", "arguments": {}})
    assert parse_message(VALID[1]) == Notification("notifications/cancelled", {"requestId": 1})
    assert parse_message(VALID[2]) == Response("srv-1", result={"action": "accept"})
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"method":"ping"}') == Request(1, "ping", {})


@pytest.mark.parametrize(
    ("body", "code", "where"),
    [
        (b"{", -32700, "line 1 column 2"),
        (b'{"a": NaN}', -32700, "NaN"),
        (b"[" * 100_000, -32700, ""),
        (b"[]", -32600, "batches"),
        (b'{"jsonrpc":"1.0","id":1,"method":"x"}', -32600, "jsonrpc"),
        (b'{"jsonrpc":"2.0","id":true,"method":"x"}', -32600, "id"),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"x"}', -32600, "id"),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', -32600, "method"),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', -32600, "exactly one"),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}', -32600, "code"),
    ],
)
def test_errors_say_what(body: bytes, code: int, where: str) -> None:
    with pytest.raises(JsonRpcError) as caught:
        parse_message(body)
    assert caught.value.code == code
    assert caught.value.http_status == 400
    assert where in caught.value.message


def test_error_keeps_a_readable_id() -> None:
    with pytest.raises(JsonRpcError) as caught:
        parse_message(b'{"jsonrpc":"2.0","id":7,"method":"x","params":3}')
    assert caught.value.to_json()["id"] == 7


def _parse_or_our_error(data: bytes) -> None:
    failure: JsonRpcError | None = None
    try:
        message = parse_message(data)
    except JsonRpcError as exc:
        failure = exc
    if failure is not None:
        assert failure.http_status == 400
        assert failure.code in (-32700, -32600)
        json.dumps(failure.to_json())
    else:
        assert isinstance(message, Request | Notification | Response)


@CI_SETTINGS
@given(st.binary(max_size=512))
def test_fuzz_bytes(data: bytes) -> None:
    _parse_or_our_error(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "x"])


@CI_SETTINGS
@given(st.dictionaries(keys, json_values | st.just("2.0"), max_size=6))
def test_fuzz_message_shapes(obj: dict[str, Any]) -> None:
    _parse_or_our_error(json.dumps(obj).encode())


@CI_SETTINGS
@given(st.sampled_from(VALID), st.data())
def test_fuzz_mutations(seed: bytes, data: st.DataObject) -> None:
    mutated = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if action == "flip" and mutated:
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            mutated.insert(pos, data.draw(st.integers(0, 255)))
        elif action == "delete" and mutated:
            del mutated[pos]
        else:
            del mutated[pos:]
    _parse_or_our_error(bytes(mutated))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNNELD_SLOW"), reason="long fuzz run: TUNNELD_SLOW=1")
@SLOW_SETTINGS
@given(st.binary(max_size=4096))
def test_fuzz_bytes_long(data: bytes) -> None:
    _parse_or_our_error(data)


@CI_SETTINGS
@given(st.text(max_size=200))
def test_fuzz_small_parsers(text: str) -> None:
    parse_media_type(text)
    ranges = parse_accept(text)
    accepts(ranges, "application", "json")
    parse_event_id(text)
    code = -32602
    try:
        decode_cursor(text, 0)
    except McpError as exc:
        code = exc.code
    assert code == -32602


def test_media_types() -> None:
    media = parse_media_type('Application/JSON ; Charset="UTF-8"')
    assert media is not None
    assert media.essence == "application/json"
    assert media.params == {"charset": "UTF-8"}
    assert parse_media_type("json") is None
    ranges = parse_accept("text/html, application/json;q=0, */*;q=0.1")
    assert accepts(ranges, "text", "event-stream")
    assert not accepts(parse_accept("application/json;q=0"), "application", "json")


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(3, 40), 3) == 40
    with pytest.raises(McpError):
        decode_cursor(encode_cursor(2, 40), 3)


def test_encode_refuses_nan_and_bytes() -> None:
    with pytest.raises(ValueError):
        encode({"x": float("nan")})
    with pytest.raises(TypeError):
        encode({"x": b"raw"})

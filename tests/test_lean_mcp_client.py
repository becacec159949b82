"""The demo's lean MCP client: its SSE reader, split anywhere (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tunneld._mcp_client import _SseData

_messages = st.lists(
    st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3), min_size=1, max_size=4
)
_newlines = st.sampled_from(["\n", "\r\n", "\r"])


def _stream(messages: list[dict[str, str]], newline: str) -> bytes:
    parts = [f": keepalive{newline}", f"id: 0{newline}data:{newline}{newline}"]  # a priming event
    for i, message in enumerate(messages):
        parts.append(
            f"event: message{newline}id: {i}{newline}data: {json.dumps(message)}{newline}{newline}"
        )
    return "".join(parts).encode()


@given(_messages, _newlines, st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_sse_data_split_anywhere_gives_the_same_events(
    messages: list[dict[str, str]], newline: str, cuts: list[int]
) -> None:
    raw = _stream(messages, newline)
    bounds = sorted({min(c, len(raw)) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *bounds], [*bounds, len(raw)], strict=True)]
    reader = _SseData()
    events = [event for chunk in chunks for event in reader.feed(chunk)] + reader.end()
    # The priming event has empty data: not dispatched. Each message comes back whole.
    assert [json.loads(e) for e in events] == messages


def test_sse_data_joins_multi_line_data_and_skips_comments() -> None:
    reader = _SseData()
    assert reader.feed(b": hi\ndata: a\ndata:b\n") == []
    assert reader.feed(b"\n") == ["a\nb"]

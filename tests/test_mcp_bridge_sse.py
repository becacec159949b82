"""The stdio bridge's SSE decoder: byte-at-a-time, any split, every line ending."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tunneld.daemon._mcp_bridge import SseDecoder, SseEvent
from tunneld.http import format_sse


def test_priming_event_comments_and_data() -> None:
    decoder = SseDecoder()
    stream = b'id: 1\ndata: \n\n: keepalive\n\nid: 2\nevent: message\ndata: {"a":\ndata: 1}\n\n'
    events = [e for byte in stream for e in decoder.feed(bytes([byte]))]
    # The priming event (empty data) is dispatched with empty data; comments are not.
    assert events == [SseEvent("", "message", "1"), SseEvent('{"a":\n1}', "message", "2")]
    assert decoder.last_event_id == "2"


def test_crlf_and_cr_line_endings() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r\n") == [SseEvent("a")]
    assert decoder.feed(b"data: b\r\r") == [SseEvent("b")]


@given(
    messages=st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
            st.one_of(st.none(), st.text(alphabet="abc123-", min_size=1, max_size=8)),
        ),
        max_size=5,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_any_split_decodes_the_same(
    messages: list[tuple[dict[str, str], str | None]], cuts: list[int]
) -> None:
    wire = b"".join(format_sse(json.dumps(m), id=i) for m, i in messages)
    decoder = SseDecoder()
    events: list[SseEvent] = []
    last = 0
    for cut in sorted({min(c, len(wire)) for c in cuts}):
        events += decoder.feed(wire[last:cut])
        last = cut
    events += decoder.feed(wire[last:])
    assert [json.loads(e.data) for e in events] == [m for m, _ in messages]

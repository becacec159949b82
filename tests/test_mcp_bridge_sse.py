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


async def test_an_over_long_stdin_line_is_refused_once_and_its_tail_dropped() -> None:
    import trio
    import trio.testing

    from tunneld.daemon import _mcp_bridge

    written: list[bytes] = []
    refused = trio.Event()

    def send_line(line: bytes) -> None:
        written.append(line)
        refused.set()

    bridge = _mcp_bridge.McpBridge("/nonexistent.sock", send_line=send_line, eof_grace=0)
    send, receive = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bridge.run, receive)
        too_long = b"x" * (_mcp_bridge._MAX_LINE + 1)
        for start in range(0, len(too_long), 1 << 20):
            await send.send_all(too_long[start : start + (1 << 20)])
        with trio.fail_after(30):
            await refused.wait()  # the bridge has refused the line so far
        # The same line goes on with something that would parse as a line of its own.
        await send.send_all(b'["tail"]\n[1, 2]\n')
        await send.aclose()
    codes = [json.loads(line)["error"]["code"] for line in written]
    # "message too long" once, then the next line's own error; nothing for the tail.
    assert codes == [_mcp_bridge.PARSE_ERROR, _mcp_bridge.INVALID_REQUEST]

"""The lean MCP client's HTTP/1.1 codec (tunneld._http1_client): responses split
anywhere, malformed ones, garbage (hypothesis), and request heads. The client itself
runs against our server and the mcp SDK's real server in tests/test_bench_calls.py and
tests/test_demo.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunneld._http1_client import MAX_HEAD, Head, ResponseError, ResponseReader, request_head

_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection")
)
_values = st.from_regex(r"[!-~]([ -~]{0,20}[!-~])?", fullmatch=True)


def _read_all(reader: ResponseReader, chunks: list[bytes]) -> list[tuple[Head, bytes]]:
    """Every response in ``chunks`` (fed one at a time), as (head, body)."""
    out: list[tuple[Head, bytes]] = []
    pending = list(chunks)
    head: Head | None = None
    body = bytearray()
    for _ in range(10_000):  # bounded
        if head is None:
            if not pending and not reader.buffered:
                return out
            head = reader.read_head()
            if head is None:
                if not pending:
                    return out
                reader.feed(pending.pop(0))
            continue
        piece = reader.read_body()
        if piece is None:
            reader.feed(pending.pop(0) if pending else b"")
        elif piece == b"":
            out.append((head, bytes(body)))
            head, body = None, bytearray()
        else:
            body += piece
    raise AssertionError("no progress")


def _response(
    status: int, headers: list[tuple[str, str]], body: bytes, framing: str, interim: bool
) -> bytes:
    lines = []
    if interim:
        lines.append(b"HTTP/1.1 100 Continue\r\n\r\n")
    head = [f"HTTP/1.1 {status} Whatever Reason"]
    head += [f"{k}: {v}" for k, v in headers]
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        payload = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
        payload += b"0\r\nX-Trailer: yes\r\n\r\n"
    else:
        head.append("Connection: close")
        payload = body
    lines.append(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    return b"".join(lines)


def _split(raw: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({min(c, len(raw)) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *bounds], [*bounds, len(raw)], strict=True) if b > a]


@given(
    status=st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304)),
    headers=st.lists(st.tuples(_names, _values), max_size=5),
    body=st.binary(max_size=200),
    framing=st.sampled_from(["length", "chunked", "close"]),
    interim=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=10),
)
def test_a_response_split_anywhere_reads_the_same(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    framing: str,
    interim: bool,
    cuts: list[int],
) -> None:
    raw = _response(status, headers, body, framing, interim)
    chunks = _split(raw, cuts)
    if framing == "close":
        chunks.append(b"")  # the server closes: that ends the body
    [(head, got)] = _read_all(ResponseReader(), chunks)
    assert head.status == status
    assert got == body
    assert head.keep_alive is (framing != "close")
    expected: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        expected[key] = f"{expected[key]}, {value}" if key in expected else value
    for key, value in expected.items():
        assert head.headers[key] == value


def test_keep_alive_responses_follow_one_another() -> None:
    raw = _response(200, [], b"one", "length", False) + _response(404, [], b"two", "chunked", True)
    reader = ResponseReader()
    got = _read_all(reader, [raw[i : i + 3] for i in range(0, len(raw), 3)])
    assert [(h.status, b) for h, b in got] == [(200, b"one"), (404, b"two")]
    assert reader.idle
    no_body = ResponseReader()
    assert _read_all(no_body, [b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"]) == [
        (Head(204, {"content-length": "9"}, True), b"")
    ]
    old = ResponseReader()
    [(head, _)] = _read_all(old, [b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert not head.keep_alive


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer-encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "longer than"),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "connection closed with 3"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "inside a chunked"),
        (b"HTTP/1.1 200 O", "inside the response head"),
        (b"", "before a response"),
    ],
)
def test_malformed_responses_raise_response_error(raw: bytes, message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        _read_all(ResponseReader(), [raw, b""])


def test_an_oversized_head_is_refused_before_its_end() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD)
    with pytest.raises(ResponseError, match="over"):
        reader.read_head()


@given(st.lists(st.binary(max_size=64), max_size=12))
def test_garbage_raises_response_error_and_nothing_else(chunks: list[bytes]) -> None:
    reader = ResponseReader()
    try:
        _read_all(reader, [*chunks, b""])
    except ResponseError:
        pass


def test_request_head_renders_and_refuses_what_could_split_it() -> None:
    head = request_head("POST", "/mcp", "127.0.0.1:7", [("Accept", "a, b")], 12)
    assert head == (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:7\r\nAccept: a, b\r\nContent-Length: 12\r\n\r\n"
    )
    with pytest.raises(ValueError, match="Mcp-Session-Id"):
        request_head("POST", "/mcp", "h", [("Mcp-Session-Id", "x\r\nEvil: 1")], 0)
    with pytest.raises(ValueError, match="Bad Name"):
        request_head("POST", "/mcp", "h", [("Bad Name", "x")], 0)
    # A colon would end the name early: "A:b: x" is field "A" with value "b: x".
    for name in ("A:b", "A:", "", "\u00e9"):
        with pytest.raises(ValueError, match="not allowed in HTTP"):
            request_head("POST", "/mcp", "h", [(name, "x")], 0)
    with pytest.raises(ValueError, match="target"):
        request_head("POST", "/a b", "h", [], 0)

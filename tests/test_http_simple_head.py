"""The raw-upgrade fast path: its head recognizer against h11, and the server's answers.

``parse_simple_head`` may refuse anything (h11 then parses the bytes as before), but
whatever it accepts h11 must parse to the very same request: that is fuzzed here with
random bytes, mutated dial heads and generated well-formed heads (which it must
accept, or the fast path would never be taken). End to end, a request taken by the
fast path is answered exactly as h11's path answers it.
"""

from __future__ import annotations

import os
import re

import h11
import pytest
import trio
from _http_support import RawClient, capture_http_log, mutated, request_bytes, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.http import HttpLimits, HttpServer, Request, Response, Router
from tunneld.http._simple_head import SimpleHead, parse_simple_head
from tunneld.http._upgrade import _switching_head
from tunneld.http._util import http_date

CI_SETTINGS = settings(
    derandomize=True,
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW_SETTINGS = settings(max_examples=50_000, deadline=None)
MAX_HEAD = HttpLimits().max_request_head_bytes

DIAL = (
    b"POST /v0/dial HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
    b"Connection: Upgrade\r\nUpgrade: tunneld-stream\r\nTunneld-Agent: web1\r\n"
    b"Tunneld-Service: ssh\r\n\r\n"
)
SEEDS = [
    DIAL,
    DIAL + b"SSH-2.0-OpenSSH\r\n",
    b"GET /derp HTTP/1.1\r\nHost: relay:443\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n",
    b"GET /v0/status?x=1 HTTP/1.1\r\nhost: a\r\nX-Empty:\r\nX-Tab:\t a \t b\t\r\n\r\n",
    b"POST /v0/dial HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
]


def h11_parse(data: bytes) -> tuple[h11.Request, object] | None:
    """h11's request and the event after it (the body's end), or None if h11 refuses
    or needs more bytes."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    try:
        request = conn.next_event()
        if not isinstance(request, h11.Request):
            return None
        return request, conn.next_event()
    except h11.RemoteProtocolError:
        return None


def check_against_h11(data: bytes) -> SimpleHead | None:
    head = parse_simple_head(data, MAX_HEAD)
    if head is None:
        return None
    # Only the head decides: the same answer for the head alone.
    assert parse_simple_head(data[: head.end], MAX_HEAD) == head
    parsed = h11_parse(data[: head.end])
    assert parsed is not None, data
    request, after = parsed
    assert request.method == head.method
    assert request.target == head.target
    assert request.http_version == b"1.1"
    assert list(request.headers.raw_items()) == head.headers
    assert isinstance(after, h11.EndOfMessage)  # no body
    return head


_INSERTS = [
    *(b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"\x7f", b"\xff", b"\r\n\r\n"),
    *(b"\r\n ", b"Host: b\r\n", b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"),
    *(b"HTTP/1.0", b"?", b"%"),
]


def mutated_heads() -> st.SearchStrategy[bytes]:
    return mutated(SEEDS, _INSERTS)


TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKENS = st.text(alphabet=TCHAR, min_size=1, max_size=12)
VALUE_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
VALUES = st.lists(st.text(alphabet=VALUE_CHARS, min_size=1, max_size=10), max_size=3).map(
    lambda words: " ".join(words)
)
OWS = st.sampled_from(["", " ", "\t", "  ", " \t"])


@st.composite
def plain_heads(draw: st.DrawFn) -> bytes:
    """Heads in the recognizer's subset: it must accept every one of them."""
    method = draw(TOKENS)
    target = "/" + draw(st.text(alphabet=VALUE_CHARS, max_size=30))
    fields = draw(
        st.lists(
            st.tuples(TOKENS, VALUES).filter(
                lambda f: (
                    f[0].lower() not in ("host", "content-length", "transfer-encoding", "expect")
                )
            ),
            max_size=8,
        )
    )
    position = draw(st.integers(0, len(fields)))
    fields.insert(position, (draw(st.sampled_from(["Host", "host", "HOST"])), draw(VALUES)))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), ("Content-Length", "0"))
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}:{draw(OWS)}{value}{draw(OWS)}" for name, value in fields]
    rest = draw(st.binary(max_size=20))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + rest


@CI_SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_agree_with_h11(data: bytes) -> None:
    check_against_h11(data)


@CI_SETTINGS
@given(data=mutated_heads())
def test_mutated_heads_agree_with_h11(data: bytes) -> None:
    check_against_h11(data)


@CI_SETTINGS
@given(data=plain_heads())
def test_plain_heads_are_taken_and_agree_with_h11(data: bytes) -> None:
    assert check_against_h11(data) is not None


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNNELD_SLOW"), reason="long fuzz run: TUNNELD_SLOW=1")
@SLOW_SETTINGS
@given(data=st.one_of(mutated_heads(), plain_heads(), st.binary(max_size=600)))
def test_fuzz_long_run(data: bytes) -> None:
    check_against_h11(data)


@pytest.mark.parametrize(
    "data",
    [
        DIAL.replace(b"HTTP/1.1", b"HTTP/1.0"),  # only 1.1
        DIAL.replace(b"Host: localhost\r\n", b""),  # no Host
        DIAL.replace(b"Host: localhost\r\n", b"Host: a\r\nHost: b\r\n"),  # two
        DIAL.replace(b"Content-Length: 0", b"Content-Length: 00"),
        DIAL.replace(b"Content-Length: 0", b"Transfer-Encoding: chunked"),
        DIAL.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nContent-Length: 0\r\n"),
        DIAL.replace(b"Content-Length: 0", b"Expect: 100-continue"),
        DIAL.replace(b"\r\nUpgrade", b"\r\n Upgrade"),  # obsolete line folding
        DIAL.replace(b"\r\nUpgrade", b"\nUpgrade"),  # a bare LF
        DIAL.replace(b"web1", b"w\xe9b1"),  # obs-text
        DIAL.replace(b"web1", b"w\x01b1"),  # a control character
        DIAL.replace(b"/v0/dial", b"http://x/v0/dial"),  # absolute-form
        DIAL[:-2],  # incomplete
    ],
)
def test_anything_unusual_goes_to_h11(data: bytes) -> None:
    assert parse_simple_head(data, MAX_HEAD) is None


def test_a_head_over_the_limit_goes_to_h11() -> None:
    assert parse_simple_head(DIAL, len(DIAL) - 1) is None
    assert parse_simple_head(DIAL, len(DIAL)) is not None


def test_upgrade_prefixes_name_literal_raw_upgrade_routes() -> None:
    router = dial_router()
    router.upgrade("/relay/{region}", "DERP", drain, method="GET")  # a placeholder
    router.upgrade("/odd", "not a token", drain)
    router.route("POST", "/v0/reload", only_web1)  # type: ignore[arg-type]
    assert router.upgrade_prefixes() == (b"POST /v0/dial",)
    router.upgrade("/derp", "DERP", drain, method="GET")
    assert router.upgrade_prefixes() == (b"POST /v0/dial", b"GET /derp")


def test_the_101_is_what_h11_writes() -> None:
    for server_header in ("tunneld", None):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(DIAL)
        assert isinstance(conn.next_event(), h11.Request)
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        headers = [
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"tunneld-stream"),
            (b"Date", http_date().encode()),
        ]
        if server_header:
            headers.append((b"Server", server_header.encode()))
        expected = conn.send(
            h11.InformationalResponse(
                status_code=101, headers=headers, reason=b"Switching Protocols"
            )
        )
        ours = _switching_head("tunneld-stream", server_header)
        # The Date may have ticked over between the two.
        assert ours.replace(http_date().encode(), headers[2][1]) == expected


# -- end to end -------------------------------------------------------------------

UPGRADE = {"Connection": "Upgrade", "Upgrade": "tunneld-stream"}


async def drain(request: Request, stream: trio.abc.Stream) -> None:
    while await stream.receive_some():
        pass  # pragma: no cover


async def shout(request: Request, stream: trio.abc.Stream) -> None:
    assert request.body == b""
    assert request.http_version == "1.1"
    agent = request.headers.get("tunneld-agent") or ""
    await stream.send_all(f"{request.method} {request.path} {agent}|".encode())
    while data := await stream.receive_some():
        await stream.send_all(data.upper())


async def only_web1(request: Request) -> Response | None:
    if request.headers.get("tunneld-agent") != "web1":
        return Response.error(404, "no such agent", code="unknown_agent")
    return None


def dial_router() -> Router:
    router = Router()
    router.upgrade("/v0/dial", "tunneld-stream", shout, authorize=only_web1)
    return router


async def test_fast_and_h11_paths_answer_the_same(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, dial_router())
    fast = request_bytes("POST", "/v0/dial", {**UPGRADE, "Tunneld-Agent": "web1"})
    # A second Content-Length: 0 is legal, but outside the fast path's subset.
    slow = fast.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n")
    assert parse_simple_head(fast, MAX_HEAD) is not None
    assert parse_simple_head(slow, MAX_HEAD) is None
    answers = []
    with capture_http_log() as logs:
        for data in (fast, slow):
            client = await RawClient.connect(port)
            # Bytes right behind the head reach the handler first, on both paths.
            await client.send(data + b"early ")
            status, reason, headers = await client.read_head()
            greeting = await client.read_until(b"|")
            assert await client.read_exactly(6) == b"EARLY "
            await client.stream.send_eof()
            assert await client.read_to_eof() == b""
            await client.aclose()
            answers.append((status, reason, [h for h in headers if h[0] != "Date"], greeting))
    assert answers[0] == answers[1]
    assert answers[0][:2] == (101, "Switching Protocols")
    assert answers[0][3] == b"POST /v0/dial web1|"
    access = logs.events("http.request")
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("POST", "/v0/dial", 101),
        ("POST", "/v0/dial", 101),
    ]


@pytest.mark.parametrize("server_header", ["tunneld", None])
async def test_the_101_bytes_on_both_paths(
    nursery: trio.Nursery, server_header: str | None
) -> None:
    # The exact bytes each path writes (the Date value masked): both build the head from
    # one field list, and a client may depend on the order and the spelling.
    _server, port = await start_server(nursery, dial_router(), server_header=server_header)
    fast = request_bytes("POST", "/v0/dial", {**UPGRADE, "Tunneld-Agent": "web1"})
    slow = fast.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n")
    assert parse_simple_head(slow, MAX_HEAD) is None
    server_line = b"Server: tunneld\r\n" if server_header else b""
    expected = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        b"Upgrade: tunneld-stream\r\nDate: DATE\r\n" + server_line + b"\r\n"
    )
    for data in (fast, slow):
        client = await RawClient.connect(port)
        await client.send(data)
        head = await client.read_until(b"\r\n\r\n")
        assert re.sub(rb"Date: [^\r]+", b"Date: DATE", head) == expected
        assert await client.read_until(b"|") == b"POST /v0/dial web1|"
        await client.aclose()


async def test_a_refused_fast_upgrade_keeps_the_connection(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, dial_router())
    client = await RawClient.connect(port)
    refused = request_bytes("POST", "/v0/dial", {**UPGRADE, "Tunneld-Agent": "db9"})
    assert parse_simple_head(refused, MAX_HEAD) is not None
    # The refusal, then the pipelined request in the same write: as h11 would.
    await client.send(refused + request_bytes("GET", "/v0/dial", UPGRADE))
    response = await client.read_response()
    assert response.status == 404
    assert response.json() == {"error": {"code": "unknown_agent", "message": "no such agent"}}
    assert response.header("connection") is None  # kept alive
    response = await client.read_response()
    assert response.status == 405
    # And an accepted upgrade on the same connection after that.
    await client.send(request_bytes("POST", "/v0/dial", {**UPGRADE, "Tunneld-Agent": "web1"}))
    status, _reason, _headers = await client.read_head()
    assert status == 101
    assert await client.read_until(b"|") == b"POST /v0/dial web1|"
    await client.aclose()


async def test_fast_path_refusals_route_like_h11(nursery: trio.Nursery) -> None:
    # Heads in the subset that are not raw upgrades go through h11 untouched.
    _server, port = await start_server(nursery, dial_router())
    for data, status in [
        (request_bytes("POST", "/v0/dial"), 426),  # no Upgrade
        (request_bytes("POST", "/v0/dial", {"Upgrade": "tunneld-stream"}), 426),
        (request_bytes("POST", "/v0/dialx", UPGRADE), 404),
        (request_bytes("POST", "/v0/dial", {"Connection": "Upgrade", "Upgrade": "h2c"}), 426),
    ]:
        client = await RawClient.connect(port)
        await client.send(data)
        assert (await client.read_response()).status == status, data
        await client.aclose()


async def test_an_invalid_server_header_keeps_h11_s_answer(nursery: trio.Nursery) -> None:
    server = HttpServer(dial_router(), server_header="bad\r\nvalue")
    _host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    client = await RawClient.connect(port)
    await client.send(request_bytes("POST", "/v0/dial", {**UPGRADE, "Tunneld-Agent": "web1"}))
    # h11 refuses to write the header: the connection ends without a 101, as before.
    assert await client.read_to_eof() == b""
    await client.aclose()


async def test_an_invalid_server_header_fails_plain_responses_too(
    nursery: trio.Nursery,
) -> None:
    # Checked once when the server is made, refused on every response as before: the
    # connection ends without writing a byte of the field.
    router = Router()

    async def hello(request: Request) -> Response:
        return Response.text("hi")

    router.route("GET", "/", hello)
    _server, port = await start_server(nursery, router, server_header="bad\r\nvalue")
    with capture_http_log() as logs:
        client = await RawClient.connect(port)
        await client.send(request_bytes("GET", "/"))
        assert await client.read_to_eof() == b""
        await client.aclose()
    errors = [event["error"] for event in logs.events("http.bad_response")]
    assert errors == ["illegal Server header value"]


# -- routing shortcut ---------------------------------------------------------------

ROUTE_PATTERNS = ["/v0/dial", "/v0/{name}", "/a/b", "/a/{x}", "/{x}/b", "/", "/a/b/c"]
SEGMENTS = st.sampled_from(["v0", "dial", "a", "b", "c", "", "x", "%61", "d%2Fe", "{x}"])


def scanned_match(router: Router, raw_path: str) -> tuple[str, dict[str, str]] | None:
    """Router.match without its literal-path shortcut: the full ranked scan."""
    from urllib.parse import unquote

    parts = raw_path.split("/")[1:]
    best: tuple[tuple[int, ...], tuple[str, dict[str, str]]] | None = None
    for pattern, entry in router._entries.items():
        if len(entry.segments) != len(parts):
            continue
        params: dict[str, str] = {}
        rank: list[int] = []
        for segment, name, part in zip(entry.segments, entry.params, parts, strict=True):
            if name is None:
                if unquote(part) != segment:
                    break
                rank.append(0)
            else:
                if part == "":
                    break
                params[name] = unquote(part)
                rank.append(1)
        else:
            if best is None or tuple(rank) < best[0]:
                best = (tuple(rank), (pattern, params))
    return best[1] if best else None


@CI_SETTINGS
@given(
    patterns=st.lists(st.sampled_from(ROUTE_PATTERNS), unique=True, max_size=7),
    parts=st.lists(SEGMENTS, min_size=1, max_size=3),
)
def test_router_literal_shortcut_matches_the_scan(patterns: list[str], parts: list[str]) -> None:
    router = Router()
    for pattern in patterns:
        router.route("GET", pattern, only_web1)  # type: ignore[arg-type]
    raw_path = "/" + "/".join(parts)
    found = router.match(raw_path)
    expected = scanned_match(router, raw_path)
    assert (None if found is None else (found.entry.pattern, found.path_params)) == expected

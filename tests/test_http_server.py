"""tunneld.http over real loopback sockets: routing, bodies, streaming, limits, shutdown."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator

import pytest
import trio
from _http_support import (
    RawClient,
    capture_http_log,
    request_bytes,
    small_limits,
    start_server,
)

from tunneld.http import (
    Headers,
    HttpError,
    HttpServer,
    LastChunk,
    Request,
    Response,
    Router,
    format_sse,
)


async def echo(request: Request) -> Response:
    return Response.json(
        {
            "method": request.method,
            "path": request.path,
            "params": request.path_params,
            "query": request.query,
            "body_len": len(request.body),
            "peer_port": request.peer[1] if isinstance(request.peer, tuple) else None,
            "id": request.request_id,
        }
    )


async def post_json(request: Request) -> Response:
    return Response.json({"got": request.json()}, status=201)


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug with secret detail")


async def teapot(request: Request) -> Response:
    raise HttpError(418, "short and stout", code="teapot", headers=[("X-Why", "tea")])


def make_router() -> Router:
    router = Router()
    router.route("GET", "/items/{name}", echo)
    router.route("GET", "/items/self", echo)
    router.route("DELETE", "/items/{name}", echo)
    router.route("POST", "/json", post_json)
    router.route("POST", "/echo", echo)
    router.route("GET", "/boom", boom)
    router.route("GET", "/teapot", teapot)
    router.route("GET", "/", echo)
    return router


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


async def test_routing_params_404_405_head_options(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())

    status, headers, body = await trio.to_thread.run_sync(
        http_request, port, "GET", "/items/a%20b?x=1&x=2&flag"
    )
    assert status == 200
    data = json.loads(body)
    assert data["params"] == {"name": "a b"}
    assert data["path"] == "/items/a b"
    assert data["query"] == {"x": ["1", "2"], "flag": [""]}
    assert headers["Server"] == "tunneld"
    assert headers["Date"].endswith("GMT")

    # A literal segment beats a placeholder.
    _s, _h, body = await trio.to_thread.run_sync(http_request, port, "GET", "/items/self")
    assert json.loads(body)["params"] == {}

    # %2F stays inside the parameter.
    _s, _h, body = await trio.to_thread.run_sync(http_request, port, "GET", "/items/a%2Fb")
    assert json.loads(body)["params"] == {"name": "a/b"}

    status, _h, body = await trio.to_thread.run_sync(http_request, port, "GET", "/nope")
    assert status == 404
    assert json.loads(body) == {"error": {"code": "not_found", "message": "no route for /nope"}}

    status, headers, body = await trio.to_thread.run_sync(http_request, port, "PUT", "/items/x")
    assert status == 405
    assert headers["Allow"] == "DELETE, GET, HEAD, OPTIONS"
    assert json.loads(body)["error"]["code"] == "method_not_allowed"

    status, headers, body = await trio.to_thread.run_sync(http_request, port, "HEAD", "/items/x")
    assert status == 200
    assert int(headers["Content-Length"]) > 0
    assert body == b""

    status, headers, _b = await trio.to_thread.run_sync(http_request, port, "OPTIONS", "/json")
    assert status == 204
    assert headers["Allow"] == "OPTIONS, POST"

    status, _h, body = await trio.to_thread.run_sync(http_request, port, "BREW", "/json")
    assert status == 501
    assert "BREW" in json.loads(body)["error"]["message"]


async def test_json_bodies_and_http_error(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    status, headers, body = await trio.to_thread.run_sync(
        http_request, port, "POST", "/json", b'{"a": [1, 2]}', {"Content-Type": "application/json"}
    )
    assert (status, json.loads(body)) == (201, {"got": {"a": [1, 2]}})
    assert headers["Content-Type"] == "application/json"

    status, _h, body = await trio.to_thread.run_sync(http_request, port, "POST", "/json", b'{"a": ')
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "bad_json"
    assert "not valid JSON" in error["message"]
    assert "line 1 column 7" in error["message"]

    status, _h, body = await trio.to_thread.run_sync(http_request, port, "POST", "/json", b"")
    assert status == 400
    assert "empty" in json.loads(body)["error"]["message"]

    status, headers, body = await trio.to_thread.run_sync(http_request, port, "GET", "/teapot")
    assert status == 418
    assert headers["X-Why"] == "tea"
    assert json.loads(body) == {"error": {"code": "teapot", "message": "short and stout"}}


async def test_handler_exception_is_500_and_connection_keeps_serving(
    nursery: trio.Nursery,
) -> None:
    _server, port = await start_server(nursery, make_router())
    client = await RawClient.connect(port)
    with capture_http_log() as logs:
        await client.send(request_bytes("GET", "/boom"))
        response = await client.read_response()
        assert response.status == 500
        message = response.json()["error"]["message"]  # type: ignore[index]
        assert "secret detail" not in message
        assert message.startswith("internal server error (request id ")
        # The same connection serves the next request.
        await client.send(request_bytes("GET", "/items/ok"))
        assert (await client.read_response()).status == 200
    failures = logs.events("http.handler_failed")
    assert len(failures) == 1
    assert failures[0]["request_id"] in message
    await client.aclose()


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())

    def three_requests() -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        ports = []
        try:
            for name in ("a", "b", "c"):
                conn.request("GET", f"/items/{name}")
                ports.append(json.loads(conn.getresponse().read())["peer_port"])
        finally:
            conn.close()
        return ports

    ports = await trio.to_thread.run_sync(three_requests)
    assert len(set(ports)) == 1


async def test_pipelined_requests_answered_in_order(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    client = await RawClient.connect(port)
    await client.send(
        request_bytes("GET", "/items/one")
        + request_bytes("POST", "/echo", body=b"xyz")
        + request_bytes("GET", "/items/three", {"Connection": "close"})
    )
    first, second, third = [await client.read_response() for _ in range(3)]
    assert first.json()["params"] == {"name": "one"}  # type: ignore[index]
    assert second.json()["body_len"] == 3  # type: ignore[index]
    assert third.json()["params"] == {"name": "three"}  # type: ignore[index]
    assert third.header("connection") == "close"
    assert await client.is_closed()


async def test_expect_100_continue_and_chunked_request_body(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    client = await RawClient.connect(port)
    await client.send(
        request_bytes("POST", "/echo", {"Expect": "100-continue", "Content-Length": "5"})
    )
    status, _reason, _headers = await client.read_head()
    assert status == 100
    await client.send(b"hello")
    response = await client.read_response()
    assert response.status == 200
    assert response.json()["body_len"] == 5  # type: ignore[index]

    await client.send(
        request_bytes("POST", "/echo", {"Transfer-Encoding": "chunked"})
        + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    response = await client.read_response()
    assert response.json()["body_len"] == 7  # type: ignore[index]
    await client.aclose()


async def test_streamed_ndjson_is_read_incrementally(nursery: trio.Nursery) -> None:
    send_item, receive_item = trio.open_memory_channel[dict[str, int]](0)
    closed = trio.Event()

    async def feed(request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            try:
                async for item in receive_item:
                    yield json.dumps(item).encode() + b"\n"
            finally:
                closed.set()

        return Response.stream(lines(), content_type="application/x-ndjson")

    router = Router()
    router.route("GET", "/feed", feed)
    _server, port = await start_server(nursery, router)
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", "/feed"))
    status, _reason, headers = await client.read_head()
    assert status == 200
    assert ("Transfer-Encoding", "chunked") in headers
    for n in range(3):
        # The client sees each line before the producer makes the next one.
        await send_item.send({"n": n})
        assert json.loads(await client.read_chunk()) == {"n": n}
    await send_item.aclose()
    assert await client.read_chunk() == b""
    await closed.wait()
    # The connection stays usable after the stream ends.
    await client.send(request_bytes("GET", "/feed"))
    assert (await client.read_head())[0] == 200
    await client.aclose()


async def test_sse_stream_stops_when_client_goes_away(nursery: trio.Nursery) -> None:
    producer_closed = trio.Event()

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            try:
                yield format_sse("hello\nworld", event="greeting", id="1")
                await trio.sleep_forever()
                yield b""  # pragma: no cover
            finally:
                producer_closed.set()

        return Response.stream(stream(), content_type="text/event-stream")

    router = Router()
    router.route("GET", "/events", events)
    _server, port = await start_server(nursery, router)
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", "/events"))
    await client.read_head()
    assert await client.read_chunk() == (b"event: greeting\nid: 1\ndata: hello\ndata: world\n\n")
    await client.aclose()
    with trio.fail_after(5):
        await producer_closed.wait()


async def test_oversized_body_is_413_without_reading_it(nursery: trio.Nursery) -> None:
    seen: list[Request] = []

    async def record(request: Request) -> Response:
        seen.append(request)
        return Response.text("ok")

    router = Router()
    router.route("POST", "/upload", record)
    _server, port = await start_server(nursery, router, limits=small_limits())

    # Declared too big: refused before any body byte is sent (and no 100-continue).
    client = await RawClient.connect(port)
    await client.send(
        request_bytes("POST", "/upload", {"Content-Length": "10000000", "Expect": "100-continue"})
    )
    response = await client.read_response()
    assert response.status == 413
    assert response.json()["error"]["message"] == "request body exceeds 1024 bytes"  # type: ignore[index]
    assert response.header("connection") == "close"
    assert await client.is_closed()

    # Chunked, growing past the limit: refused once it passes it.
    client = await RawClient.connect(port)
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    await client.send(
        request_bytes("POST", "/upload", {"Transfer-Encoding": "chunked"}) + chunk * 2
    )
    assert (await client.read_response()).status == 413
    await client.aclose()
    assert seen == []


async def test_route_body_limit_overrides_the_server_limit(nursery: trio.Nursery) -> None:
    router = Router()
    router.route("POST", "/upload", echo, max_body_bytes=4096)
    router.route("POST", "/nobody", echo, max_body_bytes=0)
    router.route("POST", "/default", echo)
    _server, port = await start_server(nursery, router, limits=small_limits())
    for path, size, status in (
        ("/upload", 3000, 200),
        ("/default", 3000, 413),
        ("/nobody", 1, 413),
        ("/nobody", 0, 200),
    ):
        client = await RawClient.connect(port)
        await client.send(request_bytes("POST", path, body=b"x" * size))
        assert (await client.read_response()).status == status, (path, size)
        await client.aclose()


async def test_oversized_head_is_431(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router(), limits=small_limits())
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", "/", {"X-Big": "a" * 8000}))
    response = await client.read_response()
    assert response.status == 431
    await client.aclose()

    client = await RawClient.connect(port)
    many = {f"X-H{i}": "v" for i in range(30)}
    await client.send(request_bytes("GET", "/", many))
    assert (await client.read_response()).status == 431
    await client.aclose()

    # A head trickled in small pieces hits h11's incomplete-event bound.
    client = await RawClient.connect(port)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
    for _ in range(10):
        await client.send(b"a" * 1000)
    assert (await client.read_response()).status == 431
    await client.aclose()


async def test_malformed_head_is_400_and_server_keeps_serving(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    for garbage in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
        # Request smuggling shape (RFC 9112 §6.3).
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    ):
        client = await RawClient.connect(port)
        await client.send(garbage)
        response = await client.read_response()
        assert response.status == 400, garbage
        message = response.json()["error"]["message"]  # type: ignore[index]
        assert message.startswith(("malformed request", "both Transfer-Encoding")), message
        assert await client.is_closed()
    status, _h, _b = await trio.to_thread.run_sync(http_request, port, "GET", "/items/x")
    assert status == 200


async def test_slowloris_head_is_cut_off_with_408(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router(), limits=small_limits())
    client = await RawClient.connect(port)
    await client.send(b"GET / HTTP/1.1\r\n")
    # Each byte arrives well within any per-read timeout; only the whole-head deadline
    # (0.5 s) stops it. The server closing the socket is what ends this loop.
    with trio.move_on_after(5) as trickling:
        try:
            while True:
                await client.send(b"X")
                await trio.sleep(0.05)
        except trio.BrokenResourceError:
            pass
    assert not trickling.cancelled_caught, "the server never cut the trickling client off"
    response = await client.read_response()
    assert response.status == 408
    assert response.json()["error"]["message"] == "request head not received in time"  # type: ignore[index]
    assert await client.is_closed()


async def test_idle_connections_are_closed_quietly(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router(), limits=small_limits())
    # Never sends anything: closed after head_timeout, with no response.
    client = await RawClient.connect(port)
    assert await client.read_to_eof() == b""
    # Keep-alive connection: closed after keepalive_timeout once idle.
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", "/items/a"))
    assert (await client.read_response()).status == 200
    assert await client.read_to_eof() == b""


async def test_slow_body_is_408(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router(), limits=small_limits())
    client = await RawClient.connect(port)
    await client.send(request_bytes("POST", "/echo", {"Content-Length": "10"}) + b"abc")
    response = await client.read_response()
    assert response.status == 408
    await client.aclose()


async def test_graceful_shutdown_finishes_in_flight_request(nursery: trio.Nursery) -> None:
    entered = trio.Event()
    release = trio.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.text("finished")

    router = Router()
    router.route("GET", "/slow", slow)
    router.route("GET", "/fast", echo)
    server_done = trio.Event()
    server = None

    async def run_server(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        nonlocal server
        server = HttpServer(router)
        try:
            await server.serve_tcp("127.0.0.1", 0, task_status=task_status)
        finally:
            server_done.set()

    _host, port = await nursery.start(run_server)
    assert server is not None
    idle = await RawClient.connect(port)
    await idle.send(request_bytes("GET", "/fast"))
    assert (await idle.read_response()).status == 200
    busy = await RawClient.connect(port)
    await busy.send(request_bytes("GET", "/slow"))
    await entered.wait()

    server.shutdown(10)
    # The idle keep-alive connection is closed at once; new connections are refused.
    assert await idle.is_closed()
    await trio.sleep(0.05)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    assert not server_done.is_set()

    release.set()
    response = await busy.read_response()
    assert (response.status, response.body) == (200, b"finished")
    assert response.header("connection") == "close"
    with trio.fail_after(5):
        await server_done.wait()


async def test_shutdown_grace_deadline_cancels_stuck_handlers(nursery: trio.Nursery) -> None:
    entered = trio.Event()
    cancelled = trio.Event()

    async def stuck(request: Request) -> Response:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")  # pragma: no cover

    router = Router()
    router.route("GET", "/stuck", stuck)
    server, port = await start_server(nursery, router)
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", "/stuck"))
    await entered.wait()
    server.shutdown(0.2)
    with trio.fail_after(5):
        await cancelled.wait()
    assert await client.is_closed()


async def test_access_log_has_path_but_not_query(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    with capture_http_log() as logs:
        status, _h, _b = await trio.to_thread.run_sync(
            http_request, port, "GET", "/items/x?token=hunter2"
        )
    assert status == 200
    (entry,) = logs.events("http.request")
    assert entry["path"] == "/items/x"
    assert entry["status"] == 200
    assert entry["method"] == "GET"
    assert "hunter2" not in repr(logs.records[0].__dict__)


async def test_fallback_handler_serves_unmatched_paths(nursery: trio.Nursery) -> None:
    router = make_router()

    async def fallback(request: Request) -> Response:
        return Response.html(f"<p>{request.path}</p>", status=200)

    router.mount_fallback(fallback)
    _server, port = await start_server(nursery, router)
    status, headers, body = await trio.to_thread.run_sync(http_request, port, "GET", "/x/y")
    assert (status, body) == (200, b"<p>/x/y</p>")
    assert headers["Content-Type"] == "text/html; charset=utf-8"


async def test_bad_handler_header_becomes_500(nursery: trio.Nursery) -> None:
    async def bad(request: Request) -> Response:
        return Response(200, [("X-Evil", "a\r\nInjected: 1")], b"x")

    router = Router()
    router.route("GET", "/bad", bad)
    _server, port = await start_server(nursery, router)
    status, headers, _b = await trio.to_thread.run_sync(http_request, port, "GET", "/bad")
    assert status == 500
    assert "Injected" not in headers


def test_headers_are_case_insensitive_and_multi_valued() -> None:
    headers = Headers([("Accept", "a"), ("X-Token", "sekrit"), ("accept", "b")])
    assert headers.get("ACCEPT") == "a, b"
    assert headers.get_all("accept") == ["a", "b"]
    assert headers.get("missing") is None
    assert "x-token" in headers
    assert next(iter(headers)) == ("Accept", "a")
    assert "sekrit" not in repr(headers)


def test_router_rejects_bad_patterns() -> None:
    router = Router()
    with pytest.raises(ValueError, match="must start with '/'"):
        router.route("GET", "items", echo)
    with pytest.raises(ValueError, match="whole segment"):
        router.route("GET", "/a/x{name}", echo)
    router.route("GET", "/a", echo)
    with pytest.raises(ValueError, match="already routed"):
        router.route("get", "/a", echo)
    with pytest.raises(ValueError, match="already routed"):
        router.websocket("/a", _ws_noop)
    router.websocket("/b", _ws_noop)
    with pytest.raises(ValueError, match="already routed"):
        router.route("GET", "/b", echo)
    with pytest.raises(ValueError, match="repeats a placeholder"):
        router.route("GET", "/c/{x}/{x}", echo)
    with pytest.raises(ValueError, match="needs at least one subprotocol"):
        router.websocket("/d", _ws_noop, require_subprotocol=True)


async def _ws_noop(request: Request, websocket: object) -> None:
    pass  # pragma: no cover


async def test_max_connections_queues_extra_clients(nursery: trio.Nursery) -> None:
    _server, port = await start_server(
        nursery, make_router(), limits=small_limits(max_connections=1, keepalive_timeout=10)
    )
    first = await RawClient.connect(port)
    await first.send(request_bytes("GET", "/items/1"))
    assert (await first.read_response()).status == 200
    # The second connection waits in the kernel's backlog while the first holds the slot.
    second = await RawClient.connect(port)
    await second.send(request_bytes("GET", "/items/2"))
    with trio.move_on_after(0.3) as waited:
        await second.read_response()
    assert waited.cancelled_caught
    await first.aclose()
    assert (await second.read_response()).status == 200
    await second.aclose()


async def test_client_that_stops_reading_is_dropped_after_write_timeout(
    nursery: trio.Nursery,
) -> None:
    producer_closed = trio.Event()

    async def firehose(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
            finally:
                producer_closed.set()

        return Response.stream(chunks(), content_type="application/octet-stream")

    router = Router()
    router.route("GET", "/firehose", firehose)
    with capture_http_log() as logs:
        _server, port = await start_server(nursery, router, limits=small_limits(write_timeout=0.3))
        client = await RawClient.connect(port)
        await client.send(request_bytes("GET", "/firehose"))
        with trio.fail_after(10):
            await producer_closed.wait()
        await client.aclose()
        await trio.sleep(0.05)
    assert logs.events("http.write_timeout")
    (entry,) = logs.events("http.request")
    assert entry["aborted"] is True


async def test_unused_upgrade_offer_and_http_10(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    client = await RawClient.connect(port)
    # An h2c upgrade offer on a plain route is ignored (RFC 9110 §7.8): plain 200,
    # and the connection stays HTTP/1.1.
    await client.send(
        request_bytes(
            "GET", "/items/a", {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c"}
        )
    )
    assert (await client.read_response()).status == 200
    await client.send(request_bytes("GET", "/items/b"))
    assert (await client.read_response()).status == 200
    await client.aclose()

    client = await RawClient.connect(port)
    await client.send(b"GET /items/c HTTP/1.0\r\n\r\n")
    response = await client.read_response()
    assert response.status == 200
    assert response.json()["params"] == {"name": "c"}  # type: ignore[index]
    assert await client.is_closed()


async def test_handler_returning_garbage_is_500(nursery: trio.Nursery) -> None:
    async def wrong(request: Request) -> Response:
        return Response(200, [], "not bytes")  # type: ignore[arg-type]

    router = Router()
    router.route("GET", "/wrong", wrong)
    _server, port = await start_server(nursery, router)
    status, _h, _b = await trio.to_thread.run_sync(http_request, port, "GET", "/wrong")
    assert status == 500


async def test_streamed_first_bytes_and_last_chunk(nursery: trio.Nursery) -> None:
    # ``first`` goes out with the head before the iterator is asked for anything; a
    # LastChunk ends the body without asking the iterator for more.
    go = trio.Event()
    asked_after_last = False
    producer_closed = trio.Event()

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            nonlocal asked_after_last
            try:
                await go.wait()
                yield b"middle;"
                yield LastChunk(b"last")
                asked_after_last = True
                yield b"never sent"
            finally:
                producer_closed.set()

        return Response.stream(chunks(), content_type="text/plain", first=b"first;")

    router = Router()
    router.route("GET", "/stream", stream)
    _server, port = await start_server(nursery, router)
    client = await RawClient.connect(port)
    for _ in range(2):  # the connection stays usable after a LastChunk
        go = trio.Event()
        producer_closed = trio.Event()
        await client.send(request_bytes("GET", "/stream"))
        status, _reason, headers = await client.read_head()
        assert status == 200
        assert ("Transfer-Encoding", "chunked") in headers
        with trio.fail_after(5):
            assert await client.read_chunk() == b"first;"
        go.set()
        assert await client.read_chunk() == b"middle;"
        assert await client.read_chunk() == b"last"
        assert await client.read_chunk() == b""
        with trio.fail_after(5):
            await producer_closed.wait()
        assert not asked_after_last
    # HEAD: no body, ``first`` included.
    await client.send(request_bytes("HEAD", "/stream"))
    response = await client.read_response(head_request=True)
    assert response.status == 200
    assert response.body == b""
    await client.aclose()


async def test_unwatched_stream_notices_a_departed_client_at_a_later_write(
    nursery: trio.Nursery,
) -> None:
    # watch_disconnect=False: no watcher task; the producer is closed once a write
    # fails (the first write after the client left may still be accepted by the kernel).
    tick = trio.Event()
    producer_closed = trio.Event()
    ticks = 0

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            nonlocal tick, ticks
            try:
                yield b"hello"
                while True:
                    await tick.wait()
                    tick = trio.Event()
                    ticks += 1
                    yield b"x" * 1024
            finally:
                producer_closed.set()

        return Response.stream(chunks(), content_type="text/plain", watch_disconnect=False)

    router = Router()
    router.route("GET", "/stream", stream)
    _server, port = await start_server(nursery, router)
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", "/stream"))
    await client.read_head()
    assert await client.read_chunk() == b"hello"
    await client.aclose()
    await trio.sleep(0.05)
    assert not producer_closed.is_set()  # nobody watched the socket
    with trio.fail_after(10):
        while not producer_closed.is_set():
            tick.set()
            await trio.sleep(0.05)
    assert ticks >= 1


async def test_head_on_streamed_route_sends_no_body_and_closes_producer(
    nursery: trio.Nursery,
) -> None:
    producer_closed = trio.Event()

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield b"never sent"
            finally:
                producer_closed.set()

        return Response.stream(chunks(), content_type="text/plain")

    router = Router()
    router.route("GET", "/stream", stream)
    _server, port = await start_server(nursery, router)
    client = await RawClient.connect(port)
    await client.send(request_bytes("HEAD", "/stream"))
    response = await client.read_response(head_request=True)
    assert response.status == 200
    assert response.header("content-type") == "text/plain"
    await client.send(request_bytes("GET", "/stream"))
    response = await client.read_response()
    assert response.body == b"never sent"
    with trio.fail_after(5):
        await producer_closed.wait()
    await client.aclose()


def test_messages_error_shapes() -> None:
    response = Response.error(404, "no such agent")
    assert json.loads(response.body) == {  # type: ignore[arg-type]
        "error": {"code": "not_found", "message": "no such agent"}
    }
    assert HttpError(429, "slow down").code == "too_many_requests"
    assert HttpError(599, "odd").code == "http_599"
    assert Response.text("hi").header("content-type") == "text/plain; charset=utf-8"
    with pytest.raises(ValueError, match="line break"):
        format_sse("x", event="a\nb")
    assert format_sse("", retry=1000) == b"retry: 1000\ndata: \n\n"


def test_request_json_errors_say_what_and_where() -> None:
    def request(body: bytes) -> Request:
        return Request("POST", "/", "/", {}, Headers(), body, None, False)

    with pytest.raises(HttpError) as raised:
        request(b"\xff{}").json()
    assert (raised.value.status, raised.value.message) == (
        400,
        "request body is not UTF-8 (byte 0)",
    )
    with pytest.raises(HttpError) as raised:
        request(b'{"a": 1,\n "b": }').json()
    assert raised.value.message == (
        "request body is not valid JSON: Expecting value at line 2 column 7"
    )
    assert request(b'{"a": [1]}').json() == {"a": [1]}
    assert request(b"").query_one("x") is None


async def test_serve_tcp_port_zero_on_a_name_reports_a_reachable_port(
    nursery: trio.Nursery,
) -> None:
    server = HttpServer(make_router())
    host, port = await nursery.start(server.serve_tcp, "localhost", 0)
    assert host == "localhost"
    stream = await trio.open_tcp_stream("localhost", port)
    client = RawClient(stream)
    await client.send(request_bytes("GET", "/items/x"))
    assert (await client.read_response()).status == 200
    await client.aclose()
